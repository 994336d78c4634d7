"""The record schema: SequenceExample build/parse round trips and label maps."""
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
