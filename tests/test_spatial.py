"""Random resized crop and the host's whole chain: consistency, decode-and-crop equality,
reduced-DCT decoding (the ops after the crop are tested in test_device_augment.py)."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import spatial

CROP = 16


def _texture(height=24, width=32, seed=0):
    """A smooth random colour texture (random enough that any crop/flip/jitter shows)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    return tf.cast(tf.image.resize(coarse[None], [height, width])[0], tf.uint8).numpy()


def _still_clip(num_frames=4):
    """A clip of identical frames, uint8 [T, H, W, 3]."""
    return np.stack([_texture()] * num_frames)


def _noisy_clip(num_frames=2, size=CROP):
    """float32 [T, S, S, 3] in [0, 1] with pixel noise, so blurs and flips are visible."""
    rng = np.random.default_rng(1)
    return tf.constant(rng.uniform(0.0, 1.0, (num_frames, size, size, 3)), tf.float32)


def _all_frames_equal(clip):
    clip = np.asarray(clip)
    return all(np.array_equal(clip[0], frame) for frame in clip[1:])


def test_augment_clip_shape_range_and_replay():
    out = spatial.augment_clip(_still_clip(), CROP, view=1, seed=[1, 2])
    assert out.shape == (4, CROP, CROP, 3) and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
    again = spatial.augment_clip(_still_clip(), CROP, view=1, seed=[1, 2])
    np.testing.assert_array_equal(out.numpy(), again.numpy())
    assert spatial.augment_clip(_still_clip(), CROP, view=2).shape == (4, CROP, CROP, 3)


def test_same_result_eagerly_in_tf_function_and_in_tf_data_map():
    clip, seed = _still_clip(), tf.constant([5, 6], tf.int64)
    eager = spatial.augment_clip(clip, CROP, view=2, seed=seed).numpy()
    graph = tf.function(lambda c, s: spatial.augment_clip(c, CROP, view=2, seed=s))(clip, seed)
    mapped = next(iter(tf.data.Dataset.from_tensors((clip, seed)).map(
        lambda c, s: spatial.augment_clip(c, CROP, view=2, seed=s))))
    np.testing.assert_allclose(graph.numpy(), eager, atol=1e-5)
    np.testing.assert_allclose(mapped.numpy(), eager, atol=1e-5)


@pytest.mark.parametrize("view", [1, 2])
def test_consistent_keeps_identical_frames_identical(view):
    for i in range(4):
        out = spatial.augment_clip(_still_clip(), CROP, view=view, consistent=True, seed=[i, 9])
        assert _all_frames_equal(out.numpy())


def test_inconsistent_draws_per_frame():
    outs = [spatial.augment_clip(_still_clip(), CROP, view=1, consistent=False, seed=[i, 9])
            for i in range(3)]
    assert not any(_all_frames_equal(o.numpy()) for o in outs)
    windows = spatial.sample_crop_windows([1, 1], 24, 32, 6, consistent=False).numpy()
    assert len({tuple(w) for w in windows}) > 1
    same = spatial.sample_crop_windows([1, 1], 24, 32, 6, consistent=True).numpy()
    assert len({tuple(w) for w in same}) == 1


def test_two_views_get_different_augmentations():
    v1 = spatial.augment_clip(_still_clip(), CROP, view=1, seed=[1, 0]).numpy()
    v2 = spatial.augment_clip(_still_clip(), CROP, view=2, seed=[2, 0]).numpy()
    assert np.abs(v1 - v2).mean() > 1e-3


def test_crop_windows_respect_area_and_aspect():
    seeds = tf.random.stateless_uniform([200, 2], [3, 3], maxval=2**30, dtype=tf.int32)
    windows = tf.function(lambda x: tf.map_fn(
        lambda s: spatial.sample_crop_window(s, 60, 80), x))(seeds).numpy()
    y, x, h, w = windows.T
    assert np.all(y >= 0) and np.all(x >= 0) and np.all(y + h <= 60) and np.all(x + w <= 80)
    area = h * w / (60 * 80)
    assert area.min() >= 0.3 - 0.02 and area.max() <= 1.0
    assert (w / h).min() >= 0.5 - 0.05 and (w / h).max() <= 2.0 + 0.1
    assert area.std() > 0.1  # Not stuck on the full-frame fallback.


def test_decoded_windows_equal_crops_of_the_full_decode():
    frames = np.stack([_texture(seed=i) for i in range(3)])
    jpegs = tf.constant([tf.io.encode_jpeg(f).numpy() for f in frames])
    full = tf.io.decode_jpeg(jpegs[0], channels=3).numpy()
    rng = np.random.default_rng(0)
    for _ in range(40):  # Random windows of a 4:2:0 JPEG, borders included.
        h, w = rng.integers(1, 25), rng.integers(1, 33)
        y, x = rng.integers(0, 25 - h), rng.integers(0, 33 - w)
        part = spatial.decode_window(jpegs[0], tf.constant([y, x, h, w])).numpy()
        np.testing.assert_array_equal(part, full[y:y + h, x:x + w])
    # Training crops decode exactly the window: equal to crops of the full decode except where
    # the window's outer pixels reach (chroma upsampled as at an image edge): a few levels.
    decoded = tf.stack([tf.io.decode_jpeg(j, channels=3) for j in jpegs])
    for consistent in (True, False):
        for seed in range(5):
            from_jpeg = spatial.crop_clip(jpegs, CROP, consistent, seed=[seed, 2]).numpy()
            from_pixels = spatial.crop_clip(decoded, CROP, consistent, seed=[seed, 2]).numpy()
            diff = np.abs(from_jpeg.astype(int) - from_pixels.astype(int))
            assert diff[:, 2:-2, 2:-2].max() == 0 and diff.max() <= 24


