"""Every shipped .gin file parses with unknown names refused, and every experiment resolves to
a run configuration that passes the start-up check (nothing is built or trained here)."""
import glob
import os

import gin
import pytest
import tensorflow as tf

from cvrl_tf import job
from cvrl_tf import train

GIN_DIR = train.GIN_DIR
ALL = sorted(os.path.relpath(p, GIN_DIR)
             for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True))
EXPERIMENTS = [p for p in ALL if p.startswith("experiments/")]
# Values an experiment may leave to the user (%gin.REQUIRED): small and memory-safe.
USER_MACROS = {"TRAIN_DATA": "'/data/train-*'", "EVAL_DATA": "'/data/eval-*'",
               "PRETRAIN_DIR": "'/runs/pretrain'", "CHECKPOINT": "'/runs/model'"}


def test_the_layers_are_shipped():
    for name in ("models/r3d_50.gin", "models/r3d_152_2x.gin", "models/tiny.gin",
                 "runs/pretrain.gin", "runs/linear_eval.gin", "runs/finetune.gin",
                 "runs/evaluate.gin", "experiments/demo_pretrain.gin",
                 "experiments/demo_linear_eval.gin"):
        assert name in ALL, name
    assert len(EXPERIMENTS) >= 12


@pytest.mark.parametrize("path", [p for p in ALL if p.startswith("models/")])
def test_model_files_parse(path):
    train.parse_gin([path])
    assert gin.query_parameter("build_backbone.depth") in (50, 152)
    gin.clear_config()


@pytest.mark.parametrize("path", [p for p in ALL if p.startswith("runs/")])
def test_run_files_parse(path):
    train.parse_gin(["models/tiny.gin", path])
    assert gin.query_parameter("run.mode") in job.config_check.MODES
    gin.clear_config()


def _resolve(path, monkeypatch, tmp_path) -> job.JobConfig:
    """Parses an experiment and returns the JobConfig `run` would start with."""
    captured = {}
    monkeypatch.setattr(job, "run_job", lambda cfg, **kwargs: captured.setdefault("cfg", cfg))
    train.parse_gin([path], [f"{k} = {v}" for k, v in USER_MACROS.items()])
    train.run(model_dir=str(tmp_path))
    gin.clear_config()
    return captured["cfg"]


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiments_resolve_and_pass_the_check(path, monkeypatch, tmp_path):
    with open(os.path.join(GIN_DIR, path)) as f:
        header = f.read().split("include")[0]
    assert "python -m cvrl_tf." in header and "Expect" in header, "header: launch + result"
    with open(os.path.join(GIN_DIR, path)) as f:
        body = [line for line in f if line.strip() and not line.startswith("#")]
    assert all(line.startswith("include ") or line.split("=")[0].strip().isupper()
               for line in body), "experiments hold includes and macros only"
    cfg = _resolve(path, monkeypatch, tmp_path)
    job.check(cfg, tf.distribute.get_strategy())
    assert cfg.mode in ("pretrain", "linear_eval", "finetune", "evaluate")
    if cfg.mode != "pretrain":
        assert cfg.num_classes > 0 and cfg.warm_start


def test_experiments_match_the_paper_recipe(monkeypatch, tmp_path):
    cfg = _resolve("experiments/r3d50_k400_pretrain_200ep.gin", monkeypatch, tmp_path)
    assert (cfg.global_batch_size, cfg.base_lr, cfg.temperature) == (1024, 0.32, 0.1)
    assert (cfg.num_frames, cfg.stride, cfg.crop_size, cfg.weight_decay) == (16, 2, 224, 1e-6)
    assert job.total_train_steps(cfg) == (46875, 1172)  # 200 and 5 epochs of 240k / 1024
    cfg = _resolve("experiments/r3d50_k400_pretrain_800ep.gin", monkeypatch, tmp_path)
    assert cfg.train_epochs == 800
    cfg = _resolve("experiments/r3d50_k400_linear_eval.gin", monkeypatch, tmp_path)
    assert (cfg.mode, cfg.base_lr, cfg.num_frames, cfg.weight_decay) == ("linear_eval", 32.0,
                                                                         32, 0.0)
