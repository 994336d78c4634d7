"""The record schema: SequenceExample build/parse round trips, label maps, example counts."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import schema


def _frames(num=3, height=8, width=10):
    """Smooth frames (JPEG keeps them close): a per-frame colour plus a horizontal ramp."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 60, width)[None, None, :, None]
    colour = rng.integers(0, 190, (num, 1, 1, 3))
    return (colour + ramp + np.zeros((num, height, width, 3))).astype(np.uint8)


def test_round_trip_frames_labels_and_id():
    frames = _frames()
    jpegs = schema.encode_frames(frames)
    assert len(jpegs) == 3 and all(j[:2] == b"\xff\xd8" for j in jpegs)
    example = schema.make_sequence_example(jpegs, [4, 7], "video-1", ["a", "b"])
    parsed = schema.parse_sequence_example(example.SerializeToString(), "unused:0")
    assert parsed["frames"].shape == (3,) and parsed["frames"].dtype == tf.string
    assert parsed["id"].numpy() == b"video-1"
    np.testing.assert_array_equal(parsed["label"].numpy(), [4, 7])
    assert parsed["label"].dtype == tf.int32
    decoded = tf.io.decode_jpeg(parsed["frames"][1]).numpy()
    assert decoded.shape == (8, 10, 3)
    assert np.abs(decoded.astype(int) - frames[1]).mean() < 8  # Lossy, but the same image.
    context = example.context.feature
    assert context[schema.LABEL_TEXT_KEY].bytes_list.value == [b"a", b"b"]


def test_defaults_without_labels_or_id():
    example = schema.make_sequence_example(schema.encode_frames(_frames(1)), None, None)
    parsed = schema.parse_sequence_example(example.SerializeToString(), "file.tfrecord:3")
    assert parsed["id"].numpy() == b"file.tfrecord:3"
    assert parsed["label"].shape == (0,)
    single = schema.make_sequence_example([b"x"], 5, b"id")
    assert list(single.context.feature[schema.LABEL_KEY].int64_list.value) == [5]


def test_record_without_frames_parses_to_zero_frames():
    example = tf.train.SequenceExample()
    example.context.feature[schema.LABEL_KEY].int64_list.value.append(1)
    parsed = schema.parse_sequence_example(example.SerializeToString())
    assert parsed["frames"].shape == (0,)


def test_parse_inside_tf_data():
    example = schema.make_sequence_example(schema.encode_frames(_frames(2)), 3, "v")
    ds = tf.data.Dataset.from_tensors(example.SerializeToString()).map(
        lambda s: schema.parse_sequence_example(s, "d:0"))
    parsed = next(iter(ds))
    assert parsed["id"].numpy() == b"v" and parsed["frames"].shape == (2,)


def test_grayscale_frames_encode():
    gray = _frames(2)[..., :1]
    jpegs = schema.encode_frames(gray)
    assert tf.io.decode_jpeg(jpegs[0], channels=3).shape == (8, 10, 3)


def test_encode_frames_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8 frames"):
        schema.encode_frames(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 frames"):
        schema.encode_frames(np.zeros((4, 4, 3), np.uint8))


def test_label_map_round_trip(tmp_path):
    path = schema.label_map_path(str(tmp_path))
    schema.write_label_map(path, ["run", "jump"])
    assert schema.read_label_map(path) == ["run", "jump"]
    assert schema.shard_filename("train", 2, 10) == "train-00002-of-00010.tfrecord"
    with pytest.raises(ValueError, match="does not exist"):
        schema.read_label_map(str(tmp_path / "missing.txt"))


def _shards(data_dir, split, counts):
    """Writes `split` shards holding counts[i] dummy records each; returns their paths."""
    paths = []
    for i, n in enumerate(counts):
        path = os.path.join(data_dir, schema.shard_filename(split, i, len(counts)))
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(n):
                writer.write(b"x")
        paths.append(path)
    return paths


def test_example_counts_are_exact_for_any_pattern(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(a)
    os.makedirs(b)
    schema.write_example_counts(a, "train", {p: n for p, n in zip(
        _shards(a, "train", [3, 2, 4]), [3, 2, 4])})
    schema.write_example_counts(a, "eval", dict(zip(_shards(a, "eval", [5]), [5])))
    schema.write_example_counts(b, "train", dict(zip(_shards(b, "train", [7]), [7])))
    count = schema.read_example_count
    assert count(os.path.join(a, "train-*")) == 9
    assert count(os.path.join(a, "eval-*.tfrecord")) == 5
    assert count(os.path.join(a, "train-00001-of-00003.tfrecord")) == 2  # Part of a split.
    assert count(os.path.join(a, "*.tfrecord")) == 14  # Both splits of one directory.
    assert count(f"{a}/train-*,{b}/train-*") == 16  # Two directories.
    assert count([os.path.join(a, "eval-*"), os.path.join(b, "train-*")]) == 12
    assert count(os.path.join(b, "*")) is None  # It matches example_counts.json, not a shard.
    saved = json.load(open(schema.example_counts_path(a)))
    assert saved["train"] == {"num_examples": 9, "shards": {
        "train-00000-of-00003.tfrecord": 3, "train-00001-of-00003.tfrecord": 2,
        "train-00002-of-00003.tfrecord": 4}}
    # Rewriting a split replaces its entry and keeps the other split.
    schema.write_example_counts(a, "train", dict(zip(_shards(a, "train", [3, 2, 4]), [1, 1, 1])))
    assert count(os.path.join(a, "train-*")) == 3 and count(os.path.join(a, "eval-*")) == 5


def test_example_count_is_none_when_not_recorded(tmp_path):
    assert schema.read_example_count("tfds:ucf101/ucf101_1/train") is None
    assert schema.read_example_count(str(tmp_path / "nothing-*.tfrecord")) is None
    _shards(str(tmp_path), "train", [2, 2])
    assert schema.read_example_count(str(tmp_path / "train-*")) is None  # No count file.
    schema.write_example_counts(str(tmp_path), "train", {
        schema.shard_filename("train", 0, 2): 2})
    # One matched shard has no recorded count: nothing is guessed.
    assert schema.read_example_count(str(tmp_path / "train-*")) is None
    assert schema.read_example_count(str(tmp_path / "train-00000-*")) == 2


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object of splits"),
    ('{"train": {"num_examples": 3}}', "split 'train' needs 'num_examples' and 'shards'"),
    ('{"train": {"num_examples": 3, "shards": {"train-00000-of-00001.tfrecord": -3}}}',
     "ints >= 0"),
    ('{"train": {"num_examples": 4, "shards": {"train-00000-of-00001.tfrecord": 3}}}',
     "num_examples=4 but its shards add up to 3"),
    ('{"a": {"num_examples": 1, "shards": {"train-00000-of-00001.tfrecord": 1}},'
     ' "b": {"num_examples": 1, "shards": {"train-00000-of-00001.tfrecord": 1}}}',
     "listed under both 'a' and 'b'"),
])
def test_malformed_example_count_file_is_one_clear_error(tmp_path, content, match):
    _shards(str(tmp_path), "train", [3])
    path = schema.example_counts_path(str(tmp_path))
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=f"Example count file {path} is malformed.*{match}"):
        schema.read_example_count(str(tmp_path / "train-*"))
    # The writers replace a malformed file instead of failing at the end of a conversion.
    schema.write_example_counts(str(tmp_path), "train", {"train-00000-of-00001.tfrecord": 3})
    assert schema.read_example_count(str(tmp_path / "train-*")) == 3


