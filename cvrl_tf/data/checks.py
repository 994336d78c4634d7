"""Records that break: what is wrong with one, and skipping (with exact counts) or refusing it.

Each element of the input pipeline carries a status: 0 (good) or 1 + the index of its cause in
CAUSES. Training modes skip bad records: `count_and_drop` removes them and attaches to the next
good record how many of each cause it skipped ('skipped' [C]) and where the latest one of each
cause was ('last_bad' [C, 3]: pipeline, file index, record index; -1 when none), so that summing
'skipped' over every batch the trainer consumed gives exact counts. Evaluation refuses them:
`refuse` fails naming the record and the cause. `attempt` runs a step that may raise (parsing,
JPEG decoding) and turns an error into a status instead of the end of the run.
"""
from typing import Callable, Optional

import tensorflow as tf

CAUSES = ("not_parseable", "no_frames", "not_jpeg", "corrupt_jpeg", "too_short", "bad_label",
          "truncated_shard")
# The causes that are records (a truncated or vanished shard is not one): they count as read.
RECORD_CAUSES = CAUSES[:-1]
NOT_PARSEABLE, NO_FRAMES, NOT_JPEG, CORRUPT_JPEG, TOO_SHORT, BAD_LABEL, TRUNCATED_SHARD = (
    range(1, len(CAUSES) + 1))
_JPEG_MAGIC = b"\xff\xd8"
_EXPLANATIONS = {
    NOT_PARSEABLE: "it is not a tf.train.SequenceExample",
    NO_FRAMES: "it has no image/encoded frames",
    NOT_JPEG: "a frame is not a JPEG (no FFD8 magic bytes)",
    CORRUPT_JPEG: "a frame fails to decode (corrupt JPEG data)",
    TOO_SHORT: "it has fewer frames than one clip spans",
    BAD_LABEL: "a label is outside [0, num_classes)",
    TRUNCATED_SHARD: "the shard ends before its size says (truncated, or gone)",
}


