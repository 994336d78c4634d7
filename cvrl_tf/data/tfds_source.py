"""TFDS video data sets (ucf101 and its split configs) as parsed examples for `build_dataset`.

`tfds_examples` yields the parsed-example dict of docs/DESIGN.md, `{'frames': string [L]
(encoded JPEG per frame), 'label': int32 [n], 'id': string []}`, without decoding a frame:
the video feature is read with `tfds.decode.SkipDecoding`, so the pipeline decodes (and crops)
only the frames it samples. TFDS `ucf101` stores JPEG frames; a data set whose video feature
stores PNG frames is transcoded to JPEG here. Nothing is downloaded: the data set must have
been prepared (`tfds build ucf101 --config ucf101_1`) in `data_dir` beforehand.
"""
from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds

# The ucf101 builder's configs: official split 1 at 256x256, and the official splits 1..3 at
# full resolution. A bare 'ucf101' is the builder's default config (ucf101_1_256).
UCF101_CONFIGS = ("ucf101_1_256", "ucf101_1", "ucf101_2", "ucf101_3")


def _find_feature(features: tfds.features.FeaturesDict, feature_type: type) -> Optional[str]:
    """The key of the first top-level feature of `feature_type`, or None."""
    for key, feature in features.items():
        if isinstance(feature, feature_type):
            return key
    return None


def _video_encoding(video_feature: tfds.features.Video) -> str:
    """The image encoding ('jpeg' or 'png') the Video feature stores its frames with."""
    image = getattr(video_feature, "feature", None)
    return str(getattr(image, "encoding_format", None) or "png").lower()


def _num_files(builder: tfds.core.DatasetBuilder, split: str) -> Optional[int]:
    """How many files back `split`, or None when the split metadata is unknown."""
    try:
        return int(builder.info.splits[split].num_shards)
    except Exception:  # Unprepared data set, unknown split or mocked metadata.
        return None


def _png_to_jpeg(frames: tf.Tensor) -> tf.Tensor:
    """Transcodes a [L] vector of PNG frames into JPEG frames (quality 95)."""
    return tf.map_fn(
        lambda png: tf.io.encode_jpeg(tf.io.decode_png(png, channels=3), quality=95),
        frames, fn_output_signature=tf.TensorSpec([], tf.string))


def tfds_examples(name: str,
                  split: str,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  data_dir: Optional[str] = None,
                  shuffle_files: bool = False,
                  seed: Optional[int] = None) -> tf.data.Dataset:
    """Reads TFDS `name` (e.g. 'ucf101/ucf101_2') split `split` as parsed-example dicts.

    With `input_context`, each input pipeline reads its own part: whole files when the split
    has at least one file per pipeline (tfds.ReadConfig), else every n-th example.
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise ValueError(f"TFDS data set {name!r} is not available in tensorflow_datasets "
                         f"({e}); use e.g. 'ucf101/ucf101_1'.") from e
    features = builder.info.features
    video_key = _find_feature(features, tfds.features.Video)
    if video_key is None:
        raise ValueError(f"TFDS data set {name!r} has no Video feature; it cannot feed clips.")
    label_key = _find_feature(features, tfds.features.ClassLabel)
    encoding = _video_encoding(features[video_key])

    num_pipelines = input_context.num_input_pipelines if input_context else 1
    num_files = _num_files(builder, split)
    by_file = num_pipelines > 1 and num_files is not None and num_files >= num_pipelines
    read_config = tfds.ReadConfig(
        add_tfds_id=True, shuffle_seed=seed,
        input_context=input_context if by_file else None)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                decoders={video_key: tfds.decode.SkipDecoding()},
                                read_config=read_config)
    except Exception as e:
        dataset, _, config = name.partition("/")
        build = f"tfds build {dataset}" + (f" --config {config}" if config else "")
        raise ValueError(f"TFDS data set {name!r} split {split!r} cannot be read from "
                         f"{builder.data_dir!r} ({type(e).__name__}: {e}); prepare it first "
                         f"with `{build}` and pass its data_dir.") from e
    if num_pipelines > 1 and not by_file:
        ds = ds.shard(num_pipelines, input_context.input_pipeline_id)

    def to_parsed(example: dict) -> dict:
        frames = tf.reshape(example[video_key], [-1])
        if encoding != "jpeg":
            frames = _png_to_jpeg(frames)
        if label_key is None:
            label = tf.zeros([0], tf.int32)
        else:
            label = tf.reshape(tf.cast(example[label_key], tf.int32), [-1])
        return {"frames": frames, "label": label, "id": example["tfds_id"]}

    return ds.map(to_parsed, num_parallel_calls=tf.data.AUTOTUNE)
