"""Evaluation for train.py: single-view and multi-view (10x3) top-1/top-5 of checkpoints.

`make_evaluator` builds an orbit evaluator for any model of the job (a ClassifierModel, or a
CVRLModel's online probe). `run_evaluate` is mode 'evaluate': one checkpoint, or every new
checkpoint of a directory as it appears (tf.train.checkpoints_iterator).
"""
import os
from typing import Callable, Optional

import orbit
import tensorflow as tf

from cvrl_tf import steps
from cvrl_tf.data import ava
from cvrl_tf.data import schema
from cvrl_tf.training import detection_eval
from cvrl_tf.training import checkpoints
from cvrl_tf.training import controller as controller_lib
from cvrl_tf.training import distribute
from cvrl_tf.training import preemption
from cvrl_tf.training import reporting
from cvrl_tf.training import summaries
from cvrl_tf.training import trainer as trainer_lib
from cvrl_tf.training.config import Builders, ConfigError, JobConfig, build_model


def _logits_model(model) -> Callable:
    """The model as a function returning {'logits'}: a CVRLModel's probe, else itself."""
    if getattr(model, "probe", None) is not None:
        return lambda video, training=False: {
            "logits": model(video, training=training)["probe_logits"]}
    return model


def make_evaluator(cfg: JobConfig, strategy: tf.distribute.Strategy, builders: Builders, model,
                   views: tuple = (1, 1), prefix: str = "",
                   stop_flag: Optional[tf.Variable] = None):
    """An evaluator over cfg.eval_data with views=(temporal, spatial) views per video (it
    stops between batches once `stop_flag` is raised); in mode 'detect', the frame mAP."""
    if cfg.mode == "detect":
        return _detection_evaluator(cfg, strategy, builders, model, stop_flag)
    num_frames, stride, crop_size = cfg.eval_clip
    multiview = views != (1, 1)
    batch = ((cfg.multiview_batch_size if multiview else 0) or cfg.eval_batch_size
             or cfg.global_batch_size)
    # Keep every eval example off TPU; TPUs need static shapes, so they drop the remainder.
    drop_remainder = isinstance(strategy, tf.distribute.TPUStrategy)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = builders.dataset(cfg.eval_data, "eval", batch, num_frames, stride, crop_size,
                                   ctx, num_classes=cfg.num_classes or None,
                                   num_temporal_views=views[0], num_spatial_views=views[1],
                                   drop_remainder=drop_remainder)
        return dataset.map(trainer_lib.drop_strings)

    return trainer_lib.Evaluator(strategy=strategy, dataset_fn=dataset_fn,
                                 replica_step=steps.make_eval_step(_logits_model(model)),
                                 prefix=prefix, stop_flag=stop_flag)


def _detection_classes(cfg: JobConfig) -> dict:
    """{action id: name} of the evaluated actions: run.eval_label_map's, else every action of
    the data, named by the label_map.txt beside run.eval_data when there is one."""
    if cfg.eval_label_map:
        return ava.read_label_map(cfg.eval_label_map)
    names = {}
    path = schema.label_map_path(os.path.dirname(cfg.eval_data.split(",")[0]))
    if tf.io.gfile.exists(path):
        names = dict(enumerate(schema.read_label_map(path), start=1))
    return {i: names.get(i, str(i)) for i in range(1, cfg.num_classes + 1)}


def _detection_evaluator(cfg: JobConfig, strategy, builders: Builders, model, stop_flag):
    """The detect mode's evaluator over cfg.eval_data (detection_eval.py)."""
    num_frames, stride, crop_size = cfg.eval_clip
    drop_remainder = isinstance(strategy, tf.distribute.TPUStrategy)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = builders.dataset(cfg.eval_data, "detect_eval",
                                   cfg.eval_batch_size or cfg.global_batch_size, num_frames,
                                   stride, crop_size, ctx, num_classes=cfg.num_classes,
                                   drop_remainder=drop_remainder)
        return dataset.map(trainer_lib.drop_strings)

    classes = _detection_classes(cfg)
    path = (os.path.join(cfg.model_dir, detection_eval.DETECTIONS_CSV)
            if distribute.is_chief(strategy) else None)
    return detection_eval.DetectionEvaluator(
        strategy=strategy, dataset_fn=dataset_fn, model=model, class_ids=classes,
        names=classes, detections_path=path, stop_flag=stop_flag)


