"""Tests for cvrl_tf.steps: replica loss scaling, weight decay, XLA and bfloat16, eval counts,
and the action-detection steps."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import device_augment
from cvrl_tf.losses import detection_loss, info_nce
from cvrl_tf.models import (CVRLModel, ClassifierModel, DetectionModel, build_backbone,
                            projection_head, roi_head)
from cvrl_tf.models.heads import linear_classifier
from cvrl_tf.optimizers import build_optimizer, decay_variables
from cvrl_tf.steps import (DETECTION_METRICS, augment_detection_batch, make_classifier_step,
                           make_detection_eval_step, make_detection_step, make_eval_step,
                           make_pretrain_step)

CLIP = (4, 16, 16, 3)  # T, H, W, C


def _tiny_cvrl(sync_bn: bool = False, probe_classes=None) -> CVRLModel:
    """A width-4, one-block-per-stage R3D-18 with a 1-hidden-layer head: seconds to compile."""
    backbone = build_backbone(depth=18, base_filters=4, blocks_per_stage=(1, 1, 1, 1),
                              input_shape=CLIP, sync_bn=sync_bn)
    head = projection_head(num_hidden=1, hidden_dim=8, output_dim=4, sync_bn=sync_bn)
    return CVRLModel(backbone, head, probe_classes=probe_classes)


def _videos(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n,) + CLIP).astype(np.float32)


def _sgd(model: keras.Model, lr: float = 0.1, momentum: float = 0.9):
    optimizer = build_optimizer("sgd", lr, momentum=momentum)
    optimizer.build(model.trainable_variables)
    return optimizer


class _StandIn(keras.Model):
    """Conv3D -> pool -> Dense embedding, plus a probe on the stopped feature; no BN."""

    def __init__(self):
        super().__init__(name="stand_in")
        self.conv = keras.layers.Conv3D(4, 3, strides=2, use_bias=False)
        self.pool = keras.layers.GlobalAveragePooling3D()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.embed = keras.layers.Dense(4)
        self.probe = keras.layers.Dense(3)
        self(tf.zeros((2,) + CLIP))

    def call(self, video, training=None):
        feature = self.pool(self.conv(video))
        return {"feature": feature, "embedding": self.embed(self.hidden(feature)),
                "probe_logits": self.probe(tf.stop_gradient(feature))}


def _one_vs_two_replicas(strategy, make_model, steps: int, lr: float, b: int = 2):
    """Variables before, after `steps` on 1 replica (2b videos) and on 2 replicas (b each)."""
    view1, view2 = _videos(2 * b, 0), _videos(2 * b, 1)
    labels = np.arange(2 * b) % 3

    single = make_model()
    initial = single.get_weights()
    single_step = tf.function(make_pretrain_step(single, _sgd(single, lr), 0.1,
                                                 weight_decay=1e-2))
    batch = {"video": tf.constant(np.concatenate([view1, view2])),
             "label": tf.constant(np.concatenate([labels, labels]))}
    for _ in range(steps):
        single_metrics = single_step(batch)

    with strategy.scope():
        model = make_model()
        model.set_weights(initial)
        step = make_pretrain_step(model, _sgd(model, lr), 0.1, weight_decay=1e-2)

    def replica_batch(ctx):  # replica r holds videos r*b..r*b+b-1, both views, in its layout
        rows = slice(ctx.replica_id_in_sync_group * b, (ctx.replica_id_in_sync_group + 1) * b)
        return {"video": tf.constant(np.concatenate([view1[rows], view2[rows]])),
                "label": tf.constant(np.concatenate([labels[rows], labels[rows]]))}

    dist_batch = strategy.experimental_distribute_values_from_function(replica_batch)
    dist_step = tf.function(lambda x: strategy.run(step, args=(x,)))
    for _ in range(steps):
        metrics = dist_step(dist_batch)
    mean = tf.distribute.ReduceOp.MEAN
    np.testing.assert_allclose(strategy.reduce(mean, metrics["contrastive_loss"], None),
                               single_metrics["contrastive_loss"], rtol=1e-4)
    np.testing.assert_allclose(strategy.reduce(mean, metrics["probe_loss"], None),
                               single_metrics["probe_loss"], rtol=1e-4)
    # Both compared each anchor with all 2 x 2b clips: the loss gathered the other replica's.
    assert single_metrics["num_candidates"].numpy() == 4 * b
    assert [c.numpy() for c in strategy.experimental_local_results(
        metrics["num_candidates"])] == [4 * b] * strategy.num_replicas_in_sync
    return initial, single.get_weights(), model.get_weights(), [v.path for v in single.weights]


def _assert_same_updates(initial, want, got, paths, tolerance):
    """Updates w - w0 agree to tolerance x each variable's largest update.

    Float32 round-off of w itself (and thread-order sums) is up to ~1e-4 of small updates
    (measured over 12 initializations: 8e-7 to 4e-5 of the largest update;
    the suite's is fixed by conftest's seed); a wrong replica scaling is off by 50% or more.
    """
    for w0, w_want, w_got, path in zip(initial, want, got, paths):
        scale = np.abs(w_want - w0).max()
        assert scale > 0, path
        np.testing.assert_allclose(w_got - w0, w_want - w0, rtol=0,
                                   atol=tolerance * scale, err_msg=path)


def test_one_replica_batch_2b_equals_two_replicas_batch_b(two_replica_strategy):
    """Loss / num_replicas + summed gradients: two momentum steps give the same variables."""
    _assert_same_updates(*_one_vs_two_replicas(two_replica_strategy, _StandIn, steps=2, lr=0.1),
                         tolerance=5e-4)


def test_one_vs_two_replicas_with_tiny_r3d_and_sync_bn(two_replica_strategy):
    """The real model: synchronized BN statistics make the two runs agree (float32 round-off)."""
    make = lambda: _tiny_cvrl(sync_bn=True, probe_classes=3)  # noqa: E731
    _assert_same_updates(*_one_vs_two_replicas(two_replica_strategy, make, steps=1, lr=0.01),
                         tolerance=1e-3)


def test_weight_decay_is_l2_on_kernels_only():
    """Plain SGD: with decay, kernels move by an extra -lr * wd * w; BN and biases do not."""
    lr, wd = 0.1, 0.5
    model = _tiny_cvrl()
    initial = model.get_weights()
    batch = {"video": tf.constant(_videos(4, 2))}
    make_pretrain_step(model, _sgd(model, lr, momentum=0.0), weight_decay=0.0)(batch)
    plain = [v.numpy() for v in model.trainable_variables]
    model.set_weights(initial)
    before = [v.numpy() for v in model.trainable_variables]
    metrics = make_pretrain_step(model, _sgd(model, lr, momentum=0.0), weight_decay=wd)(batch)
    kernels = {id(v) for v in decay_variables(model)}
    assert len(kernels) >= 6 and len(kernels) < len(model.trainable_variables)
    for v, w0, w_plain in zip(model.trainable_variables, before, plain):
        extra = v.numpy() - w_plain
        want = -lr * wd * w0 if id(v) in kernels else np.zeros_like(w0)
        np.testing.assert_allclose(extra, want, atol=1e-5, err_msg=v.path)
    want_term = 0.5 * wd * sum(np.sum(w0 ** 2) for v, w0 in zip(model.trainable_variables, before)
                               if id(v) in kernels)
    np.testing.assert_allclose(metrics["weight_decay_loss"], want_term, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], metrics["contrastive_loss"] + want_term, rtol=1e-5)


def test_rejects_double_weight_decay_and_odd_batch():
    model = _tiny_cvrl()
    with pytest.raises(ValueError, match="set one of them to 0"):
        make_pretrain_step(model, build_optimizer("lars", 0.1, weight_decay=1e-6),
                           weight_decay=1e-6)
    with pytest.raises(ValueError, match="even per-replica batch"):
        make_pretrain_step(model, _sgd(model))({"video": tf.zeros((3,) + CLIP)})
    with pytest.raises(ValueError, match="temperature"):
        make_pretrain_step(model, _sgd(model), temperature=0.0)


def test_pretrain_step_compiles_with_xla():
    """The TPU proxy: forward, loss, backward and update in one jit_compile=True function,
    giving the metrics and the update of the same step run eagerly."""
    batch = {"video": tf.constant(_videos(4, 3)), "label": tf.constant([0, 1, -1, 2])}
    plain, model = _tiny_cvrl(probe_classes=3), _tiny_cvrl(probe_classes=3)
    model.set_weights(plain.get_weights())
    before = [v.numpy() for v in plain.trainable_variables]
    want = make_pretrain_step(plain, _sgd(plain), weight_decay=1e-4)(batch)  # Eager.
    step = tf.function(make_pretrain_step(model, _sgd(model), weight_decay=1e-4),
                       jit_compile=True)
    metrics = step(batch)
    for name in ("loss", "contrastive_loss", "probe_loss", "weight_decay_loss", "grad_norm"):
        np.testing.assert_allclose(metrics[name], want[name], rtol=1e-4, err_msg=name)
    for name in ("contrastive_accuracy", "probe_accuracy", "num_candidates", "learning_rate"):
        assert metrics[name].numpy() == want[name].numpy(), name
    assert metrics["num_candidates"].numpy() == 4.0 and metrics["learning_rate"].numpy() == 0.1
    moved = 0
    for v, w, w0 in zip(model.trainable_variables, plain.trainable_variables, before):
        np.testing.assert_allclose(v.numpy() - w0, w.numpy() - w0, rtol=0,
                                   atol=1e-3 * np.abs(w.numpy() - w0).max() + 1e-8)
        moved += not np.allclose(v.numpy(), w0)
    assert moved > len(before) // 2


def _device_batch(num_videos: int, seed: int, pretrain: bool = True) -> dict:
    """A batch as build_dataset(augment_on='device') emits it: uint8 clips and a parameter row
    per clip; in pretraining per video (video [B, 2, ...], view 1 first)."""
    views = (1, 2) if pretrain else (1,)
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (num_videos, len(views)) + CLIP, dtype=np.uint8)
    rows = tf.stack([tf.stack([device_augment.draw_params(tf.constant([seed, 2 * i + v]), v,
                                                          CLIP[1]) for v in views])
                     for i in range(num_videos)])
    batch = {"video": tf.constant(video), device_augment.PARAMS_KEY: rows,
             "label": tf.constant(np.arange(num_videos) % 3)}
    if not pretrain:
        batch["video"] = batch["video"][:, 0]
        batch[device_augment.PARAMS_KEY] = batch[device_augment.PARAMS_KEY][:, 0]
    return batch


def test_pretrain_step_augments_device_batches_like_the_host():
    batch = _device_batch(2, 6)
    host = device_augment.augment_batch(batch)
    assert host["video"].shape == (4,) + CLIP and host["label"].shape == (4,)
    results = []
    for b in (host, batch):
        model = _tiny_cvrl()
        model.set_weights([np.full(w.shape, 0.05, w.dtype) * np.sign(np.cos(np.arange(
            w.size))).reshape(w.shape) for w in model.get_weights()])
        metrics = tf.function(make_pretrain_step(model, _sgd(model)))(b)
        results.append((metrics["loss"].numpy(), [v.numpy() for v in model.trainable_variables]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    model = _tiny_cvrl()
    with pytest.raises(ValueError, match="augment=None"):
        make_pretrain_step(model, _sgd(model), augment=None)(batch)


def test_device_augmentation_in_replicated_and_classifier_steps(two_replica_strategy):
    """(Under XLA: tests/test_train.py::test_train_step_compiles_with_xla, a whole job, in
    make test-scenarios.)"""
    strategy = two_replica_strategy
    with strategy.scope():
        model = _tiny_cvrl(sync_bn=True)
        replica_step = make_pretrain_step(model, _sgd(model))
    dist_batch = strategy.experimental_distribute_values_from_function(
        lambda ctx: _device_batch(2, 10 + ctx.replica_id_in_sync_group))
    metrics = tf.function(lambda b: strategy.run(replica_step, args=(b,)))(dist_batch)
    losses = strategy.experimental_local_results(metrics["loss"])
    assert len(losses) == 2 and all(np.isfinite(loss.numpy()) for loss in losses)
    classifier = ClassifierModel(build_backbone(depth=18, base_filters=4,
                                                blocks_per_stage=(1, 1, 1, 1), input_shape=CLIP),
                                 linear_classifier(3))
    batch = _device_batch(2, 8, pretrain=False)
    metrics = tf.function(make_classifier_step(classifier, _sgd(classifier)))(batch)
    assert np.isfinite(metrics["loss"].numpy())


@pytest.mark.bfloat16
def test_pretrain_step_under_mixed_bfloat16():
    """bfloat16 compute, float32 variables and loss: the step's loss is info_nce (in float32)
    of the bf16 model's embeddings plus the float32 L2 term of the float32 kernels."""
    batch = {"video": tf.constant(_videos(4, 4))}
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _tiny_cvrl()
        embedding = model(batch["video"], training=True)["embedding"]
        want_contrastive, _ = info_nce(*tf.split(embedding, 2), temperature=0.1)
        want_decay = 0.5 * 1e-4 * sum(np.sum(v.numpy().astype(np.float64) ** 2)
                                      for v in decay_variables(model))
        step = tf.function(make_pretrain_step(model, _sgd(model), weight_decay=1e-4))
        metrics = step(batch)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert metrics["loss"].dtype == tf.float32 and embedding.dtype == tf.float32
    np.testing.assert_allclose(metrics["contrastive_loss"], want_contrastive, rtol=1e-5)
    np.testing.assert_allclose(metrics["weight_decay_loss"], want_decay, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], want_contrastive + want_decay, rtol=1e-5)
    assert model.trainable_variables[0].dtype == "float32"


