"""trainer.Trainer on its own (no gin, no job): loop means, the agreed stop, the NaN stop; and
the Evaluator's counts."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import trainer as trainer_lib


def _trainer(dataset_fn, replica_step, **kwargs):
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    trainer = trainer_lib.Trainer(
        strategy=tf.distribute.get_strategy(), dataset_fn=dataset_fn,
        replica_step=replica_step, global_step=step, clips_per_step=2,
        metric_names=("loss",), **kwargs)
    return trainer, step


def _numbers(ctx=None):
    return tf.data.Dataset.range(1000).map(lambda i: {"x": tf.cast(i, tf.float32)}).batch(2)


def test_loops_average_the_step_metrics_and_count_steps(capsys):
    trainer, step = _trainer(_numbers, lambda batch: {"loss": tf.reduce_mean(batch["x"])})
    out = trainer.train(tf.constant(2))
    assert int(step.numpy()) == 2
    assert out["loss"] == pytest.approx((0.5 + 2.5) / 2)  # batches [0, 1] and [2, 3]
    out = trainer.train(tf.constant(2))
    assert out["loss"] == pytest.approx((4.5 + 6.5) / 2) and int(step.numpy()) == 4
    assert out["clips_per_sec"] > 0 and 0.0 <= out["input_wait_share"] <= 1.0
    assert all(type(v) is float for v in out.values())  # plain numbers, not NumPy scalars
    assert capsys.readouterr().out == ""  # the trainer prints nothing (reporting.py does)


def test_an_agreed_stop_ends_the_loop_after_that_step():
    flag = tf.Variable(False, trainable=False)
    seen = tf.Variable(0, trainable=False)

    def replica_step(batch):
        seen.assign_add(1)
        return {"loss": tf.reduce_mean(batch["x"])}

    trainer, step = _trainer(_numbers, replica_step, stop_flag=flag)
    trainer.train(tf.constant(2))
    flag.assign(True)
    trainer.train(tf.constant(5))  # the first step sees the raised flag and is the last one
    assert int(step.numpy()) == 3 and int(seen.numpy()) == 3 and trainer.stopped_early


def test_a_non_finite_loss_stops_the_run_naming_the_step():
    def replica_step(batch):
        return {"loss": tf.where(batch["x"][0] >= 4.0, np.inf, 1.0)}

    trainer, _ = _trainer(_numbers, replica_step)
    trainer.train(tf.constant(2))
    # Named by the global step it started from: ckpt-2 holds the last finite weights.
    with pytest.raises(trainer_lib.NonFiniteLossError, match="became inf at step 2;"):
        trainer.train(tf.constant(2))


def test_evaluator_divides_summed_counts_once_so_a_partial_last_batch_weighs_right():
    labels = np.array([0, 1, 2, 0, 1, 2, 0], np.int32)     # 7 videos: batches of 3, 3, 1
    predicted = np.array([0, 1, 0, 0, 2, 2, 1], np.int32)  # correct: 1 1 0 | 1 0 1 | 0

    def dataset_fn(ctx=None):
        return tf.data.Dataset.from_tensor_slices(
            {"video": predicted, "label": labels}).batch(3)  # 'video': the predicted class

    def replica_step(batch):
        hit = tf.cast(tf.equal(batch["label"], batch["video"]), tf.float32)
        return {"count": tf.cast(tf.size(hit), tf.float32), "top1_correct": tf.reduce_sum(hit),
                "top5_correct": tf.cast(tf.size(hit), tf.float32)}

    evaluator = trainer_lib.Evaluator(strategy=tf.distribute.get_strategy(),
                                      dataset_fn=dataset_fn, replica_step=replica_step,
                                      prefix="val_")
    out = evaluator.evaluate(tf.constant(-1))
    assert out == {"val_top1": 4 / 7, "val_top5": 1.0, "val_num_examples": 7.0}
    empty = trainer_lib.Evaluator(strategy=tf.distribute.get_strategy(),
                                  dataset_fn=lambda ctx=None: dataset_fn().take(0),
                                  replica_step=replica_step)
    with pytest.raises(ValueError, match="saw no examples"):
        empty.evaluate(tf.constant(-1))
