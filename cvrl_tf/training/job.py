"""One job of train.py, wired from a JobConfig: build, restore, loop, results.

`run_job(cfg, strategy=..., builders=...)` checks the settings, builds the mode's model and
optimizer under the strategy's scope, initializes them in the resume order
(`checkpoints.resume`), drives an orbit Controller over the training data (with interleaved
evaluation when there is an eval set) and writes results.json. Gin never appears here:
train.py passes the gin-configured builders in as plain callables. `build_restored` is the
build-and-restore phase on its own: what a run starts from.
"""
import contextlib
import dataclasses
import hashlib
import os
import time
from typing import Callable, Optional, Tuple

from absl import logging
import keras
import numpy as np
import orbit
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import distribute
from cvrl_tf.training import evaluation
from cvrl_tf.training import label_subset
from cvrl_tf import optimizers
from cvrl_tf.training import preemption
from cvrl_tf import steps
from cvrl_tf.training import summaries
from cvrl_tf.training import trainer as trainer_lib
from cvrl_tf.training.config import Builders, JobConfig
from cvrl_tf.data import device_augment
from cvrl_tf.data import schema
from cvrl_tf.data import service as data_service
from cvrl_tf.data import source


class Preempted(Exception):
    """Training stopped after a preemption notice (the checkpoint of that step is saved)."""


@dataclasses.dataclass
class _Parts:
    """What the build phase makes: the model, its optimizer and the checkpointed state."""
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    global_step: tf.Variable
    input_state: trainer_lib.InputState
    checkpoint: tf.train.Checkpoint
    loss_weight_decay: float


@contextlib.contextmanager
def _precision(mixed: bool):
    """Keras' global dtype policy for the job (mixed_bfloat16 when asked), restored after."""
    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build(cfg: JobConfig, strategy: tf.distribute.Strategy, builders: Builders,
           schedule: config.Schedule) -> _Parts:
    """The model, the optimizer (built now, as Keras 3 under a strategy needs) and the step."""
    lr = (optimizers.scaled_learning_rate(cfg.base_lr, cfg.global_batch_size,
                                          cfg.lr_reference_batch)
          if cfg.lr_scaling == "linear" else cfg.base_lr)
    learning_rate = optimizers.WarmupCosine(lr, schedule.total, schedule.warmup)
    in_optimizer, in_loss = optimizers.split_weight_decay(cfg.optimizer, cfg.weight_decay)
    with strategy.scope():
        model = config.build_model(cfg, builders)
        optimizer = optimizers.build_optimizer(
            cfg.optimizer, learning_rate, momentum=cfg.momentum, weight_decay=in_optimizer,
            decay_variables=optimizers.decay_variables(model) if in_optimizer else None)
        optimizer.build(model.trainable_variables)
        global_step = orbit.utils.create_global_step()
    input_state = trainer_lib.InputState(strategy.num_replicas_in_sync)
    checkpoint = tf.train.Checkpoint(backbone=model.backbone, model=model, optimizer=optimizer,
                                     step=global_step, input=input_state)
    return _Parts(model, optimizer, global_step, input_state, checkpoint, in_loss)


def build_restored(cfg: JobConfig, strategy: tf.distribute.Strategy, builders: Builders,
                   schedule: config.Schedule) -> Tuple[_Parts, str]:
    """The job's model, optimizer, step and input state as its run starts: built, then
    initialized in the resume order (checkpoints.resume); also the origin it names."""
    parts = _build(cfg, strategy, builders, schedule)
    resuming = bool(checkpoints.list_checkpoints(cfg.model_dir)
                    if tf.io.gfile.isdir(cfg.model_dir) else [])
    if cfg.warm_start and not resuming:
        checkpoints.check_architecture(cfg.warm_start, parts.model.backbone.get_config())
    origin = checkpoints.resume(parts.checkpoint, parts.model.backbone, cfg.model_dir,
                                cfg.warm_start, cfg.start_over)
    return parts, origin


@contextlib.contextmanager
def _determinism(cfg: JobConfig):
    """Seeds Keras (model initialization) from run.seed; run.deterministic also turns on TF op
    determinism for the job (restored after)."""
    from tensorflow.python.framework import config as tf_config  # pylint: disable=C0415
    was = tf_config.is_op_determinism_enabled()
    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if cfg.deterministic and not was:
            tf_config.disable_op_determinism()


