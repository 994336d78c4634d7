"""One replica step per mode (pretrain, classifier training, action detection, evaluation)
for strategy.run.

Loss scaling across replicas is written once, in `_minimize`: each replica divides its loss
by num_replicas_in_sync, and the optimizer sums the replicas' gradients (Keras all-reduce SUM).
Since `info_nce` is a per-replica mean whose replica mean is the global-batch loss (and the
gathered negatives pass gradients back to their own replica), the applied gradient is exactly
the gradient of the global-batch mean loss: the same update on 1 replica with batch 2B as on
2 replicas with B each. `detection_loss` keeps that contract: its replica mean is the mean over
the global batch's valid boxes, however they are split across replicas. A pretraining batch
must be split so that every replica holds whole video pairs in the [view 1 rows; view 2 rows]
layout (per-replica batching, e.g. strategy.distribute_datasets_from_function), never by
cutting one [2B] batch in two.

Mapping a reference recipe's learning rate to this convention: docs/DESIGN.md, "The learning rate".
"""
from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from cvrl_tf.data import device_augment
from cvrl_tf.losses import detection_loss, info_nce
from cvrl_tf.optimizers import decay_variables as default_decay_variables

# The metrics each step returns (the trainer averages them over a loop and summarizes them).
PRETRAIN_METRICS = ("loss", "contrastive_loss", "contrastive_accuracy", "contrastive_entropy",
                    "positive_similarity", "weight_decay_loss", "grad_norm", "learning_rate",
                    "num_candidates")
PROBE_METRICS = ("probe_loss", "probe_accuracy")
CLASSIFIER_METRICS = ("loss", "classification_loss", "accuracy", "weight_decay_loss",
                      "grad_norm", "learning_rate")
DETECTION_METRICS = ("loss", "detection_loss", "box_accuracy", "weight_decay_loss",
                     "grad_norm", "learning_rate")

Batch = Dict[str, tf.Tensor]
Step = Callable[[Batch], Dict[str, tf.Tensor]]
Augment = Optional[Callable[[Batch], Batch]]


def _num_replicas() -> int:
    """Replicas in sync, read in the replica context the step runs in."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise ValueError("The step ran in a cross-replica context; call it inside strategy.run.")
    return ctx.num_replicas_in_sync


def _weight_decay_loss(variables: Sequence, weight_decay: float) -> tf.Tensor:
    """0.5 * weight_decay * sum(w^2): the official tf.nn.l2_loss form (gradient wd * w)."""
    if not weight_decay or not variables:
        return tf.constant(0.0, tf.float32)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])


def _check_weight_decay(optimizer: keras.optimizers.Optimizer, weight_decay: float) -> None:
    """Refuses decay in both the loss and the optimizer (it would be applied twice)."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0.")
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if weight_decay and getattr(inner, "weight_decay", None):
        raise ValueError(
            f"weight_decay={weight_decay} is given to the step and optimizer {inner.name!r} "
            f"decays too ({inner.weight_decay}); set one of them to 0.")


