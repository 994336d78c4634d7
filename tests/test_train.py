"""End to end through the gin root: pretrain -> linear_eval / finetune -> evaluate (once and
continuously), resume (what a resumed run restores and trains), NaN stop.

Tiny: 32 synthetic videos of 16 frames at 32x32, the tiny R3D, 4 steps of batch 8, run
in-process with the shipped demo experiment files and small overrides. Accuracies are checked
exactly against correct / total counted here from the checkpoint's own model.
"""
import gc
import glob
import json
import os
import shutil
import threading

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorflow.python.data.ops import iterator_ops

from cvrl_tf.training import config
from cvrl_tf.training import job
from cvrl_tf.runtime import internals
from cvrl_tf import train
from cvrl_tf.data import synthetic
from cvrl_tf.training.trainer import NonFiniteLossError

pytestmark = pytest.mark.slow

NUM_EVAL = 20  # Not a multiple of the eval batch: the last batch is partial.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=32, num_eval=NUM_EVAL, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


# The smallest model that runs, for tests of the run around it (input, resume, stops): fewer
# layers to trace, which is most of an in-process run's time.
SMALL_MODEL = {"build_backbone.depth": 18, "build_backbone.base_filters": 4,
               "projection_head.num_hidden": 0}


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


def evaluate_params(data_dir, checkpoint, **macros):
    """Mode 'evaluate' on the demo's model and eval clips (8 frames at 32x32), 2 x 3 views."""
    values = {"CHECKPOINT": repr(checkpoint),
              "EVAL_DATA": repr(os.path.join(data_dir, "eval-*")), "NUM_CLASSES": 6,
              "run.num_frames": 8, "run.eval_crop_size": 32, "run.global_batch_size": 8,
              "run.multiview_batch_size": 4, "run.eval_temporal_views": 2,
              "run.eval_spatial_views": 3}
    values.update(macros)
    return [f"{k}={v}" for k, v in values.items()]


EVALUATE = ["models/tiny_motion.gin", "runs/evaluate.gin"]


def counted_accuracy(gin_files, params, checkpoint, views=(1, 1)):
    """(top-1, top-5, examples) of a checkpoint on the job's eval set, counted here: its model
    built and restored outside the job, softmax averaged over the views, numpy top-k."""
    cfg, builders = train.job_from_gin(gin_files, params, model_dir="unused")
    model = config.build_model(cfg, builders)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial() \
        .assert_existing_objects_matched()
    num_frames, stride, crop_size = cfg.eval_clip
    dataset = builders.dataset(cfg.eval_data, "eval", 8, num_frames, stride, crop_size,
                               num_classes=cfg.num_classes, num_temporal_views=views[0],
                               num_spatial_views=views[1], drop_remainder=False)
    top1 = top5 = total = 0
    for batch in dataset:
        video = batch["video"].numpy()
        out = model(video.reshape((-1,) + video.shape[2:]), training=False)
        logits = out["probe_logits" if "probe_logits" in out else "logits"].numpy()
        probs = tf.nn.softmax(logits.astype(np.float64)).numpy()
        probs = probs.reshape(video.shape[:2] + (-1,)).mean(axis=1)
        ranked = np.argsort(-probs, axis=1)
        labels = batch["label"].numpy().reshape(-1)
        top1 += int(np.sum(ranked[:, 0] == labels))
        top5 += int(np.sum(np.any(ranked[:, :5] == labels[:, None], axis=1)))
        total += len(labels)
    return top1 / total, top5 / total, total


def checkpoint_values(path):
    """{key: value} of a checkpoint but its save counter and object graph."""
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    """A 4-step pretraining on two replicas (MirroredStrategy over two logical CPUs)."""
    model_dir = str(tmp_path_factory.mktemp("pretrain"))
    # Fresh collective keys, as conftest's two_replica_strategy does (this fixture is shared).
    internals.bump_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    internals.bump_collective_keys()
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


def test_pretrain_writes_checkpoints_config_results(pretrained, data_dir):
    model_dir, results = pretrained
    assert results["mode"] == "pretrain" and results["global_step"] == 4
    assert results["num_replicas"] == 2 and results["initialized_from"] == "scratch"
    # Negatives come from the whole global batch: 8 videos x 2 views on two replicas.
    assert results["train"]["num_candidates"] == 16
    assert np.isfinite(results["train"]["loss"])
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    # The online probe's top-1 at step 4, as counted here from ckpt-4's model.
    top1, _, total = counted_accuracy(["experiments/demo_pretrain.gin"],
                                      overrides(data_dir),
                                      os.path.join(model_dir, "ckpt-4"))
    assert results["eval"]["num_examples"] == total == NUM_EVAL
    assert results["eval"]["top1"] == top1
    with open(os.path.join(model_dir, "backbone.json")) as f:
        backbone = json.load(f)
    filters = gin.query_parameter("build_backbone.base_filters")  # The demo's model file's.
    assert backbone["base_filters"] == filters and backbone["blocks_per_stage"] == [1, 1, 1, 1]
    with open(os.path.join(model_dir, "config.gin")) as f:
        config_text = f.read()
    assert "run.mode = 'pretrain'" in config_text
    assert f"build_backbone.base_filters = {filters}" in config_text
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


