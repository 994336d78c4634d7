"""Tests for cvrl_tf.losses: info_nce (formula, cross-replica equivalence, official reference)
and detection_loss (formula, padded boxes, the global mean across replicas)."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.losses import detection_loss, info_nce


def _numpy_info_nce(z1: np.ndarray, z2: np.ndarray, temperature: float):
    """A direct transcription of NT-Xent: loss, accuracy and entropy over all 2N anchors."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    losses, hits, entropies = [], [], []
    for i in range(n2):
        positive = (i + n) % n2
        others = [j for j in range(n2) if j != i]
        logits = np.array([z[i] @ z[j] / temperature for j in others])
        log_norm = np.log(np.sum(np.exp(logits)))
        losses.append(log_norm - z[i] @ z[positive] / temperature)
        hits.append(others[int(np.argmax(logits))] == positive)
        p = np.exp(logits - log_norm)
        entropies.append(-np.sum(p * np.log(p)))
    return np.mean(losses), np.mean(hits), np.mean(entropies)


def test_matches_numpy_formula():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    z2[:3] = z1[:3] + 0.1 * z2[:3]  # a few easy positives so accuracy is neither 0 nor 1
    loss, metrics = info_nce(tf.constant(z1), tf.constant(z2), temperature=0.2)
    want_loss, want_acc, want_entropy = _numpy_info_nce(z1, z2, 0.2)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["contrastive_accuracy"].numpy(), want_acc, rtol=1e-6)
    np.testing.assert_allclose(metrics["contrastive_entropy"].numpy(), want_entropy, rtol=1e-4)
    cos = np.sum(z1 * z2, 1) / np.linalg.norm(z1, axis=1) / np.linalg.norm(z2, axis=1)
    np.testing.assert_allclose(metrics["positive_similarity"].numpy(), cos.mean(), rtol=1e-5)
    # Every anchor was compared with the 2N = 12 clips it gathered (itself masked).
    assert metrics["num_candidates"].dtype == tf.float32
    assert metrics["num_candidates"].numpy() == 12.0


@pytest.mark.bfloat16
def test_scale_invariant_and_float32_under_bfloat16():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(2, 4, 8)).astype(np.float32)
    loss, _ = info_nce(tf.constant(z1), tf.constant(z2))
    scaled, _ = info_nce(tf.constant(3 * z1), tf.constant(0.5 * z2))
    np.testing.assert_allclose(scaled.numpy(), loss.numpy(), rtol=1e-5)
    bf16, metrics = info_nce(tf.constant(z1, tf.bfloat16), tf.constant(z2, tf.bfloat16))
    assert bf16.dtype == tf.float32 and metrics["contrastive_entropy"].dtype == tf.float32
    np.testing.assert_allclose(bf16.numpy(), loss.numpy(), rtol=2e-2)


def test_rejects_bad_arguments():
    z = tf.zeros([4, 3])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(z, tf.zeros([3, 3]))


def test_two_replicas_match_one_device_loss_and_gradients(two_replica_strategy):
    strategy = two_replica_strategy
    """Replica-mean loss and summed gradients of loss / replicas equal one device's."""
    rng = np.random.default_rng(2)
    n, replicas = 3, strategy.num_replicas_in_sync
    x1, x2 = rng.normal(size=(2, replicas * n, 4)).astype(np.float32)
    w0 = rng.normal(size=(4, 6)).astype(np.float32)

    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        want_loss, want_metrics = info_nce(x1 @ w, x2 @ w, temperature=0.1)
    want_grad = tape.gradient(want_loss, w)

    with strategy.scope():
        w_mirrored = tf.Variable(w0)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        i = ctx.replica_id_in_sync_group
        a = tf.constant(x1)[i * n:(i + 1) * n]
        b = tf.constant(x2)[i * n:(i + 1) * n]
        with tf.GradientTape() as tape:
            loss, metrics = info_nce(tf.matmul(a, w_mirrored), tf.matmul(b, w_mirrored), 0.1)
            scaled = loss / ctx.num_replicas_in_sync
        return (loss, metrics["contrastive_accuracy"], metrics["num_candidates"],
                tape.gradient(scaled, w_mirrored))

    loss, acc, candidates, grad = tf.function(lambda: strategy.run(replica_fn))()
    mean = tf.distribute.ReduceOp.MEAN
    np.testing.assert_allclose(strategy.reduce(mean, loss, None).numpy(), want_loss.numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(strategy.reduce(mean, acc, None).numpy(),
                               want_metrics["contrastive_accuracy"].numpy(), rtol=1e-6)
    got_grad = strategy.reduce(tf.distribute.ReduceOp.SUM, grad, None)
    np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-4, atol=1e-6)
    # Each replica only sees half the batch, so its local loss differs from the global one.
    local = [v.numpy() for v in strategy.experimental_local_results(loss)]
    assert not np.allclose(local[0], local[1])
    # ... but each compared its anchors with the whole global batch: 2 x replicas x n clips.
    assert [c.numpy() for c in strategy.experimental_local_results(candidates)] == [
        2.0 * replicas * n] * replicas


