"""TFRecord / TFDS videos -> batched clips for pretraining, training and evaluation.

Records (docs/DESIGN.md schema) are sharded per input pipeline (by file when there are at
least as many files as pipelines, else by record index; disjoint either way), interleaved,
shuffled, checked, then each video is cut into clips (temporal.py), only the frames a clip
uses and only their crop window are JPEG-decoded, resized and rounded to uint8 (spatial.py),
and the rest of the augmentation (device_augment.py) runs here or in the train step.

Batches use drop_remainder=True so every shape is static (TPU friendly); in eval mode that
drops the last partial batch unless drop_remainder=False is passed. Videos shorter than one
clip wrap around (loop) by default, as SPEC.md says; short_videos='skip' or 'error' changes it.
With `seed`, element k of input pipeline p is augmented with a seed derived from (seed, p, k)
and ordering is deterministic (tf.data deterministic=True), so a run replays exactly; eval
mode is always deterministic. Use it through `strategy.distribute_datasets_from_function`:
the input_context shards the data here, so tf.data auto-sharding is turned off.
"""
import random
from typing import Optional, Sequence, Union

import tensorflow as tf

from cvrl_tf.data import device_augment, schema, spatial, temporal

MODES = ("pretrain", "train", "eval")
AUGMENT_ON = ("host", "device")
SHORT_VIDEOS = ("wrap", "skip", "error")
_JPEG_MAGIC = b"\xff\xd8"
_NO_COLOR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


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


def check_example(example: dict, clip_span: int, num_classes: Optional[int],
                  check_short: bool) -> tf.Tensor:
    """Checks one parsed example in-graph: bad [4] bool, one flag per check, in this order:
    no frames, a frame without the JPEG magic bytes, shorter than one clip (only when
    check_short), a label outside [0, num_classes)."""
    frames, labels = example["frames"], example["label"]
    num = tf.size(frames)
    not_jpeg = tf.not_equal(tf.strings.substr(frames, 0, 2), _JPEG_MAGIC)
    short = tf.logical_and(check_short, num < clip_span)
    bad_label = (tf.constant(False) if num_classes is None else
                 tf.reduce_any(tf.logical_or(labels < 0, labels >= num_classes)))
    return tf.stack([num == 0, tf.reduce_any(not_jpeg), short, bad_label])


def explain_bad(example: dict, bad: tf.Tensor, clip_span: int,
                num_classes: Optional[int]) -> tf.Tensor:
    """The first failed check of `check_example` as a sentence (string scalar)."""
    frames, labels = example["frames"], example["label"]
    not_jpeg = tf.not_equal(tf.strings.substr(frames, 0, 2), _JPEG_MAGIC)
    first_bad = tf.argmax(tf.cast(tf.concat([not_jpeg, [True]], 0), tf.int32),
                          output_type=tf.int32)
    label_reason = tf.constant("")
    if num_classes is not None:
        outside = tf.logical_or(labels < 0, labels >= num_classes)
        value = tf.concat([tf.boolean_mask(labels, outside), [-1]], 0)[0]
        label_reason = tf.strings.format("label {} is outside [0, num_classes={})",
                                         (value, num_classes))
    reasons = tf.stack([
        tf.constant("it has no image/encoded frames"),
        tf.strings.format("frame {} is not a JPEG (no FFD8 magic bytes)", first_bad),
        tf.strings.format("it has {} frames, fewer than one clip spans ({})",
                          (tf.size(frames), clip_span)),
        label_reason,
    ])
    return reasons[tf.argmax(tf.cast(bad, tf.int32))]


