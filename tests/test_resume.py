"""A run survives being preempted and killed: a clean save-and-exit on SIGTERM, then exact
resume (same videos, same augmentation, same final weights) after SIGKILL. Real processes of
`python -m cvrl_tf.train` on the demo experiment with the tiny model: one run straight, and
beside it the same command preempted, restarted, killed and restarted again (SIGINT, the other
notice, is checked in tests/test_preemption.py)."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.data import synthetic

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT = 300


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=24, num_eval=8, num_frames=16, size=32,
                            num_shards=3, seed=0)
    return path


def command(data_dir, model_dir, steps, *extra):
    """The issue's exact-resume command, with tiny settings."""
    params = [f"TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}", "EVAL_DATA=''",
              f"run.train_length={steps}", "run.steps_per_loop=1", "run.checkpoint_every=2",
              "run.global_batch_size=4", "run.min_video_frames=16", "run.image_summaries=False",
              "run.record_example_ids=True", "build_dataset.shuffle_buffer=16",
              "run.seed=1", "run.deterministic=True", *extra]
    return ([sys.executable, "-m", "cvrl_tf.train", "--gin_file=experiments/demo_pretrain.gin",
             f"--model_dir={model_dir}"] + [f"--gin_param={p}" for p in params])


def start(args, log_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    log = open(log_path, "w")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def run(args, log_path):
    proc, log = start(args, log_path)
    try:
        proc.wait(timeout=TIME_LIMIT)
    finally:
        log.close()
    with open(log_path) as f:
        out = f.read()
    assert proc.returncode == 0, out[-3000:]
    return out


def ids_by_step(model_dir):
    """{step: [video id hashes]} from the ids file (a later line for a step wins: the steps a
    killed run did again after resuming)."""
    steps = {}
    for path in glob.glob(os.path.join(model_dir, "example_ids", "*.txt")):
        with open(path) as f:
            for line in f:
                step, ids = line.split(" ", 1)
                steps[int(step)] = ids.strip()
    return steps


def weights(model_dir):
    """Every value of the newest checkpoint (weights, BN statistics, optimizer slots, step)
    but the save counter (the runs saved different numbers of checkpoints)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


def _wait_for_checkpoint_after(proc, model_dir, step, deadline):
    """Waits until a checkpoint numbered above `step` is in model_dir."""
    while True:
        done = [int(p.rsplit("-", 1)[1].split(".")[0])
                for p in glob.glob(os.path.join(model_dir, "ckpt-*.index"))]
        if any(n > step for n in done):
            return
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _stop(proc, log, sig):
    try:
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        log.close()


def test_preempted_then_killed_run_resumes_exactly(data_dir, tmp_path):
    steps = 20
    straight = str(tmp_path / "straight")
    straight_proc, straight_log = start(command(data_dir, straight, steps),
                                        tmp_path / "straight.log")
    deadline = time.time() + TIME_LIMIT

    # 1. SIGTERM (a spot TPU's preemption notice) after checkpoint 2: the run saves the step it
    # reached and exits 0 with one line naming it.
    model_dir = str(tmp_path / "interrupted")
    args = command(data_dir, model_dir, steps)
    proc, log = start(args, tmp_path / "preempted.log")
    _wait_for_checkpoint_after(proc, model_dir, 0, deadline)
    sent = time.time()
    _stop(proc, log, signal.SIGTERM)
    with open(tmp_path / "preempted.log") as f:
        out = f.read()
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - sent < 60
    first = results(model_dir)
    preempted_at = first["global_step"]
    assert first["preempted"] and 2 <= preempted_at < steps - 2, out[-3000:]
    assert f"Preempted: saved the checkpoint of step {preempted_at}" in out
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{preempted_at}")

    # 2. The same command continues from that step; SIGKILL it after its next checkpoint.
    proc, log = start(args, tmp_path / "killed.log")
    _wait_for_checkpoint_after(proc, model_dir, preempted_at, deadline)
    _stop(proc, log, signal.SIGKILL)
    with open(tmp_path / "killed.log") as f:
        out = f.read()
    assert proc.returncode == -signal.SIGKILL
    assert f"Initialized from checkpoint:{os.path.join(model_dir, f'ckpt-{preempted_at}')}" in out
    first_loop = int(re.search(rf"^step (\d+)/{steps} \|", out, re.M).group(1))
    assert first_loop == preempted_at + 1, out[-3000:]  # One step per loop, from the checkpoint.
    # The newest intact checkpoint, what the next run starts from (the kill may come between
    # a checkpoint's files and the state file naming it).
    interrupted_at = int(checkpoints.latest_good(model_dir)[0].rsplit("-", 1)[1])
    assert preempted_at < interrupted_at < steps

    # 3. Again the same command: it trains only the remaining steps.
    out = run(args, tmp_path / "resumed.log")
    resumed = results(model_dir)
    assert resumed["initialized_from"].endswith(f"ckpt-{interrupted_at}")
    assert resumed["start_step"] == interrupted_at and resumed["global_step"] == steps
    with open(os.path.join(model_dir, "log.txt")) as f:  # The run's log keeps every line.
        assert "resumes its data stream exactly" in f.read()

    # The same videos, step by step, and the same final weights (run.deterministic=True) as
    # the run that was never interrupted.
    try:
        straight_proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        straight_log.close()
    assert straight_proc.returncode == 0, open(tmp_path / "straight.log").read()[-3000:]
    want, got = ids_by_step(straight), ids_by_step(model_dir)
    assert sorted(want) == list(range(steps)) and got == want
    straight_weights, resumed_weights = weights(straight), weights(model_dir)
    assert len(straight_weights) > 20 and straight_weights.keys() == resumed_weights.keys()
    for name, value in straight_weights.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(resumed_weights[name], value, rtol=0, atol=1e-5,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(resumed_weights[name], value, err_msg=name)