def _checkpoints(cfg: JobConfig, source: str):
    """The checkpoint paths to evaluate: one, or each new one in a directory."""
    if cfg.continuous_eval:
        if not tf.io.gfile.isdir(source):
            raise ConfigError(f"run.continuous_eval=True watches a directory, but "
                              f"run.eval_checkpoint={source!r} is not one.")
        yield from tf.train.checkpoints_iterator(source, timeout=cfg.eval_timeout)
        return
    yield checkpoints.resolve(source, "run.eval_checkpoint")[0]


def run_evaluate(cfg: JobConfig, strategy: tf.distribute.Strategy, builders: Builders,
                 train_length: int = 0, stop_flag: Optional[tf.Variable] = None) -> dict:
    """Mode 'evaluate': restores each checkpoint and reports single-view (and 10x3) accuracy.

    Checkpoints come from run.eval_checkpoint (default: model_dir). Results go to
    model_dir/results.json under 'evaluate' (other keys of an existing file are kept) and to
    TensorBoard in model_dir/eval ('top1', 'top5', 'multiview_top1', 'multiview_top5').
    Continuous evaluation stops after run.eval_timeout seconds without a new checkpoint, or
    once a checkpoint at or past `train_length` steps (run.train_length, when set) was
    evaluated. A raised `stop_flag` (a preemption notice) ends it between batches
    (preemption.Stopped), with nothing written for the checkpoint under evaluation.
    """
    chief = distribute.is_chief(strategy)
    with strategy.scope():
        model = build_model(cfg, builders)
        step = orbit.utils.create_global_step()
    checkpoint = tf.train.Checkpoint(backbone=model.backbone, model=model, step=step)
    evaluators = [make_evaluator(cfg, strategy, builders, model, stop_flag=stop_flag)]
    if cfg.multiview_eval:
        evaluators.append(make_evaluator(
            cfg, strategy, builders, model, prefix="multiview_", stop_flag=stop_flag,
            views=(cfg.eval_temporal_views, cfg.eval_spatial_views)))
    scalars = controller_lib.Scalars(controller_lib.summary_dirs(cfg.model_dir, chief)[1])
    progress = reporting.Progress("classifier", train_length)
    source = cfg.eval_checkpoint or cfg.model_dir
    history = []
    try:
        for path in _checkpoints(cfg, source):
            _restore(checkpoint, path, cfg)
            output = {"checkpoint": path, "global_step": int(step.numpy())}
            for evaluator in evaluators:
                output.update(_evaluate(evaluator, cfg, path))
            scalars.write(output, output["global_step"])
            progress.evaluation(output["global_step"], output)
            history.append(output)
            if cfg.continuous_eval and train_length and output["global_step"] >= train_length:
                break
    finally:
        scalars.close()
    if not history:
        raise ConfigError(f"No checkpoint appeared in {source!r} within run.eval_timeout="
                          f"{cfg.eval_timeout} s; start training first or raise the timeout.")
    results = dict(history[-1])
    if chief:
        merged = summaries.read_results(cfg.model_dir)
        merged["evaluate"] = dict(results, history=history)
        summaries.write_results(cfg.model_dir, merged)
    return {"mode": "evaluate", "eval": results, "history": history}


def _restore(checkpoint: tf.train.Checkpoint, path: str, cfg: JobConfig) -> None:
    """Restores the model of a checkpoint; ConfigError when it holds another head."""
    status = checkpoint.restore(path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ConfigError(f"Checkpoint {path} does not hold this run's model (classifier "
                          f"{cfg.classifier or 'linear'!r}); set run.classifier to the "
                          f"head it was trained with and the same gin/models file.") from e


def _evaluate(evaluator: trainer_lib.Evaluator, cfg: JobConfig, path: str) -> dict:
    """One evaluator over the eval set; Stopped when a notice ends it."""
    try:
        return evaluator.evaluate(tf.constant(cfg.eval_steps))
    except trainer_lib.EvaluationStopped:
        raise preemption.Stopped(f"while evaluating {path}: no results were written for "
                                 f"it") from None
