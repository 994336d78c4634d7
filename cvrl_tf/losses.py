"""The objectives: InfoNCE (NT-Xent) over the global batch, the CVRL objective with
cross-replica negatives; and the per-action sigmoid cross-entropy of action detection (AVA).

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


def detection_loss(labels: tf.Tensor, logits: tf.Tensor,
                   box_mask: tf.Tensor) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """Per-action sigmoid cross-entropy of boxes: labels (multi-hot) and logits [B, M, C], box_mask
    [B, M] (1 for a real box, 0 for padding). Returns (loss, {'box_accuracy'}).

    The loss is the mean over the valid (box, action) entries of the GLOBAL batch, returned as
    this replica's share such that the mean over replicas is that global mean (as info_nce's
    is): replica r returns R * sum_r / (C * valid boxes of all replicas), the count summed
    across replicas (a scalar all-reduce; on one replica, the plain mean). SlowFast and
    MMAction2 take the BCE mean per GPU and average gradients, which weights a box on a GPU
    with few boxes more than one on a crowded GPU; AVA's box counts vary from clip to clip, so
    that update would depend on how the batch is split. The global mean equals theirs when
    every replica holds as many valid boxes, gives one update for any replica count, and
    keeps their learning rates (both are means over entries). Padded boxes count nowhere; no
    valid box at all gives 0.
    'box_accuracy': over this replica's valid boxes with at least one action, the fraction
    whose highest logit is one of their actions (a cheap training signal; mAP is the metric).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    valid = tf.cast(box_mask, tf.float32) > 0
    if (logits.shape.rank != 3 or not labels.shape.is_compatible_with(logits.shape)
            or not valid.shape.is_compatible_with(logits.shape[:2])):
        raise ValueError(f"detection_loss needs labels and logits [B, M, C] and box_mask [B, M]; "
                         f"got {labels.shape}, {logits.shape} and {box_mask.shape}.")
    per_box = tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)
    local_sum = tf.reduce_sum(tf.where(valid, per_box, 0.0))
    num_boxes = tf.reduce_sum(tf.cast(valid, tf.float32))
    ctx = tf.distribute.get_replica_context()
    num_replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if num_replicas > 1:  # The valid boxes of the global batch.
        num_boxes = ctx.all_reduce(tf.distribute.ReduceOp.SUM, num_boxes)
    num_classes = logits.shape[-1] or tf.cast(tf.shape(logits)[-1], tf.float32)
    loss = num_replicas * local_sum / (tf.maximum(num_boxes, 1.0) * num_classes)

    labelled = valid & (tf.reduce_max(labels, axis=-1) > 0)
    top = tf.argmax(logits, axis=-1, output_type=tf.int32)
    hit = tf.gather(labels, top, batch_dims=2) > 0
    correct = tf.reduce_sum(tf.cast(labelled & hit, tf.float32))
    accuracy = correct / tf.maximum(tf.reduce_sum(tf.cast(labelled, tf.float32)), 1.0)
    return loss, {"box_accuracy": accuracy}
