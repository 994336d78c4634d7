"""The input's books of a training run: where each replica's data stream stands (for exact
resume), how many records were read and skipped as bad (per cause), which videos each step
trained on, and the stop when too many records are bad.

Training batches carry, per video, INPUT_KEYS besides what the model reads (build_dataset's
'position', 'skipped', 'last_bad', 'id_hash'). In the replica step `split` takes them off the
batch and `replica_outputs` reduces them to what crosses replicas; in the cross-replica part of
the step `record` keeps them in `InputState` (a tf.Module the checkpoint holds) and appends the
ids to a file. Between loops, on the host, `check` reports the counts and stops a run whose
skipped share is too high.
"""
from typing import Callable, Mapping, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from cvrl_tf.data import checks
from cvrl_tf.data import source

INPUT_KEYS = ("position", "skipped", "last_bad", "id_hash")
# The skipped fraction is judged once this many records were read (one bad record among the
# first few would otherwise stop a run), and always at the end of a run.
MIN_READS_FOR_FRACTION = 1000


class BadInputError(ValueError):
    """More of the training records were skipped as bad than run.max_bad_fraction allows."""


class InputState(tf.Module):
    """What a run checkpoints of its input: the newest stream position of every replica's
    batches (one row per replica; source.POSITION_SIZE int32), records read, records skipped
    per cause (checks.CAUSES) and where the latest bad record of each cause was."""

    def __init__(self, num_replicas: int):
        super().__init__(name="input")
        # Rows: any number (a run may resume on another replica count; the rows then belong
        # to another layout and the stream starts a fresh order).
        self.positions = tf.Variable(tf.zeros([num_replicas, source.POSITION_SIZE], tf.int32),
                                     trainable=False, name="positions",
                                     shape=tf.TensorShape([None, source.POSITION_SIZE]))
        self.read = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="read")
        self.skipped = tf.Variable(tf.zeros([len(checks.CAUSES)], tf.int64), trainable=False,
                                   name="skipped")
        self.last_bad = tf.Variable(-tf.ones([len(checks.CAUSES), 3], tf.int32),
                                    trainable=False, name="last_bad")

    def summary(self) -> dict:
        """{'read': n, 'skipped': {cause: n}} as plain ints (results.json's 'input')."""
        skipped = self.skipped.numpy()
        return {"read": int(self.read.numpy()),
                "skipped": {cause: int(n) for cause, n in zip(checks.CAUSES, skipped)}}


def bad_fraction_error(summary: dict, max_fraction: float, describe: Callable[[np.ndarray], str],
                       last_bad: np.ndarray, min_reads: int = MIN_READS_FOR_FRACTION
                       ) -> Optional[str]:
    """The sentence that stops a run whose skipped share of records exceeds max_fraction
    (judged after min_reads records), naming the worst cause and an example; else None."""
    read = summary["read"]
    bad = sum(summary["skipped"][c] for c in checks.RECORD_CAUSES)
    if read < max(min_reads, 1) or bad / read <= max_fraction:
        return None
    worst = max(checks.RECORD_CAUSES, key=lambda c: summary["skipped"][c])
    example = describe(last_bad[checks.CAUSES.index(worst)])
    return (f"{bad} of the {read} training records read so far were bad ({bad / read:.1%}, "
            f"more than run.max_bad_fraction={max_fraction}); the most common cause is "
            f"{worst} ({summary['skipped'][worst]} records, e.g. {example}). Fix or remove "
            f"those records, or raise run.max_bad_fraction.")


def split(batch: Mapping[str, tf.Tensor]) -> Tuple[dict, dict]:
    """(what the model reads, the input's bookkeeping) of a replica's batch."""
    batch = dict(batch)
    return batch, {k: batch.pop(k) for k in INPUT_KEYS if k in batch}


