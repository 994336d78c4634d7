"""Every shipped .gin file parses with unknown names refused, and every experiment resolves to
a run configuration that passes the start-up check (nothing is built or trained here)."""
import glob
import os

import gin
import pytest
import tensorflow as tf

from cvrl_tf.training import config
from cvrl_tf import train

GIN_DIR = train.GIN_DIR
ALL = sorted(os.path.relpath(p, GIN_DIR)
             for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True))
EXPERIMENTS = [p for p in ALL if p.startswith("experiments/")]
# Values an experiment may leave to the user (%gin.REQUIRED): small and memory-safe.
USER_MACROS = {"TRAIN_DATA": "'/data/train-*'", "EVAL_DATA": "'/data/eval-*'",
               "PRETRAIN_DIR": "'/runs/pretrain'", "CHECKPOINT": "'/runs/model'"}
K400_TRAIN = 215570  # The Model Garden's Kinetics-400 train count (what the converter records).


def test_the_layers_are_shipped():
    for name in ("models/r3d_50.gin", "models/r3d_152_2x.gin", "models/tiny.gin",
                 "runs/pretrain.gin", "runs/linear_eval.gin", "runs/finetune.gin",
                 "runs/classifier.gin",
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
    if path != "runs/classifier.gin":  # Shared by linear_eval and finetune; sets no mode.
        assert gin.query_parameter("run.mode") in config.MODES
    gin.clear_config()


def _resolve(path, tmp_path, num_train_examples=K400_TRAIN) -> config.JobConfig:
    """Parses an experiment and returns the JobConfig its job would start with (the training
    example count given as the converter's count would give it)."""
    train.parse_gin([path], [f"{k} = {v}" for k, v in USER_MACROS.items()]
                    + [f"run.num_train_examples = {num_train_examples}"])
    cfg = train.job_config(model_dir=str(tmp_path))
    gin.clear_config()
    return cfg


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiments_resolve_and_pass_the_check(path, tmp_path):
    with open(os.path.join(GIN_DIR, path)) as f:
        header = f.read().split("include")[0]
    assert "python -m cvrl_tf." in header and "Expect" in header, "header: launch + result"
    cfg = _resolve(path, tmp_path)
    config.check(cfg, tf.distribute.get_strategy())
    assert cfg.mode in ("pretrain", "linear_eval", "finetune", "detect", "evaluate")
    if cfg.mode != "pretrain":
        assert cfg.num_classes > 0 and cfg.warm_start


def gin_value(path, name):
    train.parse_gin([path], [f"{k} = {v}" for k, v in USER_MACROS.items()])
    try:
        return gin.query_parameter(name)
    finally:
        gin.clear_config()


def test_no_recipe_hard_codes_an_example_count(tmp_path):
    """Epochs follow the data: the count comes from the converter (or the user), never a
    number in a shipped file."""
    for path in EXPERIMENTS:
        train.parse_gin([path], [f"{k} = {v}" for k, v in USER_MACROS.items()])
        cfg = train.job_config(model_dir=str(tmp_path))
        gin.clear_config()
        assert cfg.num_train_examples == 0, path


def test_experiments_match_the_paper_recipe(tmp_path):
    cfg = _resolve("experiments/r3d50_k400_pretrain_200ep.gin", tmp_path)
    # The official update (lr 0.32, wd 1e-6 on twice our loss, replica-averaged) in our terms.
    assert (cfg.global_batch_size, cfg.base_lr, cfg.temperature) == (1024, 0.64, 0.1)
    assert (cfg.num_frames, cfg.stride, cfg.crop_size, cfg.weight_decay) == (16, 2, 224, 5e-7)
    assert gin_value("experiments/r3d50_k400_pretrain_200ep.gin",
                     "build_dataset.shuffle_buffer") == 1024
    steps = config.check(cfg, tf.distribute.get_strategy())
    assert (steps.total, steps.warmup) == (42104, 1053)  # 200 and 5 epochs of 215,570 / 1024
    cfg = _resolve("experiments/r3d50_k400_pretrain_800ep.gin", tmp_path)
    assert cfg.train_length == "800 epochs"
    cfg = _resolve("experiments/r3d50_k400_linear_eval.gin", tmp_path)
    assert (cfg.mode, cfg.base_lr, cfg.num_frames, cfg.weight_decay) == ("linear_eval", 32.0,
                                                                         32, 0.0)


def test_semi_supervised_recipes_use_a_subset_and_the_baseline_starts_from_scratch(tmp_path):
    for name, epochs in (("1pct", "60 epochs"), ("10pct", "30 epochs")):
        cfg = _resolve(f"experiments/r3d50_k400_semi_{name}.gin", tmp_path)
        assert cfg.mode == "finetune" and cfg.train_subset.endswith(f"subset_{name}_seed0.txt")
        assert (cfg.train_length, cfg.warmup, cfg.weight_decay) == (epochs, 0, 0.0)
    train.parse_gin(["experiments/r3d50_k400_supervised.gin"])
    cfg = train.job_config(model_dir=str(tmp_path))
    gin.clear_config()
    assert (cfg.mode, cfg.warm_start, cfg.train_subset) == ("finetune", "", "")
