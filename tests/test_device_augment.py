"""device_augment: each op against tf.image, per-clip parameters and order, the paper's
probabilities (one test per op), per-frame draws, XLA, the batch function."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import device_augment as da

S = 8
WIDTH = da.params_width(S)  # 14 scalars + a 3-tap kernel at S = 8
IDENTITY_TAPS = [0.0, 1.0, 0.0]


def _row(flip=0, jitter=0, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0,
         order=(0, 1, 2, 3), gray=0, blur=0, taps=IDENTITY_TAPS, solarize=0, threshold=0.5):
    """A hand-made parameter row (the layout documented in device_augment)."""
    return [flip, jitter, brightness, contrast, saturation, hue, *order, gray, blur, solarize,
            threshold, *taps]


def _clips(n=2, t=3, seed=0):
    """float32 [n, t, S, S, 3] in [0.05, 0.95] (no value clipped by a mild op)."""
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0.05, 0.95, (n, t, S, S, 3)), tf.float32)


def _apply(x, rows, batched=True):
    return da.apply_params(x, tf.constant(rows, tf.float32), batched).numpy()


@pytest.mark.parametrize("batched", [True, False])
def test_each_clip_gets_its_own_jitter_factors_as_tf_image_does(batched):
    x = _clips()
    cases = [  # (row, reference on one clip)
        (_row(jitter=1, brightness=1.3), lambda c: tf.clip_by_value(c * 1.3, 0, 1)),
        (_row(jitter=1, saturation=0.4), lambda c: tf.image.adjust_saturation(c, 0.4)),
        (_row(jitter=1, saturation=1.7), lambda c: tf.image.adjust_saturation(c, 1.7)),
        (_row(jitter=1, hue=-0.15), lambda c: tf.image.adjust_hue(c, -0.15)),
        (_row(jitter=1, hue=0.2), lambda c: tf.image.adjust_hue(c, 0.2)),
        (_row(jitter=1, contrast=0.5), lambda c: (c - tf.reduce_mean(c, [0, 1, 2])) * 0.5
         + tf.reduce_mean(c, [0, 1, 2])),  # Around the mean colour of the whole clip.
        (_row(gray=1), lambda c: tf.tile(tf.image.rgb_to_grayscale(c), [1, 1, 1, 3])),
        (_row(flip=1), lambda c: c[:, :, ::-1]),
        (_row(solarize=1, threshold=0.6), lambda c: tf.where(c >= 0.6, 1 - c, c)),
    ]
    for row, reference in cases:
        out = _apply(x, [row, _row()], batched)  # The second clip keeps identity parameters.
        np.testing.assert_allclose(out[0], reference(x[0]).numpy(), atol=2e-6)
        np.testing.assert_allclose(out[1], x[1].numpy(), atol=1e-7)


@pytest.mark.parametrize("batched", [True, False])
def test_blur_uses_each_clips_kernel(batched):
    x = _clips(t=2)
    taps = np.array([0.25, 0.5, 0.25], np.float32)
    out = _apply(x, [_row(blur=1, taps=taps), _row(blur=1, taps=IDENTITY_TAPS)], batched)
    kernel = np.outer(taps, taps)
    padded = np.pad(x[0].numpy(), ((0, 0), (1, 1), (1, 1), (0, 0)))  # 'SAME', zero padding
    expected = sum(kernel[i, j] * padded[:, i:i + S, j:j + S] for i in range(3) for j in range(3))
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_allclose(out[1], x[1].numpy(), atol=1e-6)
    # draw_params' kernels are normalized Gaussians of the drawn sigma.
    row = da.draw_params(tf.constant([1, 2]), 1, 224).numpy()
    assert row.shape == (da.params_width(224),) and da.blur_kernel_size(224) == 23
    np.testing.assert_allclose(row[da.NUM_SCALARS:].sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("batched", [True, False])
def test_jitter_order_is_per_clip(batched):
    x = _clips(n=1)
    factors = dict(jitter=1, brightness=1.6, hue=0.1)
    bright_first = _apply(x, [_row(order=(0, 3, 1, 2), **factors)], batched)[0]
    hue_first = _apply(x, [_row(order=(3, 0, 1, 2), **factors)], batched)[0]
    both = _apply(tf.concat([x, x], 0), [_row(order=(0, 3, 1, 2), **factors),
                                         _row(order=(3, 0, 1, 2), **factors)], batched)
    expected_b = tf.image.adjust_hue(tf.clip_by_value(x[0] * 1.6, 0, 1), 0.1).numpy()
    expected_h = tf.clip_by_value(tf.image.adjust_hue(x[0], 0.1) * 1.6, 0, 1).numpy()
    np.testing.assert_allclose(bright_first, expected_b, atol=2e-6)
    np.testing.assert_allclose(hue_first, expected_h, atol=2e-6)
    np.testing.assert_allclose(both, np.stack([expected_b, expected_h]), atol=2e-6)
    assert np.abs(expected_b - expected_h).max() > 0.05  # The order matters on these clips.
    orders = da.draw_params(tf.constant([0, 0]), 1, S, num_frames=500).numpy()[:, 6:10]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len({tuple(o) for o in orders}) == 24  # Every permutation occurs.


# The paper's probabilities (docs/DESIGN.md, the recipe): (op, view, probability, kwargs
# switching the others off).
_ALONE = dict(flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
              solarize_prob=0.0)
PROBABILITIES = [("flip", 1, 0.5), ("jitter", 1, 0.8), ("grayscale", 2, 0.2), ("blur", 1, 1.0),
                 ("blur", 2, 0.1), ("solarize", 1, 0.0), ("solarize", 2, 0.2)]
_KWARG = {"flip": "flip_prob", "jitter": "color_jitter_prob", "grayscale": "grayscale_prob",
          "blur": "blur_prob", "solarize": "solarize_prob"}
NUM_SEEDS = 2000


def _applied(op: str, out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per clip: did `op` visibly happen to x (everything else switched off)?"""
    if op == "flip":
        return np.abs(out - x[:, :, :, ::-1]).max(axis=(1, 2, 3, 4)) < 1e-6
    if op == "grayscale":
        return np.abs(out[..., 0] - out[..., 1]).max(axis=(1, 2, 3)) < 1e-6
    if op == "solarize":
        return np.abs(out - np.where(x >= 0.5, 1 - x, x)).max(axis=(1, 2, 3, 4)) < 1e-6
    return np.abs(out - x).max(axis=(1, 2, 3, 4)) > 1e-3  # jitter, blur: changed at all


