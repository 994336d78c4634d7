"""Tests for cvrl_tf.data.tfds_source on mocked TFDS data (nothing is downloaded)."""
import sys
from unittest import mock

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cvrl_tf.data import pipeline, tfds_source

JPEG_MAGIC = b"\xff\xd8"


def _collect(ds: tf.data.Dataset) -> list[dict]:
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


def test_ucf101_configs_match_the_tfds_builder():
    names = [config.name for config in tfds.builder_cls("ucf101").BUILDER_CONFIGS]
    assert tuple(names) == tfds_source.UCF101_CONFIGS


def test_ucf101_yields_parsed_examples_with_encoded_jpeg_frames():
    with tfds.testing.mock_data(num_examples=3):
        ds = tfds_source.tfds_examples("ucf101/ucf101_2", "test")
        spec = ds.element_spec
        assert spec["frames"] == tf.TensorSpec([None], tf.string)
        assert spec["label"].dtype == tf.int32 and spec["label"].shape.rank == 1
        assert spec["id"] == tf.TensorSpec([], tf.string)
        examples = _collect(ds)
    assert len(examples) == 3
    assert len({ex["id"] for ex in examples}) == 3
    for ex in examples:
        assert ex["frames"].shape[0] >= 1
        assert all(f[:2] == JPEG_MAGIC for f in ex["frames"])
        assert tf.io.decode_jpeg(ex["frames"][0]).shape[-1] == 3
        assert ex["label"].shape == (1,) and 0 <= ex["label"][0] < 101


def test_input_context_splits_examples_disjointly():
    with tfds.testing.mock_data(num_examples=6):
        everything = {ex["id"] for ex in _collect(
            tfds_source.tfds_examples("ucf101/ucf101_1", "train"))}
        parts = [{ex["id"] for ex in _collect(tfds_source.tfds_examples(
            "ucf101/ucf101_1", "train",
            input_context=tf.distribute.InputContext(2, pipe, 2)))} for pipe in (0, 1)]
    assert len(everything) == 6
    assert parts[0] | parts[1] == everything and not parts[0] & parts[1]
    assert len(parts[0]) == len(parts[1]) == 3


@pytest.mark.parametrize("num_files,by_file", [(4, True), (1, False)])
def test_input_context_reads_whole_files_when_there_are_enough(monkeypatch, num_files,
                                                               by_file):
    monkeypatch.setattr(tfds_source, "_num_files", lambda builder, split: num_files)
    context = tf.distribute.InputContext(2, 1, 2)
    calls = []
    with tfds.testing.mock_data(num_examples=6):
        as_dataset = tfds.core.DatasetBuilder.as_dataset

        def spy(self, **kwargs):
            calls.append(kwargs)
            return as_dataset(self, **kwargs)

        with mock.patch.object(tfds.core.DatasetBuilder, "as_dataset", spy):
            examples = _collect(tfds_source.tfds_examples("ucf101/ucf101_3", "train",
                                                          input_context=context))
    assert calls[0]["read_config"].input_context is (context if by_file else None)
    assert calls[0]["decoders"]["video"].__class__ is tfds.decode.SkipDecoding
    # The mock ignores ReadConfig's file sharding, so by file all 6 come back here.
    assert len(examples) == (6 if by_file else 3)


def test_png_video_frames_are_transcoded_to_jpeg():
    # moving_mnist stores PNG frames and has no class label.
    with tfds.testing.mock_data(num_examples=2):
        examples = _collect(tfds_source.tfds_examples("moving_mnist", "test"))
    for ex in examples:
        assert ex["frames"].shape == (20,)
        assert all(f[:2] == JPEG_MAGIC for f in ex["frames"])
        assert tf.io.decode_jpeg(ex["frames"][0]).shape == (64, 64, 3)
        assert ex["label"].shape == (0,)


def test_build_dataset_reads_tfds_ucf101():
    with tfds.testing.mock_data(num_examples=2):
        ds = pipeline.build_dataset("tfds:ucf101/ucf101_1_256/train", "train",
                                    global_batch_size=2, num_frames=2, stride=1,
                                    crop_size=8, seed=0)
        batch = next(iter(ds))
    assert batch["video"].shape == (2, 2, 8, 8, 3)
    assert all(0 <= label < 101 for label in batch["label"].numpy())


def test_unknown_data_set_is_one_clear_error():
    try:
        tfds_source.tfds_examples("no_such_video_set_xyz", "train")
    except ValueError as e:
        assert "no_such_video_set_xyz" in str(e) and "not available" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_tfds_pattern_without_a_working_tfds_install_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvrl_tf.data.tfds_source", None)  # import now fails
    monkeypatch.delattr(sys.modules["cvrl_tf.data"], "tfds_source")
    with pytest.raises(ValueError, match=r"'tfds:ucf101/ucf101_1_256/train' needs "
                                         r"cvrl_tf.data.tfds_source, which could not be imported"):
        pipeline.build_dataset("tfds:ucf101/ucf101_1_256/train", "train", global_batch_size=2,
                               num_frames=2, stride=1, crop_size=8)
