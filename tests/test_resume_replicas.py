"""Exact resume with two replicas, in one process, on a labelled subset: a pretraining run
stopped mid-epoch and resumed from its checkpoint reads, replica by replica and step by step,
the videos of the run that was never stopped, and only the subset's. (The stopped run is the
uninterrupted run's model_dir as a kill right after its mid-epoch checkpoint leaves it: the
same files, one run fewer.) The checkpoint must hold every replica's stream position (each
replica reads its own batches from the one input pipeline; the newest of them is where it
resumes), and the resumed run must read through the subset it started with
(run.train_subset).

(The same with two worker processes killed and restarted: tests/test_multiworker.py; the
stream of a subset resumed, without a model: tests/test_source.py.)
"""
import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import train
from cvrl_tf.data import pipeline
from cvrl_tf.data import synthetic
from tests.test_train import SMALL_MODEL

pytestmark = pytest.mark.slow

VIDEOS = 14
LEFT_OUT = (3, 8)  # Not in the subset: one epoch is its 12 videos, 3 steps of 4 (2 per replica).
STOP, TOTAL = 2, 4  # Stopped inside the first epoch; the resumed run crosses into the second.


def _params(data_dir, steps):
    return [f"TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}", "EVAL_DATA=''",
            f"run.train_subset={os.path.join(data_dir, 'subset.txt')!r}",
            f"run.train_length={steps}", "run.steps_per_loop=1", f"run.checkpoint_every={STOP}",
            "run.global_batch_size=4", "run.min_video_frames=16", "run.seed=1",
            "run.image_summaries=False", "run.record_example_ids=True",
            "build_dataset.shuffle_buffer=4", "NUM_CLASSES=0",
            *[f"{k}={v}" for k, v in SMALL_MODEL.items()]]


def _pretrain(data_dir, model_dir, steps, strategy):
    return train.run_with_gin(["experiments/demo_pretrain.gin"], _params(data_dir, steps),
                              strategy=strategy, model_dir=model_dir)


def as_killed_after(model_dir, copy, step):
    """A copy of a finished run's model_dir as a run killed right after its checkpoint of
    `step` leaves it: the later checkpoints, the results and the later ids gone."""
    shutil.copytree(model_dir, copy)
    for path in glob.glob(os.path.join(copy, "ckpt-*")):
        if int(os.path.basename(path).split(".")[0].split("-")[1]) > step:
            os.remove(path)
    tf.compat.v1.train.update_checkpoint_state(copy, os.path.join(copy, f"ckpt-{step}"))
    os.remove(os.path.join(copy, "results.json"))
    for path in glob.glob(os.path.join(copy, "example_ids", "*.txt")):
        with open(path) as f:
            lines = [line for line in f if int(line.split(" ", 1)[0]) < step]
        with open(path, "w") as f:
            f.writelines(lines)


def ids_by_step_and_replica(model_dir, replicas=2):
    """{step: [ids of replica 0, ids of replica 1, ...]} from model_dir/example_ids/ (each line
    is a step and the id hashes of this process's replicas in order; a later line for a step
    wins)."""
    steps = {}
    for path in glob.glob(os.path.join(model_dir, "example_ids", "*.txt")):
        with open(path) as f:
            for line in f:
                step, ids = line.split(" ", 1)
                values = [int(v) for v in ids.strip().strip("[]").split()]
                parts = np.split(np.array(values), replicas)
                steps[int(step)] = [part.tolist() for part in parts]
    return steps


def test_two_replicas_stopped_mid_epoch_resume_every_replicas_stream(tmp_path,
                                                                     two_replica_strategy):
    data_dir = str(tmp_path / "data")
    synthetic.write_dataset(data_dir, num_train=VIDEOS, num_eval=2, num_frames=16, size=32,
                            num_shards=3, seed=0)
    kept = [f"synthetic-train-{i:05d}" for i in range(VIDEOS) if i not in LEFT_OUT]
    with open(os.path.join(data_dir, "subset.txt"), "w") as f:
        f.write("\n".join(kept) + "\n")
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    done = _pretrain(data_dir, straight, TOTAL, two_replica_strategy)
    assert done["num_replicas"] == 2 and done["train_subset"]["num_videos"] == len(kept)
    assert done["input"]["read"] == TOTAL * 4  # Epochs of the subset: no record read and dropped.
    as_killed_after(straight, stopped, STOP)
    resumed = _pretrain(data_dir, stopped, TOTAL, two_replica_strategy)
    assert resumed["initialized_from"] == f"checkpoint:{os.path.join(stopped, f'ckpt-{STOP}')}"
    assert resumed["start_step"] == STOP and resumed["global_step"] == TOTAL

    want, got = ids_by_step_and_replica(straight), ids_by_step_and_replica(stopped)
    assert sorted(want) == list(range(TOTAL))
    for step in range(TOTAL):
        assert len(want[step]) == 2 and len(want[step][0]) == 2, step  # 2 videos per replica.
        assert got[step] == want[step], f"step {step}: replicas read {got[step]}, not {want[step]}"
    # The replicas read different videos, and the stop was inside an epoch (not a boundary).
    assert all(set(want[s][0]).isdisjoint(want[s][1]) for s in range(TOTAL))
    first_epoch = [i for s in range(3) for replica in want[s] for i in replica]
    assert sorted(first_epoch) == sorted(pipeline.id_hash(tf.constant(kept)).numpy().tolist())
    assert STOP * 4 % len(kept)
