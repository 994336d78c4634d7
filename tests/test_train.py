"""End to end through the gin root: pretrain -> linear_eval -> evaluate, resume order, NaN stop.

Tiny: 32 synthetic videos of 16 frames at 32x32, the tiny R3D, 4 steps of batch 8, run
in-process with the shipped demo experiment files and small overrides.
"""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from cvrl_tf import train
from cvrl_tf.data import synthetic
from cvrl_tf.trainer import NonFiniteLossError

pytestmark = pytest.mark.slow

NUM_EVAL = 20  # Not a multiple of the eval batch: the last batch is partial.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=32, num_eval=NUM_EVAL, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


def overrides(data_dir, **macros):
    """Small, memory-safe macro overrides for the demo experiment files."""
    values = {"TRAIN_DATA": repr(os.path.join(data_dir, "train-*")),
              "EVAL_DATA": repr(os.path.join(data_dir, "eval-*")),
              "run.train_length": 4, "run.steps_per_loop": 2, "run.checkpoint_every": 2,
              "run.global_batch_size": 8, "run.eval_batch_size": 8, "run.min_video_frames": 16}
    values.update(macros)
    return [f"{k}={v}" for k, v in values.items()]


def steps(n):
    return {"run.train_length": n}


def pretrain(data_dir, model_dir, strategy=None, **macros):
    return train.run_with_gin(["experiments/demo_pretrain.gin"], overrides(data_dir, **macros),
                              strategy=strategy, model_dir=model_dir)


def linear_eval(data_dir, model_dir, pretrain_dir, **macros):
    return train.run_with_gin(["experiments/demo_linear_eval.gin"],
                              overrides(data_dir, PRETRAIN_DIR=repr(pretrain_dir), **macros),
                              model_dir=model_dir)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    """A 4-step pretraining on two replicas (MirroredStrategy over two logical CPUs)."""
    model_dir = str(tmp_path_factory.mktemp("pretrain"))
    # Fresh collective keys, as conftest's two_replica_strategy does (this fixture is shared).
    tf.distribute.MirroredStrategy._collective_key_base += 100000  # pylint: disable=W0212
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    tf.distribute.MirroredStrategy._collective_key_base += 100000  # pylint: disable=W0212
    results = pretrain(data_dir, model_dir, strategy=strategy)
    return model_dir, results


def _tags(directory):
    """{tag: plugin} of every tensor summary in the event files of a directory."""
    tags = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            tags[tag] = acc.summary_metadata[tag].plugin_data.plugin_name
    return tags


def test_pretrain_writes_checkpoints_config_results(pretrained):
    model_dir, results = pretrained
    assert results["mode"] == "pretrain" and results["global_step"] == 4
    assert results["num_replicas"] == 2 and results["initialized_from"] == "scratch"
    # Negatives come from the whole global batch: 8 videos x 2 views on two replicas.
    assert results["train"]["num_candidates"] == 16
    assert np.isfinite(results["train"]["loss"])
    assert 0 <= results["eval"]["top1"] <= 1 and results["eval"]["num_examples"] == NUM_EVAL
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    with open(os.path.join(model_dir, "backbone.json")) as f:
        backbone = json.load(f)
    assert backbone["base_filters"] == 16 and backbone["blocks_per_stage"] == [1, 1, 1, 1]
    with open(os.path.join(model_dir, "config.gin")) as f:
        config = f.read()
    assert "run.mode = 'pretrain'" in config and "build_backbone.base_filters = 16" in config
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f)["global_step"] == 4


def test_tensorboard_tags(pretrained):
    model_dir, _ = pretrained
    train_tags = _tags(os.path.join(model_dir, "train"))
    for tag in ("loss", "contrastive_accuracy", "contrastive_entropy", "learning_rate",
                "weight_decay_loss", "grad_norm", "clips_per_sec", "clips_per_sec_per_replica",
                "input_wait_share", "probe_accuracy"):
        assert train_tags.get(tag) == "scalars", tag
    assert train_tags["augmented_clips"] == "images"
    assert train_tags["config/gin"] == "text"
    eval_tags = _tags(os.path.join(model_dir, "eval"))
    assert eval_tags.get("top1") == "scalars" and eval_tags.get("top5") == "scalars"


