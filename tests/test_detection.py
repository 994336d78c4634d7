"""Tests for cvrl_tf.models.detection: RoIAlign's samples, the RoI head, the detection model."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.models import (DetectionModel, RoIHead, build_backbone, kernel_variables, roi_align,
                            roi_head)

TINY = dict(depth=50, base_filters=4, blocks_per_stage=(1, 1, 1, 1),
            spatial_strides=(1, 2, 2, 1), spatial_dilations=(1, 1, 1, 2))
CHANNELS = 4 * 8 * 4  # res5 of the tiny bottleneck R3D.


def _torchvision_roi_align(fmap: np.ndarray, box, crop: int, sampling_ratio: int = 0):
    """torchvision's roi_align (aligned=True; SlowFast's ROIAlign) as a loop, for one box
    [ymin, xmin, ymax, xmax] normalized to the map fmap [H, W, C]."""
    h, w, _ = fmap.shape
    y0, x0 = box[0] * h - 0.5, box[1] * w - 0.5
    bin_h, bin_w = (box[2] * h - 0.5 - y0) / crop, (box[3] * w - 0.5 - x0) / crop
    grid_h = sampling_ratio or math.ceil(bin_h)
    grid_w = sampling_ratio or math.ceil(bin_w)
    out = np.zeros((crop, crop, fmap.shape[-1]))
    for i, j, gy, gx in np.ndindex(crop, crop, grid_h, grid_w):
        y = y0 + i * bin_h + (gy + 0.5) * bin_h / grid_h
        x = x0 + j * bin_w + (gx + 0.5) * bin_w / grid_w
        if y < -1 or y > h or x < -1 or x > w:
            continue
        y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
        yl, xl = min(int(y), h - 1), min(int(x), w - 1)
        yh, xh = min(yl + 1, h - 1), min(xl + 1, w - 1)
        ly, lx = y - yl, x - xl
        out[i, j] += ((1 - ly) * (1 - lx) * fmap[yl, xl] + (1 - ly) * lx * fmap[yl, xh]
                      + ly * (1 - lx) * fmap[yh, xl] + ly * lx * fmap[yh, xh])
    return out / max(grid_h * grid_w, 1)


def _boxes(rng, shape) -> np.ndarray:
    """Random normalized boxes [..., 4] inside the frame."""
    y = np.sort(rng.uniform(size=shape + (2,)), axis=-1)
    x = np.sort(rng.uniform(size=shape + (2,)), axis=-1)
    return np.stack([y[..., 0], x[..., 0], y[..., 1], x[..., 1]], axis=-1).astype(np.float32)


def _clips(n=2, seed=0, height=32, width=48):
    return np.random.default_rng(seed).random((n, 4, height, width, 3), dtype=np.float32)


def _model(num_classes=5, dropout_rate=0.0, **kwargs) -> DetectionModel:
    return DetectionModel(build_backbone(**TINY),
                          roi_head(num_classes, dropout_rate=dropout_rate), **kwargs)


def test_roi_align_equals_a_hand_computation_for_one_box():
    """Map value 10y + x on a 4x4 map (bilinear sampling reproduces it exactly inside).
    Box rows 0.25..0.75 -> pixels 0.5..2.5: 2 bins of 1 pixel, one sample each, at rows 1
    and 2. Columns 0.25..1 -> 0.5..3.5: bins of 1.5 pixels, ceil = 2 samples each, at
    0.875, 1.625 (mean 1.25) and 2.375, 3.125 -> clamped to the last column 3 (mean 2.6875)."""
    fmap = (10.0 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.float32)
    got = roi_align(fmap[None, :, :, None], np.array([[[0.25, 0.25, 0.75, 1.0]]], np.float32),
                    crop_size=2)
    np.testing.assert_allclose(got[0, 0, :, :, 0], [[11.25, 12.6875], [21.25, 22.6875]],
                               rtol=1e-6)


@pytest.mark.parametrize("crop,sampling_ratio", [(7, 0), (3, 0), (2, 2), (1, 0)])
def test_roi_align_samples_as_torchvision_aligned_roi_align(crop, sampling_ratio):
    """Random boxes, the whole frame, edge boxes (clamped samples), a box partly outside the
    frame and a padded zero box."""
    rng = np.random.default_rng(crop)
    fmap = rng.normal(size=(2, 9, 13, 3)).astype(np.float32)
    boxes = _boxes(rng, (2, 5))
    boxes[0, 0], boxes[0, 1] = [0, 0, 1, 1], 0.0
    boxes[1, 0], boxes[1, 1] = [0.0, 0.9, 0.05, 1.0], [0.95, 0.0, 1.0, 0.02]
    boxes[1, 2] = [-0.3, 0.5, 0.4, 1.3]  # Partly outside the frame: some samples read 0.
    # Unknown map and box counts (graph mode) give what the static shapes give.
    dynamic = tf.function(lambda f, b: roi_align(f, b, crop, sampling_ratio), autograph=False,
                          input_signature=[tf.TensorSpec([None] * 4), tf.TensorSpec([None] * 3)])
    for got in (roi_align(fmap, boxes, crop, sampling_ratio), dynamic(fmap, boxes)):
        assert got.shape == (2, 5, crop, crop, 3)
        for b, m in np.ndindex(2, 5):
            np.testing.assert_allclose(
                got[b, m], _torchvision_roi_align(fmap[b], boxes[b, m], crop, sampling_ratio),
                rtol=1e-5, atol=1e-5, err_msg=f"box {b}, {m}: {boxes[b, m]}")
    # The padded box: finite; zeros with adaptive sampling (no sample), else the corner pixel.
    want = fmap[0, 0, 0] if sampling_ratio else 0.0
    np.testing.assert_array_equal(got[0, 1], np.broadcast_to(want, got[0, 1].shape))


def test_roi_head_is_temporal_mean_roi_align_max_dropout_dense():
    rng = np.random.default_rng(1)
    fmap = rng.normal(size=(2, 3, 5, 6, 8)).astype(np.float32)
    boxes = _boxes(rng, (2, 4))
    boxes[1, 3] = 0.0
    head = RoIHead(7, crop_size=3, dropout_rate=0.5)
    head.build(fmap.shape)
    logits = head(fmap, boxes, training=False)
    assert logits.shape == (2, 4, 7) and logits.dtype == tf.float32
    pooled = np.max(roi_align(fmap.mean(axis=1), boxes, crop_size=3), axis=(2, 3))
    kernel, bias = head.logits.get_weights()
    np.testing.assert_allclose(logits, pooled @ kernel + bias, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits[1, 3], bias, atol=1e-6)  # Padded box: the bias.
    assert not np.allclose(head(fmap, boxes, training=True), logits)  # Dropout in training.


@pytest.mark.parametrize("make,match", [
    (lambda: roi_head(0), "num_classes=0"),
    (lambda: roi_head(80, crop_size=0), "crop_size=0"),
    (lambda: roi_head(80, dropout_rate=1.0), "dropout_rate=1.0"),
    (lambda: roi_head(80, sampling_ratio=-1), "sampling_ratio=-1"),
    (lambda: roi_align(tf.zeros([1, 4, 4, 2]), tf.zeros([1, 4])), r"boxes \[B, M, 4\]"),
    (lambda: RoIHead(3)(tf.zeros([1, 4, 4, 2]), tf.zeros([1, 2, 4])), r"\[B, T', H', W', C\]"),
])
def test_bad_arguments_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_detection_model_outputs_logits_per_box_on_non_square_clips():
    model = _model()
    assert model.built and model.head.built  # Variables exist before a call.
    assert {id(v) for v in model.weights} == (
        {id(v) for v in model.backbone.weights} | {id(v) for v in model.head.weights})
    assert len(model.weights) == len(model.backbone.weights) + 2  # No variable twice.
    # Weight decay reaches every conv kernel and the head's Dense kernel (not its bias).
    assert {id(v) for v in kernel_variables(model)} == (
        {id(v) for v in kernel_variables(model.backbone)} | {id(model.head.logits.kernel)})
    boxes = _boxes(np.random.default_rng(2), (2, 3))
    boxes[1, 2] = 0.0
    video = tf.constant(_clips())
    with tf.GradientTape() as tape:
        logits = model(video, tf.constant(boxes), training=True)["logits"]
        loss = tf.reduce_sum(logits ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert logits.shape == (2, 3, 5) and logits.dtype == tf.float32
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    fmap = model.trunk(video, training=False)
    assert fmap.shape == (2, 2, 2, 3, CHANNELS)  # 32x48 at output stride 16.
    np.testing.assert_allclose(model(video, boxes)["logits"], model.head(fmap, boxes),
                               rtol=1e-5, atol=1e-6)


def test_frozen_backbone_trains_only_the_head_and_keeps_bn_stats():
    model = _model(freeze_backbone=True)
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in model.head.weights}
    stats = [v.numpy().copy() for v in model.backbone.non_trainable_variables]
    model(_clips(), _boxes(np.random.default_rng(3), (2, 2)), training=True)
    for v, before in zip(model.backbone.non_trainable_variables, stats):
        np.testing.assert_array_equal(v.numpy(), before)
    trained = _model()
    assert len(trained.trainable_variables) == len(trained.backbone.trainable_variables) + 2


@pytest.mark.bfloat16
def test_detection_model_outputs_float32_under_mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _model()
        logits = model(_clips(), _boxes(np.random.default_rng(4), (2, 2)), training=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.backbone.get_layer("res5_block1_conv_b").compute_dtype == "bfloat16"
    assert logits["logits"].dtype == tf.float32


def test_config_round_trip_keras_file_and_warm_start(tmp_path):
    pretrained = build_backbone(**dict(TINY, spatial_strides=(1, 2, 2, 2),
                                       spatial_dilations=(1, 1, 1, 1)))
    pretrained(_clips(), training=True)
    path = tf.train.Checkpoint(backbone=pretrained).save(str(tmp_path / "pretrain"))
    model = _model(freeze_backbone=True)
    tf.train.Checkpoint(backbone=model.backbone).restore(path).assert_existing_objects_matched()
    for got, want in zip(model.backbone.get_weights(), pretrained.get_weights()):
        np.testing.assert_array_equal(got, want)

    clone = DetectionModel.from_config(model.get_config())
    assert clone.freeze_backbone and clone.head.get_config()["crop_size"] == 7
    assert clone.backbone.get_config() == model.backbone.get_config()
    video, boxes = _clips(), _boxes(np.random.default_rng(5), (2, 3))
    keras_path = str(tmp_path / "detection.keras")
    model.save(keras_path)
    loaded = keras.saving.load_model(keras_path)
    assert isinstance(loaded, DetectionModel) and loaded.freeze_backbone
    np.testing.assert_array_equal(loaded(video, boxes)["logits"], model(video, boxes)["logits"])