def test_official_video_ssl_loss_is_twice_ours():
    from official.projects.video_ssl.losses import losses as official_losses

    class _NoDecay:  # the official loss reads model.trainable_variables for its L2 term
        trainable_variables = [tf.Variable(tf.zeros([1]), name="kernel")]

    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ours, metrics = info_nce(tf.constant(z1), tf.constant(z2), temperature=0.1)
    official = official_losses.contrastive_loss(
        tf.constant(np.concatenate([z1, z2])), num_replicas=1, normalize_hidden=True,
        temperature=0.1, model=_NoDecay(), weight_decay=0.0)
    np.testing.assert_allclose(official["contrastive_loss"].numpy(), 2 * ours.numpy(), rtol=1e-5)
    np.testing.assert_allclose(metrics["contrastive_accuracy"].numpy(),
                               _numpy_info_nce(z1, z2, 0.1)[1], rtol=1e-6)


def _detection_batch(seed: int, boxes=4, classes=5):
    """Logits, multi-hot labels and a box mask [3, boxes]: the last boxes of clips 1 and 2 are
    padding, and so is every box of clip 2 but its first."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, boxes, classes)).astype(np.float32) * 2
    labels = (rng.uniform(size=(3, boxes, classes)) < 0.3).astype(np.float32)
    mask = np.ones((3, boxes), np.float32)
    mask[1, -1:] = 0
    mask[2, 1:] = 0
    return logits, labels, mask


def _numpy_detection(logits, labels, mask):
    """Mean binary cross-entropy of sigmoid(logits) over the valid (box, action) entries, and
    the fraction of valid labelled boxes whose top action is one of theirs."""
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    valid = mask > 0
    labelled = valid & (labels.max(-1) > 0)
    hits = np.take_along_axis(labels, logits.argmax(-1)[..., None], -1)[..., 0] > 0
    return bce[valid].mean(), hits[labelled].mean()


def test_detection_loss_is_the_mean_over_valid_boxes_and_actions():
    logits, labels, mask = _detection_batch(4)
    loss, metrics = detection_loss(labels, logits, mask)
    want_loss, want_accuracy = _numpy_detection(logits, labels, mask)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["box_accuracy"].numpy(), want_accuracy, rtol=1e-6)
    # Padded boxes count nowhere: whatever their logits and labels, nothing changes...
    padded = mask == 0
    logits[padded], labels[padded] = 6.0, 0.0
    again, again_metrics = detection_loss(labels, logits, mask)
    np.testing.assert_allclose(again.numpy(), loss.numpy(), rtol=1e-6)
    assert again_metrics["box_accuracy"].numpy() == metrics["box_accuracy"].numpy()
    # ... whereas counting them would change the loss (the test can tell).
    counted = _numpy_detection(logits, labels, np.ones_like(mask))[0]
    assert abs(counted - loss.numpy()) > 0.1 * loss.numpy()


def test_detection_loss_is_zero_without_a_valid_box():
    logits, labels, mask = _detection_batch(5)
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss, metrics = detection_loss(labels, logits, np.zeros_like(mask))
    assert loss.numpy() == 0.0 and metrics["box_accuracy"].numpy() == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, logits), 0.0)
    with pytest.raises(ValueError, match=r"box_mask \[B, M\]"):
        detection_loss(labels, logits, mask[:, :2])


def test_detection_loss_two_replicas_give_the_global_mean(two_replica_strategy):
    """Replica 0 holds 7 valid boxes, replica 1 one: the replica mean of the losses and the
    summed gradients of loss / replicas are the one-device mean's (not the mean of means)."""
    strategy = two_replica_strategy
    first, second = _detection_batch(6), _detection_batch(7)
    second[2][:] = 0.0
    second[2][0, 0] = 1.0
    logits, labels, mask = (np.concatenate(pair) for pair in zip(first, second))
    w0 = np.float32(1.5)

    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        want_loss, _ = detection_loss(labels, w * logits, mask)
    want_grad = tape.gradient(want_loss, w)
    with strategy.scope():
        w_mirrored = tf.Variable(w0)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        rows = slice(3 * ctx.replica_id_in_sync_group, 3 * ctx.replica_id_in_sync_group + 3)
        with tf.GradientTape() as tape:
            loss, _ = detection_loss(tf.constant(labels)[rows],
                                     w_mirrored * tf.constant(logits)[rows],
                                     tf.constant(mask)[rows])
            scaled = loss / ctx.num_replicas_in_sync
        return loss, tape.gradient(scaled, w_mirrored)

    loss, grad = tf.function(lambda: strategy.run(replica_fn))()
    np.testing.assert_allclose(strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, None),
                               want_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(strategy.reduce(tf.distribute.ReduceOp.SUM, grad, None),
                               want_grad.numpy(), rtol=1e-5)
    means = [_numpy_detection(l, y, m)[0] for l, y, m in (first, second)]
    assert abs(np.mean(means) - want_loss.numpy()) > 0.05 * want_loss.numpy()
