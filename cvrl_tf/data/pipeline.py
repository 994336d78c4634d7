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
import dataclasses
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from cvrl_tf.data import checks, clips, detection, device_augment, schema, spatial, stream
from cvrl_tf.data import temporal

MODES = ("pretrain", "train", "eval", "detect", "detect_eval")
DETECTION_MODES = ("detect", "detect_eval")
AUGMENT_ON = ("host", "device")
SHORT_VIDEOS = ("wrap", "skip", "error")
_NO_COLOR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
_EVAL_KEYS = ("label", "id")
_TRAINING_KEYS = ("label", "id", "id_hash", "position", "skipped", "last_bad")

# Re-exported: the glob rule lives with the on-disk layout in schema.py.
resolve_files = schema.resolve_files


# The pipeline is plain graph code (tf.cond and tf.where, no Python control flow on tensors), so
# tf.data need not run AutoGraph on its functions: do_not_convert switches it off for every
# function made while building (seconds of each process's start-up; docs/NOTES.md).
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
                  subset_ids: Optional[Sequence[str]] = None, max_boxes: int = 32,
                  proposal_min_score: float = 0.8,
                  train_proposal_min_score: Optional[float] = None,
                  frame_aspect: float = 16 / 9, **augment_kwargs) -> tf.data.Dataset:
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
    max_boxes, proposal_min_score, train_proposal_min_score, frame_aspect: the detection modes'
    (data/detection.py).
    skip_bad_records: None skips in training modes and refuses in 'eval'. Skipping catches a
    failing parse or JPEG decode per record (a one-record dataset each time): a small part of a
    Kinetics-size record's cost (docs/BENCHMARKS.md) but a large share of the pipeline for the
    demo's 48x48 videos (docs/DEMO.md), which therefore refuses instead (its data set is
    generated).
    shuffle_buffer: records per shuffled window (1: no shuffling).
    """
    s = _settings(mode, global_batch_size, num_frames, stride, crop_size, input_context,
                  distribution=distribution, power=power, consistent=consistent, seed=seed,
                  num_classes=num_classes, skip_bad_records=skip_bad_records,
                  short_videos=short_videos, repeat=repeat, color_augment=color_augment,
                  views=(num_temporal_views, num_spatial_views), drop_remainder=drop_remainder,
                  area_range=area_range, aspect_ratio_range=aspect_ratio_range,
                  augment_on=augment_on, augment_kwargs=augment_kwargs,
                  detect=dict(max_boxes=max_boxes, proposal_min_score=proposal_min_score,
                              train_proposal_min_score=train_proposal_min_score,
                              frame_aspect=frame_aspect))
    seed, ds = stream.examples(file_pattern, input_context=input_context, training=s.training,
                               repeat=s.repeat, skip=s.skip, deterministic=s.deterministic,
                               shuffle_buffer=shuffle_buffer, seed=seed,
                               start_positions=start_positions, tfds_data_dir=tfds_data_dir,
                               subset_ids=subset_ids,
                               parser=(detection.PARSER if mode in DETECTION_MODES
                                       else stream.Parser()))
    return _batched(_clips(ds, s, seed), s)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """build_dataset's arguments, checked, and what follows from them."""
    mode: str
    batch_size: int
    pipe_id: int
    num_frames: int
    stride: int
    crop_size: int
    training: bool
    repeat: bool
    skip: bool
    deterministic: bool
    on_device: bool
    short_videos: str
    num_classes: Optional[int]
    distribution: str
    power: float
    consistent: bool
    views: tuple
    drop_remainder: bool
    aug: dict
    detect: dict

    @property
    def clip_span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1


def _settings(mode, global_batch_size, num_frames, stride, crop_size, input_context, *,
              distribution, power, consistent, seed, num_classes, skip_bad_records,
              short_videos, repeat, color_augment, views, drop_remainder, area_range,
              aspect_ratio_range, augment_on, augment_kwargs, detect) -> _Settings:
    """Checks the arguments (ValueError naming the bad one) and derives the settings."""
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
    if min(num_frames, stride, crop_size, global_batch_size) < 1:
        raise ValueError("num_frames, stride, crop_size and global_batch_size must be >= 1, got "
                         f"{num_frames}, {stride}, {crop_size}, {global_batch_size}.")
    training = mode not in ("eval", "detect_eval")
    aug = dict(area_range=area_range, aspect_ratio_range=aspect_ratio_range, **augment_kwargs)
    if mode in ("train", "detect") and not color_augment:
        aug.update(_NO_COLOR)
    if mode in DETECTION_MODES:
        _check_detection(num_classes, **detect)
    return _Settings(
        mode=mode, pipe_id=input_context.input_pipeline_id if input_context else 0,
        batch_size=(input_context.get_per_replica_batch_size(global_batch_size)
                    if input_context else global_batch_size),
        num_frames=num_frames, stride=stride, crop_size=crop_size, training=training,
        repeat=training if repeat is None else repeat,
        skip=training if skip_bad_records is None else skip_bad_records,
        deterministic=seed is not None or not training,  # Eval has no randomness: keep order.
        on_device=augment_on == "device" and training,  # Eval clips have nothing to augment.
        short_videos=short_videos, num_classes=num_classes, distribution=distribution,
        power=power, consistent=consistent, views=tuple(views), drop_remainder=drop_remainder,
        aug=aug, detect=detect)