def test_classifier_step_trains_head_only_with_label_smoothing():
    backbone = build_backbone(depth=18, base_filters=4, blocks_per_stage=(1, 1, 1, 1),
                              input_shape=CLIP)
    model = ClassifierModel(backbone, linear_classifier(3), freeze_backbone=True,
                            l2_normalize=True)
    video, labels = tf.constant(_videos(4, 5)), tf.constant([0, 2, 1, -1])
    logits = model(video, training=False)["logits"].numpy()
    frozen = [v.numpy() for v in backbone.weights]
    optimizer = build_optimizer("sgd", 1.0)
    optimizer.build(model.trainable_variables)
    metrics = make_classifier_step(model, optimizer, label_smoothing=0.1)(
        {"video": video, "label": labels})
    targets = np.full((3, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 2, 1]]
    log_p = logits[:3] - np.log(np.exp(logits[:3]).sum(1, keepdims=True))
    np.testing.assert_allclose(metrics["loss"], -np.mean(np.sum(targets * log_p, 1)), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"],
                               np.mean(logits[:3].argmax(1) == [0, 2, 1]), rtol=1e-6)
    for v, w0 in zip(backbone.weights, frozen):
        np.testing.assert_array_equal(v.numpy(), w0)
    assert not np.allclose(model(video, training=False)["logits"].numpy(), logits)