def attempt(fn: Callable[[dict], dict], fallback: Callable[[dict], dict],
            deterministic: bool) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """A transformation applying fn to each element, or fallback(element) where fn raises.

    tf.data has no try/except: each element becomes a one-element dataset mapped by fn with
    errors ignored, followed by the fallback; the first of the two is kept.
    """
    def one(element):
        good = tf.data.Dataset.from_tensors(element).map(fn).ignore_errors()
        return good.concatenate(tf.data.Dataset.from_tensors(fallback(element))).take(1)

    def apply(ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.interleave(one, cycle_length=tf.data.AUTOTUNE, block_length=1,
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

    return apply


def status_of(example: dict, clip_span: int, num_classes: Optional[int],
              check_short: bool) -> tf.Tensor:
    """The first failed cheap check of a parsed example (int32; 0 when it passes): no frames,
    a frame without the JPEG magic bytes, too short (only when check_short), a bad label."""
    frames, labels = example["frames"], example["label"]
    num = tf.size(frames)
    not_jpeg = tf.reduce_any(tf.not_equal(tf.strings.substr(frames, 0, 2), _JPEG_MAGIC))
    short = tf.logical_and(check_short, num < clip_span)
    bad_label = (tf.constant(False) if num_classes is None else
                 tf.reduce_any(tf.logical_or(labels < 0, labels >= num_classes)))
    failed = tf.stack([num == 0, not_jpeg, short, bad_label])
    codes = tf.constant([NO_FRAMES, NOT_JPEG, TOO_SHORT, BAD_LABEL])
    return tf.concat([tf.boolean_mask(codes, failed), [0]], 0)[0]


def explain(status: tf.Tensor) -> tf.Tensor:
    """The cause of a status as a short sentence (string scalar)."""
    return tf.gather(tf.constant([""] + [_EXPLANATIONS[c] for c in range(1, len(CAUSES) + 1)]),
                     status)


# Which particulars `reason` adds: 0 none, 1 the frame, 2 the length, 3 the label.
_REASON_BRANCH = (0, 0, 0, 1, 0, 2, 3, 0)


def reason(example: dict, status: tf.Tensor, clip_span: int,
           num_classes: Optional[int]) -> tf.Tensor:
    """What is wrong with a parsed example, with its particulars (string scalar; '' if good)."""
    frames, labels = example["frames"], example["label"]

    def specific():
        not_jpeg = tf.not_equal(tf.strings.substr(frames, 0, 2), _JPEG_MAGIC)
        first = tf.argmax(tf.cast(tf.concat([not_jpeg, [True]], 0), tf.int32),
                          output_type=tf.int32)
        label = tf.constant(-1)
        if num_classes is not None:
            outside = tf.logical_or(labels < 0, labels >= num_classes)
            label = tf.concat([tf.boolean_mask(labels, outside), [-1]], 0)[0]
        branch = tf.gather(_REASON_BRANCH, status)
        return tf.switch_case(branch, [
            lambda: explain(status),
            lambda: tf.strings.format("frame {} is not a JPEG (no FFD8 magic bytes)", first),
            lambda: tf.strings.format("it has {} frames, fewer than one clip spans ({})",
                                      (tf.size(frames), clip_span)),
            lambda: tf.strings.format("label {} is outside [0, num_classes={})",
                                      (label, num_classes or 0)),
        ])

    return tf.cond(status > 0, specific, lambda: tf.constant(""))


def refuse(element: dict, only: Optional[int] = None) -> dict:
    """The element, after an in-graph check that stops the pipeline naming a bad record (of
    any cause, or only of cause `only`: the others pass on, e.g. to be skipped)."""
    failed = element["status"] > 0
    if only is not None:
        failed = tf.equal(element["status"], only)

    def fail():
        message = tf.strings.join([
            "cvrl_tf: bad record ", element["id"], ": ", element["reason"],
            " (build_dataset(skip_bad_records=True) skips such records)"])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    ok = tf.cond(failed, fail, lambda: tf.constant(True))
    with tf.control_dependencies([ok]):
        return {k: tf.identity(v) for k, v in element.items()}


def count_and_drop(ds: tf.data.Dataset, pipeline: int) -> tf.data.Dataset:
    """Drops bad elements, printing each; good ones carry 'skipped' [C] int32 (bad ones since
    the previous good one) and 'last_bad' [C, 3] int32 (pipeline, file, record)."""
    num = len(CAUSES)

    def count(state, element):
        pending, last = state
        status = element["status"]
        bad = status > 0
        hit = tf.one_hot(tf.maximum(status - 1, 0), num, dtype=tf.int32) * tf.cast(bad, tf.int32)
        where = tf.stack([tf.constant(pipeline, tf.int32), tf.cast(element["file"], tf.int32),
                          tf.cast(element["record"], tf.int32)])
        last = tf.where(hit[:, tf.newaxis] > 0, where[tf.newaxis], last)
        pending = pending + hit
        printed = tf.cond(bad, lambda: _print_skip(element), lambda: tf.constant(True))
        with tf.control_dependencies([printed]):
            out = dict(element, skipped=tf.where(bad, tf.zeros_like(pending), pending),
                       last_bad=last)
        return (tf.where(bad, pending, tf.zeros_like(pending)), last), out

    return ds.scan(_no_skips(), count).filter(lambda element: element["status"] == 0)


def _no_skips() -> tuple:
    """('skipped' [C], 'last_bad' [C, 3]) before any bad record: zero counts, no record."""
    return tf.zeros([len(CAUSES)], tf.int32), -tf.ones([len(CAUSES), 3], tf.int32)


def nothing_skipped(element: dict) -> dict:
    """The bookkeeping count_and_drop attaches, for a pipeline that refuses bad records instead
    (training with skip_bad_records=False): none skipped, none seen."""
    skipped, last_bad = _no_skips()
    return dict(element, skipped=skipped, last_bad=last_bad)


def _print_skip(element: dict) -> tf.Tensor:
    message = tf.strings.join(["cvrl_tf: skipped bad record ", element["id"], ": ",
                               element["reason"]])
    with tf.control_dependencies([tf.print(message)]):
        return tf.constant(True)