def _read_records(files: list[str], record_shard: Optional[tuple], shuffle: bool,
                  seed: Optional[int], deterministic: bool) -> tf.data.Dataset:
    """(file, record index, serialized) from the given files, interleaved, optionally
    keeping only record indices i with i % n == shard id (record-level sharding)."""
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):
        ds = tf.data.TFRecordDataset(path).enumerate()
        if record_shard is not None:
            num, index = record_shard
            ds = ds.filter(lambda i, _: tf.equal(i % num, index))
        return ds.map(lambda i, s: (path, i, s))

    return files_ds.interleave(read, cycle_length=min(len(files), 8), block_length=1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _parse(path, index, serialized):
    default_id = tf.strings.join([tf.strings.regex_replace(path, r"^.*[/\\]", ""),
                                  tf.strings.as_string(index)], ":")
    return schema.parse_sequence_example(serialized, default_id)


def _tfds_examples(file_pattern: str, input_context, data_dir: Optional[str]):
    """'tfds:<name>[/<config>]/<split>' -> parsed examples from cvrl_tf.data.tfds_source."""
    spec = file_pattern[len("tfds:"):]
    if "/" not in spec:
        raise ValueError(f"TFDS pattern {file_pattern!r} needs the form 'tfds:<name>[/<config>]"
                         f"/<split>', e.g. 'tfds:ucf101/ucf101_1_256/train'.")
    name, split = spec.rsplit("/", 1)
    try:
        from cvrl_tf.data import tfds_source  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError(f"File pattern {file_pattern!r} needs cvrl_tf.data.tfds_source, which "
                         f"could not be imported ({e}).") from e
    return tfds_source.tfds_examples(name, split, input_context=input_context, data_dir=data_dir)


def build_dataset(file_pattern: Union[str, Sequence[str]], mode: str, global_batch_size: int,
                  num_frames: int, stride: int, crop_size: int,
                  input_context: Optional[tf.distribute.InputContext] = None, *,
                  distribution: str = "decreasing", power: float = 1.0, consistent: bool = True,
                  shuffle_buffer: int = 256, seed: Optional[int] = None,
                  num_classes: Optional[int] = None, skip_bad_records: bool = False,
                  short_videos: str = "wrap", repeat: Optional[bool] = None,
                  color_augment: bool = False, num_temporal_views: int = 10,
                  num_spatial_views: int = 3, drop_remainder: bool = True,
                  area_range: Sequence[float] = (0.3, 1.0),
                  aspect_ratio_range: Sequence[float] = (0.5, 2.0),
                  tfds_data_dir: Optional[str] = None, augment_on: Optional[str] = None,
                  **augment_kwargs) -> tf.data.Dataset:
    """The input pipeline: batches of {'video', 'label', 'id'} for one input pipeline.

    mode 'pretrain': video [2B, T, S, S, 3], rows i and i+B are two clips of one video, view 1
    (blur p=1) in the first B rows, view 2 (blur 0.1, solarize 0.2) in the last B; with
    augment_on='device' the batch is per video instead (video [B, 2, T, S, S, 3] uint8,
    aug_params [B, 2, ...], label [B], id [B]) and augment_batch makes those rows.
    mode 'train': video [B, T, S, S, 3], random resized crop + flip (color_augment=True adds
    the view-1 color/blur chain). mode 'eval': video [B, V, T, S, S, 3], V = num_temporal_views
    x num_spatial_views, temporal-major (v = t * num_spatial_views + s).
    B = input_context.get_per_replica_batch_size(global_batch_size), else global_batch_size.
    label: int32, the first clip/label/index value or -1; id: clip/media_id or "<file>:<index>".
    file_pattern: glob, comma-separated globs, a list, or 'tfds:<name>[/<config>]/<split>'.
    augment_kwargs: strengths/probabilities of device_augment.draw_params (AUGMENT_KWARGS).
    augment_on: where the chain after the crop (flip, colour jitter, grayscale, blur, solarize)
    runs. 'host': here, video float32 in [0, 1]. 'device': the host only crops (decoding only
    the window), resizes and rounds, emitting video uint8 and 'aug_params' float32 [N, width]
    (one row per clip; [N, T, width] with consistent=False) drawn here from the seeds above;
    the train step turns them into the same float32 clips with device_augment.augment_batch
    (steps.make_pretrain_step does), which in pretraining also lays out the [2B] rows.
    Default: 'device' in mode 'pretrain', 'host' otherwise ('eval' has no random augmentation
    and refuses 'device').
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if short_videos not in SHORT_VIDEOS:
        raise ValueError(f"short_videos must be one of {SHORT_VIDEOS}, got {short_videos!r}.")
    unknown = set(augment_kwargs) - set(spatial.AUGMENT_KWARGS)
    if unknown:
        raise ValueError(f"Unknown build_dataset arguments {sorted(unknown)}; augmentation "
                         f"arguments are {spatial.AUGMENT_KWARGS}.")
    temporal._check_distribution(distribution, power)  # pylint: disable=protected-access
    augment_on = augment_on or ("device" if mode == "pretrain" else "host")
    if augment_on not in AUGMENT_ON or (mode == "eval" and augment_on == "device"):
        raise ValueError(f"augment_on must be one of {AUGMENT_ON} ('host' in mode 'eval'), got "
                         f"{augment_on!r} in mode {mode!r}.")
    on_device = augment_on == "device"
    if min(num_frames, stride, crop_size, global_batch_size) < 1:
        raise ValueError("num_frames, stride, crop_size and global_batch_size must be >= 1, got "
                         f"{num_frames}, {stride}, {crop_size}, {global_batch_size}.")
    batch_size = (input_context.get_per_replica_batch_size(global_batch_size)
                  if input_context else global_batch_size)
    num_pipes = input_context.num_input_pipelines if input_context else 1
    pipe_id = input_context.input_pipeline_id if input_context else 0
    training = mode != "eval"
    repeat = training if repeat is None else repeat
    deterministic = seed is not None or mode == "eval"  # Eval has no randomness: keep order.
    base_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    clip_span = (num_frames - 1) * stride + 1

    if isinstance(file_pattern, str) and file_pattern.startswith("tfds:"):
        ds = _tfds_examples(file_pattern, input_context, tfds_data_dir)
    else:
        files = resolve_files(file_pattern)
        record_shard = None
        if num_pipes > 1 and len(files) >= num_pipes:
            files = files[pipe_id::num_pipes]
        elif num_pipes > 1:
            record_shard = (num_pipes, pipe_id)
        ds = _read_records(files, record_shard, training, base_seed, deterministic)
        ds = ds.map(_parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

    check_short = short_videos != "wrap"
    if skip_bad_records or short_videos == "skip":
        ds = _skip_bad(ds, clip_span, num_classes, check_short, skip_bad_records)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=base_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    aug = dict(area_range=area_range, aspect_ratio_range=aspect_ratio_range, **augment_kwargs)
    if mode == "train" and not color_augment:
        aug.update(_NO_COLOR)
    element_base = tf.constant([base_seed, pipe_id], tf.int64)

    def process(index, example):
        frames = _assert_good(example, clip_span, num_classes, check_short)
        seed_k = tf.random.experimental.stateless_fold_in(element_base, index)
        if mode == "pretrain":
            clips = _pretrain_clips(frames, seed_k, num_frames, stride, crop_size, distribution,
                                    power, consistent, aug, on_device)
        elif mode == "train":
            clips = _train_clip(frames, seed_k, num_frames, stride, crop_size, consistent, aug,
                                on_device)
        else:
            clips = {"video": _eval_views(frames, num_frames, stride, crop_size,
                                          num_temporal_views, num_spatial_views)}
        labels = example["label"]
        label = tf.concat([labels, [-1]], 0)[0]
        return dict(clips, label=label, id=example["id"])

    ds = ds.enumerate().map(process, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)
    if skip_bad_records:  # Records that pass the cheap checks but still fail to decode.
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if mode == "pretrain" and not on_device:  # The device does it in augment_batch.
        ds = ds.map(device_augment.views_to_rows, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _assert_good(example: dict, clip_span: int, num_classes: Optional[int],
                 check_short: bool) -> tf.Tensor:
    """The example's frames, after an in-graph check that fails naming the record and cause."""
    bad = check_example(example, clip_span, num_classes, check_short)

    def fail():  # The message is only built for a bad record.
        message = tf.strings.join(["cvrl_tf: bad record ", example["id"], ": ",
                                   explain_bad(example, bad, clip_span, num_classes),
                                   " (build_dataset(skip_bad_records=True) skips such records)"])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    ok = tf.cond(tf.reduce_any(bad), fail, lambda: tf.constant(True))
    with tf.control_dependencies([ok]):
        return tf.identity(example["frames"])


def _skip_bad(ds: tf.data.Dataset, clip_span: int, num_classes: Optional[int],
              check_short: bool, skip_all: bool) -> tf.data.Dataset:
    """Drops bad records (or only too-short ones), printing each with a running count."""
    def mark(count, example):
        bad = check_example(example, clip_span, num_classes, check_short)
        skip = tf.reduce_any(bad) if skip_all else bad[2]
        count = count + tf.cast(skip, tf.int64)
        printed = tf.cond(skip, lambda: _print_skip(
            example["id"], explain_bad(example, bad, clip_span, num_classes), count),
            lambda: tf.constant(True))
        with tf.control_dependencies([printed]):
            skip = tf.identity(skip)
        return count, (example, skip)

    ds = ds.scan(tf.constant(0, tf.int64), mark)
    return ds.filter(lambda example, skip: tf.logical_not(skip)).map(lambda example, _: example)


def _print_skip(video_id, reason, count):
    message = tf.strings.join(["cvrl_tf: skipped bad record ", video_id, ": ", reason,
                               " (skipped so far: ", tf.strings.as_string(count), ")"])
    with tf.control_dependencies([tf.print(message)]):
        return tf.constant(True)


def _augmented(clips: tf.Tensor, params: tf.Tensor, on_device: bool) -> dict:
    """uint8 clips [n, T, S, S, 3] and their parameter rows -> the element's clip keys: both
    for the device, or the float32 clips augmented here (the same function the device runs)."""
    if on_device:
        return {"video": clips, device_augment.PARAMS_KEY: params}
    return {"video": device_augment.apply_params(clips, params, batched=False)}


def _pretrain_clips(frames, seed, num_frames, stride, crop_size, distribution, power,
                    consistent, aug, on_device):
    """Two clips of one video, video [2, T, S, S, 3]: interval-sampled starts, views 1 and 2."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    length = tf.size(frames)
    starts = temporal.sample_clip_starts(length, num_frames, stride, distribution, power,
                                         seed=seeds[0])
    clips, params = [], []
    for view in (1, 2):
        indices = temporal.clip_frame_indices(starts[view - 1], length, num_frames, stride)
        clip, row = spatial.clip_and_params(tf.gather(frames, indices), crop_size, view,
                                            consistent, seeds[view], **aug)
        clips.append(clip)
        params.append(row)
    return _augmented(tf.stack(clips), tf.stack(params), on_device)


def _train_clip(frames, seed, num_frames, stride, crop_size, consistent, aug, on_device):
    """One uniformly placed clip, video [T, S, S, 3], random resized crop + flip (+ color if
    asked)."""
    start_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    length = tf.size(frames)
    start = temporal.sample_clip_start(length, num_frames, stride, seed=start_seed)
    indices = temporal.clip_frame_indices(start, length, num_frames, stride)
    clip, row = spatial.clip_and_params(tf.gather(frames, indices), crop_size, 1, consistent,
                                        aug_seed, **aug)
    return {k: v[0] for k, v in _augmented(clip[tf.newaxis], row[tf.newaxis],
                                            on_device).items()}


def _eval_views(frames, num_frames, stride, crop_size, num_temporal, num_spatial):
    """All eval views, [Vt * Vs, T, S, S, 3]: each distinct frame decoded once, only the
    union of the square crops decoded."""
    length = tf.size(frames)
    starts = temporal.eval_clip_starts(length, num_frames, stride, num_temporal)
    indices = tf.reshape(temporal.clip_frame_indices(starts, length, num_frames, stride), [-1])
    unique, position = tf.unique(indices)
    jpegs = tf.gather(frames, unique)
    shape = tf.io.extract_jpeg_shape(jpegs[0])
    windows = spatial.eval_crop_windows(shape[0], shape[1], num_spatial)
    top_left = tf.reduce_min(windows[:, :2], axis=0)
    bottom_right = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
    union = tf.concat([top_left, bottom_right - top_left], 0)
    decoded = spatial.decode_windows(jpegs, union)
    views = []
    for v in range(num_spatial):
        win = tf.concat([windows[v, :2] - top_left, windows[v, 2:]], 0)
        crops = spatial.crop_and_resize(decoded, win[tf.newaxis], crop_size, same_window=True)
        views.append(tf.reshape(tf.gather(crops, position),
                                [num_temporal, num_frames, crop_size, crop_size, 3]))
    video = tf.reshape(tf.stack(views, axis=1),
                       [num_temporal * num_spatial, num_frames, crop_size, crop_size, 3])
    return video
