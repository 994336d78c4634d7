"""Temporal augmentation: the interval distribution between the two clips and clip starts.

A video has L stored frames; a clip is T frames at stride s, spanning (T-1)*s+1 frames, so
K = L - (T-1)*s clip starts are valid. The interval d between the two clips of a video is drawn
from a distribution on 0..K-1 (`interval_pmf`), clip A starts uniformly in 0..K-1-d, clip B at
A + d, then the two are swapped with probability 0.5 (the paper, Section 3.2).

Videos shorter than one clip (L < (T-1)*s+1) loop: frame indices wrap around modulo L, and
every one of the L starts on the loop gives a different clip, so K = L. Clip A then starts
uniformly in 0..L-1 and clip B d frames later on the loop, with d drawn as above on 0..L-1.
This generalizes the Model Garden's video_ssl (`sample_ssl_sequence`), which draws both starts
independently and uniformly in 0..L-1 for such videos: that is exactly what 'uniform' gives
here, while 'zero' still gives two clips at one start and 'decreasing' favours small shifts.
Before, both clips started at frame 0 (identical clips, a positive pair for free).
"""
from typing import Optional, Union

import numpy as np
import tensorflow as tf

DISTRIBUTIONS = ("decreasing", "uniform", "increasing", "zero")
SeedLike = Optional[Union[tf.Tensor, np.ndarray, list, tuple]]


def resolve_seed(seed: SeedLike) -> tf.Tensor:
    """A [2] int64 stateless seed: the given one, or a freshly drawn one when seed is None."""
    if seed is None:
        return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    return tf.ensure_shape(tf.reshape(seed, [2]), [2])


def check_distribution(distribution: str, power: float) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"Unknown interval distribution {distribution!r}; "
                         f"expected one of {DISTRIBUTIONS}.")
    if distribution == "decreasing" and not power > 0:
        raise ValueError(f"The decreasing distribution needs power > 0, got {power}.")


def num_valid_starts(num_frames, clip_frames: int, stride: int):
    """K = L - (T-1)*s, or L for a video shorter than one clip (it loops; every start differs).

    At least 1. As the Model Garden's `sample_sequence`/`sample_ssl_sequence` max_offset.
    """
    length = tf.cast(num_frames, tf.int32)
    k = length - (clip_frames - 1) * stride
    return tf.maximum(tf.where(k >= 1, k, length), 1)


def _loops(num_frames, clip_frames: int, stride: int) -> tf.Tensor:
    """Whether the video is shorter than one clip, so its frame indices wrap (bool scalar)."""
    return tf.cast(num_frames, tf.int32) < (clip_frames - 1) * stride + 1


def _interval_pmf_tf(distribution: str, num_starts, power: float = 1.0) -> tf.Tensor:
    """The pmf of d = 0..K-1 as a float64 [K] tensor; the single formula both sampler and
    `interval_pmf` use. Each P(d) integrates the continuous density over [d, d+1)."""
    check_distribution(distribution, power)
    k = tf.cast(num_starts, tf.float64)
    d = tf.range(k, dtype=tf.float64)
    if distribution == "uniform":
        return tf.ones_like(d) / k
    if distribution == "zero":
        return tf.cast(tf.equal(d, 0.0), tf.float64)
    if distribution == "increasing":  # p(t) ~ t on [0, K)
        return (2.0 * d + 1.0) / (k * k)
    # decreasing: p(t) ~ 1 - (t/K)^p; integral over [d, d+1) over integral over [0, K).
    p = tf.constant(float(power), tf.float64)
    upper = tf.pow((d + 1.0) / k, p + 1.0)
    lower = tf.pow(d / k, p + 1.0)
    mass = 1.0 - k / (p + 1.0) * (upper - lower)
    return mass / (k * p / (p + 1.0))


def interval_pmf(distribution: str, num_starts: int, power: float = 1.0) -> np.ndarray:
    """The exact probability of each interval d = 0..K-1 (K = num_starts) as a float64 array."""
    if int(num_starts) < 1:
        raise ValueError(f"interval_pmf needs num_starts >= 1, got {num_starts}.")
    return _interval_pmf_tf(distribution, int(num_starts), power).numpy()