class _FixedLogits(keras.Model):
    """Logits read from the clip's first pixel: eval tests with known predictions."""

    def call(self, video, training=None):
        return {"logits": video[:, 0, 0, 0, :]}


def test_eval_step_counts_single_and_multi_view():
    rng = np.random.default_rng(6)
    views = rng.normal(size=(4, 3, 1, 1, 1, 6)).astype(np.float32) * 3
    labels = np.array([0, 3, 5, -1])
    counts = make_eval_step(_FixedLogits())({"video": tf.constant(views),
                                             "label": tf.constant(labels)})
    probs = np.exp(views[:, :, 0, 0, 0])
    probs = (probs / probs.sum(-1, keepdims=True)).mean(1)
    ranks = np.argsort(-probs, axis=1)
    valid = labels >= 0
    assert counts["count"].numpy() == 3
    assert counts["top1_correct"].numpy() == np.sum((ranks[:, 0] == labels)[valid])
    assert counts["top5_correct"].numpy() == np.sum((ranks[:, :5] == labels[:, None]).any(1)[valid])
    single = make_eval_step(_FixedLogits())({"video": tf.constant(views[:, 0]),
                                             "label": tf.constant(labels)})
    first = np.argmax(views[:, 0, 0, 0, 0], axis=1)
    assert single["top1_correct"].numpy() == np.sum((first == labels)[valid])


