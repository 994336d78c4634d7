"""Strategies by name and the chief / non-chief write rules of cvrl_tf.distribute."""
import os

import pytest
import tensorflow as tf

from cvrl_tf import distribute


def test_default_strategy_is_the_current_one():
    assert distribute.get_strategy("default") is tf.distribute.get_strategy()


def test_one_device_and_mirrored_strategies():
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    mirrored = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2
    assert distribute.is_chief(mirrored)


@pytest.mark.parametrize("name,match", [("bogus", "Unknown strategy 'bogus'"),
                                         ("tpu", "--tpu=NAME")])
def test_bad_strategy_names_say_the_fix(name, match):
    with pytest.raises(ValueError, match=match):
        distribute.get_strategy(name)


@pytest.mark.parametrize("task_type,task_id,cluster,chief", [
    (None, 0, {}, True),
    ("chief", 0, {"chief": ["a"], "worker": ["b"]}, True),
    ("worker", 0, {"chief": ["a"], "worker": ["b"]}, False),
    ("worker", 0, {"worker": ["a", "b"]}, True),
    ("worker", 1, {"worker": ["a", "b"]}, False),
    ("evaluator", 0, {"worker": ["a"]}, False),
])
def test_chief_rule(task_type, task_id, cluster, chief):
    assert distribute.is_chief_task(task_type, task_id, cluster) is chief


def test_non_chief_writes_to_a_temp_dir_that_is_removed(tmp_path, monkeypatch):
    model_dir = str(tmp_path / "model")
    chief_strategy = tf.distribute.get_strategy()
    assert distribute.write_dir(model_dir, chief_strategy) == model_dir

    monkeypatch.setattr(distribute, "is_chief", lambda strategy: False)
    monkeypatch.setattr(distribute, "task_info", lambda strategy: ("worker", 1))
    path = distribute.write_dir(model_dir, chief_strategy)
    assert path != model_dir and path.startswith(model_dir) and os.path.isdir(path)
    open(os.path.join(path, "ckpt-1.index"), "w").close()
    distribute.remove_write_dir(path, model_dir)
    assert not os.path.exists(path)
    distribute.remove_write_dir(model_dir, model_dir)  # Never removes model_dir itself.
