"""A run survives being killed or preempted: exact resume (same videos, same augmentation,
same final weights) after SIGKILL, and a clean save-and-exit on SIGTERM. Real processes of
`python -m cvrl_tf.train` on the demo experiment with the tiny model."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import checkpoints
from cvrl_tf.data import synthetic

pytestmark = pytest.mark.slow

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


def test_killed_run_resumes_exactly(data_dir, tmp_path):
    steps = 16
    straight = str(tmp_path / "straight")
    run(command(data_dir, straight, steps), tmp_path / "straight.log")

    killed = str(tmp_path / "killed")
    proc, log = start(command(data_dir, killed, steps), tmp_path / "killed.log")
    deadline = time.time() + TIME_LIMIT
    try:
        while not glob.glob(os.path.join(killed, "ckpt-2.index")) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        log.close()
    # The newest intact checkpoint, what the resumed run starts from (the kill may come between
    # a checkpoint's files and the state file naming it).
    interrupted_at = int(checkpoints.latest_good(killed)[0].rsplit("-", 1)[1])
    assert proc.returncode == -signal.SIGKILL and 2 <= interrupted_at < steps

    out = run(command(data_dir, killed, steps), tmp_path / "resumed.log")
    resumed = results(killed)
    assert resumed["initialized_from"].endswith(f"ckpt-{interrupted_at}")
    assert resumed["start_step"] == interrupted_at and resumed["global_step"] == steps
    assert "resumes its data stream exactly" in out or interrupted_at == 0

    # The same videos, step by step, and the same final weights (run.deterministic=True).
    want, got = ids_by_step(straight), ids_by_step(killed)
    assert sorted(want) == list(range(steps)) and got == want
    straight_weights, killed_weights = weights(straight), weights(killed)
    assert len(straight_weights) > 20 and straight_weights.keys() == killed_weights.keys()
    for name, value in straight_weights.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(killed_weights[name], value, rtol=0, atol=1e-5,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(killed_weights[name], value, err_msg=name)


def test_sigterm_saves_the_step_and_exits_0_then_resumes_there(data_dir, tmp_path):
    model_dir = str(tmp_path / "preempted")
    args = command(data_dir, model_dir, 100000)
    proc, log = start(args, tmp_path / "first.log")
    deadline = time.time() + TIME_LIMIT
    try:
        while not glob.glob(os.path.join(model_dir, "ckpt-2.index")) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        log.close()
    with open(tmp_path / "first.log") as f:
        out = f.read()
    assert proc.returncode == 0, out[-3000:]
    first = results(model_dir)
    step = first["global_step"]
    assert first["preempted"] and step < 100000
    assert f"Preempted: saved the checkpoint of step {step}" in out
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{step}")
    assert time.time() - sent < 60

    proc, log = start(args, tmp_path / "second.log")  # The same command continues from there.
    try:
        while "step " + str(step + 2) not in open(tmp_path / "second.log").read():
            assert proc.poll() is None and time.time() < deadline, "the second run stopped"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        log.close()
    second = results(model_dir)
    assert proc.returncode == 0 and second["preempted"]
    assert second["start_step"] == step and second["initialized_from"].endswith(f"ckpt-{step}")
    assert second["global_step"] > step
