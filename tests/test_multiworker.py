"""Two real worker processes on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy.

One two-worker run (module fixture) pretrains the tiny R3D for four epochs of the synthetic set,
and loses a worker on the way: worker 1 is SIGKILLed after the first checkpoint, worker 0 stops
in bounded time naming it, and both, restarted with the same command, resume from the last
checkpoint and finish. Checked on it: the failure message and the resume; each worker's
recorded video ids are its own half of the shards, the halves are disjoint and cover every
video once per epoch (across the restart too); the contrastive loss compares each anchor with
the clips of BOTH workers (num_candidates as info_nce gathered it); both workers end with the
same weights; one process with two replicas on the same batches gets the same first-step loss;
only the chief writes checkpoints and summaries. (One run serves all: each round of two
processes costs about 15 s of TensorFlow start-up per process.)
"""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import config
from cvrl_tf.training import job
from cvrl_tf import steps
from cvrl_tf import train
from cvrl_tf.training import books
from cvrl_tf.data import pipeline
from cvrl_tf.data import synthetic

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT = 300  # Seconds for both workers (TF start-up dominates; generous on 2 shared cores).
BATCH = 8         # Global batch of videos: 4 per worker.
VIDEOS = 16       # Training videos: one epoch is 2 global steps.
STEPS = 8         # Four epochs; worker 1 is killed after checkpoint 2.
WORKER_TIMEOUT = 10  # --worker_timeout of the fault test (seconds).
GIN_FILE = "experiments/demo_pretrain.gin"


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _params(data_dir, steps, *extra):
    return [f"TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}",
            f"run.train_length={steps}", "run.steps_per_loop=1", "run.checkpoint_every=2",
            f"run.global_batch_size={BATCH}", "run.min_video_frames=16", "run.seed=1",
            "run.deterministic=True", "run.image_summaries=False", *extra]


def _start(params, model_dir, workers, log_dir, name, flags=()):
    """Starts one process per worker; returns (procs, log paths)."""
    # --verbose: each worker's Python log lines (its input pipeline, its final weights' digest)
    # on its console, as the non-chief worker's log file goes with its temporary directory.
    args = [sys.executable, "-m", "cvrl_tf.train", "--strategy=multi_worker", "--verbose",
            f"--gin_file={GIN_FILE}", f"--model_dir={model_dir}", *flags,
            *[f"--gin_param={p}" for p in params]]
    procs, paths = [], []
    for index in range(len(workers)):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        path = os.path.join(log_dir, f"{name}-worker{index}.log")
        with open(path, "w") as log:
            procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        paths.append(path)
    return procs, paths


def _wait(procs, deadline):
    try:
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _read(path):
    with open(path) as f:
        return f.read()


def _results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=VIDEOS, num_eval=8, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


@pytest.fixture(scope="module")
def two_workers(data_dir, tmp_path_factory):
    """The two-worker run, losing worker 1 after checkpoint 2 and restarted: {'model_dir',
    'outputs' (of the restarted workers), 'pids' (restarted), 'params', 'workers', 'lost' (the
    first round: worker 0's return code and output, the step of its last checkpoint, seconds
    it took to stop)}."""
    log_dir = str(tmp_path_factory.mktemp("logs"))
    model_dir = os.path.join(log_dir, "model")
    params = _params(data_dir, STEPS, f"EVAL_DATA={os.path.join(data_dir, 'eval-*')!r}",
                     "run.eval_batch_size=4", "run.record_example_ids=True")
    flags = [f"--worker_timeout={WORKER_TIMEOUT}"]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs, paths = _start(params, model_dir, workers, log_dir, "lost", flags)
    deadline = time.time() + TIME_LIMIT
    try:
        while not glob.glob(os.path.join(model_dir, "ckpt-2.index")):
            assert procs[0].poll() is None and time.time() < deadline, _read(paths[0])[-3000:]
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        procs[0].wait(timeout=6 * WORKER_TIMEOUT)
        waited = time.time() - killed
    finally:
        _wait(procs, time.time())
    latest = tf.train.latest_checkpoint(model_dir)
    lost = {"returncode": procs[0].returncode, "output": _read(paths[0]), "waited": waited,
            "pid": procs[0].pid, "step": int(tf.train.load_checkpoint(latest).get_tensor(
                "step/.ATTRIBUTES/VARIABLE_VALUE"))}

    procs, paths = _start(params, model_dir, workers, log_dir, "run", flags)
    _wait(procs, time.time() + TIME_LIMIT)
    outputs = [_read(p) for p in paths]
    for index, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {index} failed:\n{out[-3000:]}"
    return {"model_dir": model_dir, "outputs": outputs, "pids": [p.pid for p in procs],
            "params": params, "workers": workers, "lost": lost}


def test_two_workers_pretrain_together(two_workers):
    model_dir, outputs = two_workers["model_dir"], two_workers["outputs"]
    for index, out in enumerate(outputs):
        assert f"Input pipeline {index} of 2 (2 replicas in sync)" in out
    results = _results(model_dir)
    assert results["num_replicas"] == 2 and results["global_step"] == STEPS
    assert results["eval"]["num_examples"] == 8
    # The loss compared each anchor with all 2 x global batch clips, across both workers: the
    # count info_nce read from the candidates it gathered (2 x 4 per worker if only local).
    assert results["train"]["num_candidates"] == 2 * BATCH

    # Only the chief (worker 0) wrote checkpoints and summaries; worker 1's temp dir is gone.
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{STEPS}")
    assert not glob.glob(os.path.join(model_dir, "workertemp_*"))
    events = glob.glob(os.path.join(model_dir, "**", "events.out.tfevents.*"), recursive=True)
    pids = {re.match(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+\.v2$",
                     os.path.basename(e)).group(1) for e in events}
    chiefs = {str(two_workers["lost"]["pid"]), str(two_workers["pids"][0])}
    assert events and pids == chiefs


