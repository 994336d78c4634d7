"""The demo's plumbing on a tiny data set: three runs through train.py, a table, results.json."""
import json
import os

import pytest

from cvrl_tf import demo
from cvrl_tf.data import synthetic

pytestmark = pytest.mark.slow


def test_demo_writes_results_and_names_its_dir_last(tmp_path, capsys):
    out = tmp_path / "demo"
    synthetic.write_dataset(str(out / "data"), num_train=16, num_eval=8, num_frames=16, size=32,
                            num_shards=2, seed=0)
    params = ["TRAIN_STEPS=4", "STEPS_PER_LOOP=2", "CHECKPOINT_INTERVAL=2", "BATCH_SIZE=8",
              "EVAL_BATCH_SIZE=8", "MIN_VIDEO_FRAMES=16", "run.image_summaries=False"]
    args = ["--output_dir", str(out)] + [f"--gin_param={p}" for p in params]
    results = demo.main(args)

    printed = capsys.readouterr().out.strip().splitlines()
    assert "Using the motion data set" in "\n".join(printed)
    assert printed[-1] == f"Results written to {out}"
    assert any("CVRL - random" in line for line in printed)
    # Speed and ETA after the second pretraining loop, before any linear evaluation.
    eta = [i for i, line in enumerate(printed) if line.startswith("[demo] measured ")]
    linear = printed.index("== Linear evaluation: cvrl backbone ==")
    assert len(eta) == 1 and eta[0] < linear and "clips/s in pretraining; ETA" in printed[eta[0]]
    assert printed[-2].startswith("[demo] wall time ") and "estimated" in printed[-2]
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["linear_top1"] == results["linear_top1"]
    for name in ("cvrl", "random_init"):
        assert 0.0 <= saved["linear_top1"][name] <= saved["linear_top5"][name] <= 1.0
    assert saved["pretrain"]["steps"] == 4 and saved["num_eval_videos"] == 8
    assert saved["eta"]["clips_per_sec"] > 0
    assert set(saved["eta"]["remaining_sec"]) == {"pretrain", "linear_eval_cvrl",
                                                  "linear_eval_random"}
    runs = saved["model_dirs"]
    assert os.path.exists(os.path.join(runs["pretrain"], "ckpt-4.index"))
    with open(os.path.join(runs["linear_eval_cvrl"], "results.json")) as f:
        assert json.load(f)["initialized_from"].startswith("warm_start:")
    with open(os.path.join(runs["linear_eval_random"], "results.json")) as f:
        assert json.load(f)["initialized_from"] == "scratch"
