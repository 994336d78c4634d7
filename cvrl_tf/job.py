"""One job of train.py, wired from explicit settings: models, data, checkpoints, orbit loop.

`run_job(JobConfig, ...)` builds everything for one mode under the strategy's scope and
drives an orbit Controller. Gin never appears here: train.py passes the gin-configured
builders (build_backbone, projection_head, ...) in as plain callables.

Resume order (implemented by `_resume`, used as the CheckpointManager's init_fn):
latest checkpoint in model_dir, else the warm-start checkpoint (backbone only), else scratch.
"""
import dataclasses
import json
import math
import os
import time
from typing import Callable, Optional

from absl import logging
import keras
import orbit
import tensorflow as tf

from cvrl_tf import config_check
from cvrl_tf import distribute
from cvrl_tf import evaluation
from cvrl_tf import export
from cvrl_tf import models
from cvrl_tf import optimizers
from cvrl_tf import steps
from cvrl_tf import summaries
from cvrl_tf import trainer as trainer_lib
from cvrl_tf.config_check import ConfigError

PRETRAIN_METRICS = ("loss", "contrastive_loss", "contrastive_accuracy", "contrastive_entropy",
                    "positive_similarity", "weight_decay_loss", "grad_norm", "learning_rate",
                    "num_candidates")
