"""One job of train.py, wired from a JobConfig: build, restore, loop, results.

`run_job(cfg, strategy=..., builders=...)` checks the settings, settles the run's seed, builds
the mode's model and optimizer under the strategy's scope, initializes them in the resume order
(`checkpoints.resume`), drives the controller over the training data (with interleaved
evaluation when there is an eval set) and writes results.json. A preemption notice (SIGTERM,
SIGINT, a GCE maintenance or preemption event) stops it cleanly in any phase (`Stopped`). Gin
never appears here: train.py passes the gin-configured builders in as plain callables.
`build_restored` is the build-and-restore phase on its own: what a run starts from.
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

from cvrl_tf import optimizers
from cvrl_tf import steps
from cvrl_tf.data import device_augment
from cvrl_tf.data import schema
from cvrl_tf.data import service as data_service
from cvrl_tf.data import source
from cvrl_tf.runtime import internals
from cvrl_tf.training import books as books_lib
from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import console
from cvrl_tf.training import controller as controller_lib
from cvrl_tf.training import distribute
from cvrl_tf.training import evaluation
from cvrl_tf.training import label_subset
from cvrl_tf.training import preemption
from cvrl_tf.training import reporting
from cvrl_tf.training import seeds
from cvrl_tf.training import summaries
from cvrl_tf.training import trainer as trainer_lib
from cvrl_tf.training.config import Builders, JobConfig

Stopped = preemption.Stopped


@dataclasses.dataclass
class _Parts:
    """What the build phase makes: the model, its optimizer and the checkpointed state."""
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    global_step: tf.Variable
    input_state: books_lib.InputState
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
    input_state = books_lib.InputState(strategy.num_replicas_in_sync)
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
    was = internals.op_determinism_enabled()
    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        internals.set_op_determinism(True)
    try:
        yield
    finally:
        if cfg.deterministic and not was:
            internals.set_op_determinism(False)


def _train_dataset_fn(cfg: JobConfig, builders: Builders,
                      start_positions: Optional[np.ndarray] = None,
                      made: Optional[list] = None,
                      subset_ids: Optional[list] = None) -> Callable:
    """The per-input-pipeline training dataset (sharded by the strategy's InputContext),
    continuing after `start_positions` (the input positions a restored checkpoint holds); with
    run.data_service_address, computed by the tf.data service's workers (data/service.py),
    which read in no fixed order (positions do not apply). Each (context, dataset) made is
    appended to `made`; `subset_ids` (run.train_subset) limits it to those videos."""
    mode = {"pretrain": "pretrain", "detect": "detect"}.get(cfg.mode, "train")
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
        dataset = builders.dataset(cfg.train_data, mode, cfg.global_batch_size,
                                   cfg.num_frames, cfg.stride, cfg.crop_size, ctx,
                                   seed=None if served else cfg.seed,
                                   num_classes=labels,
                                   start_positions=None if served else start_positions,
                                   subset_ids=subset_ids)
        if served:  # The whole pipeline, batching included, runs on the service's workers.
            dataset = data_service.distribute(dataset, served)
        if made is not None:
            made.append((ctx, dataset))
        return dataset.map(trainer_lib.drop_strings)

    return dataset_fn


def _record_namer(cfg: JobConfig, made: list) -> Callable[[np.ndarray], str]:
    """Names a bad record from its (pipeline, file index, record index) row."""
    def name(row) -> str:
        pipeline, file_index, record = (int(v) for v in row)
        if file_index < 0:
            return f"record {record} of {cfg.train_data}"
        num_pipelines = made[0][0].num_input_pipelines if made else 1
        try:
            files, _ = source.shard_files(schema.resolve_files(cfg.train_data), num_pipelines,
                                          pipeline)
            return f"record {record} of {files[file_index]}"
        except (ValueError, IndexError):
            return f"record {record} of file {file_index} of input pipeline {pipeline}"
    return name


def _step_and_metrics(cfg: JobConfig, parts: _Parts) -> tuple:
    """The mode's replica step, its metric names, clips per step and console kind."""
    if cfg.mode == "pretrain":
        replica_step = steps.make_pretrain_step(parts.model, parts.optimizer, cfg.temperature,
                                                parts.loss_weight_decay, cfg.probe_loss_weight)
        metric_names = steps.PRETRAIN_METRICS + (
            steps.PROBE_METRICS if parts.model.probe is not None else ())
        return replica_step, metric_names, 2 * cfg.global_batch_size, "pretrain"
    if cfg.mode == "detect":
        replica_step = steps.make_detection_step(parts.model, parts.optimizer,
                                                 parts.loss_weight_decay)
        return replica_step, steps.DETECTION_METRICS, cfg.global_batch_size, "detect"
    replica_step = steps.make_classifier_step(parts.model, parts.optimizer,
                                              parts.loss_weight_decay, cfg.label_smoothing)
    return replica_step, steps.CLASSIFIER_METRICS, cfg.global_batch_size, "classifier"


def _ids_path(cfg: JobConfig, strategy: tf.distribute.Strategy) -> Optional[str]:
    """model_dir/example_ids/<task>.txt when run.record_example_ids, else None."""
    if not cfg.record_example_ids:
        return None
    task_type, task_id = distribute.task_info(strategy)
    tf.io.gfile.makedirs(os.path.join(cfg.model_dir, "example_ids"))
    return os.path.join(cfg.model_dir, "example_ids", f"{task_type or 'worker'}-{task_id}.txt")


def _jit(cfg: JobConfig, strategy: tf.distribute.Strategy) -> bool:
    """run.jit_compile, by default on for TPUs only."""
    if cfg.jit_compile is None:
        return isinstance(strategy, tf.distribute.TPUStrategy)
    return cfg.jit_compile


@dataclasses.dataclass
class _Run:
    """A run under way: its parts, where it came from, and its loop."""
    parts: _Parts
    origin: str
    start_step: int
    trainer: trainer_lib.Trainer
    controller: controller_lib.Controller
    made: list
    subset_ids: Optional[list]


def _prepare(cfg: JobConfig, strategy, builders: Builders, schedule, notice, on_loop,
             verbose: bool, write_dir: str) -> _Run:
    """Build and restore, the run's side files, the data, the trainer and the controller."""
    chief = distribute.is_chief(strategy)
    subset_ids = label_subset.prepare(cfg, distribute.num_input_pipelines(strategy), chief)
    parts, origin = build_restored(cfg, strategy, builders, schedule)
    notice.check("while building the model and restoring its state",
                 f"nothing was trained in this run; the checkpoints in {cfg.model_dir} are "
                 f"as they were")
    start_step = int(parts.global_step.numpy())
    if chief:
        checkpoints.write_json(cfg.model_dir, checkpoints.BACKBONE_JSON,
                               parts.model.backbone.get_config())
        checkpoints.write_json(cfg.model_dir, checkpoints.CLIP_JSON, {
            "num_frames": cfg.num_frames, "stride": cfg.stride, "crop_size": cfg.crop_size})
    positions = (parts.input_state.positions.numpy()
                 if origin.startswith("checkpoint:") else None)
    made = []  # (InputContext, dataset) of each input pipeline this process builds
    replica_step, metric_names, clips_per_step, kind = _step_and_metrics(cfg, parts)
    books = books_lib.InputBooks(strategy, parts.input_state, ids_path=_ids_path(cfg, strategy),
                                 max_bad_fraction=cfg.max_bad_fraction,
                                 describe=_record_namer(cfg, made))
    trainer = trainer_lib.Trainer(
        strategy=strategy,
        dataset_fn=_train_dataset_fn(cfg, builders, positions, made, subset_ids),
        replica_step=replica_step, global_step=parts.global_step,
        clips_per_step=clips_per_step, metric_names=metric_names, jit_compile=_jit(cfg, strategy),
        books=books, stop_flag=notice.flag)
    evaluate = None
    if cfg.eval_data and (cfg.mode != "pretrain" or parts.model.probe is not None):
        evaluator = evaluation.make_evaluator(cfg, strategy, builders, parts.model,
                                              stop_flag=notice.flag)
        evaluate = lambda: evaluator.evaluate(tf.constant(cfg.eval_steps))  # noqa: E731
    train_dir, eval_dir = controller_lib.summary_dirs(cfg.model_dir, chief)
    saver = checkpoints.Saver(parts.checkpoint, write_dir, parts.global_step,
                              schedule.checkpoint_every, cfg.max_checkpoints,
                              guarded=parts.model.trainable_variables)
    controller = controller_lib.Controller(
        trainer=trainer, schedule=schedule, saver=saver,
        progress=reporting.Progress(kind, schedule.total, verbose=verbose or cfg.log_every_metric,
                                    on_loop=on_loop),
        profiler=reporting.Profiler(cfg.profile_steps, train_dir, schedule.total),
        evaluate=evaluate, summary_dir=train_dir, eval_dir=eval_dir)
    if chief:
        if cfg.image_summaries and start_step == 0:
            summaries.write_clip_images(train_dir, _first_batch(made),
                                        pretrain=cfg.mode == "pretrain")
        summaries.write_config(cfg.model_dir, train_dir, builders.config_str())
    return _Run(parts, origin, start_step, trainer, controller, made, subset_ids)


def _train(run: _Run, notice: preemption.Notice) -> controller_lib.Outcome:
    """The loop, then the final save; a notice during an evaluation saves the step first."""
    try:
        outcome = run.controller.run()
    except trainer_lib.EvaluationStopped:
        run.controller.saver.maybe_save(force=True)
        raise notice.stopped(f"while evaluating at step {_step(run)}",
                             f"the checkpoint of step {_step(run)} is saved; that "
                             f"evaluation's results were not written") from None
    run.controller.saver.maybe_save(force=True)
    if not outcome.preempted:
        run.controller.final_check()
    return outcome


def _step(run: _Run) -> int:
    return int(run.parts.global_step.numpy())


def run_job(cfg: JobConfig, *, strategy: tf.distribute.Strategy, builders: Builders,
            on_loop: Optional[Callable[[reporting.Loop], None]] = None,
            verbose: bool = False) -> dict:
    """Runs cfg.mode end to end under strategy; returns the results written to results.json.

    A preemption notice (SIGTERM, SIGINT, a GCE maintenance or preemption event) stops the run
    cleanly in any phase: in training after the current step on every worker, that step
    checkpointed, results 'preempted' (the same command resumes it); elsewhere at the phase's
    end, saying what was and was not saved. `on_loop` receives every loop's figures
    (reporting.Loop); `verbose` prints every metric per loop.
    """
    start = time.time()
    with preemption.Notice(tf.Variable(False, trainable=False, name="notice")) as notice:
        try:
            config.check_data(cfg)
            schedule = config.check(cfg, strategy)
            if cfg.mode != "evaluate":
                cfg = seeds.settle(cfg, strategy)
            notice.check("while starting", "nothing was trained or saved")
            if cfg.mode == "evaluate":
                return evaluation.run_evaluate(cfg, strategy, builders, schedule.total,
                                               stop_flag=notice.flag)
            return _run_training(cfg, strategy, builders, schedule, notice, on_loop, verbose,
                                 start)
        except Stopped as stopped:
            console.say(f"Stopped {stopped}. Run the same command again to resume.")
            return {"mode": cfg.mode, "preempted": True, "stopped": str(stopped),
                    "seed": cfg.seed}


def _run_training(cfg: JobConfig, strategy, builders: Builders, schedule, notice, on_loop,
                  verbose: bool, start: float) -> dict:
    """Modes pretrain, linear_eval and finetune: prepare, train, final save, results."""
    write_dir = distribute.write_dir(cfg.model_dir, strategy)
    run = None
    try:
        with console.log_file(write_dir), _precision(cfg.mixed_precision), _determinism(cfg):
            run = _prepare(cfg, strategy, builders, schedule, notice, on_loop, verbose,
                           write_dir)
            outcome = _train(run, notice)
            results = _results(cfg, strategy, run, schedule, outcome, time.time() - start)
            if notice.reason and not outcome.preempted:
                console.say(f"A stop notice ({notice.reason}) came after the last step; the "
                            f"run finished and saved step {results['global_step']}.")
            return results
    finally:
        if run is not None:
            run.trainer.close()
        distribute.remove_write_dir(write_dir, cfg.model_dir)


def _results(cfg: JobConfig, strategy, run: _Run, schedule, outcome, wall: float) -> dict:
    """results.json (written by the chief), the final weights' digest, the closing lines."""
    step = _step(run)
    digest = weights_digest(run.parts.model.variables + run.parts.optimizer.variables)
    task_type, task_id = distribute.task_info(strategy)
    logging.info("Final weights of %s %d at step %d: sha256 %s", task_type or "worker",
                 task_id, step, digest)
    results = {
        "mode": cfg.mode, "global_step": step, "start_step": run.start_step,
        "total_steps": schedule.total, "num_replicas": strategy.num_replicas_in_sync,
        "initialized_from": run.origin, "preempted": outcome.preempted, "seed": cfg.seed,
        "train": dict(run.controller.last_output), "eval": dict(outcome.eval_output or {}),
        "input": run.parts.input_state.summary(), "weights_sha256": digest,
        "wall_time_sec": wall,
    }
    if run.subset_ids is not None:
        results["train_subset"] = label_subset.summary(cfg, run.subset_ids)
    if distribute.is_chief(strategy):
        path = summaries.write_results(cfg.model_dir, results)
    if outcome.preempted:
        console.say(f"Preempted: saved the checkpoint of step {step} in {cfg.model_dir}; "
                    f"run the same command again to resume from it.")
    elif distribute.is_chief(strategy):
        console.say(_summary_line(results, path))
    return results


def _summary_line(results: dict, path: str) -> str:
    """The closing line: steps, time, the final loss and evaluation, where the results are."""
    parts = [f"Finished at step {results['global_step']}/{results['total_steps']} in "
             f"{reporting.format_duration(results['wall_time_sec'])}"]
    parts += reporting.format_metrics(results["train"], (("loss", "loss", "#.3g"),))
    parts += reporting.format_metrics(results["eval"], reporting.EVAL_METRICS)
    return " | ".join(parts + [f"results in {path}"])


def weights_digest(variables) -> str:
    """sha256 of the variables' names and values as this process holds them: workers that
    stayed in sync (weights, BatchNorm statistics, optimizer state) log the same digest."""
    sha = hashlib.sha256()
    for variable in sorted(variables, key=lambda v: v.path):
        value = np.asarray(variable.numpy())
        sha.update(f"{variable.path}:{value.dtype}:{value.shape};".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def _first_batch(made: list) -> tf.Tensor:
    """The video of the first per-replica batch of this process's training dataset, as the
    model sees it (device-side augmentation applied here), for the image summaries. A new
    iterator over the dataset the trainer already built: no second pipeline to build and trace,
    and the trainer's own iterator is left untouched."""
    batch = next(iter(made[0][1].take(1)))
    if device_augment.PARAMS_KEY in batch:  # Eagerly, the batched form is the fast one.
        batch = device_augment.augment_batch(batch, batched=True)
    return batch["video"]