class _ClassByMode(keras.Model):
    """Class 1 in inference mode, class 0 in training mode (as batch statistics in BN would
    change what a model predicts)."""

    def call(self, video, training=None):
        batch = tf.shape(video)[0]
        return {"logits": tf.one_hot(tf.fill([batch], 0 if training else 1), 3)}


@pytest.mark.parametrize("views", [(1,), ()], ids=["multi-view", "single-view"])
def test_eval_step_runs_the_model_in_inference_mode(views):
    video = tf.zeros((2,) + views + (1, 2, 2, 3))
    counts = make_eval_step(_ClassByMode())({"video": video, "label": tf.constant([1, 1])})
    assert counts["top1_correct"].numpy() == counts["count"].numpy() == 2


DETECTION_CLIP = (4, 32, 32, 3)  # res5 2x2 at output stride 16.


def _tiny_detection(sync_bn: bool = False, classes: int = 4) -> DetectionModel:
    """The tiny R3D with SlowFast's AVA strides (res5 dilated) and a dropout-free RoI head."""
    backbone = build_backbone(depth=50, base_filters=4, blocks_per_stage=(1, 1, 1, 1),
                              spatial_strides=(1, 2, 2, 1), spatial_dilations=(1, 1, 1, 2),
                              input_shape=DETECTION_CLIP, sync_bn=sync_bn)
    return DetectionModel(backbone, roi_head(classes, crop_size=3, dropout_rate=0.0))