def _train_dataset_fn(cfg: JobConfig, builders: Builders,
                      start_positions: Optional[np.ndarray] = None,
                      subset_ids: Optional[list] = None) -> Callable:
    """The per-input-pipeline training dataset (sharded by the strategy's InputContext),
    continuing after `start_positions` (the input positions a restored checkpoint holds); with
    run.data_service_address, computed by the tf.data service's workers (data/service.py),
    which read in no fixed order (positions do not apply)."""
    pretrain = cfg.mode == "pretrain"
    labels = cfg.num_classes if cfg.num_classes > 0 else None
    served = cfg.data_service_address
    if served:
        logging.warning("Training batches come from the tf.data service at %s (dynamic "
                        "sharding over its workers): their order cannot be replayed, so "
                        "run.seed does not apply to them and a resumed run continues with a "
                        "fresh order.", served)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        logging.info("Input pipeline %d of %d (%d replicas in sync).",
                     ctx.input_pipeline_id, ctx.num_input_pipelines, ctx.num_replicas_in_sync)
        dataset = builders.dataset(cfg.train_data, "pretrain" if pretrain else "train",
                                   cfg.global_batch_size, cfg.num_frames, cfg.stride,
                                   cfg.crop_size, ctx, seed=None if served else cfg.seed,
                                   num_classes=labels,
                                   start_positions=None if served else start_positions,
                                   subset_ids=subset_ids)
        if served:  # The whole pipeline, batching included, runs on the service's workers.
            dataset = data_service.distribute(dataset, served)
        return dataset.map(trainer_lib.drop_strings)

    return dataset_fn


def _record_namer(cfg: JobConfig, num_pipelines: int) -> Callable[[np.ndarray], str]:
    """Names a bad record from its (pipeline, file index, record index) row."""
    def name(row) -> str:
        pipeline, file_index, record = (int(v) for v in row)
        if file_index < 0:
            return f"record {record} of {cfg.train_data}"
        try:
            files, _ = source.shard_files(schema.resolve_files(cfg.train_data), num_pipelines,
                                          pipeline)
            return f"record {record} of {files[file_index]}"
        except (ValueError, IndexError):
            return f"record {record} of file {file_index} of input pipeline {pipeline}"
    return name


def _trainer(cfg: JobConfig, strategy: tf.distribute.Strategy, parts: _Parts,
             dataset_fn: Callable, schedule: config.Schedule, jit: bool,
             stop_flag: tf.Variable) -> trainer_lib.Trainer:
    """The orbit trainer running the mode's replica step."""
    if cfg.mode == "pretrain":
        replica_step = steps.make_pretrain_step(parts.model, parts.optimizer, cfg.temperature,
                                                parts.loss_weight_decay, cfg.probe_loss_weight)
        metric_names = steps.PRETRAIN_METRICS + (
            steps.PROBE_METRICS if parts.model.probe is not None else ())
        clips_per_step = 2 * cfg.global_batch_size
    else:
        replica_step = steps.make_classifier_step(parts.model, parts.optimizer,
                                                  parts.loss_weight_decay, cfg.label_smoothing)
        metric_names = steps.CLASSIFIER_METRICS
        clips_per_step = cfg.global_batch_size
    ids_path = None
    if cfg.record_example_ids:
        task_type, task_id = distribute.task_info(strategy)
        tf.io.gfile.makedirs(os.path.join(cfg.model_dir, "example_ids"))
        ids_path = os.path.join(cfg.model_dir, "example_ids",
                                f"{task_type or 'worker'}-{task_id}.txt")
    num_pipelines = distribute.num_input_pipelines(strategy)
    return trainer_lib.Trainer(
        strategy=strategy, dataset_fn=dataset_fn, replica_step=replica_step,
        global_step=parts.global_step, total_steps=schedule.total,
        clips_per_step=clips_per_step, metric_names=metric_names, jit_compile=jit,
        input_state=parts.input_state, stop_flag=stop_flag, ids_path=ids_path,
        max_bad_fraction=cfg.max_bad_fraction,
        describe_record=_record_namer(cfg, num_pipelines),
        profile_steps=cfg.profile_steps, profile_dir=os.path.join(cfg.model_dir, "train"))


