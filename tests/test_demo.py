"""The demo's plumbing on a tiny data set: three runs through train.py, a table, results.json."""
import json
import os

import pytest
import tensorflow as tf

from cvrl_tf import demo
from cvrl_tf.data import synthetic

pytestmark = [pytest.mark.slow, pytest.mark.scenario]  # make test-scenarios


def test_demo_writes_results_and_names_its_dir_last(tmp_path, capsys):
    out = tmp_path / "demo"
    synthetic.write_dataset(str(out / "data"), num_train=16, num_eval=8, num_frames=16, size=32,
                            num_shards=2, seed=0)
    params = ["run.train_length=4", "run.steps_per_loop=2", "run.checkpoint_every=2",
              "run.global_batch_size=8", "run.eval_batch_size=8", "run.min_video_frames=16",
              "run.image_summaries=False"]
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
    # Speed and ETA after the second pretraining loop, before any linear evaluation.
    eta = [i for i, line in enumerate(printed) if line.startswith("[demo] measured ")]
    linear = printed.index("== Linear evaluation: cvrl backbone ==")
    assert len(eta) == 1 and eta[0] < linear and "clips/s in pretrain; ETA" in printed[eta[0]]
    assert printed[-3].startswith("[demo] wall time ") and "estimated" in printed[-3]
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["linear_top1"] == results["linear_top1"]
    assert saved["pretrain"]["steps"] == 4 and saved["num_eval_videos"] == 8
    assert saved["eta"]["clips_per_sec"] > 0
    assert set(saved["eta"]["remaining_sec"]) == {"pretrain", "linear_eval_cvrl",
                                                  "linear_eval_random"}
    runs = saved["model_dirs"]
    assert os.path.exists(os.path.join(runs["pretrain"], "ckpt-4.index"))
    for name in ("cvrl", "random"):  # The table shows each linear run's own final accuracy.
        with open(os.path.join(runs[f"linear_eval_{name}"], "results.json")) as f:
            ev = json.load(f)["eval"]
        key = "cvrl" if name == "cvrl" else "random_init"
        assert (saved["linear_top1"][key], saved["linear_top5"][key]) == (ev["top1"], ev["top5"])
        assert ev["num_examples"] == 8
    with open(os.path.join(runs["linear_eval_cvrl"], "results.json")) as f:
        assert json.load(f)["initialized_from"].startswith("warm_start:")
    with open(os.path.join(runs["linear_eval_random"], "results.json")) as f:
        assert json.load(f)["initialized_from"] == "scratch"