def replica_outputs(extras: Mapping[str, tf.Tensor]) -> dict:
    """What one replica reports of its batch's bookkeeping: its newest position (and the last
    bad record seen with it), skips per cause, videos, and the video ids."""
    outputs = {}
    if "position" in extras:
        newest = tf.argmax(source.read_order(extras["position"]))
        outputs["input_position"] = tf.gather(extras["position"], newest)[tf.newaxis]
        outputs["input_last_bad"] = tf.gather(extras["last_bad"], newest)[tf.newaxis]
        outputs["input_skipped"] = tf.reduce_sum(extras["skipped"], 0)
        outputs["input_videos"] = tf.shape(extras["skipped"])[0]
    if "id_hash" in extras:
        outputs["input_ids"] = extras["id_hash"]
    return outputs


class InputBooks:
    """Keeps InputState from the replicas' outputs, writes ids, and judges the bad share.

    ids_path: append each step's video id hashes (this worker's) to this file.
    describe(last_bad row) names a bad record in messages.
    """

    def __init__(self, strategy: tf.distribute.Strategy, state: InputState, *,
                 ids_path: Optional[str] = None, max_bad_fraction: float = 1.0,
                 describe: Callable[[np.ndarray], str] = str):
        self.strategy = strategy
        self.state = state
        self._ids_path = ids_path
        self._max_bad_fraction = max_bad_fraction
        self._describe = describe

    def record(self, outputs: Mapping, global_step: tf.Variable) -> None:
        """In the step (cross-replica): newest positions of every replica, counts, ids."""
        state, strategy = self.state, self.strategy
        if "input_position" in outputs:
            state.positions.assign(strategy.gather(outputs["input_position"], axis=0))
            skipped = tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                              outputs["input_skipped"], axis=None), tf.int64)
            videos = tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                             outputs["input_videos"], axis=None), tf.int64)
            state.skipped.assign_add(skipped)
            state.read.assign_add(videos + tf.reduce_sum(skipped[:len(checks.RECORD_CAUSES)]))
            rows = strategy.gather(outputs["input_last_bad"], axis=0)  # [R, C, 3]
            valid = rows[:, :, 2] >= 0
            pick = tf.argmax(tf.cast(valid, tf.int32), axis=0)  # A replica that saw one.
            picked = tf.gather(tf.transpose(rows, [1, 0, 2]), pick, batch_dims=1)
            state.last_bad.assign(tf.where(tf.reduce_any(valid, 0)[:, tf.newaxis], picked,
                                           state.last_bad))
        if self._ids_path and "input_ids" in outputs:
            ids = tf.concat(strategy.experimental_local_results(outputs["input_ids"]), 0)
            tf.print(global_step, ids, summarize=-1,
                     output_stream=f"file://{self._ids_path}")

    def check(self, final: bool = False) -> dict:
        """On the host after a loop: the counts as metrics ('input/read', 'input/skipped/...'),
        skips in the log; BadInputError when the bad share is too high (from
        MIN_READS_FOR_FRACTION records on, and at the `final` check whatever the count)."""
        summary = self.state.summary()
        if not summary["read"]:
            return {}
        skipped = {c: n for c, n in summary["skipped"].items() if n}
        if skipped:
            causes = ", ".join(f"{c} {n}" for c, n in skipped.items())
            logging.info("Input: %d records read, skipped %s", summary["read"], causes)
        message = bad_fraction_error(summary, self._max_bad_fraction, self._describe,
                                     self.state.last_bad.numpy(),
                                     min_reads=0 if final else MIN_READS_FOR_FRACTION)
        if message:
            raise BadInputError(message)
        metrics = {"input/read": summary["read"]}
        metrics.update({f"input/skipped/{c}": n for c, n in summary["skipped"].items()})
        return metrics

    def skipped_line(self) -> Optional[str]:
        """'N of M records skipped (cause n, ...)' for the console, or None when none were."""
        summary = self.state.summary()
        skipped = {c: n for c, n in summary["skipped"].items() if n}
        if not skipped:
            return None
        causes = ", ".join(f"{c} {n}" for c, n in skipped.items())
        return f"{sum(skipped.values())} of {summary['read']} records skipped ({causes})"