PROBE_METRICS = ("probe_loss", "probe_accuracy")
CLASSIFIER_METRICS = ("loss", "classification_loss", "accuracy", "weight_decay_loss",
                      "grad_norm", "learning_rate")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The settings of one run; gin binds them as `run.<field>` (train.run's signature is
    built from these fields, so names and defaults live here only).

    Data: `train_data`/`eval_data` are TFRecord globs (or 'tfds:<name>/<config>/<split>');
    clips are `num_frames` at `stride`, cropped to `crop_size` (eval_* default to these).
    Length: `train_steps`, or `train_epochs` x `num_train_examples` / `global_batch_size`.
    Learning rate: `base_lr` for `lr_reference_batch` videos, scaled linearly to the global
    batch when `lr_scaling='linear'`; warmup then cosine to 0. `weight_decay` acts on conv and
    dense kernels only. `classifier` ('linear', 'finetune' or 'probe') picks the head to
    evaluate in mode 'evaluate' (default: 'linear'). `jit_compile=None` means on for TPU only.
    """
    mode: str
    model_dir: str
    train_data: str = ""
    eval_data: str = ""
    num_classes: int = 0
    global_batch_size: int = 64
    eval_batch_size: int = 0
    multiview_batch_size: int = 0
    train_steps: int = 0
    train_epochs: float = 0.0
    num_train_examples: int = 0
    num_frames: int = 16
    stride: int = 2
    crop_size: int = 224
    eval_num_frames: int = 0
    eval_stride: int = 0
    eval_crop_size: int = 0
    eval_temporal_views: int = 10
    eval_spatial_views: int = 3
    min_video_frames: int = 0
    optimizer: str = "sgd"
    base_lr: float = 0.32
    lr_scaling: str = "linear"
    lr_reference_batch: int = 1024
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    temperature: float = 0.1
    online_probe: bool = True
    classifier: str = ""
    steps_per_loop: int = 100
    checkpoint_interval: int = 1000
    max_checkpoints: int = 5
    eval_interval: int = 0
    eval_steps: int = -1
    multiview_eval: bool = True
    eval_checkpoint: str = ""
    continuous_eval: bool = False
    eval_timeout: float = 3600.0
    warm_start: str = ""
    jit_compile: Optional[bool] = None
    mixed_precision: bool = False
    seed: Optional[int] = None
    image_summaries: bool = True

    @property
    def eval_clip(self) -> tuple:
        """(num_frames, stride, crop_size) of evaluation clips."""
        return (self.eval_num_frames or self.num_frames, self.eval_stride or self.stride,
                self.eval_crop_size or self.crop_size)


@dataclasses.dataclass(frozen=True)
class Builders:
    """The (gin-configured) constructors a job calls."""
    backbone: Callable[..., keras.Model]
    projection_head: Callable[..., keras.Layer]
    finetune_classifier: Callable[..., keras.Layer]
    dataset: Callable[..., tf.data.Dataset]
    config_str: Callable[[], str] = lambda: ""


def total_train_steps(cfg: JobConfig) -> tuple[int, int]:
    """(train steps, warmup steps) from steps or epochs x examples / batch."""
    if cfg.train_steps > 0:
        total = cfg.train_steps
    elif cfg.train_epochs > 0 and cfg.num_train_examples > 0:
        total = math.ceil(cfg.train_epochs * cfg.num_train_examples / cfg.global_batch_size)
    else:
        raise ConfigError("The run length is unset: set run.train_steps, or run.train_epochs "
                          "with run.num_train_examples.")
    if cfg.warmup_steps and cfg.warmup_epochs:
        raise ConfigError("Both run.warmup_steps and run.warmup_epochs are set; keep one.")
    warmup = cfg.warmup_steps
    if cfg.warmup_epochs:
        if cfg.num_train_examples < 1:
            raise ConfigError("run.warmup_epochs needs run.num_train_examples; set it or use "
                              "run.warmup_steps.")
        warmup = round(cfg.warmup_epochs * cfg.num_train_examples / cfg.global_batch_size)
    if warmup > total:
        raise ConfigError(f"The warmup ({warmup} steps) is longer than the run ({total} "
                          f"steps); shorten run.warmup_epochs/warmup_steps.")
    return total, warmup


def check(cfg: JobConfig, strategy: tf.distribute.Strategy) -> None:
    """All start-up checks: refuses (ConfigError) or warns, one sentence each."""
    config_check.check_mode(cfg.mode, cfg.train_data, cfg.eval_data, cfg.num_classes,
                            cfg.warm_start)
    replicas = strategy.num_replicas_in_sync
    config_check.check_batch(cfg.global_batch_size, replicas)
    config_check.check_batch(cfg.eval_batch_size or cfg.global_batch_size, replicas,
                             "eval_batch_size")
    config_check.check_batch(cfg.multiview_batch_size or cfg.eval_batch_size
                             or cfg.global_batch_size, replicas, "multiview_batch_size")
    config_check.check_learning_rate(cfg.optimizer, cfg.lr_scaling, cfg.global_batch_size,
                                     cfg.lr_reference_batch)
    config_check.check_clip(cfg.num_frames, cfg.stride, cfg.min_video_frames)
    config_check.check_clip(cfg.eval_clip[0], cfg.eval_clip[1], cfg.min_video_frames, "eval_")
    config_check.check_intervals(cfg.steps_per_loop, cfg.checkpoint_interval, cfg.eval_interval)
    if cfg.classifier not in ("", "linear", "finetune", "probe"):
        raise ConfigError(f"run.classifier={cfg.classifier!r} is unknown; use 'linear', "
                          f"'finetune' or 'probe'.")
    if cfg.mode != "evaluate":
        total_train_steps(cfg)
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if cfg.jit_compile and not on_tpu and replicas > 1:
        raise ConfigError("run.jit_compile=True needs one replica (or a TPU, which compiles "
                          "anyway); set run.jit_compile=False for this strategy.")


_CLASSIFIER_OF_MODE = {"linear_eval": "linear", "finetune": "finetune", "pretrain": "probe"}


def _classifier_kind(cfg: JobConfig) -> str:
    return _CLASSIFIER_OF_MODE.get(cfg.mode) or cfg.classifier or "linear"


def build_model(cfg: JobConfig, builders: Builders) -> keras.Model:
    """The mode's Keras model: CVRLModel for pretraining (and probes), else ClassifierModel."""
    backbone = builders.backbone()
    kind = _classifier_kind(cfg)
    if kind == "probe":
        probe = cfg.num_classes if (cfg.online_probe and cfg.num_classes > 0) else None
        return models.CVRLModel(backbone, builders.projection_head(), probe_classes=probe)
    if kind == "linear":
        return models.ClassifierModel(backbone, models.linear_classifier(cfg.num_classes),
                                      freeze_backbone=True, l2_normalize=True)
    return models.ClassifierModel(backbone, builders.finetune_classifier(cfg.num_classes),
                                  freeze_backbone=False, l2_normalize=False)


