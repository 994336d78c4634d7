"""cvrl_tf.training.checkpoints: incomplete or corrupt checkpoints, the resume order, the NaN guard."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.training.config import ConfigError


def _run_dir(tmp_path, steps=(2, 4, 6)):
    """A model_dir with checkpoints at `steps`; weights = step, so a restore says which."""
    weights = tf.Variable(np.zeros(1000, np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=weights, step=step)
    saver = checkpoints.Saver(ckpt, str(tmp_path), step, every=2, max_to_keep=5)
    for s in steps:
        step.assign(s)
        weights.assign(np.full(1000, s, np.float32))
        saver.maybe_save()
    return str(tmp_path)


def _fresh():
    weights = tf.Variable(np.zeros(1000, np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    backbone = tf.Module()
    backbone.w = tf.Variable(0.0)
    return tf.train.Checkpoint(model=weights, step=step), weights, step, backbone


def _data_file(prefix):
    return [f for f in tf.io.gfile.glob(prefix + ".data-*")][0]


@pytest.mark.parametrize("damage", ["truncate", "delete_data", "delete_index", "garble_index"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, capsys):
    model_dir = _run_dir(tmp_path)
    newest = os.path.join(model_dir, "ckpt-6")
    if damage == "truncate":
        path = _data_file(newest)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif damage == "delete_data":
        os.remove(_data_file(newest))
    elif damage == "delete_index":
        os.remove(newest + ".index")
    else:
        with open(newest + ".index", "r+b") as f:
            f.write(b"\0" * 64)
    ckpt, weights, step, backbone = _fresh()
    origin = checkpoints.resume(ckpt, backbone, model_dir, warm_start="")
    assert origin == f"checkpoint:{os.path.join(model_dir, 'ckpt-4')}"
    assert int(step.numpy()) == 4 and np.all(weights.numpy() == 4)
    out = capsys.readouterr().out
    if damage != "delete_index":  # A missing index is simply not a checkpoint any more.
        assert f"Skipping checkpoint {newest} is incomplete or corrupt" in out


def test_no_intact_checkpoint_stops_unless_starting_over(tmp_path):
    model_dir = _run_dir(tmp_path, steps=(2,))
    path = _data_file(os.path.join(model_dir, "ckpt-2"))
    with open(path, "wb") as f:
        f.write(b"x")
    ckpt, weights, step, backbone = _fresh()
    with pytest.raises(ConfigError, match="No checkpoint in .* can be restored .*1 found.*"
                                          "run.start_over=True"):
        checkpoints.resume(ckpt, backbone, model_dir, warm_start="")
    assert checkpoints.resume(ckpt, backbone, model_dir, "", start_over=True) == "scratch"
    assert int(step.numpy()) == 0 and np.all(weights.numpy() == 0)


def test_an_unreadable_state_file_still_finds_the_checkpoints(tmp_path, capsys):
    model_dir = _run_dir(tmp_path)
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:
        f.write("model_checkpoint_path: {{{ not a proto")
    assert checkpoints.latest_good(model_dir)[0] == os.path.join(model_dir, "ckpt-6")
    assert "state file" in capsys.readouterr().out


def test_resolve_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="holds no readable checkpoint"):
        checkpoints.resolve(str(tmp_path), "run.warm_start")
    with pytest.raises(ConfigError, match="neither a directory nor a checkpoint prefix"):
        checkpoints.resolve(str(tmp_path / "ckpt-3"))
    model_dir = _run_dir(tmp_path / "run")
    assert checkpoints.resolve(model_dir) == (os.path.join(model_dir, "ckpt-6"), model_dir)


def test_the_saver_refuses_non_finite_weights(tmp_path):
    weights = tf.Variable(np.ones(4, np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    saver = checkpoints.Saver(tf.train.Checkpoint(w=weights, step=step), str(tmp_path), step,
                              every=1, max_to_keep=2, guarded=[weights])
    step.assign(1)
    assert saver.maybe_save().endswith("ckpt-1")
    weights.assign([1.0, np.nan, 1.0, 1.0])
    step.assign(2)
    with pytest.raises(FloatingPointError, match="at step 2: a weight is NaN or infinite"):
        saver.maybe_save()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")


def test_the_saver_keeps_its_interval_and_skips_a_step_it_has(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    saver = checkpoints.Saver(tf.train.Checkpoint(step=step), str(tmp_path), step, every=4,
                              max_to_keep=10)
    saved = []
    for s in range(1, 11):
        step.assign(s)
        saved.append(saver.maybe_save())
    assert [s for s, path in zip(range(1, 11), saved) if path] == [4, 8]
    assert saver.maybe_save(force=True).endswith("ckpt-10")  # Forced: saved off-interval.
    assert saver.maybe_save(force=True) is None  # Already saved at this step.
