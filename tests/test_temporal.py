"""Interval distribution, clip starts and clip frame indices (docs/DESIGN.md, the recipe)."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import temporal

K_VALUES = (1, 2, 7, 30)


@pytest.mark.parametrize("k", K_VALUES)
def test_interval_pmf_closed_forms(k):
    d = np.arange(k)
    np.testing.assert_allclose(temporal.interval_pmf("decreasing", k),
                               (2 * k - 2 * d - 1) / k**2, rtol=1e-12)
    np.testing.assert_allclose(temporal.interval_pmf("uniform", k), np.full(k, 1 / k))
    np.testing.assert_allclose(temporal.interval_pmf("increasing", k), (2 * d + 1) / k**2)
    np.testing.assert_allclose(temporal.interval_pmf("zero", k), (d == 0).astype(float))


@pytest.mark.parametrize("power", [0.5, 2.0, 3.0])
def test_decreasing_power_is_a_decreasing_pmf(power):
    pmf = temporal.interval_pmf("decreasing", 20, power)
    assert pmf.sum() == pytest.approx(1.0)
    assert np.all(np.diff(pmf) < 0) and np.all(pmf > 0)
    # Power p integrates 1 - (t/K)^p over each unit interval: check d = 0 by hand.
    k = 20
    expected0 = (1 - k / (power + 1) * (1 / k) ** (power + 1)) / (k * power / (power + 1))
    assert pmf[0] == pytest.approx(expected0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="Unknown interval distribution 'gaussian'"):
        temporal.interval_pmf("gaussian", 5)
    with pytest.raises(ValueError, match="num_starts >= 1"):
        temporal.interval_pmf("uniform", 0)
    with pytest.raises(ValueError, match="power > 0"):
        temporal.interval_pmf("decreasing", 5, power=0.0)
    with pytest.raises(ValueError, match="num_clips >= 1"):
        temporal.eval_clip_starts(10, 2, 2, 0)


@tf.function
def _draw_starts(seeds, num_frames, clip_frames, stride, distribution):
    """Many sample_clip_starts draws inside a tf.function (the graph path)."""
    return tf.map_fn(
        lambda s: temporal.sample_clip_starts(num_frames, clip_frames, stride, distribution,
                                              seed=s),
        seeds, fn_output_signature=tf.TensorSpec([2], tf.int32))


@pytest.mark.parametrize("distribution", temporal.DISTRIBUTIONS)
def test_sampled_intervals_match_pmf(distribution):
    num_frames, clip_frames, stride = 20, 4, 2  # K = 20 - 6 = 14
    k = num_frames - (clip_frames - 1) * stride
    n = 4000
    seeds = tf.random.stateless_uniform([n, 2], [7, 7], maxval=2**30, dtype=tf.int32)
    starts = _draw_starts(seeds, num_frames, clip_frames, stride, distribution).numpy()
    assert starts.min() >= 0 and starts.max() <= k - 1  # Every start is a valid clip start.
    intervals = np.abs(starts[:, 1] - starts[:, 0])
    empirical = np.bincount(intervals, minlength=k) / n
    total_variation = 0.5 * np.abs(empirical - temporal.interval_pmf(distribution, k)).sum()
    assert total_variation < 0.04, (distribution, total_variation)
    if distribution != "zero":  # The random swap puts either clip first about half the time.
        later_first = np.mean(starts[:, 0] > starts[:, 1])
        earlier_first = np.mean(starts[:, 0] < starts[:, 1])
        assert abs(later_first - earlier_first) < 0.06


def test_first_start_is_uniform_given_interval():
    # With the zero distribution both clips start together, uniformly over all K starts.
    seeds = tf.random.stateless_uniform([3000, 2], [1, 2], maxval=2**30, dtype=tf.int32)
    starts = _draw_starts(seeds, 12, 3, 1, "zero").numpy()
    assert np.all(starts[:, 0] == starts[:, 1])
    counts = np.bincount(starts[:, 0], minlength=10) / 3000
    assert np.abs(counts - 0.1).max() < 0.03


def test_seeded_draws_replay_eagerly_and_in_tf_data():
    seed = tf.constant([3, 4], tf.int64)
    eager = temporal.sample_clip_starts(50, 8, 2, seed=seed).numpy()
    again = temporal.sample_clip_starts(50, 8, 2, seed=seed).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(seed).map(
        lambda s: temporal.sample_clip_starts(50, 8, 2, seed=s)))).numpy()
    np.testing.assert_array_equal(eager, again)
    np.testing.assert_array_equal(eager, mapped)
    others = {tuple(temporal.sample_clip_starts(50, 8, 2, seed=[i, 0]).numpy())
              for i in range(8)}
    assert len(others) > 1
    assert temporal.sample_clip_starts(50, 8, 2).shape == (2,)  # seed=None draws a seed.


def test_clip_frame_indices_wrap_around_a_short_video():
    np.testing.assert_array_equal(temporal.clip_frame_indices(0, 5, 4, 2).numpy(), [0, 2, 4, 1])
    np.testing.assert_array_equal(temporal.clip_frame_indices([1, 3], 10, 3, 3).numpy(),
                                  [[1, 4, 7], [3, 6, 9]])


def test_valid_starts_of_long_exact_and_short_videos():
    # T=8, s=2 spans 15 frames: 20 frames give 6 starts, 15 give 1, and a 14-frame video loops
    # so each of its 14 starts is a different clip.
    assert [int(temporal.num_valid_starts(n, 8, 2)) for n in (20, 15, 14, 5, 1, 0)] == \
        [6, 1, 14, 5, 1, 1]


SHORT = dict(num_frames=5, clip_frames=8, stride=2)  # L=5 frames, a clip spans 15: it loops.


def _short_starts(distribution, n=4000, seed=11):
    seeds = tf.random.stateless_uniform([n, 2], [seed, 3], maxval=2**30, dtype=tf.int32)
    return _draw_starts(seeds, SHORT["num_frames"], SHORT["clip_frames"], SHORT["stride"],
                        distribution).numpy()


@pytest.mark.parametrize("distribution", temporal.DISTRIBUTIONS)
def test_short_video_starts_spread_over_the_loop_with_the_chosen_gaps(distribution):
    length = SHORT["num_frames"]
    starts = _short_starts(distribution)
    assert starts.min() >= 0 and starts.max() <= length - 1
    for column in (0, 1):  # Each clip's start is uniform over the whole loop.
        counts = np.bincount(starts[:, column], minlength=length) / len(starts)
        assert np.abs(counts - 1 / length).max() < 0.03, (distribution, column, counts)
    # Clip B starts d frames after clip A on the loop, d ~ interval_pmf(distribution, L); the
    # random order turns d into L - d half the time.
    pmf = temporal.interval_pmf(distribution, length)
    expected = 0.5 * pmf + 0.5 * pmf[(-np.arange(length)) % length]
    shift = np.bincount((starts[:, 1] - starts[:, 0]) % length, minlength=length) / len(starts)
    assert 0.5 * np.abs(shift - expected).sum() < 0.04, (distribution, shift, expected)
    identical = np.mean(starts[:, 0] == starts[:, 1])
    if distribution == "zero":
        assert identical == 1.0
    else:  # Before, every pair of a short video was two identical clips.
        assert identical == pytest.approx(pmf[0], abs=0.03) and identical < 0.5


def test_short_video_uniform_gives_the_official_independent_starts():
    """Model Garden's sample_ssl_sequence: two independent uniform starts on the loop."""
    length = SHORT["num_frames"]
    starts = _short_starts("uniform", n=5000, seed=12)
    joint = np.bincount(starts[:, 0] * length + starts[:, 1], minlength=length**2) / len(starts)
    assert 0.5 * np.abs(joint - 1 / length**2).sum() < 0.06


