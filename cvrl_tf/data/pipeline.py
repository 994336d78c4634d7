"""TFRecord / TFDS videos -> batched clips for pretraining, training and evaluation.

Records (docs/DESIGN.md schema) come from source.py: sharded per input pipeline (by file when
there are at least as many files as pipelines, else by record index; disjoint either way), in
an order a run can resume exactly (per-epoch file order, shuffled windows of shuffle_buffer
records). They are parsed and checked (checks.py), each video is cut into clips (temporal.py),
only the frames a clip uses and only their crop window are JPEG-decoded, resized and rounded to
uint8 (spatial.py), and the rest of the augmentation (device_augment.py) runs here or in the
train step.

Bad records: training modes skip them by default and count them per cause ('skipped' and
'last_bad' ride with the next good record, see checks.py); evaluation refuses them with a
sentence naming the record. Batches use drop_remainder=True so every shape is static (TPU
friendly); in eval mode that drops the last partial batch unless drop_remainder=False is
passed. Videos shorter than one clip wrap around (loop) by default (docs/DESIGN.md);
short_videos='skip' or 'error' changes it. Every random draw of element k of input pipeline p
is seeded from (seed, p, k's raw index in the stream), and with `seed` the order is
deterministic (tf.data deterministic=True), so a run replays exactly; eval mode is always
deterministic. Use it through `strategy.distribute_datasets_from_function`: the
input_context shards the data here, so tf.data auto-sharding is turned off.
"""
import functools
import os
from typing import Optional, Sequence, Union

from absl import logging
import numpy as np
import tensorflow as tf

from cvrl_tf.data import checks, device_augment, schema, source, spatial, subset, temporal

MODES = ("pretrain", "train", "eval")
AUGMENT_ON = ("host", "device")
SHORT_VIDEOS = ("wrap", "skip", "error")
_NO_COLOR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


# Re-exported: the glob rule lives with the on-disk layout in schema.py.
resolve_files = schema.resolve_files


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