def _masked_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0):
    """Mean cross-entropy and top-1 accuracy over the examples with a label >= 0."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = tf.cast(labels >= 0, tf.float32)
    num_classes = logits.shape[-1]
    targets = tf.one_hot(tf.maximum(labels, 0), num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    count = tf.maximum(tf.reduce_sum(valid), 1.0)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    return tf.reduce_sum(per_example * valid) / count, tf.reduce_sum(correct * valid) / count


def _minimize(model: keras.Model, optimizer: keras.optimizers.Optimizer,
              compute_loss: Callable[[], tuple]) -> Dict[str, tf.Tensor]:
    """Runs compute_loss under a tape, applies the gradients; returns its metrics and more.

    'grad_norm' is num_replicas times the global norm of this replica's share of the summed
    gradient (a local estimate of the applied gradient's norm; exact on one replica).
    """
    num_replicas = _num_replicas()
    variables = model.trainable_variables
    learning_rate = tf.cast(optimizer.learning_rate, tf.float32)
    with tf.GradientTape() as tape:
        loss, metrics = compute_loss()
        # THE loss scaling across replicas (the only place): the optimizer SUMS the replicas'
        # gradients, so each replica contributes the gradient of loss / num_replicas and the
        # sum is the gradient of the replica-mean loss, i.e. the global-batch loss.
        scaled_loss = optimizer.scale_loss(loss / num_replicas)  # x mixed-precision loss scale
    grads = tape.gradient(scaled_loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    loss_scale = tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
    grad_norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in grads if g is not None])
    return dict(metrics, loss=loss, learning_rate=learning_rate,
                grad_norm=grad_norm * num_replicas / loss_scale)


def _augmented(batch: Batch, augment: Augment) -> Batch:
    """The batch after the device-side augmentation (a no-op for host-augmented batches)."""
    if augment is None:
        if device_augment.PARAMS_KEY in batch:
            raise ValueError(f"The batch carries {device_augment.PARAMS_KEY!r} (build_dataset("
                             f"augment_on='device')) but the step has augment=None; pass the "
                             f"step's default (device_augment.augment_batch, or "
                             f"augment_detection_batch for detection).")
        return batch
    return augment(batch)


def _logits(outputs) -> tf.Tensor:
    """The float32 logits of a model output (a tensor or a dict with 'logits')."""
    return tf.cast(outputs["logits"] if isinstance(outputs, dict) else outputs, tf.float32)


def make_pretrain_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                       temperature: float = 0.1, weight_decay: float = 0.0,
                       probe_loss_weight: float = 1.0,
                       augment: Augment = device_augment.augment_batch) -> Step:
    """The CVRL replica step: InfoNCE (+ online probe) (+ L2 on kernels), one optimizer update.

    batch: {'video': [2B, T, H, W, 3] with rows i and B + i the two views of video i,
    'label': [2B] (only for the probe; labels < 0 are ignored)}, or build_dataset(augment_on=
    'device')'s per-video batch (video uint8 [B, 2, ...], 'aug_params'): `augment` (default
    device_augment.augment_batch, a no-op on float batches) turns it into those float32 rows
    first, in the replica step, so on the accelerator. model(video, training=True)
    returns {'embedding', optional 'probe_logits'} (a CVRLModel). weight_decay adds
    0.5 * wd * sum(w^2) over the model's trainable conv/dense kernels (optimizers.decay_variables);
    the online probe's loss counts probe_loss_weight times.
    Returns replica metrics: 'loss' (this replica's total, before the 1/num_replicas scaling),
    'contrastive_loss', 'contrastive_accuracy', 'contrastive_entropy', 'positive_similarity',
    'num_candidates' (the clips info_nce compared each anchor with: 2B x replicas),
    'weight_decay_loss', 'grad_norm' (see _minimize), 'learning_rate', and with a probe
    'probe_loss', 'probe_accuracy'.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0; the paper uses 0.1.")
    if probe_loss_weight < 0:
        raise ValueError(f"probe_loss_weight={probe_loss_weight!r} must be >= 0.")
    _check_weight_decay(optimizer, weight_decay)
    decayed = list(default_decay_variables(model)) if weight_decay else []

    def step(batch: Batch) -> Dict[str, tf.Tensor]:
        batch = _augmented(batch, augment)
        video = batch["video"]
        if video.shape[0] is not None and video.shape[0] % 2:
            raise ValueError(f"The pretraining batch has {video.shape[0]} clips; it needs 2B "
                             f"(B videos x 2 views), so use an even per-replica batch.")

        def compute_loss():
            outputs = model(video, training=True)
            z1, z2 = tf.split(tf.cast(outputs["embedding"], tf.float32), 2, axis=0)
            contrastive, metrics = info_nce(z1, z2, temperature)
            wd_loss = _weight_decay_loss(decayed, weight_decay)
            total = contrastive + wd_loss
            metrics = dict(metrics, contrastive_loss=contrastive, weight_decay_loss=wd_loss)
            if "probe_logits" in outputs and "label" in batch:
                probe_loss, probe_accuracy = _masked_cross_entropy(
                    batch["label"], outputs["probe_logits"])
                total += probe_loss_weight * probe_loss
                metrics.update(probe_loss=probe_loss, probe_accuracy=probe_accuracy)
            return total, metrics

        return _minimize(model, optimizer, compute_loss)

    return step


def _supervised_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                     weight_decay: float, augment: Augment,
                     task_loss: Callable[[Batch], tuple]) -> Step:
    """A replica step minimizing task_loss(batch) -> (loss, metrics) + the L2 term, one update.

    The metrics gain 'weight_decay_loss' and _minimize's 'loss', 'grad_norm', 'learning_rate'.
    """
    _check_weight_decay(optimizer, weight_decay)
    decayed = list(default_decay_variables(model)) if weight_decay else []

    def step(batch: Batch) -> Dict[str, tf.Tensor]:
        batch = _augmented(batch, augment)

        def compute_loss():
            loss, metrics = task_loss(batch)
            wd_loss = _weight_decay_loss(decayed, weight_decay)
            return loss + wd_loss, dict(metrics, weight_decay_loss=wd_loss)

        return _minimize(model, optimizer, compute_loss)

    return step


