"""The record schema: build and parse video SequenceExamples (Model Garden / DMVR compatible).

A video is one `tf.train.SequenceExample`: feature list `image/encoded` (one JPEG per frame),
context `clip/label/index` (int64, 0+ values), optional context `clip/label/text` (bytes) and
`clip/media_id` (bytes, the video id). Every source (TFRecords, TFDS) meets the pipeline as the
parsed-example dict `{'frames': string [L], 'label': int32 [n], 'id': string []}`.
On disk, a data set directory holds the shards, label_map.txt and example_counts.json (the
videos of each shard, recorded by the writers; `read_example_count` answers for a pattern).
Detection (AVA) records are the same SequenceExample around one keyframe, with person boxes,
their actions and proposals in context (`make_detection_example`, `parse_detection_example`).
"""
import json
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

IMAGE_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
MEDIA_ID_KEY = "clip/media_id"
LABEL_MAP_NAME = "label_map.txt"
# Next to the shards: {split: {"num_examples": n, "shards": {shard basename: videos}}}.
EXAMPLE_COUNTS_NAME = "example_counts.json"
# Detection records: the keyframe, person boxes (TF order), multi-hot actions as
# (label, box) pairs, proposals. Boxes are normalized to the full frame.
KEYFRAME_INDEX_KEY = "clip/keyframe/index"
KEYFRAME_TIMESTAMP_KEY = "clip/keyframe/timestamp"
BOX_KEYS = ("region/bbox/ymin", "region/bbox/xmin", "region/bbox/ymax", "region/bbox/xmax")
TRACK_KEY = "region/track/id"
REGION_LABEL_KEY = "region/label/index"
REGION_LABEL_BOX_KEY = "region/label/box"
PROPOSAL_BOX_KEYS = ("proposal/bbox/ymin", "proposal/bbox/xmin", "proposal/bbox/ymax",
                     "proposal/bbox/xmax")
PROPOSAL_SCORE_KEY = "proposal/score"


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
    `default_id(...)`: "<file basename>:<record index>"). A record without `image/encoded` gives
    0 frames, which the pipeline reports by id instead of failing here.
    """
    context, sequence = tf.io.parse_single_sequence_example(
        serialized, context_features=_CONTEXT_FEATURES,
        sequence_features={IMAGE_KEY: tf.io.VarLenFeature(tf.string)})
    return {"frames": tf.reshape(sequence[IMAGE_KEY].values, [-1]),
            **_label_and_id(context, default_id)}


def parse_context(serialized: tf.Tensor, default_id: Union[str, tf.Tensor] = "") -> dict:
    """{'label', 'id'} of one record from its context alone, as `parse_sequence_example` gives
    them; the frames are neither decoded nor kept (the subset filter and tool read only this)."""
    context, _ = tf.io.parse_single_sequence_example(
        serialized, context_features=_CONTEXT_FEATURES)
    return _label_and_id(context, default_id)


def default_id(file_names: tf.Tensor, file_index: tf.Tensor, record: tf.Tensor) -> tf.Tensor:
    """The id of a record without `clip/media_id`: "<file basename>:<record index in file>"."""
    return tf.strings.join([tf.gather(file_names, file_index), tf.strings.as_string(record)],
                           ":")


_CONTEXT_FEATURES = {LABEL_KEY: tf.io.VarLenFeature(tf.int64),
                     MEDIA_ID_KEY: tf.io.VarLenFeature(tf.string)}


def _label_and_id(context: dict, default_id: Union[str, tf.Tensor]) -> dict:
    """The parsed context's labels (int32) and id (media_id if non-empty, else default_id)."""
    media_id = context[MEDIA_ID_KEY].values
    default_id = tf.convert_to_tensor(default_id, tf.string)
    has_id = tf.logical_and(tf.size(media_id) > 0,
                            tf.strings.length(tf.concat([media_id, [""]], 0)[0]) > 0)
    video_id = tf.cond(has_id, lambda: media_id[0], lambda: default_id)
    return {"label": tf.cast(context[LABEL_KEY].values, tf.int32), "id": video_id}


