"""Two real worker processes on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy.

One two-worker run (module fixture) pretrains the tiny R3D for four epochs of the synthetic set
(three steps each, a checkpoint every two) and is stopped three times on the way, each time
restarted with the same command: worker 1 is SIGKILLed (worker 0 stops in bounded time naming
it), then both workers are SIGKILLed just after a checkpoint that falls mid-epoch, then worker 0,
the chief, is SIGKILLed (worker 1 stops naming it); the fourth round finishes. Beside it, the
same command runs uninterrupted. Checked on them: the failure messages and each resume; every
worker's recorded videos, step by step, equal the uninterrupted run's, the replayed steps of a
mid-epoch resume included; each worker's videos are its own half of the shards, the halves
disjoint and covering every video once per epoch; the contrastive loss compares each anchor
with the clips of BOTH workers (num_candidates as info_nce gathered it); both workers end with
the same weights; one process with two replicas on the same batches gets the same first-step
loss; only the chief writes checkpoints and summaries. (One interrupted run serves all: each
round of two processes costs about 15 s of TensorFlow start-up per process.) About 2.5
minutes on 2 cores lightly loaded, 7 under heavy load (docs/BENCHMARKS.md); each round stops
at TIME_LIMIT.
"""
import glob
import json
import os
import re
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import job
from cvrl_tf import steps
from cvrl_tf import train
from cvrl_tf.training import books
from cvrl_tf.data import pipeline
from cvrl_tf.data import synthetic
from tools import runs

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios

TIME_LIMIT = 300  # Seconds per round of two workers (TF start-up dominates; 2 shared cores).
BATCH = 8         # Global batch of videos: 4 per worker.
VIDEOS = 24       # Training videos: one epoch is 3 global steps.
STEPS_PER_EPOCH = VIDEOS // BATCH
STEPS = 12        # Four epochs; checkpoints at 2, 4, 8 and 10 fall mid-epoch.
WORKER_TIMEOUT = 10  # --worker_timeout of the fault test (seconds).
GIN_FILE = runs.DEMO_GIN


def _params(data_dir):
    """The one command's bindings (the interrupted run's and the uninterrupted one's)."""
    return [f"TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}",
            f"EVAL_DATA={os.path.join(data_dir, 'eval-*')!r}", "run.eval_batch_size=4",
            f"run.train_length={STEPS}", "run.steps_per_loop=1", "run.checkpoint_every=2",
            f"run.global_batch_size={BATCH}", "run.min_video_frames=16", "run.seed=1",
            "run.deterministic=True", "run.image_summaries=False", "run.record_example_ids=True"]


