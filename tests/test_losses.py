"""Tests for cvrl_tf.losses.info_nce: formula, cross-replica equivalence, official reference."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.losses import info_nce


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
