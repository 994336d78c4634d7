"""Tests for cvrl_tf.models.heads: the projection MLP and the two classifiers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.models import finetune_classifier, linear_classifier, projection_head


def _features(n=6, dim=16, seed=0):
    return np.random.default_rng(seed).random((n, dim), dtype=np.float32)


def test_projection_head_is_three_dense_bn_relu_then_dense():
    head = projection_head(num_hidden=3, hidden_dim=32, output_dim=8)
    head.build((None, 16))
    kinds = [type(l).__name__ for l in head.layers]
    assert kinds == ["Dense", "BatchNormalization", "ReLU"] * 3 + ["Dense"]
    hidden = [l for l in head.layers if isinstance(l, keras.layers.Dense)][:-1]
    assert not any(d.use_bias for d in hidden) and head.layers[-1].use_bias
    bns = [l for l in head.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 and not bn.synchronized for bn in bns)
    # Kernels, 4 BN vectors per hidden layer, and the output layer's kernel + bias.
    assert head.count_params() == 16 * 32 + 32 * 32 * 2 + 3 * 4 * 32 + 32 * 8 + 8


def test_projection_head_output_is_not_normalized():
    head = projection_head(num_hidden=2, hidden_dim=32, output_dim=8)
    out = head(_features(), training=True)
    assert out.shape == (6, 8)
    assert not np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-3)


def test_projection_head_without_hidden_layers_and_sync_bn():
    assert len(projection_head(num_hidden=0, output_dim=4).layers) == 1
    head = projection_head(num_hidden=1, hidden_dim=8, sync_bn=True, bn_momentum=0.99)
    bn = head.layers[1]
    assert bn.synchronized and bn.momentum == 0.99


def test_linear_classifier_is_one_dense_layer():
    clf = linear_classifier(5)
    logits = clf(_features())
    assert [type(l).__name__ for l in clf.layers] == ["Dense"]
    assert logits.shape == (6, 5)
    np.testing.assert_allclose(logits, _features() @ clf.layers[0].kernel.numpy()
                               + clf.layers[0].bias.numpy(), rtol=1e-5, atol=1e-6)


def test_finetune_classifier_drops_out_only_in_training():
    clf = finetune_classifier(5, dropout_rate=0.5)
    x = _features()
    np.testing.assert_array_equal(clf(x, training=False), clf(x, training=False))
    assert not np.allclose(clf(x, training=True), clf(x, training=False))
    assert clf.layers[0].rate == 0.5


@pytest.mark.bfloat16
def test_heads_emit_float32_under_mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        head = projection_head(num_hidden=1, hidden_dim=8, output_dim=4)
        out = head(_features())
        logits = linear_classifier(3)(_features())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert head.layers[0].compute_dtype == "bfloat16"
    assert out.dtype == tf.float32 and logits.dtype == tf.float32


@pytest.mark.parametrize("make,match", [
    (lambda: projection_head(num_hidden=-1), "num_hidden=-1"),
    (lambda: projection_head(hidden_dim=0), "hidden_dim=0"),
    (lambda: projection_head(output_dim=0), "output_dim=0"),
    (lambda: linear_classifier(0), "num_classes=0"),
    (lambda: finetune_classifier(10, dropout_rate=1.0), "dropout_rate=1.0"),
])
def test_bad_arguments_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()
