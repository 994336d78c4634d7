"""bench.label_efficiency on a tiny budget: one pretraining serves every fraction, subsets per
seed, the same steps for both conditions, the findings.json section and figure, resume."""
import json
import os

import pytest
import tensorflow as tf

from bench import label_efficiency, sweep
from cvrl_tf import train
from cvrl_tf.data import subset, synthetic

pytestmark = pytest.mark.slow  # In-process training runs: one pretraining, four fine-tunings.

PARAMS = ["run.global_batch_size=4", "run.eval_batch_size=6", "run.min_video_frames=16",
          "run.image_summaries=False"]


def test_parse_fractions():
    assert label_efficiency.parse_fractions("1,0.01, 0.1") == [0.01, 0.1, 1.0]
    for bad in ("x", "0", "1.5", ","):
        with pytest.raises(ValueError, match="--fractions"):
            label_efficiency.parse_fractions(bad)
    assert label_efficiency.label(0.01) == "1%" and label_efficiency.run_name(0.1, "cvrl") == (
        "10pct_cvrl")


def test_findings_keeps_the_other_commands_sections(tmp_path):
    sweep.write_findings(str(tmp_path), {"a": 1}, section="semi_supervised")
    sweep.write_findings(str(tmp_path), {"top1": [0.5]})
    sweep.write_findings(str(tmp_path), {"a": 2}, section="semi_supervised")
    with open(tmp_path / "findings.json") as f:
        assert json.load(f) == {"top1": [0.5], "semi_supervised": {"a": 2}}


def test_the_sweep_fine_tunes_every_fraction_from_one_pretraining(tmp_path, monkeypatch, capsys):
    out, docs = tmp_path / "semi", tmp_path / "docs"
    synthetic.write_dataset(str(out / "data"), num_train=36, num_eval=6, num_frames=16, size=32,
                            num_shards=2, seed=0)
    sweep.write_findings(str(docs), {"top1": {"random_init": [0.3]}})  # bench.findings' part.
    train.parse_gin(["experiments/demo_finetune.gin"])
    scale = 2.5 / train.job_config(model_dir="").train_length  # Two fine-tuning steps.
    args = ["--output_dir", str(out), "--docs_dir", str(docs), "--seeds", "1",
            "--fractions", "0.5,1", "--steps_scale", str(scale)]
    args += [f"--gin_param={p}" for p in PARAMS]
    calls = []
    real = train.run_with_gin
    monkeypatch.setattr(train, "run_with_gin", lambda files, *a, **k: calls.append(
        (files, k["model_dir"])) or real(files, *a, **k))
    section = label_efficiency.main(args)

    printed = capsys.readouterr().out
    assert "0 of 4 runs finished before; 4 to go" in printed
    assert "[1/4] 50% of the labels, cvrl, seed 0 (ETA of the rest: unknown" in printed
    pretrain_dir = str(out / "seed0" / "pretrain_cvrl")
    assert [d for _, d in calls] == [pretrain_dir] + [
        str(out / "seed0" / f"finetune_{n}") for n in ("50pct_cvrl", "50pct_scratch",
                                                        "100pct_cvrl", "100pct_scratch")]
    # The 50% subset: 3 of each class's 6 videos, drawn with the seed; 100% has no subset.
    ids = subset.read_ids(str(out / "subsets" / "50pct-seed0.txt"))
    assert len(ids) == 18
    for name, videos, warm in (("50pct_cvrl", 18, True), ("50pct_scratch", 18, False),
                               ("100pct_cvrl", 36, True), ("100pct_scratch", 36, False)):
        with open(out / "seed0" / f"finetune_{name}" / "results.json") as f:
            done = json.load(f)
        assert done["global_step"] == 2 and done["initialized_from"].startswith(
            "warm_start:" if warm else "scratch"), name
        assert (done.get("train_subset") or {}).get("num_videos", 36) == videos, name
    with open(docs / "findings.json") as f:
        saved = json.load(f)
    assert saved["top1"] == {"random_init": [0.3]}  # bench.findings' part is kept.
    assert saved["semi_supervised"] == json.loads(json.dumps(section))
    assert section["fractions"] == [0.5, 1.0] and section["labelled_videos"] == {
        "50%": 18, "100%": 36}
    assert set(section["top1"]["50%"]) == {"cvrl", "scratch"}
    assert section["steps"]["finetune"] == 2 and section["cvrl_minus_scratch"]["100%"] == [
        section["top1"]["100%"]["cvrl"][0] - section["top1"]["100%"]["scratch"][0]]
    with open(docs / label_efficiency.FIGURE, "rb") as f:
        assert tf.io.decode_png(f.read()).shape[:2] == (420, 600)

    # A rerun trains nothing; a lost result is rebuilt from the finished fine-tuning.
    os.remove(out / "results" / "50pct_scratch-seed0.json")
    calls.clear()
    again = label_efficiency.main(args)
    assert not calls and again["top1"] == section["top1"]
    assert "3 of 4 runs finished before; 1 to go" in capsys.readouterr().out
