"""orbit trainer and evaluator around the replica step functions of steps.py.

`Trainer` runs `steps_per_loop` steps inside one tf.function (orbit's tf.range while loop),
each step dequeuing a distributed batch and calling `strategy.run(replica_step, ...)`.
It averages the step metrics over the loop, adds throughput (clips/s per replica and in
total, share of wall time spent waiting on input) and raises on a non-finite loss naming
the first bad step. `Evaluator` sums per-replica counts over the whole eval set and turns
them into top-1/top-5. Neither knows about modes: train.py picks the step functions.
"""
import time
from typing import Callable, Mapping, Sequence

from absl import logging
import orbit
import tensorflow as tf

ReplicaStep = Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def drop_strings(batch: Mapping[str, tf.Tensor]) -> dict:
    """The batch without string features (video ids): TPUs and XLA take numbers only."""
    return {k: v for k, v in batch.items() if v.dtype != tf.string}


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer(orbit.StandardTrainer):
    """Runs a replica training step under a strategy, `num_steps` at a time in one tf.function."""

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                 replica_step: ReplicaStep, global_step: tf.Variable, total_steps: int,
                 clips_per_step: int, metric_names: Sequence[str], jit_compile: bool = False):
        self.strategy = strategy
        self.global_step = global_step
        self.total_steps = int(total_steps)
        self.clips_per_step = int(clips_per_step)
        self._metric_names = tuple(metric_names)
        if "loss" not in self._metric_names:
            raise ValueError("Trainer metric_names must include 'loss'.")
        step = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step
        self._replica_step = step
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        super().__init__(dataset, orbit.StandardTrainerOptions(use_tf_while_loop=True))
        # Loop accumulators: host-side, reset every loop; never checkpointed.
        self._sums = {name: tf.Variable(0.0, trainable=False, name=f"sum_{name}")
                      for name in self._metric_names}
        self._count = tf.Variable(0.0, trainable=False, name="loop_steps")
        self._input_wait = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                       name="input_wait")
        self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="bad_step")
        self._bad_value = tf.Variable(0.0, trainable=False, name="bad_value")
        self._loop_start = 0.0
        self._run_start = None
        self._start_step = None
        self.last_output: dict = {}

    def _next_batch(self, iterator):
        """Dequeues one distributed batch and times the wait (host clock)."""
        start = tf.timestamp()
        with tf.control_dependencies([start]):
            batch = next(iterator)
        local = tf.nest.flatten(self.strategy.experimental_local_results(batch))
        with tf.control_dependencies(local):
            self._input_wait.assign_add(tf.timestamp() - start)
        return batch

    def train_step(self, iterator):
        """One global step: dequeue, run the replica step everywhere, accumulate metrics."""
        batch = self._next_batch(iterator)
        outputs = self.strategy.run(self._replica_step, args=(batch,))
        missing = set(self._metric_names) - set(outputs)
        if missing:
            raise ValueError(f"The replica step returned no {sorted(missing)}; it returned "
                             f"{sorted(outputs)}.")
        for name in self._metric_names:
            value = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, outputs[name], axis=None)
            self._sums[name].assign_add(tf.cast(value, tf.float32))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, outputs["loss"], axis=None)
        loss = tf.cast(loss, tf.float32)
        first_bad = tf.logical_and(self._bad_step < 0, tf.logical_not(tf.math.is_finite(loss)))
        self._bad_step.assign(tf.where(first_bad, self.global_step + 0, self._bad_step))
        self._bad_value.assign(tf.where(first_bad, loss, self._bad_value))
        self._count.assign_add(1.0)
        self.global_step.assign_add(1)

    def train_loop_begin(self):
        """Resets the loop accumulators and starts the clock."""
        for var in self._sums.values():
            var.assign(0.0)
        self._count.assign(0.0)
        self._input_wait.assign(0.0)
        self._loop_start = time.time()
        if self._run_start is None:
            self._run_start = self._loop_start
            self._start_step = int(self.global_step.numpy())

    def train_loop_end(self) -> dict:
        """Loop means, throughput and learning rate; raises NonFiniteLossError on NaN/Inf."""
        step = int(self.global_step.numpy())
        bad_step = int(self._bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"The training loss became {float(self._bad_value.numpy())} at step {bad_step}; "
                f"lower the learning rate (run.base_lr) or check the input data, then resume.")
        elapsed = max(time.time() - self._loop_start, 1e-9)
        count = max(float(self._count.numpy()), 1.0)
        output = {name: self._sums[name].numpy() / count for name in self._metric_names}
        clips = count * self.clips_per_step / elapsed
        output["clips_per_sec"] = clips
        output["clips_per_sec_per_replica"] = clips / self.strategy.num_replicas_in_sync
        output["input_wait_share"] = min(float(self._input_wait.numpy()) / elapsed, 1.0)
        self._log_progress(step, output)
        self.last_output = dict(output, step=step)
        return output

    def _log_progress(self, step: int, output: Mapping[str, float]) -> None:
        """One line per loop: step/total, loss, clips/s, ETA."""
        done = step - self._start_step
        rate = done / max(time.time() - self._run_start, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else 0.0
        message = (f"step {step}/{self.total_steps} | loss {output['loss']:.4f} | "
                   f"{output['clips_per_sec']:.1f} clips/s | ETA {_format_duration(eta)}")
        logging.info(message)
        print(message, flush=True)


EVAL_SUMS = ("top1_correct", "top5_correct", "count")


def _skip_empty(replica_step: ReplicaStep) -> ReplicaStep:
    """Zero sums for an empty replica batch (the remainder of a finite eval set may leave a
    replica without examples; the model cannot run on zero clips)."""
    def step(batch):
        def run():
            outputs = replica_step(batch)
            return {k: tf.cast(outputs[k], tf.float32) for k in EVAL_SUMS}
        return tf.cond(tf.shape(batch["video"])[0] > 0, run,
                       lambda: {k: tf.constant(0.0) for k in EVAL_SUMS})
    return step


class Evaluator(orbit.StandardEvaluator):
    """Runs a replica eval step over the whole eval set and reports top-1/top-5.

    The replica step (steps.make_eval_step) returns per-replica sums ('count', 'top1_correct',
    'top5_correct'); they are summed over replicas and steps, then divided once, so a partial
    last batch is weighted correctly.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                 replica_step: ReplicaStep, prefix: str = ""):
        self.strategy = strategy
        self._replica_step = _skip_empty(replica_step)
        self._prefix = prefix
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        super().__init__(dataset, orbit.StandardEvaluatorOptions(use_tf_function=True,
                                                                 use_tf_while_loop=False))

    def eval_step(self, iterator):
        """Sums one distributed batch's replica outputs."""
        outputs = self.strategy.run(self._replica_step, args=(next(iterator),))
        return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for name, value in outputs.items()}

    def eval_reduce(self, state=None, step_outputs=None):
        """Adds this step's sums to the running ones (eager)."""
        step_outputs = {k: float(v) for k, v in step_outputs.items()}
        if state is None:
            return step_outputs
        return {k: state[k] + step_outputs[k] for k in state}

    def eval_end(self, state=None) -> dict:
        """top1/top5 over every labelled example seen."""
        if state is None or state.get("count", 0) == 0:
            raise ValueError("The evaluation saw no examples: the eval set is empty or smaller "
                             "than one global batch; lower run.eval_batch_size.")
        count = state["count"]
        output = {"top1": state["top1_correct"] / count, "top5": state["top5_correct"] / count,
                  "num_examples": count}
        return {self._prefix + k: v for k, v in output.items()}