# The pipeline is plain graph code (tf.cond and tf.where, no Python control flow on tensors), so
# tf.data need not run AutoGraph on its functions: do_not_convert switches it off for every
# function made while building (about 1-2 s of each process's start-up; docs/DESIGN.md).
@tf.autograph.experimental.do_not_convert
def build_dataset(file_pattern: Union[str, Sequence[str]], mode: str, global_batch_size: int,
                  num_frames: int, stride: int, crop_size: int,
                  input_context: Optional[tf.distribute.InputContext] = None, *,
                  distribution: str = "decreasing", power: float = 1.0, consistent: bool = True,
                  shuffle_buffer: int = 256, seed: Optional[int] = None,
                  num_classes: Optional[int] = None, skip_bad_records: Optional[bool] = None,
                  short_videos: str = "wrap", repeat: Optional[bool] = None,
                  color_augment: bool = False, num_temporal_views: int = 10,
                  num_spatial_views: int = 3, drop_remainder: bool = True,
                  area_range: Sequence[float] = (0.3, 1.0),
                  aspect_ratio_range: Sequence[float] = (0.5, 2.0),
                  tfds_data_dir: Optional[str] = None, augment_on: Optional[str] = None,
                  start_positions: Optional[np.ndarray] = None,
                  subset_ids: Optional[Sequence[str]] = None,
                  **augment_kwargs) -> tf.data.Dataset:
    """The input pipeline: batches of {'video', 'label', 'id', ...} for one input pipeline.

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
    Default: 'device' in mode 'pretrain', 'host' otherwise. Mode 'eval' has no augmentation and
    ignores it (one gin binding can set it for a run's training and eval data alike).
    Training modes also yield, per video: 'id_hash' int32 (`id_hash` of the id), 'position'
    int32 [source.POSITION_SIZE] (where the stream stood), 'skipped' int32 [len(CAUSES)] and
    'last_bad' int32 [len(CAUSES), 3] (checks.py). `start_positions`: positions a previous run
    stored (any number of rows); the stream continues after the newest of this pipeline's.
    subset_ids: read only these videos (ids as `subset.read_ids` gives them; TFRecord files
    only): a filter in the record stream (source.records' `keep`), before the shuffle windows.
    A repeating stream whose files hold none of them would search forever (a run checks
    first: cvrl_tf/training/label_subset.py).
    skip_bad_records: None skips in training modes and refuses in 'eval'. Skipping catches a
    failing parse or JPEG decode per record, which costs about 0.5 ms of host CPU per record
    (a one-record dataset each time, measured on the demo's videos): about 2% of a Kinetics-size
    record's (2 clips at 11 ms, docs/BENCHMARKS.md), but 30-45% of the pipeline for the demo's
    48x48 videos, which therefore refuses instead (its data set is generated).
    shuffle_buffer: records per shuffled window (1: no shuffling).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if short_videos not in SHORT_VIDEOS:
        raise ValueError(f"short_videos must be one of {SHORT_VIDEOS}, got {short_videos!r}.")
    unknown = set(augment_kwargs) - set(spatial.AUGMENT_KWARGS)
    if unknown:
        raise ValueError(f"Unknown build_dataset arguments {sorted(unknown)}; augmentation "
                         f"arguments are {spatial.AUGMENT_KWARGS}.")
    temporal.check_distribution(distribution, power)
    augment_on = augment_on or ("device" if mode == "pretrain" else "host")
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}.")
    on_device = augment_on == "device" and mode != "eval"  # Eval clips have nothing to augment.
    if min(num_frames, stride, crop_size, global_batch_size) < 1:
        raise ValueError("num_frames, stride, crop_size and global_batch_size must be >= 1, got "
                         f"{num_frames}, {stride}, {crop_size}, {global_batch_size}.")
    batch_size = (input_context.get_per_replica_batch_size(global_batch_size)
                  if input_context else global_batch_size)
    num_pipes = input_context.num_input_pipelines if input_context else 1
    pipe_id = input_context.input_pipeline_id if input_context else 0
    training = mode != "eval"
    repeat = training if repeat is None else repeat
    skip = training if skip_bad_records is None else skip_bad_records
    deterministic = seed is not None or mode == "eval"  # Eval has no randomness: keep order.
    clip_span = (num_frames - 1) * stride + 1
    window = shuffle_buffer if training else 1

    # Records, in an order a run can resume (source.py), or TFDS examples (fresh order only).
    if isinstance(file_pattern, str) and file_pattern.startswith("tfds:"):
        if subset_ids is not None:
            raise ValueError(f"A subset of videos (subset_ids) needs TFRecord files, not the "
                             f"TFDS pattern {file_pattern!r}.")
        seed, ds = _tfds_stream(file_pattern, input_context, tfds_data_dir, seed, training,
                                shuffle_buffer, repeat, start_positions, pipe_id, num_pipes)
    else:
        files, record_shard = source.shard_files(resolve_files(file_pattern), num_pipes,
                                                 pipe_id)
        seed, start = _start_of(start_positions, seed, pipe_id, num_pipes, len(files), window)
        basenames = [os.path.basename(f) for f in files]
        keep = None if subset_ids is None else subset.keep_ids(subset_ids, basenames)
        ds = source.records(files, source.file_sizes(files), pipeline=pipe_id,
                            num_pipelines=num_pipes, record_shard=record_shard, seed=seed,
                            window=window, shuffle=training, repeat=repeat, start=start,
                            keep=keep)
        names = tf.constant(basenames)
        parse = functools.partial(_parse, names=names)
        ds = ds.apply(checks.attempt(parse, _unparseable, deterministic) if skip
                      else lambda d: d.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                           deterministic=deterministic))

    # Clips: cheap checks, then decode only what the clips need and augment (or prepare).
    check_short = short_videos != "wrap"
    aug = dict(area_range=area_range, aspect_ratio_range=aspect_ratio_range, **augment_kwargs)
    if mode == "train" and not color_augment:
        aug.update(_NO_COLOR)
    element_base = tf.constant([seed, pipe_id], tf.int64)

    def clips_of(element):
        seed_k = tf.random.experimental.stateless_fold_in(element_base, element["q"])
        frames = element["frames"]
        if mode == "pretrain":
            return _pretrain_clips(frames, seed_k, num_frames, stride, crop_size, distribution,
                                   power, consistent, aug, on_device)
        if mode == "train":
            return _train_clip(frames, seed_k, num_frames, stride, crop_size, consistent, aug,
                               on_device)
        return {"video": _eval_views(frames, num_frames, stride, crop_size, num_temporal_views,
                                     num_spatial_views)}

    def checked(element):
        status = tf.where(element["status"] > 0, element["status"],
                          checks.status_of(element, clip_span, num_classes, check_short))
        return dict(element, status=status,
                    reason=checks.reason(element, status, clip_span, num_classes))

    # clips_of is traced once: its outputs shape the blank clips of a bad record, and process
    # calls the same graph (a second trace cost about a third of a pipeline's start-up).
    clips_graph = tf.function(clips_of, autograph=False).get_concrete_function(
        ds.map(checked).element_spec)
    specs = {k: tf.TensorSpec(v.shape, v.dtype)
             for k, v in clips_graph.structured_outputs.items()}

    def blank():  # Zero clips for a record that has none (built in-graph, never captured).
        return {k: tf.zeros(spec.shape, spec.dtype) for k, spec in specs.items()}

    def process(element):
        clips = tf.cond(element["status"] > 0, blank, lambda: clips_graph(element))
        return _element(element, clips)

    def undecodable(element):
        return _element(dict(element, status=tf.constant(checks.CORRUPT_JPEG),
                             reason=checks.explain(checks.CORRUPT_JPEG)), blank())

    ds = ds.map(checked, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if skip:
        ds = ds.apply(checks.attempt(process, undecodable, deterministic))
        ds = checks.count_and_drop(ds, pipe_id)
    else:
        if short_videos == "skip":  # Skip short videos only; refuse every other bad record.
            ds = ds.filter(lambda e: tf.not_equal(e["status"], checks.TOO_SHORT))
        ds = ds.map(checks.refuse).map(process, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=deterministic)
        if training:  # The trainer reads the skip bookkeeping of every batch.
            ds = ds.map(checks.nothing_skipped)
    keep = _TRAINING_KEYS if training else _EVAL_KEYS
    ds = ds.map(lambda e: {k: v for k, v in e.items() if k in keep or k in specs})
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if mode == "pretrain" and not on_device:  # The device does it in augment_batch.
        ds = ds.map(device_augment.views_to_rows, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


_EVAL_KEYS = ("label", "id")
_TRAINING_KEYS = ("label", "id", "id_hash", "position", "skipped", "last_bad")


def id_hash(video_id: tf.Tensor) -> tf.Tensor:
    """A video id as an int32 (what crosses to the accelerators, which take no strings)."""
    return tf.cast(tf.strings.to_hash_bucket_fast(video_id, 2**31 - 1), tf.int32)


def _element(element: dict, clips: dict) -> dict:
    """The pipeline element after its clips are made: clips, label, ids, stream bookkeeping."""
    label = tf.concat([element["label"], [-1]], 0)[0]
    out = dict(clips, label=label, id=element["id"], id_hash=id_hash(element["id"]))
    for key in ("status", "reason", "position", "file", "record"):
        out[key] = element[key]
    return out


def _parse(element: dict, names: tf.Tensor) -> dict:
    """A record of source.records as a parsed example (a shard marker: empty, with its
    status); default id '<file basename>:<record index>'."""
    default_id = schema.default_id(names, element["file"], element["record"])

    def parsed():
        example = schema.parse_sequence_example(element["serialized"], default_id)
        return dict(example, status=tf.constant(0))

    def marker():
        return {"frames": tf.zeros([0], tf.string), "label": tf.zeros([0], tf.int32),
                "id": default_id, "status": tf.constant(checks.TRUNCATED_SHARD)}

    example = tf.cond(element["marker"], marker, parsed)
    return dict(example, **{k: element[k] for k in ("q", "position", "file", "record")})


def _unparseable(element: dict) -> dict:
    """What _parse gives for a record that does not parse."""
    default_id = tf.strings.join(["record ", tf.strings.as_string(element["record"]),
                                  " of file ", tf.strings.as_string(element["file"])])
    return {"frames": tf.zeros([0], tf.string), "label": tf.zeros([0], tf.int32),
            "id": default_id, "status": tf.constant(checks.NOT_PARSEABLE),
            **{k: element[k] for k in ("q", "position", "file", "record")}}


def _start_of(start_positions, seed, pipe_id, num_pipes, num_files, window):
    """(stream seed, start position or None) of this input pipeline from a stored table."""
    start = None
    if start_positions is not None:
        start = source.latest(start_positions, pipe_id, num_pipes, num_files, window, seed)
        if start is None:
            logging.warning("Input pipeline %d: the stored input positions belong to another "
                            "layout (pipelines, files, shuffle window or seed); starting a "
                            "fresh order.", pipe_id)
    if start is not None:
        seed = int(start[2])
        logging.info("Input pipeline %d resumes its data stream exactly: epoch %d, record %d "
                     "of the pipeline's stream.", pipe_id, start[5], start[8] + start[9] + 1)
    elif seed is None:
        seed = source.fresh_seed()
    return seed, start


def _tfds_stream(file_pattern, input_context, data_dir, seed, training, shuffle_buffer, repeat,
                 start_positions, pipe_id, num_pipes):
    """(seed, parsed TFDS examples with stream bookkeeping): shuffled by a buffer, so a resumed
    run continues with a fresh order (seeded by where it stopped), never from the start."""
    seed = source.fresh_seed() if seed is None else seed
    resumed = None
    if start_positions is not None:
        resumed = source.latest(start_positions, pipe_id, num_pipes, 0, 0, None)
    if resumed is not None:
        seed = int(resumed[2]) ^ (int(resumed[8]) + 1)
        logging.warning("Input pipeline %d reads TFDS, which cannot resume its order exactly: "
                        "continuing with a fresh order.", pipe_id)
    ds = _tfds_examples(file_pattern, input_context, data_dir)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    layout = tf.constant(source.layout(pipe_id, num_pipes, seed, 0, 0))
    first = int(resumed[8]) + 1 if resumed is not None else 0

    def bookkeeping(q, example):
        q = q + first
        position = tf.concat([layout, tf.zeros([3], tf.int32), tf.cast([q], tf.int32),
                              tf.zeros([source.POSITION_SIZE - 9], tf.int32)], 0)
        return dict(example, q=q, position=position, file=tf.constant(-1, tf.int64), record=q,
                    status=tf.constant(0))

    return seed, ds.enumerate().map(bookkeeping)


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