def make_classifier_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                         weight_decay: float = 0.0, label_smoothing: float = 0.0,
                         augment: Augment = device_augment.augment_batch) -> Step:
    """Linear-eval / fine-tune replica step: cross-entropy on model(video)['logits'], one update.

    batch: {'video': [B, T, H, W, 3], 'label': [B]} (labels < 0 are ignored; uint8 video with
    'aug_params' goes through `augment` first, as in make_pretrain_step). Returns replica
    metrics 'loss', 'classification_loss', 'accuracy' (top-1), 'weight_decay_loss',
    'grad_norm', 'learning_rate'.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1).")

    def task_loss(batch: Batch) -> tuple:
        logits = _logits(model(batch["video"], training=True))
        ce, accuracy = _masked_cross_entropy(batch["label"], logits, label_smoothing)
        return ce, {"classification_loss": ce, "accuracy": accuracy}

    return _supervised_step(model, optimizer, weight_decay, augment, task_loss)


def augment_detection_batch(batch: Batch, batched: Optional[bool] = None) -> Batch:
    """device_augment.augment_batch for detection batches: the boxes of the clips it flips are
    mirrored with them (x -> 1 - x); its other ops are photometric and leave boxes alone."""
    if device_augment.PARAMS_KEY not in batch:
        return batch
    params = tf.convert_to_tensor(batch[device_augment.PARAMS_KEY])
    if params.shape.rank != 2:
        raise ValueError(f"Detection batches need one augmentation row per clip [B, width] (the "
                         f"boxes belong to the whole clip); got {params.shape}.")
    out = device_augment.augment_batch(batch, batched)
    out["boxes"] = device_augment.flip_boxes(tf.convert_to_tensor(batch["boxes"]), params)
    return out


def make_detection_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                        weight_decay: float = 0.0,
                        augment: Augment = augment_detection_batch) -> Step:
    """Action-detection (AVA) replica step: losses.detection_loss on model(video, boxes)['logits']
    over the valid boxes (the global batch's mean per (box, action)), one update.

    batch: {'video': [B, T, H, W, 3], 'boxes': [B, M, 4] normalized [ymin, xmin, ymax, xmax]
    (padded with zeros), 'box_mask': [B, M] float (1 real box, 0 padding), 'labels':
    [B, M, C] float multi-hot}; uint8 video with 'aug_params' goes through `augment` first
    (augment_detection_batch flips the boxes with the clips). Returns replica metrics 'loss',
    'detection_loss', 'box_accuracy' (see detection_loss), 'weight_decay_loss', 'grad_norm',
    'learning_rate'.
    """
    def task_loss(batch: Batch) -> tuple:
        logits = _logits(model(batch["video"], batch["boxes"], training=True))
        loss, metrics = detection_loss(batch["labels"], logits, batch["box_mask"])
        return loss, dict(metrics, detection_loss=loss)

    return _supervised_step(model, optimizer, weight_decay, augment, task_loss)


def make_eval_step(model: keras.Model) -> Step:
    """Evaluation replica step: per-batch counts of top-1 / top-5 hits over labelled examples.

    batch['video'] is [B, T, H, W, 3] (single view) or [B, V, T, H, W, 3] (multi-view: the V
    views run as B * V clips and their softmax probabilities are averaged). Returns float32
    sums 'top1_correct', 'top5_correct' (top-min(5, classes)) and 'count' (examples with a
    label >= 0): add them over replicas and batches, then divide.
    """
    def step(batch: Batch) -> Dict[str, tf.Tensor]:
        video = batch["video"]
        if video.shape.rank == 6:
            shape = tf.shape(video)
            clips = tf.reshape(video, tf.concat([[-1], shape[2:]], axis=0))
            logits = _logits(model(clips, training=False))
            probs = tf.nn.softmax(logits, axis=-1)
            views = video.shape[1] if video.shape[1] is not None else shape[1]
            classes = probs.shape[-1] or -1
            probs = tf.reduce_mean(tf.reshape(probs, [shape[0], views, classes]), axis=1)
        elif video.shape.rank == 5:
            probs = tf.nn.softmax(_logits(model(video, training=False)), axis=-1)
        else:
            raise ValueError(f"Eval video has shape {video.shape}; expected [B, T, H, W, 3] or "
                             f"[B, V, T, H, W, 3].")
        labels = tf.reshape(tf.cast(batch["label"], tf.int32), [-1])
        valid = tf.cast(labels >= 0, tf.float32)
        k = min(5, probs.shape[-1])
        top = tf.math.top_k(probs, k=k).indices
        hits = tf.cast(tf.equal(top, labels[:, None]), tf.float32)
        return {"top1_correct": tf.reduce_sum(hits[:, 0] * valid),
                "top5_correct": tf.reduce_sum(tf.reduce_max(hits, axis=1) * valid),
                "count": tf.reduce_sum(valid)}

    return step


def make_detection_eval_step(model: keras.Model) -> Step:
    """Action-detection evaluation replica step: {'scores': float32 sigmoid scores [B, M, C]}
    of model(video, boxes) in inference mode, padded boxes included (the evaluator drops them
    with 'box_mask' and computes frame mAP on the host)."""
    def step(batch: Batch) -> Dict[str, tf.Tensor]:
        logits = _logits(model(batch["video"], batch["boxes"], training=False))
        return {"scores": tf.sigmoid(logits)}

    return step