@pytest.fixture(scope="module")
def linear(pretrained, data_dir, tmp_path_factory):
    """A 4-step linear evaluation warm-started from the pretraining run."""
    lin_dir = str(tmp_path_factory.mktemp("linear"))
    return lin_dir, linear_eval(data_dir, lin_dir, pretrained[0])


def test_linear_eval_freezes_the_warm_started_backbone(pretrained, linear, data_dir):
    pretrain_dir, _ = pretrained
    lin_dir, results = linear
    assert results["initialized_from"].startswith("warm_start:")
    assert results["start_step"] == 0 and results["global_step"] == 4

    # The backbone (kernels and BN statistics) is exactly the pretrained one after training.
    reader_pre = tf.train.load_checkpoint(tf.train.latest_checkpoint(pretrain_dir))
    reader_lin = tf.train.load_checkpoint(tf.train.latest_checkpoint(lin_dir))
    keys = [k for k in reader_pre.get_variable_to_shape_map()
            if k.startswith("backbone/") and "OPTIMIZER_SLOT" not in k]
    assert len(keys) > 20
    for key in keys:
        np.testing.assert_array_equal(reader_pre.get_tensor(key), reader_lin.get_tensor(key))

    # Its final eval is correct / total of ckpt-4's model, counted here.
    top1, top5, total = counted_accuracy(
        ["experiments/demo_linear_eval.gin"],
        overrides(data_dir, PRETRAIN_DIR=repr(pretrain_dir)), os.path.join(lin_dir, "ckpt-4"))
    assert results["eval"]["num_examples"] == total == NUM_EVAL
    assert (results["eval"]["top1"], results["eval"]["top5"]) == (top1, top5)


def test_evaluate_reproduces_the_linear_eval_runs_final_top1(linear, data_dir, tmp_path):
    lin_dir, results = linear
    eval_dir = str(tmp_path / "evaluate")
    params = evaluate_params(data_dir, lin_dir)
    out = train.run_with_gin(EVALUATE, params, model_dir=eval_dir)
    ev = out["eval"]
    assert ev["checkpoint"] == os.path.join(lin_dir, "ckpt-4") and ev["global_step"] == 4
    assert ev["num_examples"] == ev["multiview_num_examples"] == NUM_EVAL
    # Single view: exactly the linear_eval run's own final top-1 and top-5.
    assert (ev["top1"], ev["top5"]) == (results["eval"]["top1"], results["eval"]["top5"])
    # 2 x 3 views (softmax averaged), counted here.
    top1, top5, _ = counted_accuracy(EVALUATE, params, ev["checkpoint"], views=(2, 3))
    assert (ev["multiview_top1"], ev["multiview_top5"]) == (top1, top5)
    tags = _tags(os.path.join(eval_dir, "eval"))
    assert {"top1", "top5", "multiview_top1", "multiview_top5"} <= set(tags)
    with open(os.path.join(eval_dir, "results.json")) as f:
        assert json.load(f)["evaluate"]["checkpoint"].endswith("ckpt-4")


