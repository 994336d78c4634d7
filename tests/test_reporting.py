"""reporting.py on its own: the console's loop and evaluation lines, the ETA, the on_loop
callback, the input-bound warning and the profiler window."""
import glob
import os

import pytest
import tensorflow as tf

from cvrl_tf.training import reporting


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


LOOP = {"loss": 2.8412, "contrastive_accuracy": 0.4123, "clips_per_sec": 512.4,
        "input_wait_share": 0.1, "grad_norm": 3.0}


def test_one_line_per_loop_with_the_modes_key_metrics_and_an_eta(capsys):
    clock, seen = FakeClock(), []
    progress = reporting.Progress("pretrain", 540, on_loop=seen.append, clock=clock)
    progress.begin(100)
    clock.now = 10.0
    progress.loop(120, LOOP)  # 20 steps in 10 s: 420 steps left take 210 s
    assert capsys.readouterr().out == ("step 120/540 | loss 2.84 | contrastive acc 0.41 | "
                                       "512 clips/s | ETA 3:30\n")
    assert seen == [reporting.Loop(120, 540, 512.4, LOOP)]


def test_verbose_adds_every_metric_as_plain_numbers(capsys):
    reporting.Progress("classifier", 10, verbose=True).loop(5, {"loss": 1.0, "accuracy": 0.5,
                                                                 "grad_norm": 2.25})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 5/10 | loss 1.00 | acc 0.50 | 0 clips/s | ETA ")
    assert lines[1] == "  accuracy=0.5 grad_norm=2.25 loss=1"


def test_an_evaluation_is_one_line(capsys):
    reporting.Progress("classifier", 10).evaluation(
        10, {"top1": 0.9533, "top5": 1.0, "num_examples": 300.0, "checkpoint": "x"})
    assert capsys.readouterr().out == "eval at step 10 | top-1 0.953 | top-5 1.000\n"


def test_an_input_bound_run_is_warned_at_most_every_ten_loops(capsys):
    progress = reporting.Progress("classifier", 100, input_bound_share=0.5)
    for step in range(1, 13):
        progress.loop(step, {"loss": 1.0, "input_wait_share": 0.8})
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("Warning: The run is input-bound: 80% of the last loop")]
    assert len(warnings) == 2  # loops 1 and 11
    progress = reporting.Progress("classifier", 100, input_bound_share=0.5)
    progress.loop(1, {"loss": 1.0, "input_wait_share": 0.2})
    assert "input-bound" not in capsys.readouterr().out


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (754, "12:34"),
                                           (3725, "1:02:05"), (-3, "0:00")])
def test_format_duration(seconds, text):
    assert reporting.format_duration(seconds) == text


def test_profile_steps_write_one_trace_for_the_loops_in_the_window(tmp_path, capsys):
    profiler = reporting.Profiler((2, 4), str(tmp_path), total=6)
    for step in (0, 2, 4):
        profiler.before_loop(step)
        tf.reduce_sum(tf.ones([4, 4]))  # some work to trace
        profiler.after_loop(step + 2)
    traces = glob.glob(os.path.join(tmp_path, "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1
    assert "Profiled steps 2-4: open" in capsys.readouterr().out