def _warm_start_path(warm_start: str) -> str:
    """A checkpoint prefix from run.warm_start (a prefix, or a dir: its latest checkpoint)."""
    path = tf.train.latest_checkpoint(warm_start) if tf.io.gfile.isdir(warm_start) else warm_start
    if not path or not tf.io.gfile.glob(path + "*"):
        raise ConfigError(f"run.warm_start={warm_start!r} holds no checkpoint; point it to a "
                          f"pretraining model_dir or a ckpt-N prefix.")
    return path


def _resume(checkpoint: tf.train.Checkpoint, backbone: keras.Model, model_dir: str,
            warm_start: str, record: dict) -> None:
    """The resume order: latest in model_dir, else warm start (backbone only), else scratch."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        record["initialized_from"] = f"checkpoint:{latest}"
    elif warm_start:
        path = _warm_start_path(warm_start)
        status = tf.train.Checkpoint(backbone=backbone).restore(path).expect_partial()
        try:
            status.assert_existing_objects_matched()
        except AssertionError as e:
            raise ConfigError(f"run.warm_start={warm_start!r} has no backbone matching this "
                              f"run's; include the pretraining run's gin/models file.") from e
        record["initialized_from"] = f"warm_start:{path}"
    else:
        record["initialized_from"] = "scratch"
    logging.info("Initialized from %s", record["initialized_from"])
    print(f"Initialized from {record['initialized_from']}", flush=True)


def _with_candidates(replica_step: steps.Step, rows_per_replica: int) -> steps.Step:
    """Adds 'num_candidates': clips of the global batch that info_nce compares each anchor
    with (it gathers every replica's embeddings in this same replica context)."""
    def step(batch):
        outputs = dict(replica_step(batch))
        ctx = tf.distribute.get_replica_context()
        outputs["num_candidates"] = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(float(rows_per_replica)))
        return outputs
    return step