def _boxes_array(boxes, what: str) -> np.ndarray:
    boxes = np.asarray(boxes if boxes is not None else np.zeros([0, 4]), np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape([0, 4])
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must be [N, 4] (ymin, xmin, ymax, xmax), got {boxes.shape}.")
    return boxes


def make_detection_example(jpeg_frames: Sequence[bytes], key: str, keyframe_index: int,
                           timestamp: int, boxes, box_labels: Sequence[Sequence[int]],
                           track_ids: Optional[Sequence[int]] = None, proposals=None,
                           proposal_scores: Optional[Sequence[float]] = None
                           ) -> tf.train.SequenceExample:
    """Builds one AVA keyframe record: the frames around it, its key (`clip/media_id`, the
    evaluator's "video,0902"), person boxes [N, 4] (ymin, xmin, ymax, xmax; normalized) with
    their 0-based action indices (`box_labels[i]` for box i), person ids and proposals [P, 4]
    with scores. `clip/label/index` stays empty, so classification readers parse it too."""
    boxes = _boxes_array(boxes, "boxes")
    proposals = _boxes_array(proposals, "proposals")
    scores = list(proposal_scores if proposal_scores is not None else [])
    track_ids = list(track_ids) if track_ids is not None else [-1] * len(boxes)
    if not 0 <= keyframe_index < len(jpeg_frames):
        raise ValueError(f"keyframe_index {keyframe_index} is outside the {len(jpeg_frames)} "
                         f"frames of {key}.")
    if len(box_labels) != len(boxes) or len(track_ids) != len(boxes) \
            or len(scores) != len(proposals):
        raise ValueError(f"{key}: {len(boxes)} boxes need as many label lists and track ids "
                         f"(got {len(box_labels)}, {len(track_ids)}), {len(proposals)} "
                         f"proposals as many scores (got {len(scores)}).")
    example = make_sequence_example(jpeg_frames, None, key)
    context = example.context.feature
    context[KEYFRAME_INDEX_KEY].int64_list.value.append(int(keyframe_index))
    context[KEYFRAME_TIMESTAMP_KEY].int64_list.value.append(int(timestamp))
    for name, values in zip(BOX_KEYS + PROPOSAL_BOX_KEYS, list(boxes.T) + list(proposals.T)):
        context[name].float_list.value.extend(values.tolist())
    context[PROPOSAL_SCORE_KEY].float_list.value.extend(float(s) for s in scores)
    context[TRACK_KEY].int64_list.value.extend(int(t) for t in track_ids)
    for box, labels in enumerate(box_labels):
        context[REGION_LABEL_KEY].int64_list.value.extend(int(x) for x in labels)
        context[REGION_LABEL_BOX_KEY].int64_list.value.extend([box] * len(labels))
    return example


def parse_detection_example(serialized: tf.Tensor) -> dict:
    """Parses one detection record; graph-safe. Returns 'frames' string [L], 'id' string [],
    'keyframe_index' and 'timestamp' int32 [], 'gt_boxes' float32 [N, 4] and 'proposals'
    float32 [P, 4] (ymin, xmin, ymax, xmax), 'gt_label_index' and 'gt_label_box' int32 [K]
    (action index k belongs to box gt_label_box[k]), 'proposal_scores' float32 [P]."""
    floats = {name: tf.io.VarLenFeature(tf.float32)
              for name in BOX_KEYS + PROPOSAL_BOX_KEYS + (PROPOSAL_SCORE_KEY,)}
    ints = {name: tf.io.VarLenFeature(tf.int64) for name in (REGION_LABEL_KEY,
                                                              REGION_LABEL_BOX_KEY)}
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            MEDIA_ID_KEY: tf.io.FixedLenFeature([], tf.string),
            KEYFRAME_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
            KEYFRAME_TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64),
            **floats, **ints},
        sequence_features={IMAGE_KEY: tf.io.VarLenFeature(tf.string)})

    def stacked(names: Sequence[str]) -> tf.Tensor:
        return tf.reshape(tf.stack([context[n].values for n in names], axis=1), [-1, 4])

    return {
        "frames": tf.reshape(sequence[IMAGE_KEY].values, [-1]),
        "id": context[MEDIA_ID_KEY],
        "keyframe_index": tf.cast(context[KEYFRAME_INDEX_KEY], tf.int32),
        "timestamp": tf.cast(context[KEYFRAME_TIMESTAMP_KEY], tf.int32),
        "gt_boxes": stacked(BOX_KEYS),
        "gt_label_index": tf.cast(context[REGION_LABEL_KEY].values, tf.int32),
        "gt_label_box": tf.cast(context[REGION_LABEL_BOX_KEY].values, tf.int32),
        "proposals": stacked(PROPOSAL_BOX_KEYS),
        "proposal_scores": context[PROPOSAL_SCORE_KEY].values,
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


def resolve_files(file_pattern: Union[str, Sequence[str]]) -> list[str]:
    """Sorted files matching a glob, comma-separated globs or a list; ValueError when empty."""
    patterns = file_pattern.split(",") if isinstance(file_pattern, str) else list(file_pattern)
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise ValueError(f"Empty file pattern {file_pattern!r}: give a glob of TFRecord files.")
    files = []
    for pattern in patterns:
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise ValueError(f"File pattern {pattern!r} matches no files.")
        files.extend(matched)
    return sorted(set(files))


def example_counts_path(data_dir: str) -> str:
    """Where the writers record the number of videos per shard of each split."""
    return os.path.join(data_dir, EXAMPLE_COUNTS_NAME)


def _read_example_counts(path: str) -> dict:
    """{split: {'num_examples': n, 'shards': {name: n}}} from `path`, checked; ValueError if
    malformed."""
    def bad(reason: str) -> ValueError:
        return ValueError(f"Example count file {path} is malformed ({reason}); rewrite the data "
                          f"set with the converter or the synthetic writer, or delete the file.")

    with tf.io.gfile.GFile(path) as f:
        try:
            counts = json.load(f)
        except json.JSONDecodeError as e:
            raise bad(f"not valid JSON: {e}") from e
    if not isinstance(counts, dict):
        raise bad(f"a JSON object of splits is needed, not {type(counts).__name__}")
    owner = {}
    for split, entry in counts.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        total = entry.get("num_examples") if isinstance(entry, dict) else None
        if not isinstance(shards, dict) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for n in list(shards.values()) + [total]):
            raise bad(f"split {split!r} needs 'num_examples' and 'shards' "
                      f"{{shard file: count}} with counts that are ints >= 0")
        if sum(shards.values()) != total:
            raise bad(f"split {split!r} has num_examples={total} but its shards add up to "
                      f"{sum(shards.values())}")
        for name in shards:
            if name in owner:
                raise bad(f"shard {name!r} is listed under both {owner[name]!r} and {split!r}")
            owner[name] = split
    return counts