def test_grayscale_jpeg_decodes_to_three_channels():
    gray = tf.io.encode_jpeg(_texture()[..., :1])
    out = spatial.augment_clip(tf.stack([gray, gray]), CROP, view=1, seed=[0, 0])
    assert out.shape == (2, CROP, CROP, 3)


def test_view_probabilities_and_switches():
    clip = _noisy_clip()
    off = dict(flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0)
    # View 1 always blurs; with blur and solarize off the chain is the identity.
    v1 = spatial.augment_frames(clip, view=1, seed=[0, 3], blur_sigma_range=(1.5, 2.0),
                                **off).numpy()
    assert np.abs(v1 - clip.numpy()).mean() > 0.05
    identity = spatial.augment_frames(clip, view=1, seed=[0, 3], blur_prob=0.0, **off).numpy()
    np.testing.assert_allclose(identity, clip.numpy(), atol=1e-6)
    # Solarize with p=1 on view 2 (blur off) gives x -> 1 - x above 0.5.
    sol = spatial.augment_frames(clip, view=2, seed=[0, 3], blur_prob=0.0, solarize_prob=1.0,
                                 **off).numpy()
    np.testing.assert_allclose(sol, np.where(clip >= 0.5, 1 - clip, clip), atol=1e-6)


def test_eval_crop_windows():
    np.testing.assert_array_equal(spatial.eval_crop_windows(24, 40, 3).numpy(),
                                  [[0, 0, 24, 24], [0, 8, 24, 24], [0, 16, 24, 24]])
    np.testing.assert_array_equal(spatial.eval_crop_windows(40, 24, 3).numpy(),
                                  [[0, 0, 24, 24], [8, 0, 24, 24], [16, 0, 24, 24]])
    np.testing.assert_array_equal(spatial.eval_crop_windows(24, 40, 1).numpy(), [[0, 8, 24, 24]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown augmentation arguments"):
        spatial.augment_clip(_still_clip(), CROP, blur_strength=2.0)
    with pytest.raises(ValueError, match="view must be 1 or 2"):
        spatial.augment_clip(_still_clip(), CROP, view=3)
    with pytest.raises(ValueError, match="uint8 frames"):
        spatial.augment_clip(np.zeros((2, 8, 8, 3), np.float32), CROP)


def test_crop_clip_is_the_float_crop_rounded_to_uint8():
    frames = np.stack([_texture(seed=i) for i in range(3)])
    for consistent in (True, False):
        clip = spatial.crop_clip(frames, CROP, consistent, seed=[3, 1]).numpy()
        windows = spatial.sample_crop_windows(tf.constant([3, 1], tf.int64), 24, 32, 3,
                                              consistent)
        exact = spatial.crop_and_resize(frames, windows, CROP).numpy() * 255.0
        assert clip.dtype == np.uint8 and np.abs(clip - exact).max() <= 0.5 + 1e-3


def _photo_jpeg():
    """A natural photograph (scikit-learn ships two) as a quality-90 JPEG, and its decode."""
    datasets = pytest.importorskip("sklearn.datasets")
    jpeg = tf.io.encode_jpeg(datasets.load_sample_images().images[0], quality=90)
    return jpeg, tf.io.decode_jpeg(jpeg, channels=3)


@pytest.mark.parametrize("crop_size,ratio", [(112, 2), (64, 4), (32, 8)])
def test_reduced_dct_decode_stays_close_to_full_decode(crop_size, ratio):
    """Windows >= 2x the crop are decoded at 1/2, 1/4, 1/8 scale. Against full decode +
    antialiased resize (a correct downscale) they are within 6.5 levels on average per window,
    and over the windows closer to it than full decode + plain bilinear resize (which aliases)."""
    jpeg, full = _photo_jpeg()
    windows = [spatial.sample_crop_window([seed, crop_size], 427, 640) for seed in range(40)]
    windows = [w for w in windows
               if spatial.DCT_RATIOS[int(spatial._dct_ratio_index(w, crop_size))] == ratio]
    assert len(windows) >= 3
    errors, bilinear_errors = [], []
    for window in windows[:3]:
        y, x, h, w = window.numpy()
        ours = spatial.decode_crop_and_resize(tf.stack([jpeg, jpeg]), window[tf.newaxis],
                                              crop_size, same_window=True).numpy()
        assert ours.shape == (2, crop_size, crop_size, 3) and ours.dtype == np.uint8
        crop = full[y:y + h, x:x + w]
        antialiased = tf.image.resize(crop, [crop_size, crop_size], antialias=True).numpy()
        bilinear = tf.image.resize(crop, [crop_size, crop_size]).numpy()
        errors.append(np.abs(ours[0] - antialiased).mean())
        bilinear_errors.append(np.abs(bilinear - antialiased).mean())
        per_frame = spatial.decode_crop_and_resize(tf.stack([jpeg]), window[tf.newaxis],
                                                   crop_size, same_window=False).numpy()
        np.testing.assert_array_equal(per_frame[0], ours[0])
    assert max(errors) <= 6.5 and np.mean(errors) < np.mean(bilinear_errors)