def _detection_example():
    boxes = np.array([[0.151, 0.077, 0.811, 0.283], [0.2, 0.5, 0.9, 0.75], [0.0, 0.0, 1.0, 1.0]])
    labels = [[79, 11], [], [4]]  # Box 1 has no action (a proposal-only person is allowed).
    proposals = np.array([[0.15, 0.08, 0.8, 0.3], [0.1, 0.1, 0.2, 0.2]])
    example = schema.make_detection_example(
        schema.encode_frames(_frames(5)), "-5KQ66BBWC4,0902", 2, 902, boxes, labels,
        track_ids=[1, 0, 3], proposals=proposals, proposal_scores=[0.99, 0.25])
    return example, boxes, proposals


def test_detection_record_round_trip_keeps_boxes_labels_and_order():
    example, boxes, proposals = _detection_example()
    parsed = schema.parse_detection_example(example.SerializeToString())
    assert parsed["frames"].shape == (5,) and parsed["id"].numpy() == b"-5KQ66BBWC4,0902"
    assert parsed["keyframe_index"].numpy() == 2 and parsed["timestamp"].numpy() == 902
    assert parsed["keyframe_index"].dtype == parsed["timestamp"].dtype == tf.int32
    assert parsed["gt_boxes"].dtype == tf.float32
    np.testing.assert_array_equal(parsed["gt_boxes"].numpy(), boxes.astype(np.float32))
    np.testing.assert_array_equal(parsed["gt_label_index"].numpy(), [79, 11, 4])
    np.testing.assert_array_equal(parsed["gt_label_box"].numpy(), [0, 0, 2])
    np.testing.assert_array_equal(parsed["proposals"].numpy(), proposals.astype(np.float32))
    np.testing.assert_array_equal(parsed["proposal_scores"].numpy(), np.float32([0.99, 0.25]))
    context = example.context.feature
    assert list(context[schema.BOX_KEYS[0]].float_list.value) == pytest.approx(boxes[:, 0])
    assert list(context[schema.BOX_KEYS[1]].float_list.value) == pytest.approx(boxes[:, 1])
    assert list(context[schema.TRACK_KEY].int64_list.value) == [1, 0, 3]
    # Classification readers parse it too: no class label, the keyframe key as its id.
    plain = schema.parse_sequence_example(example.SerializeToString())
    assert plain["label"].shape == (0,) and plain["id"].numpy() == b"-5KQ66BBWC4,0902"


def test_detection_record_without_boxes_parses_inside_tf_data():
    example = schema.make_detection_example([b"a", b"b"], "v,0903", 1, 903, None, [])
    ds = tf.data.Dataset.from_tensors(example.SerializeToString()).map(
        schema.parse_detection_example)
    parsed = next(iter(ds))
    assert parsed["gt_boxes"].shape == (0, 4) and parsed["proposals"].shape == (0, 4)
    assert parsed["gt_label_index"].shape == (0,) and parsed["proposal_scores"].shape == (0,)


def test_make_detection_example_refuses_inconsistent_inputs():
    with pytest.raises(ValueError, match="keyframe_index 2 is outside the 2 frames of v,0902"):
        schema.make_detection_example([b"a", b"b"], "v,0902", 2, 902, None, [])
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        schema.make_detection_example([b"a"], "v,0902", 0, 902, [[0.1, 0.2]], [[1]])
    with pytest.raises(ValueError, match="1 boxes need as many label lists"):
        schema.make_detection_example([b"a"], "v,0902", 0, 902, [[0, 0, 1, 1]], [])
