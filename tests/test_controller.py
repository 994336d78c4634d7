"""controller.py on its own: loops cut at checkpoint and evaluation boundaries, so checkpoints
fall at exact multiples of checkpoint_every whatever steps_per_loop is; evaluations at their
interval and at the end; summaries; the stop on a notice."""
import glob
import os

import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import controller as controller_lib
from cvrl_tf.training import reporting
from cvrl_tf.training import trainer as trainer_lib


@pytest.mark.parametrize("step, total, per_loop, intervals, expected", [
    (0, 100, 10, (25, 0), 10), (20, 100, 10, (25, 0), 5), (25, 100, 10, (25, 0), 10),
    (95, 100, 10, (0, 0), 5), (0, 100, 10, (0, 4), 4), (7, 100, 10, (3, 5), 2),
    (100, 100, 10, (25, 0), 0)])
def test_loop_length_stops_at_every_boundary(step, total, per_loop, intervals, expected):
    assert controller_lib.loop_length(step, total, per_loop, *intervals) == expected


def _controller(tmp_path, total, per_loop, checkpoint_every, eval_every, stop_flag=None):
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    weight = tf.Variable(1.0)

    def dataset_fn(ctx=None):
        return tf.data.Dataset.range(10**6).map(lambda i: {"x": tf.cast(i, tf.float32)}).batch(1)

    trainer = trainer_lib.Trainer(
        strategy=tf.distribute.get_strategy(), dataset_fn=dataset_fn,
        replica_step=lambda batch: {"loss": tf.reduce_mean(batch["x"]) * weight},
        global_step=step, clips_per_step=1, metric_names=("loss",), stop_flag=stop_flag)
    saver = checkpoints.Saver(tf.train.Checkpoint(step=step, weight=weight), str(tmp_path),
                              step, checkpoint_every, max_to_keep=100)
    evaluations = []

    def evaluate():
        evaluations.append(int(step.numpy()))
        return {"top1": 0.5}

    schedule = config.Schedule(total=total, warmup=0, steps_per_loop=per_loop,
                               checkpoint_every=checkpoint_every, eval_every=eval_every)
    controller = controller_lib.Controller(
        trainer=trainer, schedule=schedule, saver=saver,
        progress=reporting.Progress("classifier", total),
        profiler=reporting.Profiler((), None, total), evaluate=evaluate,
        summary_dir=str(tmp_path / "train"), eval_dir=str(tmp_path / "eval"))
    return controller, evaluations


def _saved_steps(directory) -> list:
    return sorted(int(p.split("ckpt-")[1].split(".")[0])
                  for p in glob.glob(os.path.join(directory, "ckpt-*.index")))


def test_checkpoints_fall_on_exact_multiples_and_evaluations_on_theirs(tmp_path, capsys):
    controller, evaluations = _controller(tmp_path, total=23, per_loop=10, checkpoint_every=7,
                                          eval_every=10)
    outcome = controller.run()
    assert not outcome.preempted and outcome.eval_output == {"top1": 0.5}
    assert _saved_steps(tmp_path) == [7, 14, 21]
    assert evaluations == [10, 20, 23]  # every eval_every steps, and at the end
    printed = capsys.readouterr().out.splitlines()
    loops = [int(line.split()[1].split("/")[0]) for line in printed if line.startswith("step ")]
    assert loops == [7, 10, 14, 20, 21, 23]
    assert controller.last_output["step"] == 23
    assert glob.glob(os.path.join(tmp_path, "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(tmp_path, "eval", "events.out.tfevents.*"))


def test_a_notice_stops_after_the_step_and_saves_it(tmp_path):
    flag = tf.Variable(False, trainable=False)
    controller, _ = _controller(tmp_path, total=100, per_loop=10, checkpoint_every=50,
                                eval_every=0, stop_flag=flag)
    flag.assign(True)
    outcome = controller.run()
    assert outcome.preempted and controller.step == 1
    assert _saved_steps(tmp_path) == [1]