def test_evaluate_counts_exactly_on_a_discriminating_checkpoint(data_dir, tmp_path):
    """The tiny runs' heads predict nearly one class for every video, so accuracies alone can
    hardly tell a head from another: here a checkpoint of a randomly initialized backbone gets
    a head fitted (least squares on the centered eval features) to tell the eval videos apart,
    and mode 'evaluate' must count exactly what that checkpoint's model predicts."""
    cfg, builders = train.job_from_gin(["experiments/demo_linear_eval.gin"],
                                       overrides(data_dir, PRETRAIN_DIR="''"),
                                       model_dir="unused")
    keras.utils.set_random_seed(0)
    model = config.build_model(cfg, builders)
    dataset = builders.dataset(cfg.eval_data, "eval", 8, *cfg.eval_clip, num_classes=6,
                               num_temporal_views=1, num_spatial_views=1, drop_remainder=False)
    features, labels = [], []
    for batch in dataset:
        video = batch["video"].numpy()
        features.append(model(video[:, 0], training=False)["feature"].numpy())
        labels.append(batch["label"].numpy().reshape(-1))
    features, labels = np.concatenate(features).astype(np.float64), np.concatenate(labels)
    normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
    mean = normalized.mean(axis=0)
    # Least squares without the centering's null direction (singular values below 1e-6).
    kernel = np.linalg.lstsq(normalized - mean, np.eye(6)[labels] - 1 / 6, rcond=1e-6)[0]
    dense = model.classifier.layers[0]
    dense.kernel.assign(kernel.astype(np.float32))
    dense.bias.assign((-(mean @ kernel)).astype(np.float32))
    fitted = str(tmp_path / "fitted")
    step = tf.Variable(4, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(backbone=model.backbone, model=model,
                                                   step=step), fitted, 1).save(4)

    params = evaluate_params(data_dir, fitted, **{"run.multiview_eval": False})
    ev = train.run_with_gin(EVALUATE, params, model_dir=str(tmp_path / "evaluate"))["eval"]
    top1, top5, _ = counted_accuracy(EVALUATE, params, ev["checkpoint"])
    assert top1 >= 0.5  # The fitted head tells the videos apart (chance: 1/6).
    assert (ev["top1"], ev["top5"]) == (top1, top5)


def test_continuous_evaluation_picks_up_a_checkpoint_written_after_it_started(
        linear, data_dir, tmp_path, monkeypatch):
    lin_dir, results = linear
    watched = str(tmp_path / "watched")
    os.makedirs(watched)
    source = os.path.join(lin_dir, "ckpt-4")
    started = []
    iterator = tf.train.checkpoints_iterator

    def write_later():
        for path in sorted(glob.glob(source + ".*"), key=lambda p: p.endswith(".index")):
            shutil.copy(path, watched)  # Data first, the index last.
        tf.compat.v1.train.update_checkpoint_state(watched, os.path.join(watched, "ckpt-4"))

    def watching(directory, **kwargs):
        started.append(tf.train.latest_checkpoint(directory))
        timer = threading.Timer(2.0, write_later)  # After the watch's first empty look.
        timer.start()
        try:
            yield from iterator(directory, **kwargs)
        finally:
            timer.cancel()

    monkeypatch.setattr(tf.train, "checkpoints_iterator", watching)
    try:
        out = train.run_with_gin(EVALUATE, evaluate_params(
            data_dir, watched, **{"run.continuous_eval": True, "run.eval_timeout": 30,
                                  "run.train_length": 4, "run.multiview_eval": False}),
            model_dir=str(tmp_path / "continuous"))
    except config.ConfigError as e:  # The claim broken, not the test: fail on it, by name.
        pytest.fail(f"continuous evaluation did not wait for the checkpoint: {e}")
    assert started == [None]  # The watch began before the checkpoint existed.
    assert [h["checkpoint"] for h in out["history"]] == [os.path.join(watched, "ckpt-4")]
    assert out["eval"]["global_step"] == 4 and out["eval"]["top1"] == results["eval"]["top1"]


def test_finetune_from_a_warm_start_trains_the_backbone(pretrained, data_dir, tmp_path):
    pretrain_dir, _ = pretrained
    ft_dir = str(tmp_path / "finetune")
    results = train.run_with_gin(
        ["models/tiny_motion.gin", "runs/finetune.gin"],
        overrides(data_dir, PRETRAIN_DIR=repr(pretrain_dir), EVAL_DATA="''", NUM_CLASSES=6,
                  **{"run.train_length": 2, "run.warmup": 0, "run.num_frames": 8,
                     "run.crop_size": 32}),
        model_dir=ft_dir)
    assert results["mode"] == "finetune" and np.isfinite(results["train"]["loss"])
    assert results["initialized_from"].startswith("warm_start:")
    assert results["start_step"] == 0 and results["global_step"] == 2
    pre = checkpoint_values(os.path.join(pretrain_dir, "ckpt-4"))
    fine = checkpoint_values(os.path.join(ft_dir, "ckpt-2"))
    # Every backbone kernel and BN statistic moved away from the pretrained value.
    keys = [k for k in pre if k.startswith("backbone/") and "OPTIMIZER_SLOT" not in k
            and ("kernel" in k or "moving" in k)]
    assert len(keys) > 20
    for key in keys:
        assert not np.array_equal(pre[key], fine[key]), key