def _detection_batch(valid_boxes, seed: int, boxes: int = 3, classes: int = 4) -> dict:
    """Clips with `valid_boxes[i]` real boxes each (the rest zeros, masked) and random labels."""
    rng = np.random.default_rng(seed)
    n = len(valid_boxes)
    y = np.sort(rng.uniform(size=(n, boxes, 2, 2)), axis=-1)  # [..., (y, x), (min, max)]
    box = np.stack([y[..., 0, 0], y[..., 1, 0], y[..., 0, 1], y[..., 1, 1]], axis=-1)
    mask = (np.arange(boxes)[None, :] < np.array(valid_boxes)[:, None]).astype(np.float32)
    labels = (rng.uniform(size=(n, boxes, classes)) < 0.4).astype(np.float32)
    return {"video": tf.constant(rng.uniform(size=(n,) + DETECTION_CLIP).astype(np.float32)),
            "boxes": tf.constant((box * mask[..., None]).astype(np.float32)),
            "box_mask": tf.constant(mask), "labels": tf.constant(labels * mask[..., None])}


def test_detection_step_decreases_the_loss_and_reports_its_metrics():
    model = _tiny_detection()
    step = tf.function(make_detection_step(model, _sgd(model, lr=0.5), weight_decay=1e-4))
    batch = _detection_batch([3, 2], seed=11)
    losses = [step(batch)["detection_loss"].numpy() for _ in range(6)]
    metrics = step(batch)
    assert set(metrics) == set(DETECTION_METRICS)
    assert losses[-1] < 0.8 * losses[0], losses
    np.testing.assert_allclose(metrics["loss"], metrics["detection_loss"]
                               + metrics["weight_decay_loss"], rtol=1e-6)


def _detection_one_vs_two_replicas(strategy, valid_boxes, b: int = 2):
    """Variables before and after one SGD step on 1 replica (2b clips) and 2 replicas (b each)."""
    batch = _detection_batch(valid_boxes, seed=12)
    single = _tiny_detection(sync_bn=True)
    initial = single.get_weights()
    tf.function(make_detection_step(single, _sgd(single, 0.1), weight_decay=1e-2))(batch)
    with strategy.scope():
        model = _tiny_detection(sync_bn=True)
        model.set_weights(initial)
        step = make_detection_step(model, _sgd(model, 0.1), weight_decay=1e-2)
    dist_batch = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[ctx.replica_id_in_sync_group * b:(ctx.replica_id_in_sync_group + 1) * b]
                     for k, v in batch.items()})
    tf.function(lambda x: strategy.run(step, args=(x,)))(dist_batch)
    return initial, single.get_weights(), model.get_weights(), [v.path for v in single.weights]


def test_detection_one_replica_batch_2b_equals_two_replicas_batch_b(two_replica_strategy):
    """The same update when the replicas hold different numbers of valid boxes (5 and 1): the
    loss is the global batch's mean, not a mean of replica means (which would differ here)."""
    _assert_same_updates(*_detection_one_vs_two_replicas(two_replica_strategy, [3, 2, 0, 1]),
                         tolerance=1e-3)


