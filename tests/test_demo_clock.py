"""The demo's speed and ETA: the runs' loops in, an extrapolated whole-demo time out."""
import pytest

from cvrl_tf.training import demo_clock
from cvrl_tf.training import reporting


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _clock(printed: list, fake: FakeClock) -> demo_clock.DemoClock:
    phases = [demo_clock.Phase("pretrain", 100, 128),
              demo_clock.Phase("linear_eval_cvrl", 50, 64, 1 / demo_clock.LINEAR_SPEEDUP),
              demo_clock.Phase("linear_eval_random", 50, 64, 1 / demo_clock.LINEAR_SPEEDUP)]
    return demo_clock.DemoClock(phases, start=0.0, print_fn=printed.append, clock=fake)


def test_eta_extrapolates_every_phase_from_the_second_pretraining_loop():
    printed, fake = [], FakeClock()
    clock = _clock(printed, fake)
    fake.now = 10.0
    clock.begin("pretrain")
    fake.now = 30.0  # loop 1 (10 steps) ends: 10 s of set-up and tracing + 10 s of steps
    clock.on_loop(reporting.Loop(10, 100, 40.0, {}))
    assert not printed and clock.estimate is None
    fake.now = 40.0  # loop 2: 1 s per step of 128 clips
    clock.on_loop(reporting.Loop(20, 100, 128.0, {}))
    setup, clip_sec = 10.0, 1.0 / 128
    pretrain_left = 80 * 1.0 + demo_clock.END_COST_SHARE * setup
    linear = ((1 + demo_clock.END_COST_SHARE) * setup
              + 50 * 64 * clip_sec / demo_clock.LINEAR_SPEEDUP)
    assert clock.estimate["clips_per_sec"] == pytest.approx(128.0)
    assert clock.estimate["printed_at_sec"] == 40.0
    assert clock.estimate["total_sec"] == pytest.approx(40.0 + pretrain_left + 2 * linear)
    assert len(printed) == 1 and "measured 128 clips/s" in printed[0]
    assert f"whole demo about {demo_clock.format_duration(clock.estimate['total_sec'])}" \
        in printed[0]
    fake.now = 50.0
    clock.on_loop(reporting.Loop(30, 100, 128.0, {}))  # printed once only
    clock.begin("linear_eval_cvrl")
    clock.on_loop(reporting.Loop(50, 50, 1000.0, {}))
    assert len(printed) == 1
    fake.now = 200.0
    assert clock.summary() == "[demo] wall time 3:20; estimated 2:52 after 0:40"


def test_a_single_pretraining_loop_still_gives_an_estimate():
    printed, fake = [], FakeClock()
    clock = _clock(printed, fake)
    clock.begin("pretrain")
    fake.now = 20.0
    clock.on_loop(reporting.Loop(100, 100, 640.0, {}))
    assert clock.estimate["clips_per_sec"] == pytest.approx(640.0)
    assert len(printed) == 1


def test_phases_must_follow_the_plan():
    clock = _clock([], FakeClock())
    with pytest.raises(ValueError, match="not next in the plan"):
        clock.begin("linear_eval_cvrl")


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (754, "12:34"),
                                           (3725, "1:02:05"), (-3, "0:00")])
def test_format_duration(seconds, text):
    assert reporting.format_duration(seconds) == text
