"""The benchmark commands run end to end at tiny sizes and print their RESULT lines."""
import functools
import re

import numpy as np
import pytest

from bench import input_pipeline, kinetics_like, machine_factor, train_step


def _result(output: str) -> dict:
    line = [l for l in output.splitlines() if l.startswith("RESULT ")][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", line)}


def test_kinetics_like_frames_are_natural_and_moving():
    rng = np.random.default_rng(0)
    frames = kinetics_like.pan_and_zoom(kinetics_like.photographs()[0], 3, rng, 64, 36)
    assert frames.shape == (3, 36, 64, 3) and frames.dtype == "uint8"
    assert frames.std() > 20 and abs(frames[0].astype(int) - frames[-1]).mean() > 1


@pytest.mark.slow
@pytest.mark.scenario  # A whole bench command: make test-scenarios.
def test_input_pipeline_bench(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", [
        "input_pipeline", "--data_dir", str(tmp_path), "--num_videos", "2",
        "--video_frames", "12", "--short_side", "36", "--batch_size", "2", "--num_frames", "2",
        "--crop_size", "16", "--rounds", "1", "--warmup", "1", "--batches", "1",
        "--min_seconds", "0"])
    input_pipeline.main()
    result = _result(capsys.readouterr().out)
    assert set(result) == {"ours_clips_per_s", "official_clips_per_s", "ratio",
                           "decode_bound_clips_per_s", "bound_fraction", "cpu_bound_fraction",
                           "ours_cpu_s_per_clip"}
    assert all(v > 0 for v in result.values())


@pytest.mark.slow  # The Model Garden's R3D-50 and ours made tiny (its blocks, 1 per stage).
@pytest.mark.scenario  # A whole bench command: make test-scenarios.
def test_train_step_bench(monkeypatch, capsys):
    monkeypatch.setattr(train_step, "build_backbone", functools.partial(
        train_step.build_backbone, base_filters=4, blocks_per_stage=(1, 1, 1, 1)))
    monkeypatch.setattr(train_step, "projection_head",
                        functools.partial(train_step.projection_head, hidden_dim=16))
    monkeypatch.setattr("sys.argv", ["train_step", "--frames", "2", "--size", "16",
                                     "--batch", "1", "--rounds", "1", "--jit", "off"])
    train_step.main()
    result = _result(capsys.readouterr().out)
    assert {"ours_ms", "official_ms", "ratio", "augment_ms", "augment_alone_ms"} == set(result)
    assert result["ours_ms"] > 0 and result["official_ms"] > 0


def test_input_state_bench_grows_with_the_buffer_only_for_the_iterator(capsys):
    from bench import input_state  # pylint: disable=import-outside-toplevel
    result = input_state.main(["--replicas", "4", "--buffers", "4,12", "--record_kb", "20"])
    assert _result(capsys.readouterr().out)["input_state_bytes"] == result["input_state_bytes"]
    # Random bytes do not compress: the iterator stores the buffered records themselves
    # (with buffers this small, the refill after the first element is partial).
    assert 0.8 * 20_000 <= result["iterator_bytes_per_record"] < 1.05 * 20_000
    assert result["input_state_bytes"] < 2_000 and input_state.input_state_bytes(
        4) == result["input_state_bytes"]


def test_machine_factor_measures_here_and_divides_by_the_reference():
    step = machine_factor.measure_step(width=4, batch=2, steps=1, repeats=1)
    assert step["trace_s"] > 0 and step["clips_per_s"] > 0
    assert machine_factor.python_seconds(1000) > 0
    assert all(machine_factor.REFERENCE.values())  # Every reference figure was measured.
    reference = dict(machine_factor.REFERENCE, python_s=1.0, trace_s=2.0, eigen_clips_per_s=210.0,
                     onednn_clips_per_s=600.0, make_test_s=300.0, make_demo_s=180.0)
    slower = {"python_s": 2.5, "trace_s": 4.0, "eigen_clips_per_s": 70.0,
              "onednn_clips_per_s": 200.0}
    assert machine_factor.factors(slower, reference) == pytest.approx(
        {"python_factor": 2.5, "trace_factor": 2.0, "eigen_factor": 3.0, "onednn_factor": 3.0,
         "est_make_test_min": 12.5, "est_make_demo_min": 9.0})