@pytest.mark.parametrize("op,view,prob", PROBABILITIES)
def test_paper_probabilities_over_many_seeds(op, view, prob):
    """Each op happens in a fraction of clips within 4 standard errors of its probability
    (<= 0.045 for 2000 seeds), exactly never/always for 0 and 1; flags and effects agree."""
    kwargs = dict(_ALONE)
    del kwargs[_KWARG[op]]  # This op keeps its default (the paper's, by view).
    if op == "blur":  # A sigma of 0.1 leaves the pixels as they are: detect strong blurs.
        kwargs["blur_sigma_range"] = (1.0, 2.0)
    seeds = tf.random.stateless_uniform([NUM_SEEDS, 2], [7, view], maxval=2**30, dtype=tf.int32)
    rows = tf.function(lambda s: tf.map_fn(
        lambda seed: da.draw_params(seed, view, S, **kwargs), s,
        fn_output_signature=tf.TensorSpec([WIDTH], tf.float32)))(seeds)
    x = np.tile(_clips(n=1, t=1).numpy(), [NUM_SEEDS, 1, 1, 1, 1])
    # In a tf.function, as in the train step: eagerly, the per-clip loop runs op by op.
    applied = _applied(op, tf.function(da.apply_params)(x, rows).numpy(), x)
    frequency = applied.mean()
    if prob in (0.0, 1.0):
        assert frequency == prob
    else:
        assert abs(frequency - prob) <= 4 * np.sqrt(prob * (1 - prob) / NUM_SEEDS)
    flag = {"flip": da.FLIP, "jitter": da.JITTER, "grayscale": da.GRAYSCALE, "blur": da.BLUR,
            "solarize": da.SOLARIZE}[op]
    np.testing.assert_array_equal(applied, rows.numpy()[:, flag] > 0.5)


def test_jitter_factor_ranges():
    rows = da.draw_params(tf.constant([3, 1]), 1, S, num_frames=4000).numpy()
    for index, low, high in [(da.BRIGHTNESS, 0.2, 1.8), (da.CONTRAST, 0.2, 1.8),
                             (da.SATURATION, 0.2, 1.8), (da.HUE, -0.2, 0.2)]:
        values = rows[:, index]
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
    half = da.draw_params(tf.constant([3, 1]), 1, S, 4000, color_strength=0.5).numpy()
    assert 0.6 <= half[:, da.BRIGHTNESS].min() and half[:, da.BRIGHTNESS].max() <= 1.4


