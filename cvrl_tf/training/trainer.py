"""orbit trainer and evaluator around the replica step functions of steps.py.

`Trainer` runs up to `num_steps` steps inside one tf.function, each step dequeuing a
distributed batch and calling `strategy.run(replica_step, ...)`. It averages the step metrics
over the loop, adds throughput (clips/s per replica and in total, share of wall time spent
waiting on input), raises on a non-finite loss naming the first bad step, hands each batch's
input bookkeeping to the books (books.py) and stops after the step at which any replica saw a
preemption notice. `Evaluator` sums per-replica counts over the whole eval set and turns them
into top-1/top-5. Neither knows about modes (job.py picks the step functions) nor prints
(reporting.py and controller.py do).
"""
import time
from typing import Callable, Mapping, Optional, Sequence

import orbit
import tensorflow as tf

from cvrl_tf.runtime import internals
from cvrl_tf.training import books as books_lib

ReplicaStep = Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def drop_strings(batch: Mapping[str, tf.Tensor]) -> dict:
    """The batch without string features (video ids): TPUs and XLA take numbers only."""
    return {k: v for k, v in batch.items() if v.dtype != tf.string}


class Trainer(orbit.StandardTrainer):
    """Runs a replica training step under a strategy, `num_steps` at a time in one tf.function.

    books: the input's books (books.InputBooks; None: batches carry no bookkeeping).
    stop_flag: a bool variable raised on a preemption notice (preemption.Notice); every replica
    passes its value into the step, they agree (any raised: stop), and the loop ends after that
    step on every worker alike (`stopped_early`).
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                 replica_step: ReplicaStep, global_step: tf.Variable, clips_per_step: int,
                 metric_names: Sequence[str], jit_compile: bool = False,
                 books: Optional[books_lib.InputBooks] = None,
                 stop_flag: Optional[tf.Variable] = None):
        self.strategy = strategy
        self.global_step = global_step
        self.clips_per_step = int(clips_per_step)
        self._metric_names = tuple(metric_names)
        if "loss" not in self._metric_names:
            raise ValueError("Trainer metric_names must include 'loss'.")
        self._replica_step = (tf.function(replica_step, jit_compile=True) if jit_compile
                              else replica_step)
        self.books = books
        self._stop_flag = stop_flag if stop_flag is not None else tf.Variable(
            False, trainable=False, name="stop_flag")
        self._stop_agreed = tf.Variable(False, trainable=False, name="stop_agreed")
        self._deterministic = internals.op_determinism_enabled()
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
        self.stopped_early = False

    def create_train_loop_fn(self):
        """Up to num_steps steps in one tf.function; ends early once a stop was agreed.

        A tf.while_loop written out, so the function needs no AutoGraph: the step code is plain
        graph code, and converting it cost a second or two of every run's start-up."""
        def loop(iterator, num_steps):
            def more(i):
                return tf.logical_and(i < num_steps, tf.logical_not(self._stop_agreed))

            def step(i):
                self.train_step(iterator)
                return i + 1

            tf.while_loop(more, step, [tf.zeros_like(num_steps)])
        return tf.function(loop, autograph=False)

    def train_step(self, iterator):
        """One global step: dequeue, run the replica step everywhere, accumulate metrics, keep
        the books, agree on a stop."""
        batch = self._next_batch(iterator)
        outputs = self.strategy.run(self._replica, args=(batch, self._stop_flag.read_value()))
        missing = set(self._metric_names) - set(outputs)
        if missing:
            raise ValueError(f"The replica step returned no {sorted(missing)}; it returned "
                             f"{sorted(outputs)}.")
        for name in self._metric_names:
            value = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, outputs[name], axis=None)
            self._sums[name].assign_add(tf.cast(value, tf.float32))
        self._watch_loss(outputs["loss"])
        if self.books is not None:
            self.books.record(outputs, self.global_step)
        agreed = self.strategy.reduce(tf.distribute.ReduceOp.SUM, outputs["stop"], axis=None)
        self._stop_agreed.assign(agreed > 0)
        self._count.assign_add(1.0)
        self.global_step.assign_add(1)

    def _next_batch(self, iterator):
        """Dequeues one distributed batch and times the wait (host clock; not under TF op
        determinism, which forbids reading the clock in a graph)."""
        if self._deterministic:
            return next(iterator)
        start = tf.timestamp()
        with tf.control_dependencies([start]):
            batch = next(iterator)
        local = tf.nest.flatten(self.strategy.experimental_local_results(batch))
        with tf.control_dependencies(local):
            self._input_wait.assign_add(tf.timestamp() - start)
        return batch

    def _replica(self, batch, stop):
        """The replica step on the model's part of the batch, plus the input's bookkeeping."""
        batch, extras = books_lib.split(batch)
        outputs = dict(self._replica_step(batch))
        outputs["stop"] = tf.cast(stop, tf.int32)
        outputs.update(books_lib.replica_outputs(extras))
        return outputs

    def _watch_loss(self, replica_loss) -> None:
        """Remembers the first step whose global loss is not finite."""
        loss = tf.cast(self.strategy.reduce(tf.distribute.ReduceOp.MEAN, replica_loss,
                                            axis=None), tf.float32)
        first_bad = tf.logical_and(self._bad_step < 0, tf.logical_not(tf.math.is_finite(loss)))
        self._bad_step.assign(tf.where(first_bad, self.global_step + 0, self._bad_step))
        self._bad_value.assign(tf.where(first_bad, loss, self._bad_value))

    def train_loop_begin(self):
        """Resets the loop accumulators and starts the clock."""
        for var in self._sums.values():
            var.assign(0.0)
        self._count.assign(0.0)
        self._input_wait.assign(0.0)
        self._loop_start = time.time()

    def train_loop_end(self) -> dict:
        """Loop means and throughput; NonFiniteLossError on a NaN/Inf loss."""
        bad_step = int(self._bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"The training loss became {float(self._bad_value.numpy())} at step {bad_step}; "
                f"lower the learning rate (run.base_lr) or check the input data, then resume.")
        elapsed = max(time.time() - self._loop_start, 1e-9)
        count = max(float(self._count.numpy()), 1.0)
        output = {name: float(self._sums[name].numpy()) / count for name in self._metric_names}
        clips = count * self.clips_per_step / elapsed
        output["clips_per_sec"] = clips
        output["clips_per_sec_per_replica"] = clips / self.strategy.num_replicas_in_sync
        if not self._deterministic:
            output["input_wait_share"] = min(float(self._input_wait.numpy()) / elapsed, 1.0)
        self.stopped_early = bool(self._stop_agreed.numpy())
        return output

    def close(self) -> None:
        """Drops the input iterator, which stops its pipeline (tf.data's threads and buffers)
        now instead of whenever Python's garbage collector breaks the trainer's reference
        cycles: a finished run in a process that goes on (the demo, a sweep, a notebook)
        leaves nothing running."""
        if self._train_iter is not None:
            del self._train_iter  # As a tf.Module, also drops its dependency on the iterator.
            self._train_iter = None  # What orbit reads before making a new one.


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
    last batch is weighted correctly. `stop_flag` (a preemption notice) ends the evaluation
    between batches with EvaluationStopped.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                 replica_step: ReplicaStep, prefix: str = "",
                 stop_flag: Optional[tf.Variable] = None):
        self.strategy = strategy
        self._replica_step = _skip_empty(replica_step)
        self._prefix = prefix
        self._stop_flag = stop_flag
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        super().__init__(dataset, orbit.StandardEvaluatorOptions(use_tf_function=True,
                                                                 use_tf_while_loop=False))

    def eval_step(self, iterator):
        """Sums one distributed batch's replica outputs."""
        outputs = self.strategy.run(self._replica_step, args=(next(iterator),))
        return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for name, value in outputs.items()}

    def eval_reduce(self, state=None, step_outputs=None):
        """Adds this step's sums to the running ones (eager); stops on a notice."""
        if self._stop_flag is not None and bool(self._stop_flag.numpy()):
            raise EvaluationStopped()
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


class EvaluationStopped(Exception):
    """An evaluation ended early on a preemption notice."""
