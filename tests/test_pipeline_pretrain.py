"""build_dataset as pretraining and training consume it, read back from the output pixels.

Each test writes a video whose frames make one property readable (identical frames, frame
indices as grey levels, sharp stripes with a bright level), draws many clips through
build_dataset, and checks the property against the paper's numbers with a bound computed
from the sample size that also rejects the wrong alternatives (asserted in both directions).
The draws are seeded, so each test is deterministic; the bounds say how unlikely a failure
of a correct pipeline would be under a fresh seed (DELTA).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import device_augment, schema, temporal
from cvrl_tf.data.pipeline import build_dataset

DELTA = 1e-5  # Probability that a bound fails for a correct pipeline (per check).
NO_COLOR_JITTER = dict(color_jitter_prob=0.0, grayscale_prob=0.0)


def _write_video(path, frames: np.ndarray, quality: int = 90) -> str:
    """One SequenceExample of uint8 frames [L, H, W, 3] in a TFRecord file."""
    example = schema.make_sequence_example(schema.encode_frames(frames, quality), 0, "video")
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())
    return str(path)


def _pretrain_pairs(path: str, num_videos: int, num_frames: int, stride: int, crop: int,
                    seed: int = 0, batch: int = 100, **kwargs) -> np.ndarray:
    """The two views of num_videos draws of build_dataset(mode='pretrain'), as pretraining
    receives them: float32 [num_videos, 2, T, S, S, 3] (view 1, view 2).

    The one place these tests build the pretraining input (the single record repeats, and
    element k gets its own seed, so every video is a fresh draw).
    """
    ds = build_dataset(path, "pretrain", batch, num_frames, stride, crop, seed=seed,
                       shuffle_buffer=1, **kwargs)
    # augment_on='device': what the train step does, traced as there (eagerly, op by op, it
    # took most of these tests' time).
    augment = tf.function(device_augment.augment_batch)
    pairs = []
    for element in ds.take(-(-num_videos // batch)):
        if element["video"].dtype == tf.uint8:
            element = augment(element)
        video = element["video"].numpy()
        pairs.append(np.stack([video[:batch], video[batch:]], axis=1))
    return np.concatenate(pairs)[:num_videos]


def _binomial_range(n: int, p: float, delta: float = DELTA) -> tuple:
    """Counts (lo, hi) with P(Binomial(n, p) outside [lo, hi]) <= delta (exact tails)."""
    if p <= 0.0 or p >= 1.0:
        return (0, 0) if p <= 0.0 else (n, n)
    k = np.arange(n + 1)
    log_pmf = (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1)
                                              for i in k]) + k * math.log(p)
               + (n - k) * math.log1p(-p))
    pmf = np.exp(log_pmf)
    lo = int(np.searchsorted(np.cumsum(pmf), delta / 2, side="right"))
    hi = n - int(np.searchsorted(np.cumsum(pmf[::-1]), delta / 2, side="right"))
    return lo, hi


def _in_range(count: int, n: int, p: float) -> bool:
    lo, hi = _binomial_range(n, p)
    return lo <= count <= hi


# ---------------------------------------------------------------------------------------------
# Temporal consistency: a still video stays still.

def test_identical_frames_give_identical_clip_frames_unless_inconsistent(tmp_path):
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = _write_video(tmp_path / "still.tfrecord", np.stack([frame] * 6))
    # The full default chain (crop, flip, colour, grey, blur, solarize): one draw per clip.
    pairs = _pretrain_pairs(path, 8, num_frames=4, stride=1, crop=16, batch=8)
    clips = pairs.reshape((-1,) + pairs.shape[2:])                    # [16, T, S, S, 3]
    for clip in clips:
        for t in range(1, clip.shape[0]):
            np.testing.assert_array_equal(clip[t], clip[0])
    assert all(np.abs(pair[0] - pair[1]).max() > 0.05 for pair in pairs)  # Views differ.
    ablation = _pretrain_pairs(path, 8, num_frames=4, stride=1, crop=16, batch=8,
                               consistent=False)
    for clip in ablation.reshape(clips.shape):  # One draw per frame: every clip moves.
        assert max(np.abs(clip[t] - clip[0]).max() for t in range(1, clip.shape[0])) > 0.05


# ---------------------------------------------------------------------------------------------
# Temporal augmentation: the gap between the two clips' starts follows interval_pmf.

LEVEL_BASE, LEVEL_STEP = 20, 40  # Frame i is a flat grey of 20 + 40 i (JPEG keeps flat blocks).


def _frame_indices(clips: np.ndarray) -> np.ndarray:
    """Stored-frame index of every frame of clips [..., T, S, S, 3], read from its centre."""
    s = clips.shape[-2]
    grey = clips[..., s // 2, s // 2, :].mean(-1) * 255.0
    index = (grey - LEVEL_BASE) / LEVEL_STEP
    np.testing.assert_allclose(index, np.round(index), atol=0.1)  # A clean level, no mixing.
    return np.round(index).astype(int)


def _tv_bound(num_starts: int, n: int, delta: float = DELTA) -> float:
    """Total-variation distance an n-sample empirical pmf on K cells stays within, with
    probability 1 - delta: E|p_n - p|_1 <= sqrt(K / n) (Cauchy-Schwarz), and one sample moves
    |p_n - p|_1 by at most 2 / n (McDiarmid: + sqrt(2 ln(1 / delta) / n))."""
    return 0.5 * (math.sqrt(num_starts / n) + math.sqrt(2.0 * math.log(1.0 / delta) / n))


@pytest.mark.parametrize("distribution,num_videos", [
    ("decreasing", 800), ("uniform", 800), ("increasing", 800), ("zero", 200)])
def test_clip_start_gaps_follow_interval_pmf(tmp_path, distribution, num_videos):
    length, num_frames, stride = 6, 2, 2
    num_starts = length - (num_frames - 1) * stride                 # K = 4
    frames = np.stack([np.full((16, 16, 3), LEVEL_BASE + LEVEL_STEP * i, np.uint8)
                       for i in range(length)])
    path = _write_video(tmp_path / "indexed.tfrecord", frames, quality=100)
    # Colour jitter and solarize would move the grey levels; flat frames ignore the rest.
    pairs = _pretrain_pairs(path, num_videos, num_frames, stride, crop=8,
                            distribution=distribution, solarize_prob=0.0, **NO_COLOR_JITTER)
    index = _frame_indices(pairs)                                    # [n, 2, T]
    starts = index[..., 0]
    # Each clip is T frames at the stride from a valid start (no wrap: K >= 1).
    np.testing.assert_array_equal(index, starts[..., None] + stride * np.arange(num_frames),
                                  err_msg="clip frames are not start + i * stride")
    assert starts.min() >= 0 and starts.max() < num_starts
    gaps = starts[:, 1] - starts[:, 0]
    observed = np.bincount(np.abs(gaps), minlength=num_starts) / num_videos

    bound = _tv_bound(num_starts, num_videos)
    tv = {name: 0.5 * np.abs(observed - temporal.interval_pmf(name, num_starts)).sum()
          for name in temporal.DISTRIBUTIONS}
    assert tv[distribution] <= bound, (
        f"gap frequencies {observed} are {tv[distribution]:.3f} (total variation) from "
        f"interval_pmf({distribution!r}), beyond the bound {bound:.3f}")
    for other in temporal.DISTRIBUTIONS:
        if other != distribution:  # The same bound rejects every other distribution.
            separation = 0.5 * np.abs(temporal.interval_pmf(other, num_starts)
                                      - temporal.interval_pmf(distribution, num_starts)).sum()
            assert separation > 2 * bound, (other, separation, bound)  # Enough samples.
            assert tv[other] > bound, f"gaps {observed} also fit {other!r}: {tv}"

    # Which clip comes first is a fair coin (the pair is swapped with probability 0.5).
    moved = gaps[gaps != 0]
    if len(moved):
        half_width = math.sqrt(math.log(2.0 / DELTA) / (2 * len(moved)))  # Hoeffding.
        assert abs(np.mean(moved > 0) - 0.5) <= half_width, (
            f"view 2 starts later in {np.mean(moved > 0):.3f} of the pairs, not about 0.5")


# ---------------------------------------------------------------------------------------------
# The view-dependent blur and solarize (view 1: blur 1.0, solarize 0; view 2: 0.1, 0.2).

BLUR_SIGMAS = (1.5, 2.0)  # Every blur this strong is visible (see _blurred_and_solarized).
STRIPE_LEVELS = (140, 242)  # Both >= 0.5 * 255: solarize flips every pixel.


def _stripes() -> np.ndarray:
    """64x64 vertical stripes 8 px wide (flat JPEG blocks: exact levels); any crop of at least
    0.3 of the area is >= 19 px wide, so it holds edges."""
    row = np.where((np.arange(64) // 8) % 2 == 0, *STRIPE_LEVELS).astype(np.uint8)
    return np.broadcast_to(row[None, :, None], (64, 64, 3))


def _blurred_and_solarized(clips: np.ndarray) -> tuple:
    """(blurred, solarized) booleans per clip [..., 1, S, S, 3] of _stripes.

    A resized crop keeps at most one intermediate value per edge, so its largest step between
    neighbouring columns is >= half the level difference h. A 3-tap Gaussian (kernel
    fraction 0.1 of 16 px) with sigma >= 1.5 leaves steps <= h / (1 + 2 exp(-1 / (2 * 1.5^2)))
    = 0.385 h. Solarize maps both levels (>= 0.5) below 0.5. The 1-px border is left out
    (the blur pads with zeros there).
    """
    inner = clips[..., 0, 1:-1, 1:-1, 0]
    height = (STRIPE_LEVELS[1] - STRIPE_LEVELS[0]) / 255.0
    steps = np.abs(np.diff(inner, axis=-1)).max(axis=(-1, -2)) / height
    assert not np.any((steps > 0.39) & (steps < 0.499)), "a step size no construction gives"
    return steps < 0.45, inner.mean(axis=(-1, -2)) < 0.5


def test_view_1_always_blurred_view_2_blur_and_solarize_probabilities(tmp_path):
    path = _write_video(tmp_path / "stripes.tfrecord", np.stack([_stripes()] * 2), quality=100)
    n = 1000
    pairs = _pretrain_pairs(path, n, num_frames=1, stride=1, crop=16,
                            blur_sigma_range=BLUR_SIGMAS, **NO_COLOR_JITTER)
    blurred, solarized = _blurred_and_solarized(pairs)             # [n, 2] each
    # The paper's probabilities per view (1, 2), and wrong ones the counts must rule out.
    expected = {"blur": (blurred, (1.0, 0.1), (0.5, 0.2, 0.0)),
                "solarize": (solarized, (0.0, 0.2), (0.1, 0.5))}
    for name, (hits, right, wrongs) in expected.items():
        for view in (0, 1):
            count = int(hits[:, view].sum())
            assert _in_range(count, n, right[view]), (
                f"{name} on {count} of {n} view-{view + 1} clips: not p = {right[view]}")
            for wrong in wrongs:
                if wrong != right[view]:
                    assert not _in_range(count, n, wrong), (
                        f"{name} on {count} of {n} view-{view + 1} clips also fits p = {wrong}")


# ---------------------------------------------------------------------------------------------
# Train mode: exactly a crop, a resize and maybe a flip of the decoded frames.

def _resize(crops: np.ndarray, crop_size: int) -> np.ndarray:
    """Manual bilinear resize of uint8 crops [n, h, w, 3], rounded to uint8 as the host does,
    as float32 in [0, 1]."""
    resized = tf.image.resize(tf.cast(crops, tf.float32), [crop_size, crop_size], "bilinear")
    rounded = np.floor(resized.numpy() + 0.5).astype(np.uint8)
    return (tf.cast(rounded, tf.float32) / 255.0).numpy()


def _find_crops(decoded: np.ndarray, targets: np.ndarray, starts: range) -> list:
    """For each target frame [S, S, 3], every (start, y, x, h, w, flipped) whose crop of
    decoded[start], resized (and flipped), equals it exactly."""
    crop_size = targets.shape[1]
    height, width = decoded.shape[1:3]
    found = [[] for _ in targets]
    for start in starts:
        for h in range(1, height + 1):
            for w in range(1, width + 1):
                windows = np.lib.stride_tricks.sliding_window_view(decoded[start], (h, w, 3))
                ys, xs = windows.shape[:2]
                resized = _resize(windows.reshape(ys * xs, h, w, 3), crop_size)
                for flipped, candidates in ((False, resized), (True, resized[:, :, ::-1])):
                    match = np.all(candidates[:, None] == targets[None], axis=(2, 3, 4))
                    for position, target in zip(*np.nonzero(match)):
                        found[target].append(
                            (start, position // xs, position % xs, h, w, flipped))
    return found


def test_train_mode_is_exactly_crop_resize_and_flip_of_the_decoded_frames(tmp_path):
    length, num_frames, stride, crop = 5, 2, 2, 8
    frames = np.random.default_rng(1).integers(0, 256, (length, 12, 16, 3), dtype=np.uint8)
    # Full-resolution chroma: a partial decode of a 4:2:0 JPEG upsamples chroma at the
    # window's border as at an image edge (a few levels; spatial.decode_crop_and_resize), and
    # this test asks for exact equality with crop-after-decode.
    jpegs = [tf.io.encode_jpeg(f, quality=90, chroma_downsampling=False).numpy()
             for f in frames]
    path = str(tmp_path / "noise.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(schema.make_sequence_example(jpegs, 0, "video").SerializeToString())
    decoded = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])
    ds = build_dataset(path, "train", 8, num_frames, stride, crop, seed=3, shuffle_buffer=1)
    clips = next(iter(ds))["video"].numpy()                         # [8, T, S, S, 3]
    num_starts = length - (num_frames - 1) * stride
    found = _find_crops(decoded, clips[:, 0], range(num_starts))
    flips = set()
    for clip, matches in zip(clips, found):
        assert matches, "no crop + resize (+ flip) of any decoded frame gives this clip"
        start, y, x, h, w, flipped = matches[0]
        crops = decoded[start + stride * np.arange(num_frames), y:y + h, x:x + w]
        expected = _resize(crops, crop)
        np.testing.assert_array_equal(clip, expected[:, :, ::-1] if flipped else expected)
        flips.add(flipped)
    assert flips == {False, True}  # flip_prob 0.5 over 8 clips (seeded: both occur).