def run_job(cfg: JobConfig, *, strategy: tf.distribute.Strategy, builders: Builders) -> dict:
    """Runs cfg.mode end to end under strategy; returns the results written to results.json."""
    start = time.time()
    check(cfg, strategy)
    if cfg.mode == "evaluate":
        return evaluation.run_evaluate(cfg, strategy, builders, build_model)
    total_steps, warmup = total_train_steps(cfg)
    chief = distribute.is_chief(strategy)
    write_dir = distribute.write_dir(cfg.model_dir, strategy)
    replicas = strategy.num_replicas_in_sync
    jit = (isinstance(strategy, tf.distribute.TPUStrategy) if cfg.jit_compile is None
           else cfg.jit_compile)
    previous_policy = keras.mixed_precision.global_policy()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        lr = (optimizers.scaled_learning_rate(cfg.base_lr, cfg.global_batch_size,
                                              cfg.lr_reference_batch)
              if cfg.lr_scaling == "linear" else cfg.base_lr)
        schedule = optimizers.WarmupCosine(lr, total_steps, warmup)
        with strategy.scope():
            model = build_model(cfg, builders)
            in_optimizer = cfg.optimizer in ("lars", "adamw")
            optimizer = optimizers.build_optimizer(
                cfg.optimizer, schedule, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay if in_optimizer else 0.0,
                decay_variables=optimizers.decay_variables(model) if in_optimizer else None)
            optimizer.build(model.trainable_variables)
            global_step = orbit.utils.create_global_step()
        step_wd = 0.0 if in_optimizer else cfg.weight_decay
        backbone = model.backbone
        backbone_kwargs = backbone.get_config()
        if cfg.warm_start and not tf.train.latest_checkpoint(cfg.model_dir):
            config_check.check_warm_start_architecture(cfg.warm_start, backbone_kwargs)
        if chief:
            tf.io.gfile.makedirs(cfg.model_dir)
            with tf.io.gfile.GFile(os.path.join(cfg.model_dir, export.BACKBONE_JSON), "w") as f:
                json.dump(backbone_kwargs, f, indent=2, sort_keys=True)

        pretrain = cfg.mode == "pretrain"
        data_mode = "pretrain" if pretrain else "train"
        labels = cfg.num_classes if cfg.num_classes > 0 else None

        def train_dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            logging.info("Input pipeline %d of %d (%d replicas in sync).",
                         ctx.input_pipeline_id, ctx.num_input_pipelines, ctx.num_replicas_in_sync)
            dataset = builders.dataset(cfg.train_data, data_mode, cfg.global_batch_size,
                                       cfg.num_frames, cfg.stride, cfg.crop_size, ctx,
                                       seed=cfg.seed, num_classes=labels)
            return dataset.map(trainer_lib.drop_strings)

        if pretrain:
            replica_step = _with_candidates(
                steps.make_pretrain_step(model, optimizer, cfg.temperature, step_wd),
                2 * cfg.global_batch_size // replicas)
            metric_names = PRETRAIN_METRICS + (PROBE_METRICS if model.probe is not None else ())
        else:
            replica_step = steps.make_classifier_step(model, optimizer, step_wd)
            metric_names = CLASSIFIER_METRICS
        train = trainer_lib.Trainer(
            strategy=strategy, dataset_fn=train_dataset_fn, replica_step=replica_step,
            global_step=global_step, total_steps=total_steps,
            clips_per_step=cfg.global_batch_size * (2 if pretrain else 1),
            metric_names=metric_names, jit_compile=jit)
        evaluator = None
        has_eval = bool(cfg.eval_data) and (not pretrain or model.probe is not None)
        if has_eval:
            evaluator = evaluation.make_evaluator(cfg, strategy, builders, model, views=(1, 1))

        checkpoint = tf.train.Checkpoint(backbone=backbone, model=model, optimizer=optimizer,
                                         step=global_step)
        record: dict = {}
        manager = tf.train.CheckpointManager(
            checkpoint, write_dir, max_to_keep=cfg.max_checkpoints, step_counter=global_step,
            checkpoint_interval=cfg.checkpoint_interval or total_steps,
            init_fn=lambda: _resume(checkpoint, backbone, cfg.model_dir, cfg.warm_start, record))
        latest_before = tf.train.latest_checkpoint(write_dir)
        summary_dir = os.path.join(cfg.model_dir, "train") if chief else None
        eval_dir = os.path.join(cfg.model_dir, "eval") if chief else None
        controller = orbit.Controller(
            global_step=global_step, trainer=train, evaluator=evaluator, strategy=strategy,
            steps_per_loop=cfg.steps_per_loop, checkpoint_manager=manager,
            summary_dir=summary_dir, eval_summary_dir=eval_dir)
        if latest_before:
            record["initialized_from"] = f"checkpoint:{latest_before}"
            print(f"Initialized from {record['initialized_from']}", flush=True)
        if chief:
            if cfg.image_summaries and int(global_step.numpy()) == 0:
                summaries.write_clip_images(summary_dir, _first_batch(train_dataset_fn, replicas),
                                            pretrain=pretrain)
            summaries.write_config(cfg.model_dir, summary_dir, builders.config_str())

        eval_output = None
        if evaluator is not None:
            if int(global_step.numpy()) < total_steps:
                eval_output = controller.train_and_evaluate(
                    total_steps, eval_steps=cfg.eval_steps,
                    eval_interval=cfg.eval_interval or None)
            else:
                eval_output = controller.evaluate(cfg.eval_steps)
        else:
            controller.train(total_steps)
        results = {
            "mode": cfg.mode, "global_step": int(global_step.numpy()), "total_steps": total_steps,
            "num_replicas": replicas, "initialized_from": record.get("initialized_from"),
            "train": dict(train.last_output),
            "eval": dict(eval_output or {}), "wall_time_sec": time.time() - start,
        }
        if chief:
            summaries.write_results(cfg.model_dir, results)
        return results
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        distribute.remove_write_dir(write_dir, cfg.model_dir)


def _first_batch(dataset_fn: Callable, replicas: int) -> tf.Tensor:
    """The video of one per-replica batch, for the image summaries (no strategy involved)."""
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=replicas)
    return next(iter(dataset_fn(ctx).take(1)))["video"]