def test_short_video_supervised_start_is_uniform_over_the_loop():
    draw = tf.function(lambda seeds: tf.map_fn(
        lambda s: temporal.sample_clip_start(5, 8, 2, seed=s), seeds,
        fn_output_signature=tf.int32))
    starts = draw(tf.random.stateless_uniform([2000, 2], [6, 6], maxval=2**30,
                                              dtype=tf.int32)).numpy()
    counts = np.bincount(starts, minlength=5) / 2000
    assert len(counts) == 5 and np.abs(counts - 0.2).max() < 0.04


def test_train_clip_start_is_uniform_over_valid_starts():
    draw = tf.function(lambda seeds: tf.map_fn(
        lambda s: temporal.sample_clip_start(13, 4, 2, seed=s), seeds,
        fn_output_signature=tf.int32))
    starts = draw(tf.random.stateless_uniform([2000, 2], [5, 5], maxval=2**30,
                                              dtype=tf.int32)).numpy()
    counts = np.bincount(starts, minlength=7) / 2000  # K = 13 - 6 = 7
    assert len(counts) == 7 and np.abs(counts - 1 / 7).max() < 0.04


def test_eval_clip_starts_linspace():
    # L=100, T=8, s=2: linspace over [0, 100 - 16 = 84].
    np.testing.assert_array_equal(temporal.eval_clip_starts(100, 8, 2, 10).numpy(),
                                  np.floor(np.linspace(0, 84, 10)).astype(int))
    np.testing.assert_array_equal(temporal.eval_clip_starts(100, 8, 2, 1).numpy(), [42])
    np.testing.assert_array_equal(temporal.eval_clip_starts(10, 8, 2, 3).numpy(), [0, 0, 0])
    graph = tf.function(lambda n: temporal.eval_clip_starts(n, 8, 2, 10))
    np.testing.assert_array_equal(graph(tf.constant(100)).numpy(),
                                  temporal.eval_clip_starts(100, 8, 2, 10).numpy())
