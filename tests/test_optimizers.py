"""Tests for cvrl_tf.optimizers: LARS against NumPy, schedules, kernel-only weight decay."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.optimizers import (LARS, WarmupCosine, build_optimizer, decay_variables,
                                scaled_learning_rate)


def _numpy_lars(w, grads, lr, momentum, wd, eta, decay, adapt, nesterov=False):
    """LARS with classic momentum written out in NumPy: w after len(grads) steps."""
    w, v = w.astype(np.float64), np.zeros_like(w, dtype=np.float64)
    for g in grads:
        g = g + wd * w if decay else g.astype(np.float64)
        step_lr = lr
        if adapt and np.linalg.norm(w) > 0 and np.linalg.norm(g) > 0:
            step_lr = lr * eta * np.linalg.norm(w) / np.linalg.norm(g)
        v = momentum * v + step_lr * g
        w = w - (momentum * v + step_lr * g if nesterov else v)
    return w


def _tiny_model():
    """Conv3D + BN + Dense with bias: kernels, biases and BN parameters in one model."""
    inputs = keras.Input((2, 4, 4, 1))
    x = keras.layers.Conv3D(2, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_over_two_steps(nesterov):
    rng = np.random.default_rng(0)
    kernel0, bias0 = rng.normal(size=(3, 2)).astype(np.float32), np.array([0.5, -1.0], np.float32)
    grads = [(rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32))
             for _ in range(2)]
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    opt = LARS(0.5, momentum=0.9, weight_decay=1e-2, eta=0.01, nesterov=nesterov)
    for g_kernel, g_bias in grads:
        opt.apply_gradients([(tf.constant(g_kernel), kernel), (tf.constant(g_bias), bias)])
    args = dict(lr=0.5, momentum=0.9, wd=1e-2, eta=0.01, nesterov=nesterov)
    want_kernel = _numpy_lars(kernel0, [g for g, _ in grads], decay=True, adapt=True, **args)
    want_bias = _numpy_lars(bias0, [g for _, g in grads], decay=False, adapt=False, **args)
    np.testing.assert_allclose(kernel.numpy(), want_kernel, rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), want_bias, rtol=1e-5)


def test_lars_exclusions_are_variables_or_predicates():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(2, 2)).astype(np.float32)
    g = rng.normal(size=(2, 2)).astype(np.float32)
    by_list, by_predicate = keras.Variable(w0), keras.Variable(w0)
    LARS(0.1, weight_decay=0.1, exclude_from_weight_decay=[by_list]).apply_gradients(
        [(tf.constant(g), by_list)])
    LARS(0.1, weight_decay=0.1, exclude_from_adaptation=lambda v: True).apply_gradients(
        [(tf.constant(g), by_predicate)])
    common = dict(lr=0.1, momentum=0.9, wd=0.1, eta=0.001)
    # Adaptation follows the weight decay exclusion unless given: neither decay nor adaptation.
    np.testing.assert_allclose(by_list.numpy(), _numpy_lars(w0, [g], decay=False, adapt=False,
                                                            **common), rtol=1e-6)
    np.testing.assert_allclose(by_predicate.numpy(), _numpy_lars(w0, [g], decay=True, adapt=False,
                                                                 **common), rtol=1e-6)


def test_lars_config_round_trip():
    opt = LARS(WarmupCosine(1.0, 100, 10), momentum=0.8, weight_decay=1e-6, eta=0.002)
    clone = LARS.from_config(opt.get_config())
    assert (clone.momentum, clone.weight_decay, clone.eta, clone.nesterov) == (0.8, 1e-6, 0.002,
                                                                              False)
    assert isinstance(clone._learning_rate, WarmupCosine)


def test_warmup_cosine_values_and_config():
    schedule = WarmupCosine(base_lr=2.0, total_steps=110, warmup_steps=10)
    values = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [0.0, 1.0, 2.0, 1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(float(schedule(35)), 1.0 + math.cos(math.pi / 4), rtol=1e-6)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, WarmupCosine) and clone.get_config() == schedule.get_config()
    no_warmup = WarmupCosine(1.0, 10)
    assert float(no_warmup(0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, 10, warmup_steps=11)


def test_scaled_learning_rate():
    assert scaled_learning_rate(0.08, 1024) == pytest.approx(0.32)
    assert scaled_learning_rate(0.3, 512, reference_batch=512) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="global_batch_size"):
        scaled_learning_rate(0.1, 0)


def test_decay_variables_are_trainable_kernels_only():
    model = _tiny_model()
    conv, dense = model.layers[1], model.layers[-1]
    assert [id(v) for v in decay_variables(model)] == [id(conv.kernel), id(dense.kernel)]
    conv.trainable = False
    assert [id(v) for v in decay_variables(model)] == [id(dense.kernel)]


@pytest.mark.parametrize("name,shrink", [("lars", 0.1 * 0.001), ("adamw", 0.1 * 0.5)])
def test_optimizer_weight_decay_skips_bn_and_bias(name, shrink):
    """With zero gradients only the decay moves variables: kernels shrink, BN/bias stay.

    LARS: g = wd * w, trust ratio eta / wd, so w -= lr * eta * w; AdamW: w -= lr * wd * w.
    """
    model = _tiny_model()
    before = [v.numpy().copy() for v in model.trainable_variables]
    opt = build_optimizer(name, 0.1, weight_decay=0.5, decay_variables=decay_variables(model))
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    kernels = {id(v) for v in decay_variables(model)}
    for v, old in zip(model.trainable_variables, before):
        if id(v) in kernels:
            np.testing.assert_allclose(v.numpy(), old * (1 - shrink), rtol=1e-6)
        else:
            np.testing.assert_array_equal(v.numpy(), old)


def test_build_optimizer_names_and_errors():
    sgd = build_optimizer("sgd", 0.32)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and not sgd.nesterov
    assert isinstance(build_optimizer("adam", 1e-3), keras.optimizers.Adam)
    assert isinstance(build_optimizer("lars", WarmupCosine(1.0, 10)), LARS)
    with pytest.raises(ValueError, match="make_pretrain_step"):
        build_optimizer("sgd", 0.1, weight_decay=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        build_optimizer("rmsprop", 0.1)


def test_lars_under_mirrored_strategy_matches_one_device(two_replica_strategy):
    """Built in scope before the first step; each replica's half gradient sums to the whole."""
    strategy = two_replica_strategy
    rng = np.random.default_rng(2)
    w0, g = rng.normal(size=(2, 3, 2)).astype(np.float32)
    with strategy.scope():
        w = keras.Variable(w0)
        opt = LARS(0.2, weight_decay=0.01, eta=0.01)
        opt.build([w])

    @tf.function
    def step():
        strategy.run(lambda: opt.apply_gradients([(tf.constant(g) / 2, w)]))

    step()
    step()
    want = _numpy_lars(w0, [g, g], lr=0.2, momentum=0.9, wd=0.01, eta=0.01, decay=True,
                       adapt=True)
    for local in strategy.experimental_local_results(w.value):
        np.testing.assert_allclose(local.numpy(), want, rtol=1e-5)