def sample_interval(num_starts, distribution: str = "decreasing", power: float = 1.0,
                    seed: SeedLike = None) -> tf.Tensor:
    """Draws the interval d in 0..K-1 (int32 scalar) from `interval_pmf`; graph-safe."""
    check_distribution(distribution, power)
    if distribution == "zero":
        return tf.constant(0, tf.int32)
    pmf = _interval_pmf_tf(distribution, num_starts, power)
    logits = tf.math.log(tf.maximum(pmf, 1e-300))[tf.newaxis]
    d = tf.random.stateless_categorical(logits, 1, seed=resolve_seed(seed), dtype=tf.int32)
    return tf.reshape(d, [])


def sample_clip_starts(num_frames, clip_frames: int, stride: int,
                       distribution: str = "decreasing", power: float = 1.0,
                       seed: SeedLike = None) -> tf.Tensor:
    """The starts of the two clips of one video, int32 [2] in 0..L-1 (the paper's
    interval sampling).

    d ~ interval_pmf(distribution, K); clip A starts uniformly in 0..K-1-d and clip B at A + d,
    in random order. A video shorter than one clip loops (module docstring): A is uniform in
    0..L-1 and B = (A + d) mod L, so its two clips differ unless d = 0.
    """
    seeds = tf.random.experimental.stateless_split(resolve_seed(seed), 3)
    k = num_valid_starts(num_frames, clip_frames, stride)
    d = sample_interval(k, distribution, power, seed=seeds[0])
    loops = _loops(num_frames, clip_frames, stride)
    start_a = tf.random.stateless_uniform([], seeds[1], minval=0,
                                          maxval=tf.where(loops, k, k - d), dtype=tf.int32)
    starts = tf.math.floormod(tf.stack([start_a, start_a + d]), k)  # k = L when it loops.
    swap = tf.random.stateless_uniform([], seeds[2]) < 0.5
    return tf.where(swap, tf.reverse(starts, [0]), starts)


def sample_clip_start(num_frames, clip_frames: int, stride: int,
                      seed: SeedLike = None) -> tf.Tensor:
    """One uniformly random clip start in 0..K-1 (int32 scalar): supervised training clips.

    K = L for a video shorter than one clip (any start on the loop), as the Model Garden's
    `sample_sequence`."""
    k = num_valid_starts(num_frames, clip_frames, stride)
    return tf.random.stateless_uniform([], resolve_seed(seed), minval=0, maxval=k,
                                       dtype=tf.int32)


def eval_clip_starts(num_frames, clip_frames: int, stride: int, num_clips: int) -> tf.Tensor:
    """Evenly spaced starts, int32 [num_clips]: linspace over [0, max(0, L - T*s)].

    num_clips = 1 gives the middle of that range (the single-view center clip).
    """
    if num_clips < 1:
        raise ValueError(f"eval_clip_starts needs num_clips >= 1, got {num_clips}.")
    last = tf.maximum(tf.cast(num_frames, tf.int32) - clip_frames * stride, 0)
    if num_clips == 1:
        return tf.reshape(last // 2, [1])
    starts = tf.linspace(0.0, tf.cast(last, tf.float32), num_clips)
    return tf.cast(tf.floor(starts), tf.int32)


def clip_frame_indices(start, num_frames, clip_frames: int, stride: int) -> tf.Tensor:
    """Stored-frame indices of a clip, int32 [..., T]: start + i*s, wrapped modulo L.

    `start` may be a scalar or a vector of starts (one clip per row of the result).
    """
    start = tf.cast(start, tf.int32)
    offsets = tf.range(clip_frames, dtype=tf.int32) * stride
    indices = tf.expand_dims(start, -1) + offsets
    return tf.math.floormod(indices, tf.maximum(tf.cast(num_frames, tf.int32), 1))
