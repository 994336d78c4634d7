"""Files for TensorBoard's embedding projector from extracted features: `tensorboard --logdir DIR`.

`write_projector` writes what the projector plugin of TensorBoard 2.20 reads from a log dir:
- `embedding-1.index/.data-*` and `checkpoint`: a TF2 checkpoint holding one [N, F] float32
  variable, `embedding` (the plugin finds it through the log dir's `checkpoint` file);
- `metadata.tsv`: a header row, then one row per video (id, label, and the class name when a
  label map is known), in the embedding's row order;
- `sprite.png`: one thumbnail per video in a row-major grid (at most 8192 pixels a side);
- `projector_config.pbtxt`: links the three, with paths relative to the directory, so the
  directory can be copied or moved.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

CONFIG_NAME = "projector_config.pbtxt"  # tensorboard.plugins.projector.metadata
METADATA_NAME = "metadata.tsv"
SPRITE_NAME = "sprite.png"
CHECKPOINT_NAME = "embedding"
TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # The variable's name in a TF2 checkpoint.
MAX_SPRITE_SIDE = 8192  # The projector's limit on the sprite image, pixels per side.


def sprite_image(thumbnails: np.ndarray, max_side: int = MAX_SPRITE_SIDE) -> np.ndarray:
    """Thumbnails uint8 [N, h, w, 3] -> one uint8 grid image, ceil(sqrt(N)) per row, row-major.

    Thumbnails are shrunk (area resize) when the grid would exceed `max_side` pixels.
    """
    thumbnails = np.asarray(thumbnails)
    if thumbnails.ndim != 4 or thumbnails.shape[-1] != 3 or thumbnails.dtype != np.uint8:
        raise ValueError(f"Thumbnails must be uint8 [N, h, w, 3], got {thumbnails.dtype} "
                         f"{thumbnails.shape}.")
    count, height, width = thumbnails.shape[:3]
    per_row = max(1, math.ceil(math.sqrt(count)))
    scale = min(1.0, max_side / (per_row * max(height, width)))
    if scale < 1.0:
        height, width = max(1, int(height * scale)), max(1, int(width * scale))
        thumbnails = tf.cast(tf.round(tf.image.resize(
            tf.cast(thumbnails, tf.float32), (height, width), "area")), tf.uint8).numpy()
    rows = math.ceil(count / per_row)
    grid = np.zeros((rows * height, per_row * width, 3), np.uint8)
    for i, thumb in enumerate(thumbnails):
        r, c = divmod(i, per_row)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = thumb
    return grid


def _cell(value) -> str:
    """One TSV cell: tabs and line breaks would shift columns or rows."""
    return " ".join(str(value).split()) or "-"


def write_projector(output_dir: str, features: np.ndarray, labels: Sequence[int],
                    ids: Sequence[str], thumbnails: np.ndarray | None = None,
                    class_names: Sequence[str] | None = None) -> dict:
    """Writes the projector files for features [N, F] (see the module docstring); returns
    {'config', 'checkpoint', 'metadata', 'sprite' (None without thumbnails)} paths."""
    from tensorboard.plugins import projector  # pylint: disable=import-outside-toplevel

    features = np.asarray(features, np.float32)
    labels = [int(label) for label in labels]
    if features.ndim != 2 or not len(features) == len(labels) == len(ids):
        raise ValueError(f"write_projector needs features [N, F] with N labels and ids, got "
                         f"features {features.shape}, {len(labels)} labels, {len(ids)} ids.")
    if thumbnails is not None and len(thumbnails) != len(features):
        raise ValueError(f"write_projector got {len(thumbnails)} thumbnails for "
                         f"{len(features)} videos.")
    tf.io.gfile.makedirs(output_dir)
    latest = tf.train.latest_checkpoint(output_dir)
    if latest and not os.path.basename(latest).startswith(CHECKPOINT_NAME + "-"):
        raise ValueError(f"{output_dir} holds another checkpoint ({os.path.basename(latest)}); "
                         f"give the projector a directory of its own.")

    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(features, name="embedding"))
    manager = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=1,
                                         checkpoint_name=CHECKPOINT_NAME)
    paths = {"checkpoint": manager.save()}

    header = ["id", "label"] + (["class"] if class_names else [])
    rows = ["\t".join(header)]
    for video_id, label in zip(ids, labels):
        row = [_cell(video_id), str(label)]
        if class_names:
            row.append(_cell(class_names[label] if 0 <= label < len(class_names)
                             else "unknown" if label < 0 else label))
        rows.append("\t".join(row))
    paths["metadata"] = os.path.join(output_dir, METADATA_NAME)
    with tf.io.gfile.GFile(paths["metadata"], "w") as f:
        f.write("\n".join(rows) + "\n")

    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.metadata_path = METADATA_NAME
    paths["sprite"] = None
    if thumbnails is None and tf.io.gfile.exists(os.path.join(output_dir, SPRITE_NAME)):
        tf.io.gfile.remove(os.path.join(output_dir, SPRITE_NAME))  # An earlier run's.
    if thumbnails is not None:
        sprite = sprite_image(np.asarray(thumbnails))
        per_row = max(1, math.ceil(math.sqrt(len(features))))
        paths["sprite"] = os.path.join(output_dir, SPRITE_NAME)
        with tf.io.gfile.GFile(paths["sprite"], "wb") as f:
            f.write(tf.io.encode_png(sprite).numpy())
        embedding.sprite.image_path = SPRITE_NAME
        embedding.sprite.single_image_dim.extend(
            [sprite.shape[1] // per_row, sprite.shape[0] // math.ceil(len(features) / per_row)])
    projector.visualize_embeddings(output_dir, config)  # Writes projector_config.pbtxt.
    paths["config"] = os.path.join(output_dir, CONFIG_NAME)
    return paths
