"""Two real worker processes on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy.

They pretrain the tiny R3D for a few steps on the synthetic set. Checked: both finish in
time; their input pipelines are the two disjoint halves of the shards; the contrastive loss
compares each anchor with the clips of BOTH workers; only the chief writes checkpoints and
summaries (the other worker's temporary write dir is gone afterwards).
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from cvrl_tf.data import pipeline
from cvrl_tf.data import synthetic

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_LIMIT = 300  # Seconds for both workers (TF start-up dominates; generous on 2 shared cores).
BATCH = 8         # Global batch of videos: 4 per worker.


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ids(dataset, limit=64):
    return {i.decode() for b in dataset.take(limit) for i in b["id"].numpy()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=16, num_eval=8, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


def test_two_workers_pretrain_together(data_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = [sys.executable, "-m", "cvrl_tf.train", "--strategy=multi_worker",
            "--gin_file=experiments/demo_pretrain.gin", f"--model_dir={model_dir}",
            f"--gin_param=TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}",
            f"--gin_param=EVAL_DATA={os.path.join(data_dir, 'eval-*')!r}",
            "--gin_param=run.train_length=4", "--gin_param=run.steps_per_loop=2",
            f"--gin_param=run.global_batch_size={BATCH}", "--gin_param=run.eval_batch_size=4",
            "--gin_param=run.min_video_frames=16", "--gin_param=run.checkpoint_every=2"]
    procs, logs = [], []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    start = time.time()
    try:
        for proc in procs:
            proc.wait(timeout=max(1, TIME_LIMIT - (time.time() - start)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for index, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {index} failed:\n{out[-3000:]}"

    # Each worker read its own input pipeline of two: shards 0, 2 and shards 1, 3 (disjoint).
    for index, out in enumerate(outputs):
        assert f"Input pipeline {index} of 2 (2 replicas in sync)" in out
    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]
    pattern = os.path.join(data_dir, "train-*")
    seen = [_ids(pipeline.build_dataset(pattern, "pretrain", BATCH, 4, 2, 32, ctx, repeat=False,
                                        seed=0)) for ctx in contexts]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 16

    # The loss compares each anchor with all 2 x global batch clips, across both workers.
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    assert results["num_replicas"] == 2 and results["global_step"] == 4
    assert results["train"]["num_candidates"] == 2 * BATCH
    assert results["eval"]["num_examples"] == 8

    # Only the chief (worker 0) wrote checkpoints and summaries; worker 1's temp dir is gone.
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    assert not glob.glob(os.path.join(model_dir, "workertemp_*"))
    events = glob.glob(os.path.join(model_dir, "**", "events.out.tfevents.*"), recursive=True)
    pids = {re.match(r"events\.out\.tfevents\.\d+\..+\.(\d+)\.\d+\.v2$",
                     os.path.basename(e)).group(1) for e in events}
    assert events and pids == {str(procs[0].pid)}
