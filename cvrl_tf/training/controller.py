"""The outer loop of a run: loops of steps up to the run's length, each ending at the next
checkpoint, evaluation or the end (so checkpoints fall at exact multiples of
run.checkpoint_every and evaluations at multiples of run.eval_every), TensorBoard summaries,
the console's lines, checkpoints, and the stop on a preemption notice.

It plays the part of orbit's Controller (orbit's Trainer and Evaluator still run the steps);
its own loop gives it exact intervals and a quiet console.
"""
import dataclasses
import os
from typing import Callable, Mapping, Optional

import tensorflow as tf

from cvrl_tf.training import books as books_lib
from cvrl_tf.training import checkpoints
from cvrl_tf.training import reporting
from cvrl_tf.training import trainer as trainer_lib


def loop_length(step: int, total: int, steps_per_loop: int, *intervals: int) -> int:
    """Steps of the loop starting at `step`: steps_per_loop, cut at the end of the run and at
    the next multiple of each nonzero interval (checkpoints, evaluations)."""
    length = min(steps_per_loop, total - step)
    for every in intervals:
        if every:
            length = min(length, every - step % every)
    return max(length, 0)


class Scalars:
    """A TensorBoard directory that numeric metrics are written to (None: nowhere, as on a
    non-chief worker); one event file for the run."""

    def __init__(self, directory: Optional[str]):
        self._writer = tf.summary.create_file_writer(directory) if directory else None

    def write(self, metrics: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(name, value)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclasses.dataclass
class Outcome:
    """How the training loop ended: the last evaluation's metrics, and whether a notice
    stopped it (its step saved) before the end."""
    eval_output: Optional[dict]
    preempted: bool


class Controller:
    """Runs a Trainer to `schedule.total` steps with checkpoints, evaluations and reporting.

    evaluate(): runs the evaluation and returns its metrics (None: the run has none).
    summary_dir / eval_dir: TensorBoard directories (None off the chief).
    """

    def __init__(self, *, trainer: trainer_lib.Trainer, schedule, saver: checkpoints.Saver,
                 progress: reporting.Progress, profiler: reporting.Profiler,
                 evaluate: Optional[Callable[[], dict]] = None,
                 summary_dir: Optional[str] = None, eval_dir: Optional[str] = None):
        self.trainer = trainer
        self.schedule = schedule
        self.saver = saver
        self.progress = progress
        self.profiler = profiler
        self._evaluate = evaluate
        self.train_scalars = Scalars(summary_dir)
        self.eval_scalars = Scalars(eval_dir)
        self.last_output: dict = {}  # The last loop's metrics, with its 'step'.

    @property
    def step(self) -> int:
        return int(self.trainer.global_step.numpy())

    def run(self) -> Outcome:
        """Trains to the end (or a preemption), evaluating at its intervals and at the end."""
        try:
            return self._run()
        finally:
            self.train_scalars.close()
            self.eval_scalars.close()

    def _run(self) -> Outcome:
        s = self.schedule
        eval_output = None
        self.progress.begin(self.step)
        while self.step < s.total:
            length = loop_length(self.step, s.total, s.steps_per_loop, s.checkpoint_every,
                                 s.eval_every)
            self.profiler.before_loop(self.step)
            output = self.trainer.train(tf.constant(length, tf.int32))
            step = self.step
            self.profiler.after_loop(step)
            if self.trainer.books is not None:
                output.update(self.trainer.books.check())
            self.train_scalars.write(output, step)
            self.progress.loop(step, output)
            self.last_output = dict(output, step=step)
            self.saver.maybe_save(force=self.trainer.stopped_early)
            if self.trainer.stopped_early:
                return Outcome(eval_output, preempted=True)
            if s.eval_every and step % s.eval_every == 0 and step < s.total:
                eval_output = self.evaluate()
        if self._evaluate is not None:
            eval_output = self.evaluate()
        return Outcome(eval_output, preempted=False)

    def evaluate(self) -> Optional[dict]:
        """One evaluation at the current step: summaries and its console line."""
        if self._evaluate is None:
            return None
        output = self._evaluate()
        self.eval_scalars.write(output, self.step)
        self.progress.evaluation(self.step, output)
        return output

    def final_check(self) -> None:
        """At the end of a run: the bad-record share judged whatever the count."""
        if self.trainer.books is not None:
            self.trainer.books.check(final=True)


def summary_dirs(model_dir: str, chief: bool) -> tuple:
    """(train, eval) TensorBoard directories of a run (None on a non-chief worker)."""
    if not chief:
        return None, None
    return os.path.join(model_dir, "train"), os.path.join(model_dir, "eval")


BadInputError = books_lib.BadInputError
