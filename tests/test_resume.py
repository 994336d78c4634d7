"""A run survives being preempted and killed: a clean save-and-exit on SIGTERM, then exact
resume (same videos, same augmentation, same final weights) after SIGKILL. Real processes of
`python -m cvrl_tf.train` on the demo experiment with the tiny model: one run straight, and
beside it the same command preempted, restarted, killed and restarted again (SIGINT, the other
notice, is checked in tests/test_preemption.py)."""
import os
import re
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.data import synthetic
from tools import runs

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios

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
    return runs.train_command(model_dir, params)


def run(args, log_path):
    proc = runs.start(args, log_path)
    proc.wait(timeout=TIME_LIMIT)
    out = runs.read(log_path)
    assert proc.returncode == 0, out[-3000:]
    return out


def _stop(proc, sig):
    proc.send_signal(sig)
    proc.wait(timeout=60)


def test_preempted_then_killed_run_resumes_exactly(data_dir, tmp_path):
    steps = 20
    straight = str(tmp_path / "straight")
    straight_proc = runs.start(command(data_dir, straight, steps), tmp_path / "straight.log")
    deadline = time.time() + TIME_LIMIT

    # 1. SIGTERM (a spot TPU's preemption notice) after checkpoint 2: the run saves the step it
    # reached and exits 0 with one line naming it.
    model_dir = str(tmp_path / "interrupted")
    args = command(data_dir, model_dir, steps)
    proc = runs.start(args, tmp_path / "preempted.log")
    runs.wait_for_checkpoint_after(proc, model_dir, 0, deadline)
    sent = time.time()
    _stop(proc, signal.SIGTERM)
    out = runs.read(tmp_path / "preempted.log")
    assert proc.returncode == 0, out[-3000:]
    assert time.time() - sent < 60
    first = runs.results(model_dir)
    preempted_at = first["global_step"]
    assert first["preempted"] and 2 <= preempted_at < steps - 2, out[-3000:]
    assert f"Preempted: saved the checkpoint of step {preempted_at}" in out
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{preempted_at}")

    # 2. The same command continues from that step; SIGKILL it after its next checkpoint.
    proc = runs.start(args, tmp_path / "killed.log")
    runs.wait_for_checkpoint_after(proc, model_dir, preempted_at, deadline)
    _stop(proc, signal.SIGKILL)
    out = runs.read(tmp_path / "killed.log")
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
    resumed = runs.results(model_dir)
    assert resumed["initialized_from"].endswith(f"ckpt-{interrupted_at}")
    assert resumed["start_step"] == interrupted_at and resumed["global_step"] == steps
    with open(os.path.join(model_dir, "log.txt")) as f:  # The run's log keeps every line.
        assert "resumes its data stream exactly" in f.read()

    # The same videos, step by step, and the same final weights (run.deterministic=True) as
    # the run that was never interrupted.
    straight_proc.wait(timeout=max(1, deadline - time.time()))
    assert straight_proc.returncode == 0, runs.read(tmp_path / "straight.log")[-3000:]
    want = runs.last_per_step(runs.example_ids(straight))
    got = runs.last_per_step(runs.example_ids(model_dir))
    assert sorted(want) == list(range(steps)) and got == want
    straight_weights = runs.checkpoint_values(straight)
    resumed_weights = runs.checkpoint_values(model_dir)
    assert len(straight_weights) > 20 and straight_weights.keys() == resumed_weights.keys()
    for name, value in straight_weights.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(resumed_weights[name], value, rtol=0, atol=1e-5,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(resumed_weights[name], value, err_msg=name)