@pytest.mark.parametrize("batched", [True, False])
def test_per_frame_parameters_draw_per_frame(batched):
    still = tf.tile(_clips(n=1, t=1), [2, 4, 1, 1, 1])  # Two clips of 4 identical frames.
    per_clip = tf.stack([da.draw_params(tf.constant([i, 5]), 1, S) for i in range(2)])
    per_frame = tf.stack([da.draw_params(tf.constant([i, 5]), 1, S, 4) for i in range(2)])
    assert per_frame.shape == (2, 4, WIDTH)
    consistent = da.apply_params(still, per_clip, batched).numpy()
    frames = da.apply_params(still, per_frame, batched).numpy()
    for clip in consistent:
        assert all(np.array_equal(clip[0], f) for f in clip[1:])
    assert all(not all(np.array_equal(clip[0], f) for f in clip[1:]) for clip in frames)
    # A frame's parameters act on that frame as a one-frame clip would.
    one = da.apply_params(still[:1, :1], per_frame[0, :1], batched).numpy()
    np.testing.assert_allclose(frames[:1, :1], one, atol=1e-6)


def test_both_forms_compile_with_xla_and_agree():
    video = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 3, S, S, 3)), tf.uint8)
    rows = tf.stack([da.draw_params(tf.constant([i, 9]), 1 + i % 2, S) for i in range(4)])
    frames = tf.stack([da.draw_params(tf.constant([i, 9]), 2, S, 3) for i in range(4)])
    for params in (rows, frames):
        batch = {"video": video, da.PARAMS_KEY: params, "label": tf.constant([0, 1, 2, 3])}
        per_clip = da.augment_batch(batch, batched=False)["video"].numpy()
        for batched in (True, False):
            compiled = tf.function(lambda b, x=batched: da.augment_batch(b, x),
                                   jit_compile=True)(batch)
            assert set(compiled) == {"video", "label"} and compiled["video"].dtype == tf.float32
            np.testing.assert_allclose(compiled["video"].numpy(), per_clip, atol=1e-5)
        np.testing.assert_allclose(da.augment_batch(batch, batched=True)["video"].numpy(),
                                   per_clip, atol=1e-5)


def test_pretraining_batches_per_video_become_rows_of_views():
    video = tf.constant(np.random.default_rng(1).integers(0, 256, (3, 2, 2, S, S, 3)), tf.uint8)
    rows = tf.stack([tf.stack([da.draw_params(tf.constant([i, v]), v, S) for v in (1, 2)])
                     for i in range(3)])
    batch = {"video": video, da.PARAMS_KEY: rows, "label": tf.constant([4, 5, 6]),
             "id": tf.constant([b"a", b"b", b"c"])}
    out = da.augment_batch(batch)
    assert out["video"].shape == (6, 2, S, S, 3)
    assert out["label"].numpy().tolist() == [4, 5, 6, 4, 5, 6]
    assert out["id"].numpy().tolist() == [b"a", b"b", b"c"] * 2
    for i in range(3):  # Row i is view 1 of video i, row 3 + i its view 2.
        for v in (0, 1):
            np.testing.assert_allclose(out["video"][3 * v + i].numpy(),
                                       da.apply_params(video[i, v:v + 1], rows[i, v:v + 1])[0],
                                       atol=1e-6)


def test_uint8_input_and_batches_without_parameters():
    video = tf.constant(np.full((1, 1, S, S, 3), 255, np.uint8))
    np.testing.assert_allclose(_apply(video, [_row()]), 1.0)
    host = {"video": tf.zeros((2, 1, S, S, 3))}
    assert da.augment_batch(host) is host


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"clips \[N, T, S, S, 3\]"):
        da.apply_params(tf.zeros((2, S, S, 3)), tf.zeros((2, WIDTH)))
    with pytest.raises(ValueError, match="odd blur kernel"):
        da.apply_params(tf.zeros((2, 1, S, S, 3)), tf.zeros((2, WIDTH + 1)))
    with pytest.raises(ValueError, match="view must be 1 or 2"):
        da.draw_params(tf.constant([0, 0]), 3, S)
