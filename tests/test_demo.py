"""The demo's plumbing on a tiny data set: three runs through train.py, a table, results.json."""
import json
import os

import pytest
import tensorflow as tf

from cvrl_tf import demo, export
from cvrl_tf.data import synthetic

pytestmark = pytest.mark.slow


def _with_clip_json(run_with_gin):
    """run_with_gin that leaves model_dir/clip.json as training is to write it (kept when
    training already wrote it): the demo's clip, 8 frames at stride 2, 32x32 crops."""
    def run(gin_files, gin_params=(), strategy=None, model_dir=None):
        results = run_with_gin(gin_files, gin_params, strategy, model_dir)
        path = os.path.join(model_dir, export.CLIP_JSON)
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump({"num_frames": 8, "stride": 2, "crop_size": 32}, f)
        return results
    return run


def test_demo_writes_results_and_names_its_dir_last(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo.train, "run_with_gin", _with_clip_json(demo.train.run_with_gin))
    out = tmp_path / "demo"
    synthetic.write_dataset(str(out / "data"), num_train=16, num_eval=8, num_frames=16, size=32,
                            num_shards=2, seed=0)
    params = ["TRAIN_STEPS=2", "STEPS_PER_LOOP=2", "CHECKPOINT_INTERVAL=2", "BATCH_SIZE=8",
              "EVAL_BATCH_SIZE=8", "MIN_VIDEO_FRAMES=16", "run.image_summaries=False"]
    args = ["--output_dir", str(out)] + [f"--gin_param={p}" for p in params]
    results = demo.main(args)

    printed = capsys.readouterr().out.strip().splitlines()
    assert "Using the motion data set" in "\n".join(printed)
    assert printed[-1] == f"Results written to {out}"
    assert printed[-2] == ("Embedding map of the eval set (random init vs CVRL): "
                           f"{out}/embeddings.png")
    with open(out / "embeddings.png", "rb") as f:
        assert tuple(tf.io.decode_png(f.read()).shape) == (450, 800, 4)
    assert any("CVRL - random" in line for line in printed)
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["linear_top1"] == results["linear_top1"]
    for name in ("cvrl", "random_init"):
        assert 0.0 <= saved["linear_top1"][name] <= saved["linear_top5"][name] <= 1.0
    assert saved["pretrain"]["steps"] == 2 and saved["num_eval_videos"] == 8
    runs = saved["model_dirs"]
    assert os.path.exists(os.path.join(runs["pretrain"], "ckpt-2.index"))
    with open(os.path.join(runs["linear_eval_cvrl"], "results.json")) as f:
        assert json.load(f)["initialized_from"].startswith("warm_start:")
    with open(os.path.join(runs["linear_eval_random"], "results.json")) as f:
        assert json.load(f)["initialized_from"] == "scratch"
