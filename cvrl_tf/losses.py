"""InfoNCE (NT-Xent) over the global batch: the CVRL objective with cross-replica negatives.

Each of the 2N clips of the global batch (N videos, two views each) is an anchor; its positive
is the other view of the same video and the other 2N-2 clips are its negatives. Inside a replica
context with several replicas, the candidates are gathered from every replica and host, so the
negatives are the same as on one device holding the whole batch.

Scale: `info_nce` returns the mean over this replica's 2*N_local anchors, so the mean over
replicas is the single-device loss on the global batch. The official video_ssl loss returns twice
this value (the sum of its two per-view means); docs/DESIGN.md, "The learning rate", maps its lr.
"""
from typing import Dict, Tuple

import tensorflow as tf

# Added to an anchor's similarity with itself: far below any cosine/temperature logit, yet finite
# so that softmax * log_softmax stays 0 (not NaN) at the masked position.
_MASK_PENALTY = 1e9


def _rows(x: tf.Tensor):
    """The static row count when known (XLA/TPU-friendly), else the dynamic one."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _gather_candidates(z1: tf.Tensor, z2: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The global batch's views 1 and 2, and this replica's offset of its rows in them.

    `ReplicaContext.all_gather` differentiates as all-reduce(SUM) of the incoming gradient
    followed by this replica's slice (the SimCLR cross-replica concat), so every replica gets
    the gradient of the summed replica losses w.r.t. its own embeddings: with each replica loss
    divided by the replica count (steps.py), the summed weight gradients equal one device's.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z1, z2, tf.constant(0, tf.int32)
    z1_all, z2_all = ctx.all_gather([z1, z2], axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return z1_all, z2_all, replica_id * _rows(z1)


def info_nce(z1: tf.Tensor, z2: tf.Tensor,
             temperature: float = 0.1) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """InfoNCE of two views [N_local, D]: mean over this replica's 2*N_local anchors, and metrics.

    The embeddings need not be normalized: they are L2-normalized here in float32 (also under
    bfloat16) and compared by cosine similarity / temperature. Metrics, each a mean over this
    replica's anchors: 'contrastive_accuracy' (the positive has the largest logit),
    'contrastive_entropy' (entropy of the softmax over the 2N-1 candidates) and
    'positive_similarity' (cosine similarity of the two views), and 'num_candidates' (float32:
    the rows this replica's anchors were compared with, read from the gathered candidates, 2N
    for the global batch; 2N_local would mean the negatives were only local).
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0; the paper uses 0.1.")
    z1, z2 = tf.convert_to_tensor(z1), tf.convert_to_tensor(z2)
    if z1.shape.rank != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"info_nce needs two views of the same shape [N, D]; got {z1.shape} and {z2.shape}.")
    z1 = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=-1)
    z2 = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=-1)
    z1_all, z2_all, offset = _gather_candidates(z1, z2)

    n_local = _rows(z1)
    n_global = _rows(z1_all)
    anchors = tf.concat([z1, z2], axis=0)                      # [2n, D]
    candidates = tf.concat([z1_all, z2_all], axis=0)           # [2N, D]
    logits = tf.matmul(anchors, candidates, transpose_b=True) / temperature

    # Anchor i < n is view 1 of video offset+i: itself at column offset+i, positive at N+offset+i;
    # anchor n+i is view 2 of the same video: itself at N+offset+i, positive at offset+i.
    rows = tf.range(n_local) + offset
    self_index = tf.concat([rows, rows + n_global], axis=0)
    positive_index = tf.concat([rows + n_global, rows], axis=0)
    logits -= _MASK_PENALTY * tf.one_hot(self_index, 2 * n_global, dtype=tf.float32)

    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_index, logits=logits))

    log_probs = tf.nn.log_softmax(logits, axis=-1)
    entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), positive_index)
    metrics = {
        "contrastive_accuracy": tf.reduce_mean(tf.cast(correct, tf.float32)),
        "contrastive_entropy": tf.reduce_mean(entropy),
        "positive_similarity": tf.reduce_mean(tf.reduce_sum(z1 * z2, axis=-1)),
        "num_candidates": tf.cast(tf.shape(candidates)[0], tf.float32),
    }
    return loss, metrics