def test_linear_eval_freezes_the_warm_started_backbone_then_evaluate(pretrained, data_dir,
                                                                     tmp_path):
    pretrain_dir, _ = pretrained
    lin_dir = str(tmp_path / "linear")
    results = linear_eval(data_dir, lin_dir, pretrain_dir)
    assert results["initialized_from"].startswith("warm_start:")
    assert results["global_step"] == 4 and 0 <= results["eval"]["top1"] <= 1

    # The backbone (kernels and BN statistics) is exactly the pretrained one after training.
    reader_pre = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrain_dir))
    reader_lin = tf.train.load_checkpoint(tf.train.latest_checkpoint(lin_dir))
    keys = [k for k in reader_pre.get_variable_to_shape_map()
            if k.startswith("backbone/") and "OPTIMIZER_SLOT" not in k]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(reader_pre.get_tensor(key), reader_lin.get_tensor(key))

    eval_dir = str(tmp_path / "evaluate")
    out = train.run_with_gin(
        ["models/tiny.gin", "runs/evaluate.gin"],
        [f"CHECKPOINT={lin_dir!r}", f"EVAL_DATA={os.path.join(data_dir, 'eval-*')!r}",
         "NUM_CLASSES=6", "run.num_frames=8", "run.eval_crop_size=32",
         "run.global_batch_size=8", "run.multiview_batch_size=4", "run.eval_temporal_views=2",
         "run.eval_spatial_views=3"],
        model_dir=eval_dir)
    ev = out["eval"]
    assert ev["global_step"] == 4 and ev["num_examples"] == NUM_EVAL
    assert ev["multiview_num_examples"] == NUM_EVAL
    assert 0 <= ev["top1"] <= ev["top5"] <= 1 and 0 <= ev["multiview_top1"] <= 1
    tags = _tags(os.path.join(eval_dir, "eval"))
    assert {"top1", "top5", "multiview_top1", "multiview_top5"} <= set(tags)
    with open(os.path.join(eval_dir, "results.json")) as f:
        assert json.load(f)["evaluate"]["checkpoint"].endswith("ckpt-4")


def test_resume_order(pretrained, data_dir, tmp_path):
    pretrain_dir, _ = pretrained
    # 1. A checkpoint in model_dir wins: the run continues from step 4 to 6.
    resumed = pretrain(data_dir, pretrain_dir, **steps(6))
    assert resumed["initialized_from"].endswith("ckpt-4") and resumed["global_step"] == 6
    assert resumed["initialized_from"].startswith("checkpoint:")
    # 2. Else the warm start (backbone only): step counts from 0.
    lin_dir = str(tmp_path / "linear")
    first = linear_eval(data_dir, lin_dir, pretrain_dir, **steps(2))
    assert first["initialized_from"].startswith("warm_start:") and first["global_step"] == 2
    # ... and once model_dir has its own checkpoint, that wins over the warm start.
    again = linear_eval(data_dir, lin_dir, pretrain_dir, **steps(4))
    assert again["initialized_from"].startswith("checkpoint:") and again["global_step"] == 4
    # 3. Else scratch.
    scratch = linear_eval(data_dir, str(tmp_path / "random"), "", **steps(2))
    assert scratch["initialized_from"] == "scratch"


def test_non_finite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; lower the learning rate"):
        linear_eval(data_dir, str(tmp_path / "nan"), "", **{"run.optimizer": "'sgd'",
                                                              "run.base_lr": 1e38}, **steps(6))


def test_train_step_compiles_with_xla(data_dir, tmp_path):
    """jit_compile=True (what TPUs do anyway) on the tiny model, one replica."""
    results = pretrain(data_dir, str(tmp_path / "xla"), **steps(2), EVAL_DATA="''",
                       **{"run.jit_compile": True, "run.image_summaries": False})
    assert results["global_step"] == 2 and np.isfinite(results["train"]["loss"])
