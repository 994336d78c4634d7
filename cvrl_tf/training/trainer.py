"""orbit trainer and evaluator around the replica step functions of steps.py.

`Trainer` runs up to `steps_per_loop` steps inside one tf.function, each step dequeuing a
distributed batch and calling `strategy.run(replica_step, ...)`. It averages the step
metrics over the loop, adds throughput (clips/s per replica and in total, share of wall time
spent waiting on input), raises on a non-finite loss naming the first bad step, keeps the
input's bookkeeping (`InputState`: where each input pipeline stands, bad records skipped) and
stops after the step at which any replica saw a preemption notice. `Evaluator` sums
per-replica counts over the whole eval set and turns them into top-1/top-5. Neither knows
about modes: job.py picks the step functions.
"""
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import orbit
import tensorflow as tf
# pylint: disable-next=g-direct-tensorflow-import
from tensorflow.python.framework import config as tf_config

from cvrl_tf.data import checks
from cvrl_tf.data import source

ReplicaStep = Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class BadInputError(ValueError):
    """More of the training records were skipped as bad than run.max_bad_fraction allows."""


# Per-video bookkeeping a training batch carries besides what the replica step reads.
INPUT_KEYS = ("position", "skipped", "last_bad", "id_hash")
# The skipped fraction is judged once this many records were read (one bad record among the
# first few would otherwise stop a run).
MIN_READS_FOR_FRACTION = 1000


class InputState(tf.Module):
    """What a run checkpoints of its input: the newest stream position of every replica's
    batches (one row per replica; source.POSITION_SIZE int32), records read, records skipped
    per cause (checks.CAUSES) and where the latest bad record of each cause was."""

    def __init__(self, num_replicas: int):
        super().__init__(name="input")
        # Rows: any number (a run may resume on another replica count; the rows then belong
        # to another layout and the stream starts a fresh order).
        self.positions = tf.Variable(tf.zeros([num_replicas, source.POSITION_SIZE], tf.int32),
                                     trainable=False, name="positions",
                                     shape=tf.TensorShape([None, source.POSITION_SIZE]))
        self.read = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="read")
        self.skipped = tf.Variable(tf.zeros([len(checks.CAUSES)], tf.int64), trainable=False,
                                   name="skipped")
        self.last_bad = tf.Variable(-tf.ones([len(checks.CAUSES), 3], tf.int32),
                                    trainable=False, name="last_bad")

    def summary(self) -> dict:
        """{'read': n, 'skipped': {cause: n}} as plain ints (results.json's 'input')."""
        skipped = self.skipped.numpy()
        return {"read": int(self.read.numpy()),
                "skipped": {cause: int(n) for cause, n in zip(checks.CAUSES, skipped)}}


def bad_fraction_error(summary: dict, max_fraction: float, describe: Callable[[np.ndarray], str],
                       last_bad: np.ndarray, min_reads: int = MIN_READS_FOR_FRACTION
                       ) -> Optional[str]:
    """The sentence that stops a run whose skipped share of records exceeds max_fraction
    (judged after min_reads records), naming the worst cause and an example; else None."""
    read = summary["read"]
    bad = sum(summary["skipped"][c] for c in checks.RECORD_CAUSES)
    if read < min_reads or read == 0 or bad / read <= max_fraction:
        return None
    worst = max(checks.RECORD_CAUSES, key=lambda c: summary["skipped"][c])
    example = describe(last_bad[checks.CAUSES.index(worst)])
    return (f"{bad} of the {read} training records read so far were bad ({bad / read:.1%}, "
            f"more than run.max_bad_fraction={max_fraction}); the most common cause is "
            f"{worst} ({summary['skipped'][worst]} records, e.g. {example}). Fix or remove "
            f"those records, or raise run.max_bad_fraction.")


