"""TensorBoard extras written once per run: augmented clip pairs, the gin config, results."""
import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

RESULTS_JSON = "results.json"


def clip_pair_images(video: tf.Tensor, num_videos: int = 3, num_frames: int = 4,
                     pretrain: bool = True) -> tf.Tensor:
    """A few frames of each view side by side: [k, rows*H, num_frames*W, 3] in [0, 1].

    `video` is a pretraining batch [2B, T, H, W, 3] (rows i and i+B are the two views of
    video i: one image row per view) or a classifier batch [B, T, H, W, 3] (one row).
    """
    video = tf.convert_to_tensor(video)
    if video.shape.rank == 6:  # Eval batches [B, V, T, H, W, 3]: the first view.
        video = video[:, 0]
    video = tf.cast(video, tf.float32)
    if pretrain:
        half = tf.shape(video)[0] // 2
        views = [video[:half], video[half:]]
    else:
        views = [video]
    k = tf.minimum(num_videos, tf.shape(views[0])[0])
    t = tf.shape(video)[1]
    frame_ids = tf.cast(tf.round(tf.linspace(0.0, tf.cast(t - 1, tf.float32), num_frames)),
                        tf.int32)
    rows = []
    for view in views:
        frames = tf.gather(view[:k], frame_ids, axis=1)           # [k, F, H, W, 3]
        frames = tf.unstack(tf.transpose(frames, [1, 0, 2, 3, 4]), num=num_frames)
        rows.append(tf.concat(frames, axis=2))                    # [k, H, F*W, 3]
    images = tf.concat(rows, axis=1)
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    # The pipeline emits [0, 1]; rescale anything else (e.g. normalized input) for display.
    images = tf.cond((low < 0.0) | (high > 1.0),
                     lambda: (images - low) / tf.maximum(high - low, 1e-6), lambda: images)
    return images


def write_clip_images(summary_dir: str, video: tf.Tensor, pretrain: bool, step: int = 0) -> None:
    """Writes `clip_pair_images` of one batch as the image summary 'augmented_clips'."""
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
        images = clip_pair_images(video, pretrain=pretrain)
        tf.summary.image("augmented_clips", images, step=step, max_outputs=int(images.shape[0]),
                         description="A few frames per clip; in pretraining the top row is "
                                     "view 1 and the bottom row view 2 of the same video.")
    writer.close()


def write_config(model_dir: str, summary_dir: str, config_str: str, step: int = 0) -> None:
    """Writes the operative gin config to model_dir/config.gin and to TensorBoard as text."""
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(config_str)
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
        # Indent by 4 spaces: TensorBoard renders text as markdown, this keeps it verbatim.
        text = "\n".join("    " + line for line in config_str.splitlines())
        tf.summary.text("config/gin", text, step=step)
    writer.close()


def _jsonable(value: Any) -> Any:
    """Numpy/TF scalars and containers to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if tf.is_tensor(value):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_results(model_dir: str) -> dict:
    """model_dir/results.json as a dict ({} when there is none yet)."""
    path = os.path.join(model_dir, RESULTS_JSON)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_results(model_dir: str, results: Mapping[str, Any]) -> str:
    """Writes results (final metrics) to model_dir/results.json and returns the path."""
    path = os.path.join(model_dir, RESULTS_JSON)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(_jsonable(results), f, indent=2, sort_keys=True)
        f.write("\n")
    return path