def test_resume_trains_only_the_remaining_steps(pretrained, data_dir, tmp_path):
    """From ckpt-4 to step 6: the step, the optimizer (iterations, Adam's slots), the head and
    the input state are the checkpoint's; then only steps 5 and 6 train."""
    model_dir = str(tmp_path / "resumed")
    shutil.copytree(pretrained[0], model_dir)
    ckpt = os.path.join(model_dir, "ckpt-4")
    want = checkpoint_values(ckpt)
    # Keras 3 keys: Adam's slots are optimizer/_variables/N (not zero after 4 steps).
    slot_keys = [k for k in want if k.startswith("optimizer/_variables/")]
    assert any(k.startswith("model/head/") for k in want)
    assert slot_keys and all(np.any(want[k] != 0) for k in slot_keys)

    # What the run starts from: job.build_restored, written back and compared with ckpt-4.
    cfg, builders = train.job_from_gin(["experiments/demo_pretrain.gin"],
                                       overrides(data_dir, **steps(6)), model_dir=model_dir)
    strategy = tf.distribute.get_strategy()
    parts, origin = job.build_restored(cfg, strategy, builders, config.check(cfg, strategy))
    assert origin == f"checkpoint:{ckpt}"
    assert int(parts.global_step.numpy()) == 4 and int(parts.optimizer.iterations.numpy()) == 4
    assert len(slot_keys) >= len(parts.model.trainable_variables)  # Adam: m and v of each.
    restored = checkpoint_values(parts.checkpoint.write(str(tmp_path / "restored" / "ckpt")))
    assert restored.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)

    resumed = pretrain(data_dir, model_dir, **steps(6), EVAL_DATA="''")
    assert resumed["initialized_from"] == f"checkpoint:{ckpt}"
    assert resumed["start_step"] == 4 and resumed["global_step"] == 6
    final = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-6"))
    iterations = [k for k in want if k.startswith("optimizer/_iterations/")]
    assert len(iterations) == 1 and final.get_tensor(iterations[0]) == 6  # 4 restored + 2.


def _iterators_alive() -> int:
    return sum(isinstance(o, iterator_ops.OwnedIterator) for o in gc.get_objects())


def test_resume_order(pretrained, linear, data_dir, tmp_path):
    pretrain_dir, _ = pretrained
    # 1. A checkpoint in model_dir wins (test_resume_trains_only_the_remaining_steps).
    # 2. Else the warm start (backbone only): step counts from 0 (the `linear` run).
    first_dir, first = linear
    assert first["initialized_from"].startswith("warm_start:") and first["start_step"] == 0
    # ... and once model_dir has its own checkpoint, that wins over the warm start.
    lin_dir = str(tmp_path / "linear")
    shutil.copytree(first_dir, lin_dir)
    # (With the garbage collector off, the run's input iterator is gone when the run returns:
    # it does not keep tf.data's threads running in the process.)
    gc.collect()
    gc.disable()
    try:
        before = _iterators_alive()
        again = linear_eval(data_dir, lin_dir, pretrain_dir, **steps(6), EVAL_DATA="''")
        assert _iterators_alive() == before
    finally:
        gc.enable()
    assert again["initialized_from"] == f"checkpoint:{os.path.join(lin_dir, 'ckpt-4')}"
    assert again["start_step"] == 4 and again["global_step"] == 6
    # 3. Else scratch (what the job starts from; the demo's random-init run trains from it).
    cfg, builders = train.job_from_gin(["experiments/demo_linear_eval.gin"],
                                       overrides(data_dir, PRETRAIN_DIR="''"),
                                       model_dir=str(tmp_path / "random"))
    strategy = tf.distribute.get_strategy()
    _, origin = job.build_restored(cfg, strategy, builders, config.check(cfg, strategy))
    assert origin == "scratch"


def test_non_finite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; lower the learning rate"):
        linear_eval(data_dir, str(tmp_path / "nan"), "", **{"run.optimizer": "'sgd'",
                                                              "run.base_lr": 1e38}, **steps(6))


# make test-scenarios: XLA's compile of the whole loop takes half a minute on the slow kind of
# machine; make test compiles the steps themselves (tests/test_steps.py, *_compiles_with_xla).
@pytest.mark.scenario
def test_train_step_compiles_with_xla(data_dir, tmp_path):
    """jit_compile=True (what TPUs do anyway) on the tiny model, one replica: the whole
    pretraining step, the clips' device-side augmentation included, compiled by XLA."""
    results = pretrain(data_dir, str(tmp_path / "xla"), **steps(1), EVAL_DATA="''",
                       **{"run.jit_compile": True, "run.image_summaries": False,
                          "run.steps_per_loop": 1, "run.global_batch_size": 2})
    assert results["global_step"] == 1 and np.isfinite(results["train"]["loss"])
    assert results["train"]["grad_norm"] > 0
