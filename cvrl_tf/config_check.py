"""Start-up checks of a run's settings: refuse (ConfigError) or warn, in one sentence each.

Every message names the offending value and the fix, so a bad config fails before any
TensorFlow graph is built.
"""
import os
from typing import Any, Mapping, Optional

from absl import logging
import tensorflow as tf

from cvrl_tf import export

MODES = ("pretrain", "linear_eval", "finetune", "evaluate")
# The backbone settings that must match between pretraining and warm start.
ARCHITECTURE_KEYS = ("depth", "width_multiplier", "stem", "temporal_kernels", "base_filters",
                     "blocks_per_stage")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


def warn(message: str) -> None:
    """Logs and prints one config warning."""
    logging.warning("Config warning: %s", message)
    print(f"Config warning: {message}", flush=True)


def check_mode(mode: str, train_data: str, eval_data: str, num_classes: int,
               warm_start: str) -> None:
    """The data and labels each mode needs."""
    if mode not in MODES:
        raise ConfigError(f"run.mode={mode!r} is unknown; use one of {', '.join(MODES)}.")
    if mode != "evaluate" and not train_data:
        raise ConfigError(f"run.mode={mode!r} needs training data: set run.train_data to a "
                          f"TFRecord glob or 'tfds:<name>/<config>/<split>'.")
    if mode in ("linear_eval", "finetune", "evaluate") and num_classes < 1:
        raise ConfigError(f"run.mode={mode!r} needs labels: set run.num_classes (got "
                          f"{num_classes}) to the number of classes of the data set.")
    if mode == "evaluate" and not eval_data:
        raise ConfigError("run.mode='evaluate' needs run.eval_data (a TFRecord glob).")
    if mode == "linear_eval" and not warm_start:
        warn("run.mode='linear_eval' without run.warm_start trains a linear classifier on a "
             "randomly initialized backbone (a baseline); set run.warm_start=PRETRAIN_MODEL_DIR "
             "to evaluate a pretrained one.")


def check_batch(global_batch_size: int, num_replicas: int, name: str = "global_batch_size"
                ) -> None:
    """Refuses a batch that does not split evenly over the replicas."""
    if global_batch_size < 1 or global_batch_size % num_replicas:
        raise ConfigError(
            f"run.{name}={global_batch_size} is not a positive multiple of the {num_replicas} "
            f"replicas; set it to a multiple of {num_replicas} (e.g. "
            f"{max(num_replicas, global_batch_size // num_replicas * num_replicas)}).")


def check_learning_rate(optimizer: str, lr_scaling: str, global_batch_size: int,
                        lr_reference_batch: int) -> None:
    """Warns when an SGD/LARS rate is not scaled with the batch as the recipe does."""
    if lr_scaling not in ("linear", "none"):
        raise ConfigError(f"run.lr_scaling={lr_scaling!r} is unknown; use 'linear' "
                          f"(lr = base_lr * batch / lr_reference_batch) or 'none'.")
    if (lr_scaling == "none" and optimizer in ("sgd", "lars")
            and global_batch_size != lr_reference_batch):
        warn(f"run.base_lr is used as-is with optimizer={optimizer!r} at global batch "
             f"{global_batch_size}, but the recipe's rate is for {lr_reference_batch}; set "
             f"run.lr_scaling='linear' to scale it with the batch.")


def check_clip(num_frames: int, stride: int, min_video_frames: int, name: str = "") -> None:
    """Warns when a clip spans more frames than the shortest video holds (it will loop)."""
    if num_frames < 1 or stride < 1:
        raise ConfigError(f"run.{name}num_frames={num_frames} and run.{name}stride={stride} "
                          f"must be >= 1.")
    span = (num_frames - 1) * stride + 1
    if min_video_frames and span > min_video_frames:
        warn(f"A clip of run.{name}num_frames={num_frames} at run.{name}stride={stride} spans "
             f"{span} frames, more than the shortest video (run.min_video_frames="
             f"{min_video_frames}), so short videos loop; lower num_frames or stride.")


def check_required(values: Mapping[str, Any], required_marker: Any) -> None:
    """Refuses run() arguments still bound to gin.REQUIRED (an unset experiment macro)."""
    unset = sorted(k for k, v in values.items() if v is required_marker)
    if unset:
        raise ConfigError(f"run.{unset[0]} is required but unset (the experiment leaves it to "
                          f"you): pass --gin_param=run.{unset[0]}=... or set its macro.")


def check_intervals(steps_per_loop: int, checkpoint_interval: int, eval_interval: int) -> None:
    """Intervals are counted in steps and acted on at loop ends."""
    if steps_per_loop < 1:
        raise ConfigError(f"run.steps_per_loop={steps_per_loop} must be >= 1.")
    for name, value in (("checkpoint_interval", checkpoint_interval),
                        ("eval_interval", eval_interval)):
        if value < 0:
            raise ConfigError(f"run.{name}={value} must be >= 0 (0 means at the end only).")
        if value and value % steps_per_loop:
            warn(f"run.{name}={value} is not a multiple of run.steps_per_loop={steps_per_loop}, "
                 f"so it happens at the next loop end; make it a multiple.")


def read_backbone_json(path: str) -> Optional[dict]:
    """The build_backbone kwargs saved next to a checkpoint (a dir or a prefix), if any."""
    directory = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    json_path = os.path.join(directory, export.BACKBONE_JSON)
    return export.read_backbone_json(json_path) if tf.io.gfile.exists(json_path) else None


def check_warm_start_architecture(warm_start: str, backbone_kwargs: Mapping[str, Any]) -> None:
    """Refuses a warm start whose backbone.json describes a different architecture."""
    saved = read_backbone_json(warm_start)
    if saved is None:
        warn(f"No backbone.json next to run.warm_start={warm_start!r}; the backbone "
             f"architecture cannot be checked before restoring.")
        return
    for key in ARCHITECTURE_KEYS:
        if key in saved and saved.get(key) != backbone_kwargs.get(key):
            raise ConfigError(
                f"run.warm_start={warm_start!r} holds a backbone with {key}={saved[key]!r} but "
                f"this run builds {key}={backbone_kwargs.get(key)!r}; include the same "
                f"gin/models file as the pretraining run.")