def _start(params, model_dir, workers, log_dir, name, flags=()):
    """Starts one process per worker; returns (procs, log paths)."""
    # --verbose: each worker's Python log lines (its input pipeline, its final weights' digest)
    # on its console, as the non-chief worker's log file goes with its temporary directory.
    args = runs.train_command(model_dir, params, GIN_FILE,
                              ["--strategy=multi_worker", "--verbose", *flags])
    paths = [os.path.join(log_dir, f"{name}-worker{i}.log") for i in range(len(workers))]
    procs = [runs.start(args, path, TF_CONFIG=json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
             for index, path in enumerate(paths)]
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


def _results(model_dir):
    return runs.results(model_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=VIDEOS, num_eval=8, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


def _latest_good_step(model_dir):
    """The step of the newest intact checkpoint: where a restart resumes."""
    return runs.checkpoint_step(checkpoints.latest_good(model_dir)[0])


def _checkpoint_named(model_dir, after, mid_epoch=False):
    """A condition: the checkpoint state names a step above `after` (mid-epoch if asked)."""
    def named():
        latest = tf.train.latest_checkpoint(model_dir)
        step = int(latest.rsplit("-", 1)[1]) if latest else -1
        return step > after and not (mid_epoch and step % STEPS_PER_EPOCH == 0)
    return named


def _until(condition, procs, paths, deadline):
    """Waits until condition() while every worker runs."""
    while not condition():
        for proc, path in zip(procs, paths):
            assert proc.poll() is None, runs.read(path)[-3000:]
        assert time.time() < deadline, "the workers made no progress in time"
        time.sleep(0.02)


def _id_counts(model_dir):
    """How many step records each worker's ids file holds."""
    return [len(runs.example_ids(model_dir, f"worker-{w}")) for w in range(2)]


def _origin(output):
    """The step a round started from, as its 'Initialized from' line says (scratch: 0)."""
    match = re.search(r"^Initialized from (?:scratch|checkpoint:.*ckpt-(\d+))$", output, re.M)
    return int(match.group(1) or 0)


class _Rounds:
    """The rounds of the interrupted two-worker run: the same command each time."""

    def __init__(self, params, model_dir, log_dir):
        self.params, self.model_dir, self.log_dir = params, model_dir, log_dir
        self.workers = [f"127.0.0.1:{p}" for p in runs.free_ports(2)]
        self.flags = [f"--worker_timeout={WORKER_TIMEOUT}"]
        self.chiefs = []  # Worker 0's pid in every round.
        self.rounds = []  # Per round: outputs, the round's origin step, ids counts after it.

    def start(self, name):
        procs, paths = _start(self.params, self.model_dir, self.workers, self.log_dir, name,
                              self.flags)
        self.chiefs.append(procs[0].pid)
        return procs, paths, time.time() + TIME_LIMIT

    def ended(self, paths):
        outputs = [runs.read(p) for p in paths]
        self.rounds.append({"outputs": outputs, "origin": _origin(outputs[0]),
                            "counts": _id_counts(self.model_dir)})
        return outputs

    def lose(self, name, victim, after):
        """SIGKILLs worker `victim` once a checkpoint above `after` is saved; the other must
        stop by itself: its status, output, seconds it took, and the step a restart resumes
        from."""
        procs, paths, deadline = self.start(name)
        try:
            _until(_checkpoint_named(self.model_dir, after), procs, paths, deadline)
            procs[victim].send_signal(signal.SIGKILL)
            killed = time.time()
            survivor = procs[1 - victim]
            survivor.wait(timeout=6 * WORKER_TIMEOUT)
            waited = time.time() - killed
        finally:
            _wait(procs, time.time())
        outputs = self.ended(paths)
        return {"returncode": survivor.returncode, "output": outputs[1 - victim],
                "waited": waited, "step": _latest_good_step(self.model_dir)}

    def kill_both_mid_epoch(self, name, after):
        """SIGKILLs both workers right after a mid-epoch checkpoint above `after`."""
        procs, paths, deadline = self.start(name)
        try:
            _until(_checkpoint_named(self.model_dir, after, mid_epoch=True), procs, paths,
                   deadline)
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
        finally:
            _wait(procs, time.time())
        self.ended(paths)
        return _latest_good_step(self.model_dir)

    def finish(self, name):
        procs, paths, deadline = self.start(name)
        _wait(procs, deadline)
        outputs = self.ended(paths)
        for index, (proc, out) in enumerate(zip(procs, outputs)):
            assert proc.returncode == 0, f"worker {index} failed:\n{out[-3000:]}"
        return procs, outputs


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The same two-worker command run straight through: its model_dir."""
    log_dir = str(tmp_path_factory.mktemp("reference"))
    model_dir = os.path.join(log_dir, "model")
    _Rounds(_params(data_dir), model_dir, log_dir).finish("straight")
    return model_dir


@pytest.fixture(scope="module")
def two_workers(data_dir, tmp_path_factory):
    """The interrupted two-worker run: {'model_dir', 'outputs' and 'pids' (of the last round),
    'chiefs' (worker 0's pid in every round), 'params', 'workers', 'rounds' (each round's
    outputs, origin step and ids counts), 'lost' and 'chief_lost' (the survivor's status,
    output, seconds to stop, and the step a restart resumes from), 'killed_at' (the step both
    workers resume from after being killed mid-epoch)}."""
    log_dir = str(tmp_path_factory.mktemp("logs"))
    model_dir = os.path.join(log_dir, "model")
    params = _params(data_dir)
    rounds = _Rounds(params, model_dir, log_dir)
    lost = rounds.lose("lost", victim=1, after=0)
    killed_at = rounds.kill_both_mid_epoch("killed", after=lost["step"])
    chief_lost = rounds.lose("chief_lost", victim=0, after=killed_at)
    procs, outputs = rounds.finish("run")
    return {"model_dir": model_dir, "outputs": outputs, "pids": [p.pid for p in procs],
            "chiefs": rounds.chiefs, "params": params, "workers": rounds.workers,
            "rounds": rounds.rounds, "lost": lost, "chief_lost": chief_lost,
            "killed_at": killed_at}


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
    assert events and pids == {str(pid) for pid in two_workers["chiefs"]}


def test_each_epoch_the_workers_read_disjoint_halves_covering_the_set(two_workers, data_dir):
    everything = pipeline.build_dataset(os.path.join(data_dir, "train-*"), "pretrain", 4, 4, 2,
                                        32, repeat=False, seed=0)
    ids = [i for b in everything for i in b["id"].numpy()]
    hashes = set(pipeline.id_hash(tf.constant(ids)).numpy().tolist())
    assert len(hashes) == VIDEOS

    recorded = [runs.last_per_step(runs.example_ids(two_workers["model_dir"], f"worker-{w}"))
                for w in range(2)]
    for worker in recorded:
        assert sorted(worker) == list(range(STEPS))
        assert all(len(ids) == BATCH // 2 for ids in worker.values())  # Its half of the batch.
    for epoch in range(STEPS // STEPS_PER_EPOCH):
        epoch_steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
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


def _assert_stopped_naming(lost, index, model_dir, workers, resumed_from):
    """The survivor of a lost worker `index`: status 1 within the documented time, one line
    naming that worker and the newest intact checkpoint, which the restart resumed from."""
    out, step = lost["output"], lost["step"]
    assert lost["returncode"] == 1, out[-3000:]
    # --worker_timeout bounds when a silent worker counts as lost (WORKSPACE.md, "Several GPU
    # hosts"); twice that leaves room for a loaded machine's start of the exit.
    assert lost["waited"] < 2 * WORKER_TIMEOUT, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("Lost ")]
    assert lines == [f"Lost worker {index} ({workers[index]}): training stopped "
                     f"(UnavailableError); the last checkpoint is step {step} in {model_dir}. "
                     f"Restart all workers with the same command to resume from it."], \
        out[-3000:]
    assert resumed_from == step


def test_lost_worker_stops_the_other_and_both_resume(two_workers):
    """Worker 0 fails within the timeout naming worker 1 and the last checkpoint; both
    restarted with the same command resume from that checkpoint."""
    lost = two_workers["lost"]
    _assert_stopped_naming(lost, 1, two_workers["model_dir"], two_workers["workers"],
                           two_workers["rounds"][1]["origin"])
    assert 2 <= lost["step"] < STEPS
    print(f"worker 0 stopped {lost['waited']:.1f} s after worker 1 was killed")


def test_lost_chief_stops_worker_1_naming_it_and_both_resume(two_workers):
    """Worker 0, the chief (it writes the checkpoints), SIGKILLed mid-run: worker 1 stops within
    the timeout naming worker 0 and the newest checkpoint the chief completed; both restarted
    resume from it and finish."""
    lost, model_dir = two_workers["chief_lost"], two_workers["model_dir"]
    _assert_stopped_naming(lost, 0, model_dir, two_workers["workers"],
                           two_workers["rounds"][3]["origin"])
    assert two_workers["killed_at"] < lost["step"] < STEPS
    results = _results(model_dir)
    assert results["start_step"] == lost["step"] and results["global_step"] == STEPS
    assert results["initialized_from"].endswith(f"ckpt-{lost['step']}")
    print(f"worker 1 stopped {lost['waited']:.1f} s after worker 0 was killed")


def test_workers_killed_mid_epoch_resume_their_streams_exactly(two_workers, reference):
    """Both workers SIGKILLed just after a mid-epoch checkpoint, then restarted: from that
    checkpoint on, each worker reads the uninterrupted run's videos step by step, in order
    (and so, over every restart of the run, all recorded steps, the replayed ones included)."""
    resumed_from, rounds = two_workers["killed_at"], two_workers["rounds"]
    assert resumed_from % STEPS_PER_EPOCH and rounds[2]["origin"] == resumed_from
    for worker in range(2):
        task = f"worker-{worker}"
        want = runs.example_ids(reference, task)
        assert [step for step, _ in want] == list(range(STEPS))
        got = runs.example_ids(two_workers["model_dir"], task)
        resumed = got[rounds[1]["counts"][worker]:rounds[2]["counts"][worker]]
        assert resumed and resumed == want[resumed_from:resumed_from + len(resumed)], task
        assert all(ids == want[step][1] for step, ids in got), task
        assert runs.last_per_step(got) == dict(want), task


def test_interrupted_run_ends_with_the_uninterrupted_runs_weights(two_workers, reference):
    """Three interruptions (a lost worker, both killed mid-epoch, a lost chief) and four
    restarts change nothing: run.seed and run.deterministic=True make the final weights,
    BatchNorm statistics and optimizer state of every worker the uninterrupted run's."""
    digests = _final_digests(two_workers["outputs"])
    want = _results(reference)["weights_sha256"]
    assert [found[-1][2] for found in digests] == [want, want]
