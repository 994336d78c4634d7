"""Tests for cvrl_tf.models.resnet3d: the R3D-50's numbers, variants, config, saving."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.models import build_backbone
from cvrl_tf.models.resnet3d import ResNet3D, last_stage

TINY = dict(base_filters=4, blocks_per_stage=(1, 1, 1, 1))
R3D50_BLOCKS = (3, 4, 6, 3)


def _clip(shape=(2, 8, 32, 32, 3), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _convs(model):
    return [l for l in model.layers if isinstance(l, keras.layers.Conv3D)]


def _mg_resnet3d(depth, blocks, input_shape):
    """The Model Garden ResNet3D configured as CVRL's R3D (slow-only, 1x3x3 stem pool)."""
    tf_keras = pytest.importorskip("tf_keras")
    resnet_3d = pytest.importorskip("official.vision.modeling.backbones.resnet_3d")
    return resnet_3d.ResNet3D(
        model_id=depth, temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[(k,) * n for k, n in zip((1, 1, 3, 3), blocks)],
        stem_type="v0", stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
        stem_pool_temporal_stride=1, norm_momentum=0.9, norm_epsilon=1e-5,
        input_specs=tf_keras.layers.InputSpec(shape=[None, *input_shape]))


@pytest.fixture(scope="module")
def mg_r3d50():
    """The Model Garden R3D-50 for (4, 32, 32, 3) clips, built once (1.4 s) for the tests that
    read it: none changes it."""
    keras.utils.set_random_seed(0)
    return _mg_resnet3d(50, R3D50_BLOCKS, (4, 32, 32, 3))


def test_r3d50_matches_spec_counts_and_endpoint_shapes():
    model = build_backbone(50, input_shape=(16, 224, 224, 3), return_endpoints=True)
    assert model.count_params() == 31_725_248
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 31_672_128
    shapes = {k: tuple(v.shape[1:]) for k, v in model.output.items()}
    assert shapes == {"res2": (8, 56, 56, 256), "res3": (8, 28, 28, 512),
                      "res4": (8, 14, 14, 1024), "res5": (8, 7, 7, 2048), "pooled": (2048,)}


def test_r3d50_computes_the_same_function_as_model_garden(mg_r3d50):
    """Copy the Model Garden R3D-50's weights block by block into ours: same outputs."""
    blocks, mg = R3D50_BLOCKS, mg_r3d50
    ours = build_backbone(50, input_shape=(4, 32, 32, 3), return_endpoints=True)
    ours.get_layer("stem_conv").set_weights(mg.layers[1].get_weights())
    ours.get_layer("stem_bn").set_weights(mg.layers[2].get_weights())
    mg_blocks = [l for l in mg.layers if type(l).__name__ == "BottleneckBlock3D"]
    names = [f"res{s + 2}_block{b + 1}" for s, n in enumerate(blocks) for b in range(n)]
    assert len(mg_blocks) == len(names)
    for block, name in zip(mg_blocks, names):
        pairs = [("_temporal_conv", "_conv_a"), ("_norm1", "_bn_a"), ("_spatial_conv", "_conv_b"),
                 ("_norm2", "_bn_b"), ("_expand_conv", "_conv_c"), ("_norm3", "_bn_c")]
        if block._shortcut_conv.weights:
            pairs += [("_shortcut_conv", "_shortcut_conv"), ("_norm0", "_shortcut_bn")]
        for mg_attr, suffix in pairs:
            ours.get_layer(name + suffix).set_weights(getattr(block, mg_attr).get_weights())
    clip = _clip((1, 4, 32, 32, 3))
    mg_out = mg(clip, training=False)
    our_out = ours(clip, training=False)
    for level in (2, 3, 4, 5):
        np.testing.assert_allclose(our_out[f"res{level}"], mg_out[str(level)],
                                   rtol=1e-4, atol=1e-4)


def test_r3d101_has_the_model_gardens_parameter_count():
    """59,682,496: the Model Garden R3D-101's count (the blocks themselves are compared with
    the Model Garden's in the R3D-50 tests above; the 101's block counts below)."""
    ours = build_backbone(101, input_shape=(16, 224, 224, 3))
    assert ours.count_params() == 59_682_496


