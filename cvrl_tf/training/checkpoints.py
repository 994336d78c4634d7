"""A run's checkpoints: finding them, checking them, what is saved next to them, resuming.

One resolver (`resolve`) turns "a model_dir or a ckpt-N prefix" into a checkpoint for every
reader (warm start, export, evaluation); `backbone.json` (the build_backbone keyword
arguments) and `clip.json` (the training clip) are written and read here only; `resume` is
the resume order; `Saver` writes checkpoints and refuses non-finite weights.

Checkpoint layout: tf.train.Checkpoint(backbone=, model=, optimizer=, step=, input=) managed
by tf.train.CheckpointManager in model_dir (`ckpt-<step>.index`, `.data-*`). Warm start and
export read only `backbone`.
"""
import inspect
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from cvrl_tf.training import console
from cvrl_tf.training.config import ConfigError, warn

BACKBONE_JSON = "backbone.json"
CLIP_JSON = "clip.json"  # The training clip: {"num_frames", "stride", "crop_size"}.
CLIP_KEYS = ("num_frames", "stride", "crop_size")
# Backbone settings that must match between a pretraining run and its warm start.
ARCHITECTURE_KEYS = ("depth", "width_multiplier", "stem", "temporal_kernels", "base_filters",
                     "blocks_per_stage")
_CKPT_NUMBER = re.compile(r"ckpt-(\d+)$")


def _number(prefix: str) -> int:
    match = _CKPT_NUMBER.search(prefix)
    return int(match.group(1)) if match else -1


def list_checkpoints(model_dir: str) -> list[str]:
    """Checkpoint prefixes in model_dir, newest first: those the `checkpoint` state file
    names, and any ckpt-N.index beside them (the state file may itself be unreadable)."""
    prefixes = set()
    try:
        state = tf.train.get_checkpoint_state(model_dir)
    except Exception as e:  # pylint: disable=broad-except  # A corrupt state file.
        logging.info("Checkpoint state file unreadable: %s", e)
        state = None
    if state is None and tf.io.gfile.exists(os.path.join(model_dir, "checkpoint")):
        warn(f"The checkpoint state file in {model_dir} is unreadable; looking for ckpt-N "
             f"files instead.")
    if state is not None:
        for path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
            if path:
                prefixes.add(path if os.path.isabs(path) or "://" in path
                             else os.path.join(model_dir, path))
    for index in tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*.index")):
        prefixes.add(index[:-len(".index")])
    return sorted(prefixes, key=_number, reverse=True)


def problem(prefix: str) -> Optional[str]:
    """Why the checkpoint at prefix cannot be restored (missing, truncated or unreadable
    files), or None when every tensor reads back intact (checksums included)."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{prefix}.index is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # pylint: disable=broad-except  # IndexError, DataLoss, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{type(e).__name__}: {first[:200]}"
    return None


def latest_good(model_dir: str) -> tuple[Optional[str], list[str]]:
    """(newest checkpoint of model_dir that reads back intact, or None; warnings for the
    newer ones that do not)."""
    skipped = []
    for prefix in list_checkpoints(model_dir):
        reason = problem(prefix)
        if reason is None:
            return prefix, skipped
        skipped.append(f"checkpoint {prefix} is incomplete or corrupt ({reason})")
    return None, skipped


def resolve(path: str, what: str = "--checkpoint") -> tuple[str, str]:
    """(checkpoint prefix, directory of its backbone.json) for a model_dir (its newest intact
    checkpoint) or a ckpt-N prefix; ConfigError naming `what` otherwise."""
    if not path:
        raise ConfigError(f"{what} is empty; give a model_dir or a checkpoint prefix.")
    if tf.io.gfile.isdir(path):
        prefix, skipped = latest_good(path)
        for message in skipped:
            warn(f"Skipping {message}.")
        if prefix is None:
            raise ConfigError(f"{what}={path!r} holds no readable checkpoint; train first, or "
                              f"point it to a model_dir with checkpoints or a ckpt-N prefix.")
        return prefix, path
    if not tf.io.gfile.exists(path + ".index"):
        raise ConfigError(f"{what}={path!r} is neither a directory nor a checkpoint prefix "
                          f"({path}.index is missing).")
    return path, os.path.dirname(path)


def write_json(directory: str, name: str, value: Mapping[str, Any]) -> str:
    """Writes value as directory/name (sorted keys); returns the path."""
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, name)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
    return path


def read_json(path: str, what: str) -> dict:
    """A JSON object from path; ValueError/FileNotFoundError naming it otherwise."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")
    with tf.io.gfile.GFile(path) as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {path} is not valid JSON ({e}).") from e
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, not {type(value).__name__}.")
    return value


def read_backbone_json(path: str, build_backbone: Optional[Callable] = None) -> dict:
    """The build_backbone keyword arguments stored in a backbone.json, checked against
    build_backbone's parameters."""
    if build_backbone is None:
        from cvrl_tf.models import build_backbone  # pylint: disable=import-outside-toplevel
    kwargs = read_json(path, "Backbone config")
    known = set(inspect.signature(build_backbone).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"Backbone config {path} has keys {unknown} that build_backbone does "
                         f"not take; it takes {sorted(known)}.")
    return kwargs


