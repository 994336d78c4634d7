"""bench.findings on a tiny budget: runs through train.py, findings.json, figures, resume."""
import json
import os

import pytest
import tensorflow as tf

from bench import findings
from cvrl_tf import train
from cvrl_tf.data import synthetic

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios

# Small batches for the 16-video set; image summaries off to save time.
PARAMS = ["run.global_batch_size=8", "run.eval_batch_size=8", "run.min_video_frames=16",
          "run.image_summaries=False"]


def _png_shape(path) -> tuple:
    with open(path, "rb") as f:
        return tuple(tf.io.decode_png(f.read()).shape)


def test_parse_seeds_and_conditions():
    assert findings.parse_seeds("3") == [0, 1, 2]
    assert findings.parse_seeds("2,") == [2] and findings.parse_seeds("4,1") == [4, 1]
    for bad in ("x", "1,1", "-1,", ","):
        with pytest.raises(ValueError, match="--seeds"):
            findings.parse_seeds(bad)
    assert findings.parse_conditions("zero,random_init") == ["random_init", "zero"]
    with pytest.raises(ValueError, match="unknown \\['shuffled'\\]"):
        findings.parse_conditions("zero,shuffled")


def test_scaled_bindings_follow_the_demo_gin():
    train.parse_gin(["experiments/demo_pretrain.gin"])
    demo_steps = train.job_config(model_dir="").train_length
    assert findings.scaled_bindings("experiments/demo_pretrain.gin", [], 1.0) == ([],
                                                                                  demo_steps)
    bindings, total = findings.scaled_bindings("experiments/demo_pretrain.gin", [], 0.01)
    assert total == max(1, round(demo_steps * 0.01))
    assert f"run.train_length={total}" in bindings
    assert f"run.steps_per_loop={min(total, 50)}" in bindings or total > 50


def test_sweep_writes_findings_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out, docs = tmp_path / "findings", tmp_path / "docs"
    synthetic.write_dataset(str(out / "data"), num_train=16, num_eval=8, num_frames=16, size=32,
                            num_shards=2, seed=0)
    train.parse_gin(["experiments/demo_pretrain.gin"])
    scale = 2.5 / train.job_config(model_dir="").train_length  # Two pretraining steps.
    args = ["--output_dir", str(out), "--docs_dir", str(docs), "--seeds", "1",
            "--conditions", "decreasing,random_init", "--steps_scale", str(scale)]
    args += [f"--gin_param={p}" for p in PARAMS]
    # The demo's embedding map (backbones, features, t-SNE; 2-10 s a drawing, checked in
    # tests/test_demo.py) is replaced by a recorder of what the sweep asks it to draw.
    drawn = []

    def draw(output_dir, dirs, data_dir, linear):
        path = os.path.join(output_dir, "embeddings.png")
        tf.io.write_file(path, tf.io.encode_png(tf.zeros([3, 5, 4], tf.uint8)))
        drawn.append((output_dir, dirs, data_dir, linear))
        return path

    monkeypatch.setattr(findings.demo, "write_embedding_map", draw)
    result = findings.main(args)

    printed = capsys.readouterr().out
    assert "0 of 2 runs finished before; 2 to go (pretraining 2 steps" in printed
    assert "[1/2] random_init, seed 0 (ETA of the rest: unknown" in printed
    assert "[2/2] decreasing, seed 0 (ETA of the rest: unknown" in printed  # No pretrain yet.
    with open(docs / "findings.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert list(saved["top1"]) == ["random_init", "decreasing"]
    assert saved["seeds"] == {"random_init": [0], "decreasing": [0]}
    for condition in ("random_init", "decreasing"):  # Each run's own final linear top-1.
        with open(out / "seed0" / f"linear_{condition}" / "results.json") as f:
            assert saved["top1"][condition] == [json.load(f)["eval"]["top1"]], condition
    assert saved["std"] == {"random_init": 0.0, "decreasing": 0.0}
    assert saved["steps"]["pretrain"] == 2 and saved["chance_top1"] == pytest.approx(1 / 6)
    assert saved["commands"] == ["python -m bench.findings " + " ".join(args)]
    assert saved["figures"] == ["findings_ablations.png", "findings_embeddings.png"]
    assert _png_shape(docs / "findings_ablations.png")[:2] == (420, 440)
    assert _png_shape(docs / "findings_embeddings.png") == (3, 5, 4)  # The drawing, copied.
    assert drawn == [(str(out / "seed0"),
                      {"pretrain": str(out / "seed0" / "pretrain_decreasing"),
                       "linear_eval_random": str(out / "seed0" / "linear_random_init")},
                      str(out / "data"),
                      {"cvrl": {"eval": {"top1": saved["top1"]["decreasing"][0]}},
                       "random_init": {"eval": {"top1": saved["top1"]["random_init"][0]}}})]
    with open(out / "results" / "decreasing-seed0.json") as f:
        run = json.load(f)
    assert run["pretrain"]["steps"] == 2 and run["linear_steps"] >= 1
    with open(out / "seed0" / "linear_decreasing" / "results.json") as f:
        assert json.load(f)["initialized_from"].startswith("warm_start:")

    # A rerun trains nothing: finished (condition, seed) runs are skipped, and finished
    # trainings of an unfinished one are reused.
    os.remove(out / "results" / "decreasing-seed0.json")
    calls = []
    real = train.run_with_gin
    monkeypatch.setattr(train, "run_with_gin",
                        lambda files, *a, **k: calls.append(files) or real(files, *a, **k))
    again = findings.main(args)
    assert not calls
    printed = capsys.readouterr().out
    assert "1 of 2 runs finished before; 1 to go" in printed
    assert "pretrain: finished before, reusing" in printed
    assert "linear: finished before, reusing" in printed
    assert again["top1"] == saved["top1"]

    # Other settings in the same output dir stop with a sentence, not a mixed table.
    with pytest.raises(ValueError, match="holds a sweep with other settings"):
        findings.main(args[:-1] + ["--gin_param=run.global_batch_size=4"])

    # A pretraining that trains again gets a new linear eval, not the earlier backbone's.
    os.remove(out / "results" / "decreasing-seed0.json")
    os.remove(out / "seed0" / "pretrain_decreasing" / "results.json")
    calls.clear()
    done = {"global_step": 2, "start_step": 2, "train": {}, "eval": {"top1": 0.5, "top5": 1.0}}
    monkeypatch.setattr(train, "run_with_gin",
                        lambda files, *a, **k: calls.append(files) or done)
    findings.Sweep(str(out), scale, PARAMS).run("decreasing", 0)
    assert calls == [["experiments/demo_pretrain.gin"], ["experiments/demo_linear_eval.gin"]]
    assert not os.path.exists(out / "seed0" / "linear_decreasing")  # Removed before the run.