@pytest.mark.parametrize("depth,width,feature", [
    (18, 1, 512), (34, 2, 1024), (50, 1, 2048), (101, 2, 4096), (152, 1, 2048),
    (200, 4, 8192)])
def test_depths_and_widths_give_the_right_blocks_and_feature(depth, width, feature):
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
              152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}[depth]
    # base_filters=4 keeps the build cheap; the feature scales with base_filters / 64.
    model = build_backbone(depth, width_multiplier=width, base_filters=4)
    assert model.output.shape[-1] == feature * 4 // 64
    convs_per_block = 2 if depth < 50 else 3
    shortcuts = 3 if depth < 50 else 4  # res2's first basic block keeps its shape.
    assert len(_convs(model)) == 1 + convs_per_block * sum(blocks) + shortcuts
    assert model.get_layer("stem_conv").filters == 4 * width


def test_slow_only_temporal_kernels_and_cvrl_stem():
    model = build_backbone(50, **TINY)
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (5, 7, 7) and stem.strides == (2, 2, 2) and not stem.use_bias
    pool = model.get_layer("stem_pool")
    assert pool.pool_size == (1, 3, 3) and pool.strides == (1, 2, 2)
    for stage, t in zip(("res2", "res3", "res4", "res5"), (1, 1, 3, 3)):
        assert model.get_layer(f"{stage}_block1_conv_a").kernel_size == (t, 1, 1)
        assert model.get_layer(f"{stage}_block1_conv_b").kernel_size == (1, 3, 3)
    assert not any(conv.use_bias for conv in _convs(model))


def test_per_block_temporal_kernels_and_resnet_stem():
    model = build_backbone(50, stem="resnet", base_filters=4, blocks_per_stage=(1, 1, 2, 1),
                           temporal_kernels=(1, 3, [3, 1], 1), return_endpoints=True)
    assert model.get_layer("res3_block1_conv_a").kernel_size == (3, 1, 1)
    assert model.get_layer("res4_block2_conv_a").kernel_size == (1, 1, 1)
    assert model.get_layer("stem_conv").kernel_size == (1, 7, 7)
    out = model(_clip((1, 8, 32, 32, 3)))
    assert out["res5"].shape == (1, 8, 1, 1, 16 * 8)  # 'resnet' stem keeps all 8 frames.


def test_basic_block_forward_on_a_tiny_clip():
    model = build_backbone(18, base_filters=4, input_shape=(8, 32, 32, 3),
                           return_endpoints=True)
    out = model(_clip(), training=False)
    assert out["res2"].shape == (2, 4, 8, 8, 4) and out["pooled"].shape == (2, 32)
    np.testing.assert_allclose(out["pooled"], tf.reduce_mean(out["res5"], axis=(1, 2, 3)),
                               rtol=1e-5, atol=1e-6)