def _recorded_ids(model_dir, worker):
    """{step: [video id hashes]} worker `worker` consumed (run.record_example_ids; a later
    line for a step wins: the steps done again after the restart)."""
    steps_ = {}
    with open(os.path.join(model_dir, "example_ids", f"worker-{worker}.txt")) as f:
        for line in f:
            step, ids = line.split(" ", 1)
            steps_[int(step)] = [int(i) for i in ids.strip().strip("[]").split()]
    return steps_


def test_each_epoch_the_workers_read_disjoint_halves_covering_the_set(two_workers, data_dir):
    everything = pipeline.build_dataset(os.path.join(data_dir, "train-*"), "pretrain", 4, 4, 2,
                                        32, repeat=False, seed=0)
    ids = [i for b in everything for i in b["id"].numpy()]
    hashes = set(pipeline.id_hash(tf.constant(ids)).numpy().tolist())
    assert len(hashes) == VIDEOS

    recorded = [_recorded_ids(two_workers["model_dir"], w) for w in range(2)]
    for worker in recorded:
        assert sorted(worker) == list(range(STEPS))
        assert all(len(ids) == BATCH // 2 for ids in worker.values())  # Its half of the batch.
    steps_per_epoch = VIDEOS // BATCH
    for epoch in range(STEPS // steps_per_epoch):
        epoch_steps = range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        halves = [[i for s in epoch_steps for i in worker[s]] for worker in recorded]
        assert not set(halves[0]) & set(halves[1])
        assert sorted(halves[0] + halves[1]) == sorted(hashes)  # Every video once.


def _final_digests(outputs):
    return [re.findall(r"Final weights of worker (\d) at step (\d+): sha256 (\w+)", out)
            for out in outputs]


def test_both_workers_end_with_the_same_weights(two_workers):
    found = _final_digests(two_workers["outputs"])
    assert [f[-1][:2] for f in found] == [("0", str(STEPS)), ("1", str(STEPS))]
    assert found[0][-1][2] == found[1][-1][2] == _results(two_workers["model_dir"])[
        "weights_sha256"]


def _first_step_loss(model_dir):
    for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss" and event.step == 1:
                    return float(tf.make_ndarray(value.tensor))
    raise AssertionError("no loss summary at step 1")


def test_one_process_two_replicas_give_the_same_first_step_loss(two_workers, data_dir,
                                                                 two_replica_strategy,
                                                                 tmp_path):
    """The same global batch through MirroredStrategy on two logical CPUs in this process:
    replica i gets input pipeline i's first batch (what worker i read), the model starts from
    the same seed; the first step's loss (before any update) matches the chief's summary."""
    strategy = two_replica_strategy
    cfg, builders = train.job_from_gin([GIN_FILE], two_workers["params"],
                                       str(tmp_path / "one_process"))
    schedule = config.check(cfg, strategy)
    with job._determinism(cfg):  # pylint: disable=protected-access
        parts = job._build(cfg, strategy, builders, schedule)  # pylint: disable=protected-access
        dataset_fn = job._train_dataset_fn(cfg, builders)  # pylint: disable=protected-access
        batches = []
        for index in range(2):
            batch = dict(next(iter(dataset_fn(tf.distribute.InputContext(2, index, 2)))))
            batches.append({k: v for k, v in batch.items() if k not in books.INPUT_KEYS})
        replica_step = steps.make_pretrain_step(parts.model, parts.optimizer, cfg.temperature,
                                                parts.loss_weight_decay)
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: batches[ctx.replica_id_in_sync_group])

        @tf.function
        def run(batch):
            outputs = strategy.run(replica_step, args=(batch,))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, outputs["loss"], axis=None)

        loss = float(run(values))
    two_worker_loss = _first_step_loss(two_workers["model_dir"])
    print(f"first-step loss: one process {loss!r}, two workers {two_worker_loss!r}")
    # Not bit-equal: the workers' processes run Grappler's rewrites and this one does not
    # (tests/conftest.py), so float32 sums run in other orders (1.2e-6 apart, seen on an
    # Intel Xeon with AMX); a wrong batch or model would be off by far more.
    np.testing.assert_allclose(loss, two_worker_loss, rtol=1e-5)


def test_lost_worker_stops_the_other_and_both_resume(two_workers):
    """Worker 0 fails within the timeout naming worker 1 and the last checkpoint; both
    restarted with the same command resume from that checkpoint."""
    lost, model_dir = two_workers["lost"], two_workers["model_dir"]
    out, step, workers = lost["output"], lost["step"], two_workers["workers"]
    assert lost["returncode"] == 1, out[-3000:]
    assert 2 <= step < STEPS
    lines = [line for line in out.splitlines() if line.startswith("Lost ")]
    assert lines == [f"Lost worker 1 ({workers[1]}): training stopped (UnavailableError); the "
                     f"last checkpoint is step {step} in {model_dir}. Restart all workers with "
                     f"the same command to resume from it."], out[-3000:]
    print(f"worker 0 stopped {lost['waited']:.1f} s after worker 1 was killed")
    resumed = _results(model_dir)
    assert resumed["start_step"] == step and resumed["global_step"] == STEPS
    assert resumed["initialized_from"].endswith(f"ckpt-{step}")