def check_clip(clip, source: str) -> dict:
    """The clip {"num_frames", "stride", "crop_size"} (positive ints); ValueError naming source."""
    if not isinstance(clip, dict) or set(clip) != set(CLIP_KEYS) or not all(
            isinstance(clip[k], int) and not isinstance(clip[k], bool) and clip[k] > 0
            for k in CLIP_KEYS):
        raise ValueError(f"The training clip in {source} must be a JSON object with positive "
                         f"ints {list(CLIP_KEYS)}, got {clip!r}.")
    return {k: clip[k] for k in CLIP_KEYS}


def read_clip_json(model_dir: str) -> Optional[dict]:
    """model_dir/clip.json (the clip the model was trained on), or None when it is absent."""
    path = os.path.join(model_dir, CLIP_JSON)
    if not tf.io.gfile.exists(path):
        return None
    return check_clip(read_json(path, "Training clip"), path)


def backbone_json_near(path: str) -> Optional[dict]:
    """The backbone.json next to a checkpoint (a model_dir or a prefix), if there is one."""
    directory = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    json_path = os.path.join(directory, BACKBONE_JSON)
    return read_backbone_json(json_path) if tf.io.gfile.exists(json_path) else None


def check_architecture(warm_start: str, backbone_kwargs: Mapping[str, Any]) -> None:
    """Refuses a warm start whose backbone.json describes a different architecture."""
    saved = backbone_json_near(warm_start)
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


def restore_backbone(backbone, path: str, what: str = "run.warm_start",
                     fix: str = "include the pretraining run's gin/models file") -> str:
    """Restores only `backbone` from a model_dir or prefix; returns the prefix used."""
    prefix, _ = resolve(path, what)
    try:
        status = tf.train.Checkpoint(backbone=backbone).restore(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:  # Missing variables / wrong shapes.
        raise ConfigError(f"{what}={path!r} holds no backbone matching this one "
                          f"({str(e).splitlines()[0][:200]}); {fix}.") from e
    return prefix


def resume(checkpoint: tf.train.Checkpoint, backbone, model_dir: str, warm_start: str,
           start_over: bool = False) -> str:
    """Initializes a run's state; returns where it came from ('checkpoint:<prefix>',
    'warm_start:<prefix>' or 'scratch'). The resume order:

    1. the newest checkpoint in model_dir whose files read back intact (model, optimizer,
       step, input position); a newer incomplete or corrupt one is named in a warning and
       skipped. If model_dir holds checkpoints and none is intact, the run stops with a
       ConfigError, unless `start_over`, which goes on to 2.;
    2. else `warm_start` (a pretraining model_dir or ckpt-N prefix): the backbone only;
    3. else scratch (the freshly initialized weights).
    """
    existing = list_checkpoints(model_dir) if tf.io.gfile.isdir(model_dir) else []
    if existing:
        prefix, skipped = latest_good(model_dir)
        for message in skipped:
            warn(f"Skipping {message}; falling back to the previous checkpoint.")
        if prefix is not None:
            checkpoint.restore(prefix).assert_existing_objects_matched()
            return _said(f"checkpoint:{prefix}")
        if not start_over:
            raise ConfigError(f"No checkpoint in {model_dir} can be restored ({len(existing)} "
                              f"found, all incomplete or corrupt); pass "
                              f"--gin_param=run.start_over=True to start again without them, "
                              f"or use a new model_dir.")
        warn(f"Starting over: none of the {len(existing)} checkpoints in {model_dir} can be "
             f"restored (run.start_over=True).")
    if warm_start:
        return _said(f"warm_start:{restore_backbone(backbone, warm_start)}")
    return _said("scratch")


def _said(origin: str) -> str:
    console.say(f"Initialized from {origin}")
    return origin


def all_finite(variables: Sequence[tf.Variable]) -> bool:
    """True when every float variable holds only finite values."""
    for v in variables:
        value = np.asarray(v.numpy())
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return False
    return True


class Saver:
    """Saves checkpoints every `every` steps (0: only when forced), never non-finite weights.

    A thin layer over tf.train.CheckpointManager (numbered by the global step, `max_to_keep`
    newest kept) with the one rule of this project: a checkpoint with a NaN or Inf in a
    variable is refused, so the newest checkpoint is always one a run can resume from.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, step: tf.Variable,
                 every: int, max_to_keep: int, guarded: Sequence[tf.Variable] = ()):
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
        self._step = step
        self._every = int(every)
        self._guarded = list(guarded)
        self._last = int(step.numpy())

    def maybe_save(self, force: bool = False) -> Optional[str]:
        """Saves at the current step if forced or an interval has passed; returns the path."""
        step = int(self._step.numpy())
        due = self._every and step // self._every > self._last // self._every
        if step == self._last or not (force or due):
            return None
        if not all_finite(self._guarded):
            raise FloatingPointError(f"Refusing to save a checkpoint at step {step}: a weight "
                                     f"is NaN or infinite.")
        path = self.manager.save(checkpoint_number=step)
        self._last = step
        logging.info("Saved checkpoint %s", path)
        return path