def run_job(cfg: JobConfig, *, strategy: tf.distribute.Strategy, builders: Builders) -> dict:
    """Runs cfg.mode end to end under strategy; returns the results written to results.json.

    On a preemption notice (SIGTERM, SIGINT, a GCE maintenance or preemption event) training
    stops after the current step on every worker, that step is checkpointed, and the results
    say 'preempted' (the same command resumes it).
    """
    start = time.time()
    schedule = config.check(cfg, strategy)
    if cfg.mode == "evaluate":
        return evaluation.run_evaluate(cfg, strategy, builders, schedule.total)
    chief = distribute.is_chief(strategy)
    subset_ids = label_subset.prepare(cfg, distribute.num_input_pipelines(strategy), chief)
    write_dir = distribute.write_dir(cfg.model_dir, strategy)
    jit = (isinstance(strategy, tf.distribute.TPUStrategy) if cfg.jit_compile is None
           else cfg.jit_compile)
    pretrain = cfg.mode == "pretrain"
    train = None
    try:
        with _precision(cfg.mixed_precision), _determinism(cfg):
            # Build and restore: the model and optimizer under the strategy's scope, then the
            # resume order of checkpoints.resume (checkpoint, warm start, scratch).
            parts, origin = build_restored(cfg, strategy, builders, schedule)
            backbone_kwargs = parts.model.backbone.get_config()
            start_step = int(parts.global_step.numpy())
            if chief:
                checkpoints.write_json(cfg.model_dir, checkpoints.BACKBONE_JSON,
                                       backbone_kwargs)
                checkpoints.write_json(cfg.model_dir, checkpoints.CLIP_JSON, {
                    "num_frames": cfg.num_frames, "stride": cfg.stride,
                    "crop_size": cfg.crop_size})

            # Loop: data (continuing where the checkpoint's input stood), the trainer, the
            # evaluator, checkpoints every interval and on a preemption notice.
            positions = (parts.input_state.positions.numpy()
                         if origin.startswith("checkpoint:") else None)
            made = []  # The datasets the trainer's strategy made: one per input pipeline here.
            dataset_fn = _recorded(_train_dataset_fn(cfg, builders, positions, subset_ids),
                                   made)
            stop_flag = tf.Variable(False, trainable=False, name="preemption_notice")
            train = _trainer(cfg, strategy, parts, dataset_fn, schedule, jit, stop_flag)
            evaluator = None
            if cfg.eval_data and (not pretrain or parts.model.probe is not None):
                evaluator = evaluation.make_evaluator(cfg, strategy, builders, parts.model)
            saver = checkpoints.Saver(parts.checkpoint, write_dir, parts.global_step,
                                      schedule.checkpoint_every, cfg.max_checkpoints,
                                      guarded=parts.model.trainable_variables)

            def after_loop(_):
                saver.maybe_save(force=train.stopped_early)
                if train.stopped_early:
                    raise Preempted()

            summary_dir = os.path.join(cfg.model_dir, "train") if chief else None
            controller = orbit.Controller(
                global_step=parts.global_step, trainer=train, evaluator=evaluator,
                strategy=strategy, steps_per_loop=schedule.steps_per_loop,
                train_actions=[after_loop], summary_dir=summary_dir,
                eval_summary_dir=os.path.join(cfg.model_dir, "eval") if chief else None)
            if chief:
                if cfg.image_summaries and start_step == 0:
                    summaries.write_clip_images(summary_dir, _first_batch(made[0]),
                                                pretrain=pretrain)
                summaries.write_config(cfg.model_dir, summary_dir, builders.config_str())
            eval_output, preempted = None, False
            try:
                with preemption.Notice(stop_flag):
                    if evaluator is not None and start_step < schedule.total:
                        eval_output = controller.train_and_evaluate(
                            schedule.total, eval_steps=cfg.eval_steps,
                            eval_interval=schedule.eval_every or None)
                    elif evaluator is not None:
                        eval_output = controller.evaluate(cfg.eval_steps)
                    else:
                        controller.train(schedule.total, checkpoint_at_completion=False)
            except Preempted:
                preempted = True
            saver.maybe_save(force=True)

        # Results.
        step = int(parts.global_step.numpy())
        digest = weights_digest(parts.model.variables + parts.optimizer.variables)
        task_type, task_id = distribute.task_info(strategy)
        logging.info("Final weights of %s %d at step %d: sha256 %s", task_type or "worker",
                     task_id, step, digest)
        results = {
            "mode": cfg.mode, "global_step": step, "start_step": start_step,
            "total_steps": schedule.total, "num_replicas": strategy.num_replicas_in_sync,
            "initialized_from": origin, "preempted": preempted,
            "train": dict(train.last_output), "eval": dict(eval_output or {}),
            "input": parts.input_state.summary(), "weights_sha256": digest,
            "wall_time_sec": time.time() - start,
        }
        if subset_ids is not None:
            results["train_subset"] = label_subset.summary(cfg, subset_ids)
        if chief:
            summaries.write_results(cfg.model_dir, results)
        if preempted:
            message = (f"Preempted: saved the checkpoint of step {step} in {cfg.model_dir}; "
                       f"run the same command again to resume from it.")
            logging.warning(message)
            print(message, flush=True)
        return results
    finally:
        if train is not None:
            train.close()
        distribute.remove_write_dir(write_dir, cfg.model_dir)


def weights_digest(variables) -> str:
    """sha256 of the variables' names and values as this process holds them: workers that
    stayed in sync (weights, BatchNorm statistics, optimizer state) log the same digest."""
    sha = hashlib.sha256()
    for variable in sorted(variables, key=lambda v: v.path):
        value = np.asarray(variable.numpy())
        sha.update(f"{variable.path}:{value.dtype}:{value.shape};".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def _recorded(dataset_fn: Callable, made: list) -> Callable:
    """dataset_fn, appending each dataset it makes to `made`."""
    def recording_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = dataset_fn(ctx)
        made.append(dataset)
        return dataset
    return recording_fn


def _first_batch(dataset: tf.data.Dataset) -> tf.Tensor:
    """The video of the first per-replica batch of this process's training dataset, as the
    model sees it (device-side augmentation applied here), for the image summaries. A new
    iterator over the dataset the trainer already built: no second pipeline to build and trace,
    and the trainer's own iterator is left untouched."""
    batch = next(iter(dataset.take(1)))
    if device_augment.PARAMS_KEY in batch:  # Eagerly, the batched form is the fast one.
        batch = device_augment.augment_batch(batch, batched=True)
    return batch["video"]