def write_example_counts(data_dir: str, split: str, shard_counts: Mapping[str, int]) -> str:
    """Records the videos in each shard of `split` (basename -> count) in data_dir's
    example_counts.json, replacing that split's entry and keeping the others; returns the path.

    Written to a temporary file and renamed, so a reader never sees half a file. A malformed
    existing file is replaced rather than failing a long conversion at its last step.
    """
    path = example_counts_path(data_dir)
    try:
        counts = _read_example_counts(path) if tf.io.gfile.exists(path) else {}
    except ValueError:
        counts = {}
    shards = {os.path.basename(name): int(n) for name, n in sorted(shard_counts.items())}
    counts[split] = {"num_examples": sum(shards.values()), "shards": shards}
    for other, entry in counts.items():  # A shard belongs to the split that wrote it last.
        if other != split and set(entry["shards"]) & set(shards):
            kept = {k: n for k, n in entry["shards"].items() if k not in shards}
            counts[other] = {"num_examples": sum(kept.values()), "shards": kept}
    tmp_path = os.path.join(data_dir, f".tmp-{EXAMPLE_COUNTS_NAME}")
    with tf.io.gfile.GFile(tmp_path, "w") as f:
        f.write(json.dumps(counts, indent=1, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp_path, path, overwrite=True)
    return path


def read_example_count(file_pattern: Union[str, Sequence[str]]) -> Optional[int]:
    """The number of videos in the files `file_pattern` matches, as their writers recorded it.

    Counts are per shard (example_counts.json in each shard's directory), so the result is exact
    for any pattern: one split, part of one, several splits or directories. None when the
    pattern is 'tfds:...', matches no files, or any matched file has no recorded count (then
    nothing is guessed); ValueError when a count file is malformed.
    """
    if isinstance(file_pattern, str) and file_pattern.startswith("tfds:"):
        return None
    try:
        files = resolve_files(file_pattern)
    except ValueError:  # No files: build_dataset says so when it reads the pattern.
        return None
    per_dir = {}
    total = 0
    for path in files:
        data_dir = os.path.dirname(path)
        if data_dir not in per_dir:
            counts_path = example_counts_path(data_dir)
            counts = (_read_example_counts(counts_path) if tf.io.gfile.exists(counts_path)
                      else {})
            per_dir[data_dir] = {name: n for entry in counts.values()
                                 for name, n in entry["shards"].items()}
        count = per_dir[data_dir].get(os.path.basename(path))
        if count is None:
            return None
        total += count
    return total
