"""The record schema: build and parse video SequenceExamples (Model Garden / DMVR compatible).

A video is one `tf.train.SequenceExample`: feature list `image/encoded` (one JPEG per frame),
context `clip/label/index` (int64, 0+ values), optional context `clip/label/text` (bytes) and
`clip/media_id` (bytes, the video id). Every source (TFRecords, TFDS) meets the pipeline as the
parsed-example dict `{'frames': string [L], 'label': int32 [n], 'id': string []}`.
"""
import os
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

IMAGE_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
MEDIA_ID_KEY = "clip/media_id"
LABEL_MAP_NAME = "label_map.txt"


def encode_frames(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """JPEG-encodes uint8 frames [L, H, W, 3] (or [L, H, W, 1]) into one bytes string per frame."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"encode_frames needs uint8 frames [L, H, W, 3 or 1], got "
                         f"{frames.dtype} {frames.shape}.")
    return [tf.io.encode_jpeg(f, quality=quality).numpy() for f in frames]


def _as_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def make_sequence_example(jpeg_frames: Sequence[bytes],
                          labels: Union[int, Sequence[int], None],
                          video_id: Union[str, bytes, None],
                          label_texts: Optional[Sequence[Union[str, bytes]]] = None
                          ) -> tf.train.SequenceExample:
    """Builds one video record: JPEG frames, label indices, optional label texts and video id."""
    example = tf.train.SequenceExample()
    frame_list = example.feature_lists.feature_list[IMAGE_KEY]
    for jpeg in jpeg_frames:
        frame_list.feature.add().bytes_list.value.append(_as_bytes(jpeg))
    if labels is None:
        labels = []
    elif isinstance(labels, (int, np.integer)):
        labels = [int(labels)]
    context = example.context.feature
    context[LABEL_KEY].int64_list.value.extend(int(x) for x in labels)
    if label_texts:
        context[LABEL_TEXT_KEY].bytes_list.value.extend(_as_bytes(t) for t in label_texts)
    if video_id is not None:
        context[MEDIA_ID_KEY].bytes_list.value.append(_as_bytes(video_id))
    return example


def parse_sequence_example(serialized: tf.Tensor,
                           default_id: Union[str, tf.Tensor] = "") -> dict:
    """Parses one serialized record into the parsed-example dict; graph-safe.

    'id' is `clip/media_id` when present and non-empty, else `default_id` (the pipeline passes
    "<file basename>:<record index>"). A record without `image/encoded` gives 0 frames, which
    the pipeline reports by id instead of failing here.
    """
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            LABEL_KEY: tf.io.VarLenFeature(tf.int64),
            MEDIA_ID_KEY: tf.io.VarLenFeature(tf.string),
        },
        sequence_features={IMAGE_KEY: tf.io.VarLenFeature(tf.string)})
    media_id = context[MEDIA_ID_KEY].values
    default_id = tf.convert_to_tensor(default_id, tf.string)
    has_id = tf.logical_and(tf.size(media_id) > 0,
                            tf.strings.length(tf.concat([media_id, [""]], 0)[0]) > 0)
    video_id = tf.cond(has_id, lambda: media_id[0], lambda: default_id)
    return {
        "frames": tf.reshape(sequence[IMAGE_KEY].values, [-1]),
        "label": tf.cast(context[LABEL_KEY].values, tf.int32),
        "id": video_id,
    }


def shard_filename(split: str, index: int, num_shards: int) -> str:
    """The on-disk shard name of docs/DESIGN.md: `<split>-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def write_label_map(path: str, class_names: Sequence[str]) -> None:
    """Writes a label map: one class name per line, in index order."""
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))


def read_label_map(path: str) -> list[str]:
    """Reads a label map written by `write_label_map` (blank lines ignored)."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"Label map {path!r} does not exist.")
    with tf.io.gfile.GFile(path) as f:
        return [line.strip() for line in f if line.strip()]


def label_map_path(data_dir: str) -> str:
    """The label map location of a data set directory."""
    return os.path.join(data_dir, LABEL_MAP_NAME)
