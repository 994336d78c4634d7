"""Strategies by name and the chief / non-chief write rules of cvrl_tf.training.distribute."""
import os

import pytest
import tensorflow as tf

from cvrl_tf.training import distribute


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


CLUSTER = {"cluster": {"worker": ["host0:2222", "host1:2222", "host2:2222"]},
           "task": {"type": "worker", "index": 0}}


def test_lost_worker_is_named_from_the_error_and_tf_config():
    error = tf.errors.UnavailableError(None, None, (
        "Collective ops is aborted by: Error reported from /job:worker/task:2: The following "
        "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:2"))
    assert distribute.lost_worker(error, CLUSTER) == "worker 2 (host2:2222)"
    # An error naming only this worker (or none): every other worker may be the lost one.
    mine = tf.errors.UnavailableError(None, None, "aborted on /job:worker/replica:0/task:0")
    assert distribute.lost_worker(mine, CLUSTER) == (
        "a peer worker (one of: worker 1 (host1:2222), worker 2 (host2:2222))")


def test_a_chief_that_stops_answering_is_named_from_the_unanswered_heartbeat():
    """Worker 0 frozen (SIGSTOP: its sockets stay open, as when its host is gone): worker 1's
    heartbeat to the coordination service, which worker 0 leads, times out, and the error (this
    text, TF 2.20) names no task; the lost worker is the service's leader."""
    error = tf.errors.DeadlineExceededError(None, None, (
        "Collective ops is aborted by: Deadline Exceeded\n\nRPC: "
        "/tensorflow.CoordinationService/Heartbeat\nThe error could be from a previous "
        "operation. Restart your program to reset."))
    worker_1 = dict(CLUSTER, task={"type": "worker", "index": 1})
    assert distribute.lost_worker(error, worker_1) == "worker 0 (host0:2222)"
    with_chief = {"cluster": {"chief": ["boss:2222"], "worker": ["host0:2222"]},
                  "task": {"type": "worker", "index": 0}}
    assert distribute.lost_worker(error, with_chief) == "chief 0 (boss:2222)"


@pytest.mark.parametrize("timeouts", [(0, 10), (10, -1)])
def test_multi_worker_timeouts_must_be_positive(timeouts):
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        distribute.get_strategy("multi_worker", worker_timeout=timeouts[0],
                                collective_timeout=timeouts[1])
