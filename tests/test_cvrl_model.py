"""Tests for cvrl_tf.models.cvrl_model: CVRLModel, ClassifierModel, kernel_variables."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.models import (ClassifierModel, CVRLModel, build_backbone, finetune_classifier,
                            kernel_variables, linear_classifier, projection_head)

TINY = dict(depth=50, base_filters=4, blocks_per_stage=(1, 1, 1, 1))
FEATURE = 4 * 8 * 4  # base_filters * 8 * bottleneck expansion.


def _clip(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 4, 16, 16, 3), dtype=np.float32)


def _cvrl(probe_classes=None, **backbone_kwargs):
    backbone = build_backbone(**TINY, **backbone_kwargs)
    head = projection_head(num_hidden=2, hidden_dim=16, output_dim=8)
    return CVRLModel(backbone, head, probe_classes=probe_classes)


def _moving_stats(model):
    return [v.numpy().copy() for v in model.non_trainable_variables]


@pytest.fixture
def bf16_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def test_cvrl_model_returns_feature_and_unnormalized_embedding():
    model = _cvrl()
    clip = _clip()
    out = model(clip, training=False)
    assert set(out) == {"feature", "embedding"}
    assert out["feature"].shape == (4, FEATURE) and out["embedding"].shape == (4, 8)
    np.testing.assert_allclose(out["feature"], model.backbone(clip, training=False), atol=1e-6)
    np.testing.assert_allclose(out["embedding"], model.head(out["feature"], training=False),
                               atol=1e-5)
    assert not np.allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, atol=1e-3)


def test_cvrl_model_variables_exist_before_the_first_call():
    model = _cvrl(probe_classes=3)
    assert model.built and model.head.built and model.probe.built
    parts = [model.backbone, model.head, model.probe]
    assert all(part.trainable_variables for part in parts)
    assert {id(v) for v in model.trainable_variables} == {
        id(v) for part in parts for v in part.trainable_variables}


def test_cvrl_model_accepts_an_endpoint_backbone():
    out = _cvrl(return_endpoints=True)(_clip())
    assert out["feature"].shape == (4, FEATURE)


@pytest.mark.bfloat16
def test_cvrl_model_outputs_float32_under_mixed_bfloat16(bf16_policy):
    model = _cvrl(probe_classes=3)
    out = model(_clip(), training=True)
    assert model.backbone.get_layer("res4_block1_conv_a").compute_dtype == "bfloat16"
    assert model.head.layers[0].compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in out.values())


def test_online_probe_gradient_never_reaches_backbone_or_head():
    model = _cvrl(probe_classes=3)
    labels = tf.constant([0, 1, 2, 0])
    with tf.GradientTape() as tape:
        out = model(_clip(), training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, out["probe_logits"], from_logits=True))
    encoder_vars = model.backbone.trainable_variables + model.head.trainable_variables
    grads = tape.gradient(loss, encoder_vars + model.probe.trainable_variables)
    assert all(g is None for g in grads[:len(encoder_vars)])
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads[len(encoder_vars):])


def test_frozen_classifier_trains_only_the_classifier_and_keeps_bn_stats():
    backbone = build_backbone(**TINY)
    classifier = linear_classifier(5)
    model = ClassifierModel(backbone, classifier, freeze_backbone=True, l2_normalize=True)
    assert {id(v) for v in model.trainable_variables} == {
        id(v) for v in classifier.trainable_variables}
    before = _moving_stats(backbone)
    clip = _clip()
    out = model(clip, training=True)
    for old, new in zip(before, _moving_stats(backbone)):
        np.testing.assert_array_equal(old, new)
    normalized = tf.math.l2_normalize(out["feature"], axis=-1)
    np.testing.assert_allclose(out["logits"], classifier(normalized), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["feature"], backbone(clip, training=False), atol=1e-6)


def test_finetuned_classifier_trains_everything_and_updates_bn_stats():
    backbone = build_backbone(**TINY)
    classifier = finetune_classifier(5, dropout_rate=0.0)
    model = ClassifierModel(backbone, classifier, freeze_backbone=False, l2_normalize=False)
    assert len(model.trainable_variables) == (len(backbone.trainable_variables)
                                              + len(classifier.trainable_variables))
    before = _moving_stats(backbone)
    out = model(_clip(), training=True)
    assert any(not np.array_equal(o, n) for o, n in zip(before, _moving_stats(backbone)))
    np.testing.assert_allclose(out["logits"], classifier(out["feature"]), rtol=1e-5, atol=1e-6)
    assert out["logits"].dtype == tf.float32


def test_kernel_variables_are_exactly_the_conv_and_dense_kernels():
    model = _cvrl(probe_classes=3)
    kernels = kernel_variables(model)
    # Tiny R3D: stem + 4 blocks x (3 convs + shortcut) = 17; head: 2 hidden + 1 = 3; probe 1.
    assert len(kernels) == 17 + 3 + 1
    assert all(v.path.endswith("/kernel") for v in kernels)
    assert len({id(v) for v in kernels}) == len(kernels)
    excluded = {id(v) for v in model.trainable_variables} - {id(v) for v in kernels}
    excluded_names = {v.path.rsplit("/", 1)[-1] for v in model.trainable_variables
                      if id(v) in excluded}
    assert excluded_names == {"gamma", "beta", "bias"}
    assert len(kernel_variables(model.backbone)) == 17


def test_config_round_trip_and_keras_file_reload(tmp_path):
    model = _cvrl(probe_classes=3)
    clip = _clip()
    model(clip, training=True)
    clone = CVRLModel.from_config(model.get_config())
    assert clone.probe_classes == 3 and clone.count_params() == model.count_params()
    path = str(tmp_path / "cvrl.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CVRLModel)
    for key, value in model(clip).items():
        np.testing.assert_array_equal(loaded(clip)[key], value)


def test_classifier_model_reloads_frozen(tmp_path):
    model = ClassifierModel(build_backbone(**TINY), linear_classifier(5),
                            freeze_backbone=True, l2_normalize=True)
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.freeze_backbone and loaded.l2_normalize
    assert len(loaded.trainable_variables) == 2
    np.testing.assert_array_equal(loaded(_clip())["logits"], model(_clip())["logits"])


def test_training_step_compiles_with_xla():
    """Forward and backward under jit_compile=True give the eager loss and gradients."""
    model = _cvrl()

    def step(clip):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(clip, training=True)["embedding"] ** 2)
        return loss, tape.gradient(loss, model.trainable_variables)

    clip = tf.constant(_clip(n=4))  # 4 clips: batch statistics well enough conditioned.
    want_loss, want_grads = step(clip)  # Eager.
    loss, grads = tf.function(step, jit_compile=True)(clip)
    np.testing.assert_allclose(loss.numpy(), want_loss.numpy(), rtol=1e-4)
    assert len(grads) == len(model.trainable_variables)
    for g, want, v in zip(grads, want_grads, model.trainable_variables):
        np.testing.assert_allclose(g.numpy(), want.numpy(), rtol=0,  # Fusion round-off only.
                                   atol=2e-3 * np.abs(want.numpy()).max(), err_msg=v.path)


def test_sync_bn_uses_global_batch_statistics_across_replicas(two_replica_strategy):
    strategy = two_replica_strategy
    with strategy.scope():
        model = _cvrl(sync_bn=True)
    clip = _clip(n=4)
    dataset = tf.data.Dataset.from_tensors(clip).unbatch().batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def forward(video):
        return model(video, training=True)["embedding"]

    strategy.run(forward, args=(batch,))
    stem_bn = model.backbone.get_layer("stem_bn")
    stem_out = model.backbone.get_layer("stem_conv")(clip)
    # Per-replica variances average to less than the global one; momentum 0.9 from ones.
    expected = 0.9 + 0.1 * tf.math.reduce_variance(stem_out, axis=(0, 1, 2, 3))
    np.testing.assert_allclose(stem_bn.moving_variance.numpy(), expected, rtol=1e-4)


def test_backbone_warm_starts_from_a_checkpoint_via_its_config(tmp_path):
    model = _cvrl()
    clip = _clip()
    model(clip, training=True)
    path = tf.train.Checkpoint(backbone=model.backbone, model=model).save(str(tmp_path / "ckpt"))
    fresh = build_backbone(**model.backbone.get_config())  # What model_dir/backbone.json holds.
    status = tf.train.Checkpoint(backbone=fresh).restore(path).expect_partial()
    status.assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh(clip), model.backbone(clip))