def _check_detection(num_classes, max_boxes, proposal_min_score, train_proposal_min_score,
                     frame_aspect) -> None:
    """The detection modes' own arguments (ValueError naming the bad one)."""
    if not num_classes:
        raise ValueError("The detection modes need num_classes (the actions of the label map).")
    if max_boxes < 1 or not frame_aspect > 0:
        raise ValueError(f"max_boxes={max_boxes} must be >= 1 and frame_aspect={frame_aspect} "
                         f"> 0.")
    for name, score in (("proposal_min_score", proposal_min_score),
                        ("train_proposal_min_score", train_proposal_min_score)):
        if score is not None and not 0.0 <= score <= 1.0:
            raise ValueError(f"{name}={score} must be in [0, 1].")


def _clip_fn(s: _Settings, seed: int):
    """element -> its clips for the mode (seeded by the element's raw index q)."""
    element_base = tf.constant([seed, s.pipe_id], tf.int64)

    def clips_of(element):
        seed_k = tf.random.experimental.stateless_fold_in(element_base, element["q"])
        frames = element["frames"]
        if s.mode == "pretrain":
            return clips.pretrain_clips(frames, seed_k, s.num_frames, s.stride, s.crop_size,
                                        s.distribution, s.power, s.consistent, s.aug,
                                        s.on_device)
        if s.mode == "train":
            return clips.train_clip(frames, seed_k, s.num_frames, s.stride, s.crop_size,
                                    s.consistent, s.aug, s.on_device)
        if s.mode == "detect":
            return detection.train_clip(
                element, seed_k, s.num_frames, s.stride, s.crop_size, s.aug, s.on_device,
                max_boxes=s.detect["max_boxes"], num_classes=s.num_classes,
                proposal_min_score=s.detect["train_proposal_min_score"])
        if s.mode == "detect_eval":
            width = 2 * round(s.crop_size * s.detect["frame_aspect"] / 2)
            return detection.eval_clip(
                element, s.num_frames, s.stride, (s.crop_size, width),
                max_boxes=s.detect["max_boxes"], num_classes=s.num_classes,
                proposal_min_score=s.detect["proposal_min_score"])
        return {"video": clips.eval_views(frames, s.num_frames, s.stride, s.crop_size,
                                          *s.views)}

    return clips_of


def _clips(ds: tf.data.Dataset, s: _Settings, seed: int) -> tf.data.Dataset:
    """Cheap checks, then the clips of every good record; bad ones skipped-and-counted or
    refused (checks.py)."""
    check_short = s.short_videos != "wrap"

    def checked(element):
        status = tf.where(element["status"] > 0, element["status"],
                          checks.status_of(element, s.clip_span, s.num_classes, check_short))
        return dict(element, status=status,
                    reason=checks.reason(element, status, s.clip_span, s.num_classes))

    # clips_of is traced once: its outputs shape the blank clips of a bad record, and process
    # calls the same graph (a second trace cost about a third of a pipeline's start-up).
    clips_graph = tf.function(_clip_fn(s, seed), autograph=False).get_concrete_function(
        ds.map(checked).element_spec)
    specs = {k: tf.TensorSpec(v.shape, v.dtype)
             for k, v in clips_graph.structured_outputs.items()}

    def blank():  # Zero clips for a record that has none (built in-graph, never captured).
        return {k: tf.zeros(spec.shape, spec.dtype) for k, spec in specs.items()}

    def process(element):
        made = tf.cond(element["status"] > 0, blank, lambda: clips_graph(element))
        return _element(element, made)

    def undecodable(element):
        return _element(dict(element, status=tf.constant(checks.CORRUPT_JPEG),
                             reason=checks.explain(checks.CORRUPT_JPEG)), blank())

    ds = ds.map(checked, num_parallel_calls=tf.data.AUTOTUNE, deterministic=s.deterministic)
    if s.short_videos == "error":  # The first short video stops the run, in every mode.
        ds = ds.map(lambda e: checks.refuse(e, only=checks.TOO_SHORT))
    if s.skip:
        ds = ds.apply(checks.attempt(process, undecodable, s.deterministic))
        ds = checks.count_and_drop(ds, s.pipe_id)
    else:
        if s.short_videos == "skip":  # Skip short videos only; refuse every other bad record.
            ds = ds.filter(lambda e: tf.not_equal(e["status"], checks.TOO_SHORT))
        ds = ds.map(checks.refuse).map(process, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=s.deterministic)
        if s.training:  # The trainer reads the skip bookkeeping of every batch.
            ds = ds.map(checks.nothing_skipped)
    keep = _TRAINING_KEYS if s.training else _EVAL_KEYS
    return ds.map(lambda e: {k: v for k, v in e.items() if k in keep or k in specs})


def _batched(ds: tf.data.Dataset, s: _Settings) -> tf.data.Dataset:
    """Per-replica batches (pretraining: the two views laid out as rows, unless the device
    does it), prefetched, with the pipeline's options."""
    ds = ds.batch(s.batch_size, drop_remainder=s.drop_remainder)
    if s.mode == "pretrain" and not s.on_device:  # The device does it in augment_batch.
        ds = ds.map(device_augment.views_to_rows, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = s.deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def id_hash(video_id: tf.Tensor) -> tf.Tensor:
    """A video id as an int32 (what crosses to the accelerators, which take no strings)."""
    return tf.cast(tf.strings.to_hash_bucket_fast(video_id, 2**31 - 1), tf.int32)


def _element(element: dict, made: dict) -> dict:
    """The pipeline element after its clips are made: clips, label, ids, stream bookkeeping."""
    label = tf.concat([element["label"], [-1]], 0)[0]
    out = dict(made, label=label, id=element["id"], id_hash=id_hash(element["id"]))
    for key in ("status", "reason", "position", "file", "record"):
        out[key] = element[key]
    return out