def drop_strings(batch: Mapping[str, tf.Tensor]) -> dict:
    """The batch without string features (video ids): TPUs and XLA take numbers only."""
    return {k: v for k, v in batch.items() if v.dtype != tf.string}


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer(orbit.StandardTrainer):
    """Runs a replica training step under a strategy, `num_steps` at a time in one tf.function.

    input_state: where the input's bookkeeping goes (batches carry INPUT_KEYS). stop_flag: a
    bool variable raised on a preemption notice (preemption.Notice); every replica passes its
    value into the step, they agree (any raised: stop), and the loop ends after that step on every
    worker alike (`stopped_early`). ids_path: append each step's video id hashes (this
    worker's) to this file. describe_record(last_bad row) names a bad record for messages.
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                 replica_step: ReplicaStep, global_step: tf.Variable, total_steps: int,
                 clips_per_step: int, metric_names: Sequence[str], jit_compile: bool = False,
                 input_state: Optional[InputState] = None,
                 stop_flag: Optional[tf.Variable] = None, ids_path: Optional[str] = None,
                 max_bad_fraction: float = 1.0,
                 describe_record: Callable[[np.ndarray], str] = str,
                 profile_steps: Sequence[int] = (), profile_dir: Optional[str] = None,
                 input_bound_share: float = 0.5):
        self.strategy = strategy
        self.global_step = global_step
        self.total_steps = int(total_steps)
        self.clips_per_step = int(clips_per_step)
        self._metric_names = tuple(metric_names)
        if "loss" not in self._metric_names:
            raise ValueError("Trainer metric_names must include 'loss'.")
        step = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step
        self._replica_step = step
        self.input_state = input_state
        self._stop_flag = stop_flag if stop_flag is not None else tf.Variable(
            False, trainable=False, name="stop_flag")
        self._stop_agreed = tf.Variable(False, trainable=False, name="stop_agreed")
        self._ids_path = ids_path
        self._max_bad_fraction = max_bad_fraction
        self._describe_record = describe_record
        self._profile = tuple(profile_steps)
        self._profile_dir = profile_dir
        self._profiling = False
        self._input_bound_share = input_bound_share
        self._deterministic = tf_config.is_op_determinism_enabled()
        self._loops_since_warning = None
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
        self.stopped_early = False
        self.last_output: dict = {}

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
        batch = dict(batch)
        extras = {k: batch.pop(k) for k in INPUT_KEYS if k in batch}
        outputs = dict(self._replica_step(batch))
        outputs["stop"] = tf.cast(stop, tf.int32)
        if "position" in extras:
            position = extras["position"]
            order = (tf.cast(position[:, 5], tf.int64) * 2**32
                     + tf.cast(position[:, 8] + position[:, 9], tf.int64))
            newest = tf.argmax(order)
            outputs["input_position"] = tf.gather(position, newest)[tf.newaxis]
            outputs["input_last_bad"] = tf.gather(extras["last_bad"], newest)[tf.newaxis]
            outputs["input_skipped"] = tf.reduce_sum(extras["skipped"], 0)
            outputs["input_videos"] = tf.shape(extras["skipped"])[0]
        if "id_hash" in extras:
            outputs["input_ids"] = extras["id_hash"]
        return outputs

    def _record_input(self, outputs) -> None:
        """Keeps the newest positions, counts records read and skipped, logs ids."""
        state, strategy = self.input_state, self.strategy
        if state is not None and "input_position" in outputs:
            state.positions.assign(strategy.gather(outputs["input_position"], axis=0))
            skipped = tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                              outputs["input_skipped"], axis=None), tf.int64)
            videos = tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                             outputs["input_videos"], axis=None), tf.int64)
            state.skipped.assign_add(skipped)
            state.read.assign_add(videos + tf.reduce_sum(skipped[:len(checks.RECORD_CAUSES)]))
            rows = strategy.gather(outputs["input_last_bad"], axis=0)  # [R, C, 3]
            valid = rows[:, :, 2] >= 0
            pick = tf.argmax(tf.cast(valid, tf.int32), axis=0)  # A replica that saw one.
            picked = tf.gather(tf.transpose(rows, [1, 0, 2]), pick, batch_dims=1)
            state.last_bad.assign(tf.where(tf.reduce_any(valid, 0)[:, tf.newaxis], picked,
                                           state.last_bad))
        if self._ids_path and "input_ids" in outputs:
            ids = tf.concat(strategy.experimental_local_results(outputs["input_ids"]), 0)
            tf.print(self.global_step, ids, summarize=-1,
                     output_stream=f"file://{self._ids_path}")

    def train_step(self, iterator):
        """One global step: dequeue, run the replica step everywhere, accumulate metrics."""
        batch = self._next_batch(iterator)
        outputs = self.strategy.run(self._replica, args=(batch, self._stop_flag.read_value()))
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
        self._record_input(outputs)
        agreed = self.strategy.reduce(tf.distribute.ReduceOp.SUM, outputs["stop"], axis=None)
        self._stop_agreed.assign(agreed > 0)
        self._count.assign_add(1.0)
        self.global_step.assign_add(1)

    def close(self) -> None:
        """Drops the input iterator, which stops its pipeline (tf.data's threads and buffers)
        now instead of whenever Python's garbage collector breaks the trainer's reference
        cycles: a finished run in a process that goes on (the demo, a sweep, a notebook)
        leaves nothing running."""
        if self._train_iter is not None:
            del self._train_iter  # As a tf.Module, also drops its dependency on the iterator.
            self._train_iter = None  # What orbit reads before making a new one.

    def train_loop_begin(self):
        """Resets the loop accumulators, starts the clock (and the profiler when asked)."""
        for var in self._sums.values():
            var.assign(0.0)
        self._count.assign(0.0)
        self._input_wait.assign(0.0)
        self._loop_start = time.time()
        step = int(self.global_step.numpy())
        if self._run_start is None:
            self._run_start = self._loop_start
            self._start_step = step
        if self._profile and not self._profiling and self._profile[0] <= step < self._profile[1]:
            tf.profiler.experimental.start(self._profile_dir)
            self._profiling = step

    def train_loop_end(self) -> dict:
        """Loop means, throughput, input counts; raises NonFiniteLossError on NaN/Inf and
        BadInputError when too many records were bad."""
        step = int(self.global_step.numpy())
        bad_step = int(self._bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"The training loss became {float(self._bad_value.numpy())} at step {bad_step}; "
                f"lower the learning rate (run.base_lr) or check the input data, then resume.")
        self._stop_profiler(step)
        elapsed = max(time.time() - self._loop_start, 1e-9)
        count = max(float(self._count.numpy()), 1.0)
        output = {name: self._sums[name].numpy() / count for name in self._metric_names}
        clips = count * self.clips_per_step / elapsed
        output["clips_per_sec"] = clips
        output["clips_per_sec_per_replica"] = clips / self.strategy.num_replicas_in_sync
        if not self._deterministic:
            output["input_wait_share"] = min(float(self._input_wait.numpy()) / elapsed, 1.0)
        self.stopped_early = bool(self._stop_agreed.numpy())
        self._log_progress(step, output)
        if self.input_state is not None and int(self.input_state.read.numpy()):
            summary = self.input_state.summary()
            output["input/read"] = summary["read"]
            output.update({f"input/skipped/{c}": n for c, n in summary["skipped"].items()})
            self._log_input(summary)
            message = bad_fraction_error(summary, self._max_bad_fraction,
                                         self._describe_record,
                                         self.input_state.last_bad.numpy())
            if message:
                raise BadInputError(message)
        self._warn_if_input_bound(output.get("input_wait_share", 0.0))
        self.last_output = dict(output, step=step)
        return output

    def _stop_profiler(self, step: int) -> None:
        if self._profiling is not False and (step >= self._profile[1] or
                                             step >= self.total_steps):
            tf.profiler.experimental.stop()
            print(f"Profiled steps {self._profiling}-{step}: open {self._profile_dir} in "
                  f"TensorBoard's Profile tab.", flush=True)
            self._profiling = False

    def _log_input(self, summary: dict) -> None:
        skipped = {c: n for c, n in summary["skipped"].items() if n}
        if skipped:
            causes = ", ".join(f"{c} {n}" for c, n in skipped.items())
            logging.info("Input: %d records read, skipped %s", summary["read"], causes)
            print(f"input: {summary['read']} records read, skipped: {causes}", flush=True)

    def _warn_if_input_bound(self, share: float) -> None:
        """Says (at most every 10 loops) when the step mostly waits for input."""
        if self._loops_since_warning is not None:
            self._loops_since_warning += 1
        if share < self._input_bound_share or (self._loops_since_warning or 10) < 10:
            return
        self._loops_since_warning = 0
        message = (f"The run is input-bound: {share:.0%} of the last loop waited for input. "
                   f"Try more host cores, run.data_service_address (tf.data service workers), "
                   f"or build_dataset.augment_on='device'.")
        logging.warning(message)
        print(f"Warning: {message}", flush=True)

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
