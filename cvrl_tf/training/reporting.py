"""What a training run tells a person: one line per loop with the mode's key metrics, the
speed and an ETA; one line per evaluation; an input-bound warning; the profiler window. The
full metric dictionary goes to the log (and TensorBoard, results.json), not the console,
unless `verbose`. `on_loop` hands every loop's figures to a caller (the demo's clock)."""
import dataclasses
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

from cvrl_tf.training import console

# The console line's metrics per kind of step: (metric key, label, format).
KEY_METRICS = {
    "pretrain": (("loss", "loss", "#.3g"), ("contrastive_accuracy", "contrastive acc", ".2f"),
                 ("probe_accuracy", "probe acc", ".2f")),
    "classifier": (("loss", "loss", "#.3g"), ("accuracy", "acc", ".2f")),
    "detect": (("loss", "loss", "#.3g"), ("box_accuracy", "box acc", ".2f")),
}
# An evaluation's line: (metric key, label, format), in this order when present.
EVAL_METRICS = (("top1", "top-1", ".3f"), ("top5", "top-5", ".3f"),
                ("multiview_top1", "multi-view top-1", ".3f"),
                ("multiview_top5", "multi-view top-5", ".3f"),
                ("frame_map", "frame mAP", ".3f"))
INPUT_BOUND_SHARE = 0.5  # Warn when the step waited for input this share of a loop.
WARN_EVERY_LOOPS = 10


def format_duration(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on, of a non-negative duration."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours
            else f"{rest // 60}:{rest % 60:02d}")


def format_metrics(output: Mapping[str, float], keys: Sequence[tuple]) -> list:
    """'label value' for each (key, label, format) present in output, as plain numbers."""
    return [f"{label} {float(output[key]):{fmt}}" for key, label, fmt in keys if key in output]


def all_metrics_line(output: Mapping[str, float]) -> str:
    """Every metric of a loop as 'name=value' pairs with plain numbers (the log's line)."""
    return " ".join(f"{k}={float(v):.6g}" for k, v in sorted(output.items()))


def _skipped(output: Mapping[str, float]) -> list:
    """['skipped N of M records'] when the run has skipped bad records so far, else []."""
    skipped = sum(v for k, v in output.items() if k.startswith("input/skipped/"))
    if not skipped:
        return []
    return [f"skipped {skipped:.0f} of {output.get('input/read', 0):.0f} records"]


@dataclasses.dataclass(frozen=True)
class Loop:
    """One finished loop, as `on_loop` receives it."""
    step: int
    total: int
    clips_per_sec: float
    metrics: Mapping[str, float]


class Progress:
    """Prints one line per loop (and per evaluation) and calls on_loop; warns when input-bound."""

    def __init__(self, kind: str, total: int, *, verbose: bool = False,
                 on_loop: Optional[Callable[[Loop], None]] = None,
                 input_bound_share: float = INPUT_BOUND_SHARE,
                 clock: Callable[[], float] = time.monotonic):
        self._keys = KEY_METRICS[kind]
        self.total = int(total)
        self._verbose = verbose
        self._on_loop = on_loop
        self._input_bound_share = input_bound_share
        self._clock = clock
        self._start: Optional[tuple] = None  # (time, step) when the run's first loop began
        self._loops_since_warning: Optional[int] = None

    def begin(self, step: int) -> None:
        """Marks the run's start (the first loop's beginning) for the ETA."""
        if self._start is None:
            self._start = (self._clock(), step)

    def loop(self, step: int, output: Mapping[str, float]) -> None:
        """The line of a finished loop: step/total | key metrics | clips/s | ETA."""
        self.begin(step)
        started, first = self._start
        rate = (step - first) / max(self._clock() - started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        clips = float(output.get("clips_per_sec", 0.0))
        parts = ([f"step {step}/{self.total}"] + format_metrics(output, self._keys)
                 + [f"{clips:.0f} clips/s", f"ETA {format_duration(eta)}"] + _skipped(output))
        console.say(" | ".join(parts))
        logging.info("step %d metrics: %s", step, all_metrics_line(output))
        if self._verbose:
            print(f"  {all_metrics_line(output)}", flush=True)
        self._warn_if_input_bound(float(output.get("input_wait_share", 0.0)))
        if self._on_loop is not None:
            self._on_loop(Loop(step, self.total, clips, dict(output)))

    def evaluation(self, step: int, output: Mapping[str, float]) -> None:
        """One line per evaluation: its headline metrics."""
        parts = format_metrics(output, EVAL_METRICS)
        console.say(" | ".join([f"eval at step {step}"] + parts))
        logging.info("eval at step %d: %s", step, all_metrics_line(
            {k: v for k, v in output.items() if isinstance(v, (int, float))}))

    def _warn_if_input_bound(self, share: float) -> None:
        """Says (at most every WARN_EVERY_LOOPS loops) when the step mostly waits for input."""
        if self._loops_since_warning is not None:
            self._loops_since_warning += 1
        if share < self._input_bound_share or (
                self._loops_since_warning or WARN_EVERY_LOOPS) < WARN_EVERY_LOOPS:
            return
        self._loops_since_warning = 0
        message = (f"The run is input-bound: {share:.0%} of the last loop waited for input. "
                   f"Try more host cores, run.data_service_address (tf.data service workers), "
                   f"or build_dataset.augment_on='device'.")
        logging.warning(message)
        print(f"Warning: {message}", flush=True)


class Profiler:
    """A profiler trace of the loops that start in [start, end), for TensorBoard's Profile
    tab (run.profile_steps)."""

    def __init__(self, steps: Sequence[int], directory: Optional[str], total: int):
        self._steps = tuple(steps)
        self._directory = directory
        self._total = total
        self._started_at: Optional[int] = None

    def before_loop(self, step: int) -> None:
        if (self._steps and self._started_at is None
                and self._steps[0] <= step < self._steps[1]):
            tf.profiler.experimental.start(self._directory)
            self._started_at = step

    def after_loop(self, step: int) -> None:
        if self._started_at is not None and (step >= self._steps[1] or step >= self._total):
            tf.profiler.experimental.stop()
            console.say(f"Profiled steps {self._started_at}-{step}: open {self._directory} in "
                        f"TensorBoard's Profile tab.")
            self._started_at = None