def test_detection_step_compiles_with_xla():
    """The TPU proxy: RoIAlign, loss, backward and update in one jit_compile=True function give
    the eager step's metrics and update."""
    batch = _detection_batch([3, 1], seed=13)
    plain, model = _tiny_detection(), _tiny_detection()
    model.set_weights(plain.get_weights())
    before = [v.numpy() for v in plain.trainable_variables]
    want = make_detection_step(plain, _sgd(plain), weight_decay=1e-4)(batch)  # Eager.
    step = tf.function(make_detection_step(model, _sgd(model), weight_decay=1e-4),
                       jit_compile=True)
    metrics = step(batch)
    for name in ("loss", "detection_loss", "weight_decay_loss", "grad_norm"):
        np.testing.assert_allclose(metrics[name], want[name], rtol=1e-4, err_msg=name)
    assert metrics["box_accuracy"].numpy() == want["box_accuracy"].numpy()
    for v, w, w0 in zip(model.trainable_variables, plain.trainable_variables, before):
        np.testing.assert_allclose(v.numpy() - w0, w.numpy() - w0, rtol=0,
                                   atol=1e-3 * np.abs(w.numpy() - w0).max() + 1e-8)


def test_detection_eval_step_returns_sigmoid_scores_in_inference_mode():
    model = _tiny_detection()
    batch = _detection_batch([2, 3], seed=14)
    model(batch["video"], batch["boxes"], training=True)  # BN moving statistics off their start.
    scores = tf.function(make_detection_eval_step(model))(batch)["scores"]
    logits = model(batch["video"], batch["boxes"], training=False)["logits"]
    assert scores.shape == (2, 3, 4) and scores.dtype == tf.float32
    np.testing.assert_allclose(scores, tf.sigmoid(logits), rtol=1e-5, atol=1e-6)
    loss, _ = detection_loss(batch["labels"], logits, batch["box_mask"])
    assert np.isfinite(loss.numpy())


def test_augment_detection_batch_mirrors_the_boxes_of_flipped_clips():
    batch = _detection_batch([3, 2], seed=15)
    rows = tf.stack([device_augment.draw_params(tf.constant([15, i]), 1, DETECTION_CLIP[1],
                                                flip_prob=float(i == 0)) for i in range(2)])
    video = tf.cast(batch["video"] * 255, tf.uint8)
    device = dict(batch, video=video, **{device_augment.PARAMS_KEY: rows})
    out = augment_detection_batch(device)
    np.testing.assert_array_equal(out["video"], device_augment.augment_batch(device)["video"])
    boxes = batch["boxes"].numpy()
    ymin, xmin, ymax, xmax = np.moveaxis(boxes[0], -1, 0)
    np.testing.assert_allclose(out["boxes"][0], np.stack([ymin, 1 - xmax, ymax, 1 - xmin], -1))
    np.testing.assert_array_equal(out["boxes"][1], boxes[1])
    assert device_augment.PARAMS_KEY not in out
    assert augment_detection_batch(batch) is batch  # Host-augmented: unchanged.
    with pytest.raises(ValueError, match="one augmentation row per clip"):
        augment_detection_batch(dict(device, aug_params=tf.stack([rows] * 4, axis=1)))


def test_multi_view_eval_averages_probabilities_not_logits():
    """Three views of one video with logits (0, 2, 0, 0), (0, 2, 0, 0) and (6, 0, 0, 0):
    their softmaxes are (.096, .711, .096, .096) twice and (.993, .002, .002, .002), whose
    mean (.395, .475, .065, .065) ranks class 1 first; the mean logits (2, 1.33, 0, 0) rank
    class 0 first. The second video is the same with classes 0, 1 -> 3, 2. Labelled 1 and 2,
    both are hits when probabilities are averaged (as the paper does) and none when logits
    are."""
    first = np.array([[0, 2, 0, 0], [0, 2, 0, 0], [6, 0, 0, 0]], np.float32)
    second = first[:, [3, 2, 1, 0]]
    views = np.stack([first, second])[:, :, None, None, None, :]  # [B=2, V=3, T, H, W, 4]
    counts = make_eval_step(_FixedLogits())({"video": tf.constant(views),
                                             "label": tf.constant([1, 2])})
    assert counts["count"].numpy() == 2
    assert counts["top1_correct"].numpy() == 2
    assert counts["top5_correct"].numpy() == 2
