"""The detection demo's plumbing at tiny sizes: the synthetic AVA set through convert_ava, its
own CVRL pretraining when none is given, both detection runs, the table, results.json and the
picture."""
import json
import os

import pytest
import tensorflow as tf

from cvrl_tf import demo_detection

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios


def test_the_detection_demo_writes_both_maps_and_a_picture(tmp_path, capsys):
    out = tmp_path / "demo_detection"
    params = ["run.train_length=4", "run.steps_per_loop=2", "run.checkpoint_every=2",
              "run.global_batch_size=8", "run.eval_batch_size=8", "run.min_video_frames=16",
              "run.image_summaries=False"]
    results = demo_detection.run_demo(
        str(out), str(tmp_path / "no_pretraining"), seed=0, gin_params=params,
        sizes=dict(num_train=4, num_val=2, seconds=5, motion_videos=(16, 8)))
    printed = capsys.readouterr().out
    assert "No finished pretraining in" in printed and "== CVRL pretraining" in printed
    assert "frame mAP at IoU 0.5" in printed and "CVRL - random:" in printed
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert set(saved["frame_map"]) == {"cvrl", "random_init"}
    assert all(0.0 <= v <= 1.0 for v in saved["frame_map"].values())
    assert saved["frame_map"] == results["frame_map"]
    with open(out / "detect_cvrl" / "results.json") as f:
        cvrl = json.load(f)
    assert cvrl["initialized_from"].startswith("warm_start:")
    assert cvrl["initialized_from"].startswith(f"warm_start:{out / 'pretrain'}")
    with open(out / "detect_random" / "results.json") as f:
        assert json.load(f)["initialized_from"] == "scratch"
    with open(results["picture"], "rb") as f:
        assert tf.io.decode_png(f.read()).shape[-1] == 4

    # Run again on the pretraining it left inside its output directory: reused, not redone.
    again = demo_detection.run_demo(
        str(out), str(out / "pretrain"), seed=0, gin_params=params,
        sizes=dict(num_train=4, num_val=2, seconds=5, motion_videos=(16, 8)))
    printed = capsys.readouterr().out
    assert f"Using the CVRL pretraining in {out / 'pretrain'}" in printed
    assert "== CVRL pretraining" not in printed and "frame mAP at IoU 0.5" in printed
    assert tf.train.latest_checkpoint(str(out / "pretrain")).endswith("ckpt-4")
    assert set(again["frame_map"]) == {"cvrl", "random_init"}