def test_batch_norm_settings_and_sync_flag():
    model = build_backbone(50, sync_bn=True, bn_momentum=0.8, bn_epsilon=1e-3, **TINY)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 4 * 4
    assert all(bn.momentum == 0.8 and bn.epsilon == 1e-3 and bn.synchronized for bn in bns)
    default = build_backbone(50, **TINY).get_layer("stem_bn")
    assert (default.momentum, default.epsilon, default.synchronized) == (0.9, 1e-5, False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=42), "Unknown depth 42"),
    (dict(width_multiplier=0), "width_multiplier=0"),
    (dict(stem="c3d"), "Unknown stem 'c3d'"),
    (dict(blocks_per_stage=(1, 1, 1)), "blocks_per_stage"),
    (dict(temporal_kernels=(1, 3)), "temporal_kernels"),
    (dict(blocks_per_stage=(1, 2, 1, 1), temporal_kernels=(1, [3], 3, 3)),
     r"temporal_kernels\[1\]"),
    (dict(input_shape=(32, 32, 3)), "input_shape"),
    (dict(spatial_strides=(1, 2, 2)), "spatial_strides"),
    (dict(spatial_strides=(1, 3, 2, 2)), "spatial_strides"),
    (dict(spatial_dilations=(1, 1, 2)), "spatial_dilations"),
    (dict(spatial_dilations=(1, 1, 1, 0)), "spatial_dilations"),
    (dict(spatial_dilations=(1, 1, 1, 2)), "res5 has spatial stride 2 and dilation 2"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(**{"base_filters": 4, **kwargs})


def test_spatial_strides_set_the_stage_resolutions():
    clip = _clip()  # 8x32x32: the stem and its pool give 4x8x8.
    default = build_backbone(50, return_endpoints=True, **TINY)(clip)
    assert [default[f"res{i}"].shape[2] for i in range(2, 6)] == [8, 4, 2, 1]
    kept = build_backbone(50, return_endpoints=True, spatial_strides=(1, 1, 1, 1), **TINY)
    assert [kept(clip)[f"res{i}"].shape[2] for i in range(2, 6)] == [8, 8, 8, 8]
    assert kept.get_config()["spatial_strides"] == [1, 1, 1, 1]


DETECTION = dict(spatial_strides=(1, 2, 2, 1), spatial_dilations=(1, 1, 1, 2))


def test_dilated_last_stage_doubles_the_res5_map_with_the_same_variables(tmp_path):
    """SlowFast's AVA backbone: res5 at stride 1, dilated 2. Its variables are the plain
    backbone's, so a pretraining checkpoint (backbone only) warm-starts it."""
    clip = _clip((2, 8, 64, 96, 3))  # Stem and pool: 16x24.
    plain = build_backbone(50, return_endpoints=True, **TINY)
    plain(clip, training=True)  # Move the BN statistics off their initial values.
    path = tf.train.Checkpoint(backbone=plain).save(str(tmp_path / "ckpt"))
    dilated = build_backbone(50, return_endpoints=True, **DETECTION, **TINY)
    assert [(v.path, v.shape) for v in dilated.weights] == [
        (v.path, v.shape) for v in plain.weights]
    tf.train.Checkpoint(backbone=dilated).restore(path).assert_existing_objects_matched()
    for got, want in zip(dilated.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert plain(clip)["res5"].shape[2:4] == (2, 3)
    assert dilated(clip)["res5"].shape[2:4] == (4, 6)  # Output stride 16: 64x96 -> 4x6.
    assert dilated.get_layer("res5_block1_conv_b").dilation_rate == (1, 2, 2)
    assert dilated.get_layer("res4_block1_conv_b").dilation_rate == (1, 1, 1)
    assert dilated.get_config()["spatial_dilations"] == [1, 1, 1, 2]
    # 'same' padding keeps the dilated map's size, and the dilation changes what it computes.
    undilated = build_backbone(50, return_endpoints=True, spatial_strides=(1, 2, 2, 1), **TINY)
    undilated.set_weights(dilated.get_weights())
    assert undilated(clip)["res5"].shape == dilated(clip)["res5"].shape
    assert not np.allclose(undilated(clip)["res5"], dilated(clip)["res5"])


def test_basic_blocks_dilate_both_spatial_convs():
    model = build_backbone(18, base_filters=4, **DETECTION)
    for conv in ("conv_a", "conv_b"):
        assert model.get_layer(f"res5_block2_{conv}").dilation_rate == (1, 2, 2)
        assert model.get_layer(f"res4_block2_{conv}").dilation_rate == (1, 1, 1)
    assert model(_clip((1, 4, 32, 32, 3))).shape == (1, 32)


def test_last_stage_reads_res5_through_the_backbones_own_layers():
    clip = _clip((2, 8, 32, 48, 3))
    endpoints = build_backbone(50, return_endpoints=True, **DETECTION, **TINY)
    pooled_only = build_backbone(50, **DETECTION, **TINY)
    pooled_only.set_weights(endpoints.get_weights())
    for backbone in (endpoints, pooled_only):
        trunk = last_stage(backbone)
        assert {id(v) for v in trunk.weights} == {id(v) for v in backbone.weights}
        np.testing.assert_array_equal(trunk(clip), endpoints(clip)["res5"])
    with pytest.raises(ValueError, match="no 'pooled' layer"):
        last_stage(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


def test_config_round_trip_rebuilds_the_same_network():
    model = build_backbone(50, temporal_kernels=(1, [1], 3, 3), name="tiny", **TINY)
    config = model.get_config()
    assert config["base_filters"] == 4 and config["name"] == "tiny"
    clone = ResNet3D.from_config(config)
    assert clone.get_config() == config and clone.count_params() == model.count_params()
    clone.set_weights(model.get_weights())
    clip = _clip()
    np.testing.assert_array_equal(clone(clip), model(clip))


def test_save_and_reload_keras_file_gives_identical_outputs(tmp_path):
    model = build_backbone(50, return_endpoints=True, **TINY)
    clip = _clip()
    model(clip, training=True)  # Move the BN statistics away from their initial values.
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ResNet3D)
    for key, value in model(clip).items():
        np.testing.assert_array_equal(loaded(clip)[key], value)


@pytest.mark.bfloat16
def test_mixed_bfloat16_computes_in_bf16_and_pools_to_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_backbone(50, return_endpoints=True, **TINY)
        out = model(_clip())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("res3_block1_conv_b").compute_dtype == "bfloat16"
    assert out["res5"].dtype == tf.bfloat16 and out["pooled"].dtype == tf.float32


INIT_TOLERANCE = 0.05  # Relative; the smallest R3D-50 kernel (64x64) has 4096 weights, SE ~1%.


def _mg_conv_pairs(mg, ours, blocks):
    """(our Conv3D, the Model Garden's Conv3D) for every conv of R3D, block by block."""
    pairs = [(ours.get_layer("stem_conv"), mg.layers[1])]
    mg_blocks = [l for l in mg.layers if type(l).__name__ == "BottleneckBlock3D"]
    names = [f"res{s + 2}_block{b + 1}" for s, n in enumerate(blocks) for b in range(n)]
    assert len(mg_blocks) == len(names)
    for block, name in zip(mg_blocks, names):
        convs = [("_temporal_conv", "_conv_a"), ("_spatial_conv", "_conv_b"),
                 ("_expand_conv", "_conv_c")]
        if block._shortcut_conv.weights:
            convs.append(("_shortcut_conv", "_shortcut_conv"))
        pairs += [(ours.get_layer(name + suffix), getattr(block, attr)) for attr, suffix in convs]
    return pairs


def _init_std_mismatches(ours, mg, blocks, tolerance=INIT_TOLERANCE):
    """Names of our convs whose initial kernel std is off the reference's or sqrt(1/fan_in),
    or whose weights exceed the truncation bound (2 untruncated standard deviations)."""
    bad = []
    for our_conv, mg_conv in _mg_conv_pairs(mg, ours, blocks):
        w = our_conv.kernel.numpy()
        ref = mg_conv.kernel.numpy()
        assert w.shape == ref.shape, our_conv.name
        fan_in = int(np.prod(w.shape[:-1]))
        target = np.sqrt(1.0 / fan_in)  # VarianceScaling(1, fan_in) after truncation.
        # Keras and tf_keras scale the untruncated normal by 1/0.8796 so the kept part has
        # std `target`, and cut at 2 of those standard deviations.
        bound = 2.0 * target / 0.87962566103423978
        assert abs(ref.std() / target - 1) < tolerance, mg_conv.name  # The reference is it.
        if (abs(w.std() / ref.std() - 1) > tolerance or abs(w.std() / target - 1) > tolerance
                or np.abs(w).max() > bound * (1 + 1e-6) or abs(w.mean()) > 0.1 * target):
            bad.append(our_conv.name)
    return bad


def _r3d50(seed=0):
    keras.utils.set_random_seed(seed)
    return build_backbone(50, input_shape=(4, 32, 32, 3))


def test_r3d50_initial_kernels_match_model_garden_statistics(mg_r3d50):
    """Every conv of R3D-50: std within 5% of the Model Garden's and of sqrt(1/fan_in)."""
    ours, mg = _r3d50(), mg_r3d50
    assert len(_mg_conv_pairs(mg, ours, R3D50_BLOCKS)) == 1 + 3 * 16 + 4
    assert _init_std_mismatches(ours, mg, R3D50_BLOCKS) == []


def test_initial_kernel_check_fails_with_he_normal(monkeypatch, mg_r3d50):
    """he_normal (variance scale 2) would pass unnoticed if the check could not fail."""
    from cvrl_tf.models import resnet3d
    monkeypatch.setattr(resnet3d, "kernel_initializer", keras.initializers.HeNormal)
    ours, mg = _r3d50(), mg_r3d50
    names = [c.name for c, _ in _mg_conv_pairs(mg, ours, R3D50_BLOCKS)]
    assert _init_std_mismatches(ours, mg, R3D50_BLOCKS) == names
