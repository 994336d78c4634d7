"""The demo's clock: measured speed and an ETA for the whole demo from its first loops.

The trainer prints one progress line per loop (`step S/T | loss L | R clips/s | ETA ...`,
cvrl_tf/training/trainer.py). `ProgressWatcher` passes stdout through and hands each such line to
`DemoClock`, which times the loops itself. After the second loop of pretraining (the first
one includes graph tracing) it knows the seconds per pretraining step and the fixed start-up
cost of a run (model build, input pipeline, tracing), and extrapolates the remaining phases:
the rest of pretraining, then each linear evaluation, whose clips cost 1 / LINEAR_SPEEDUP of
a pretraining clip (forward pass only, through a frozen backbone; measured, docs/DEMO.md).
"""
import dataclasses
import time
from typing import Callable, Optional

from cvrl_tf.training import reporting
from cvrl_tf.training.reporting import format_duration
# Linear-evaluation clips/s over pretraining clips/s (docs/DEMO.md), and the share of a
# run's start-up cost paid again after its last loop (final eval, checkpoint, results).
LINEAR_SPEEDUP = 3.0
END_COST_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training run of the demo: its name, steps, clips per step, and what one of its
    clips costs relative to one of the first phase's (measured; docs/DEMO.md)."""
    name: str
    steps: int
    clips_per_step: int
    cost: float = 1.0


class DemoClock:
    """Times the demo's phases; prints speed and a whole-demo ETA once it can measure them.

    `phases[0]` must be the pretraining; the others are extrapolated from its measured rate.
    `start` is when the demo began (time.monotonic()), so the ETA counts start-up too.
    """

    def __init__(self, phases: list, start: float, print_fn: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic):
        self.phases = list(phases)
        self._start = start
        self._print = print_fn
        self._clock = clock
        self._phase = -1
        self._phase_start = 0.0
        self._lines: list = []  # (time, step) of the current phase's progress lines
        self.estimate: Optional[dict] = None  # the printed ETA, for results.json

    def begin(self, name: str) -> None:
        """Marks the start of the next phase (its name must follow the plan)."""
        self._phase += 1
        if self._phase >= len(self.phases) or self.phases[self._phase].name != name:
            raise ValueError(f"Demo phase {name!r} is not next in the plan "
                             f"{[p.name for p in self.phases]}.")
        self._phase_start = self._clock()
        self._lines = []

    def on_loop(self, loop: reporting.Loop) -> None:
        """One finished loop of the current phase; prints the ETA at the right one. (The
        loop's own clips/s includes tracing in loop 1: the clock times the loops itself.)"""
        self._lines.append((self._clock(), loop.step))
        if self._phase == 0 and self.estimate is None and (len(self._lines) == 2
                                                           or loop.step >= loop.total):
            self._estimate()

    def _estimate(self) -> None:
        """Extrapolates every remaining phase from the pretraining loops timed so far."""
        now = self._clock()
        pretrain = self.phases[0]
        (t_first, s_first), (t_last, s_last) = self._lines[0], self._lines[-1]
        if len(self._lines) >= 2 and s_last > s_first:
            sec_per_step = (t_last - t_first) / (s_last - s_first)
            setup = max(t_first - self._phase_start - s_first * sec_per_step, 0.0)
        else:  # a single loop: tracing is inside the rate, none left over as setup
            sec_per_step = (t_first - self._phase_start) / max(s_first, 1)
            setup = 0.0
        clip_sec = sec_per_step / pretrain.clips_per_step
        remaining = {pretrain.name: (pretrain.steps - s_last) * sec_per_step
                     + END_COST_SHARE * setup}
        for phase in self.phases[1:]:
            remaining[phase.name] = ((1.0 + END_COST_SHARE) * setup + phase.steps
                                     * phase.clips_per_step * clip_sec * phase.cost)
        left = sum(remaining.values())
        self.estimate = {"clips_per_sec": 1.0 / clip_sec, "printed_at_sec": now - self._start,
                         "total_sec": now - self._start + left,
                         "remaining_sec": {k: round(v, 1) for k, v in remaining.items()}}
        parts = ", ".join(f"{name} {format_duration(sec)}" for name, sec in remaining.items())
        self._print(f"[demo] measured {1.0 / clip_sec:.0f} clips/s in {pretrain.name}; "
                    f"ETA {format_duration(left)} more ({parts}), whole demo about "
                    f"{format_duration(self.estimate['total_sec'])}")

    def summary(self) -> str:
        """The closing line: actual wall time against the first estimate."""
        total = self._clock() - self._start
        if self.estimate is None:
            return f"[demo] wall time {format_duration(total)}"
        return (f"[demo] wall time {format_duration(total)}; estimated "
                f"{format_duration(self.estimate['total_sec'])} after "
                f"{format_duration(self.estimate['printed_at_sec'])}")
