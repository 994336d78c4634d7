"""TFRecord files in, records out, in an order a run can resume exactly.

The training stream of one input pipeline is a pure function of (seed, pipeline, epoch):
each epoch permutes the pipeline's files, reads them in groups of `CYCLE` files interleaved
record by record, and shuffles windows of `window` consecutive records of the epoch (the
shuffle buffer; a window never mixes two epochs).
Every record carries its *position*: where the reader stood when its window began (epoch,
group, the next record of each file of the group, the file read first, the raw index) and
its place in the shuffled window. A run keeps the position of the last record it trained on
(a few integers per input pipeline, whatever the window's size in bytes); `records(start=)`
reopens the stream there, rereading at most one group of files, and yields the same records
in the same order with the same raw indices (the augmentation seeds) as the run that stopped.

A `keep` predicate (a labelled subset: cvrl_tf/data/subset.py) drops records as each file is
read, before the groups are interleaved and windowed: the windows shuffle kept records only,
positions and raw indices count kept records, and because the predicate is a pure function of
the record, the stream stays a pure function of (seed, pipeline, epoch) and resumes exactly.

Files that break are reported, not fatal: a file that vanished or was cut short (a
truncated TFRecord ends early without an error in TensorFlow) yields the records before the
cut and then one *marker* element whose `problem` is set, named by file in the log.
"""
import concurrent.futures
import math
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

CYCLE = 8  # Files read at once per input pipeline, interleaved record by record.
POSITION_FIELDS = ("pipeline", "num_pipelines", "seed", "num_files", "window", "epoch",
                   "group", "first_slot", "window_start", "index_in_window") + tuple(
                       f"offset{i}" for i in range(CYCLE))
POSITION_SIZE = len(POSITION_FIELDS)
_LAYOUT = 5  # The first fields: which stream a position belongs to.
_SEED, _EPOCH, _WINDOW_START, _INDEX = (POSITION_FIELDS.index(f) for f in
                                        ("seed", "epoch", "window_start", "index_in_window"))
_RECORD_OVERHEAD = 16  # Bytes a TFRecord adds around each record (length, 2 CRCs).


def shard_files(files: Sequence[str], num_pipelines: int, pipeline: int
                ) -> tuple[list[str], Optional[tuple[int, int]]]:
    """This pipeline's files and record shard: whole files when there are at least as many
    files as pipelines, else every file with records i % num_pipelines == pipeline."""
    if num_pipelines > 1 and len(files) >= num_pipelines:
        return list(files[pipeline::num_pipelines]), None
    if num_pipelines > 1:
        return list(files), (num_pipelines, pipeline)
    return list(files), None


def file_sizes(files: Sequence[str]) -> list[int]:
    """Byte sizes of the files (read in parallel; GCS answers each in tens of ms)."""
    def size(path):
        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.OpError as e:
            raise ValueError(f"TFRecord file {path} cannot be read: {e.message}") from e
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(size, files))


def fresh_seed() -> int:
    """A random stream seed (stored with every position, so a resumed run reuses it)."""
    return int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))


def layout(pipeline: int, num_pipelines: int, seed: int, num_files: int,
           window: int) -> np.ndarray:
    """The first fields of every position of a stream: which stream it belongs to."""
    return np.array([pipeline, num_pipelines, seed % (2**31 - 1), num_files, window],
                    np.int32)


def matches(position: np.ndarray, expected_layout: np.ndarray) -> bool:
    """True when a stored position belongs to the stream with this layout."""
    return np.array_equal(np.asarray(position)[:_LAYOUT], expected_layout)


def read_order(positions) -> tf.Tensor:
    """The one rule for which of several stream positions is the newest: int64 keys [N] of
    positions [N, POSITION_SIZE] (int32 or int64, NumPy or a tensor) in reading order: the
    epoch, then the record's raw index in it (its window's start plus its place in the window).
    The trainer (in the step) and the resume (`latest`) both use it."""
    positions = tf.cast(positions, tf.int64)
    return (positions[:, _EPOCH] * 2**32 + positions[:, _WINDOW_START]
            + positions[:, _INDEX])


def records_before(position) -> int:
    """How many records of its epoch the stream had read up to and including `position`."""
    return int(position[_WINDOW_START]) + int(position[_INDEX]) + 1


def seed_of(position) -> int:
    """The stream seed a position carries (a run that drew its seed resumes with it)."""
    return int(position[_SEED])


def epoch_of(position) -> int:
    """The epoch a position is in."""
    return int(position[_EPOCH])


def latest(positions: np.ndarray, pipeline: int, num_pipelines: int, num_files: int,
           window: int, seed: Optional[int] = None) -> Optional[np.ndarray]:
    """The newest position of this stream among stored rows (one per replica, several per
    pipeline), or None; seed=None accepts the seed the rows carry (a run that drew it)."""
    rows = np.asarray(positions, np.int64).reshape(-1, POSITION_SIZE)
    expected = layout(pipeline, num_pipelines, seed or 0, num_files, window)
    same = rows[:, :_LAYOUT] == expected
    same[:, _SEED] |= seed is None  # Any seed the rows carry.
    rows = rows[np.all(same, axis=1)]
    if not len(rows):
        return None
    newest = rows[int(np.argmax(read_order(rows).numpy()))]
    return newest if np.all(rows[:, _SEED] == newest[_SEED]) else None


def records(files: Sequence[str], sizes: Sequence[int], *, pipeline: int = 0,
            num_pipelines: int = 1, record_shard: Optional[tuple[int, int]] = None,
            seed: int = 0, window: int = 1, shuffle: bool = True, repeat: bool = True,
            start: Optional[np.ndarray] = None,
            keep: Optional[Callable[[dict], tf.Tensor]] = None) -> tf.data.Dataset:
    """The stream of one input pipeline: dicts with 'serialized', 'file' (index into files),
    'record' (index in the file), 'q' (epoch * 2**32 + raw index in the epoch: unique in the
    run, the augmentation seed), 'position' (int32 [POSITION_SIZE]), 'marker' and 'problem'
    (a marker element: file `file` vanished or was cut after `record` records).

    `start`: the position of the last record a previous run consumed; the stream continues
    right after it (its layout must match this stream's, see `matches`).
    `keep`: a deterministic predicate on {'serialized', 'file', 'record'} (bool scalar); records
    it rejects, or on which it raises (e.g. bytes that do not parse), are left out of the stream
    as if absent from the file (markers of broken files always pass). Every epoch still reads
    every record of the pipeline's files: a small subset saves decoding, not reading.
    """
    n = len(files)
    if n < 1:
        raise ValueError("records() needs at least one file.")
    cycle = min(CYCLE, n)
    num_groups = math.ceil(n / cycle)
    window = max(int(window), 1)
    seed = int(seed) % (2**31 - 1)
    files_t = tf.constant(list(files))
    sizes_t = tf.constant(list(sizes), tf.int64)
    layout_t = tf.constant(layout(pipeline, num_pipelines, seed, n, window))
    stream_seed = tf.constant([seed, pipeline], tf.int64)
    if start is None:
        e0, g0, slot0, q0, skip0 = 0, 0, 0, 0, 0
        offsets0 = np.zeros(cycle, np.int64)
    else:
        start = np.asarray(start, np.int64)
        e0, g0, slot0, q0, j0 = (int(v) for v in start[_LAYOUT:_LAYOUT + 5])
        skip0 = j0 + 1
        offsets0 = start[_LAYOUT + 5:_LAYOUT + 5 + cycle]
    offsets0_t = tf.constant(offsets0, tf.int64)

    def file_order(epoch):
        if not shuffle:
            return tf.range(n, dtype=tf.int64)
        key = tf.random.experimental.stateless_fold_in(stream_seed, epoch)
        return tf.cast(tf.argsort(tf.random.stateless_uniform([n], key)), tf.int64)

    def group_elements(epoch, group, order, offsets, first_slot):
        size = tf.minimum(tf.cast(cycle, tf.int64), n - group * cycle)
        slots = (first_slot + tf.range(cycle, dtype=tf.int64)) % cycle
        slots = tf.boolean_mask(slots, slots < size)

        def per_slot(slot):
            return _file_records(files_t[order[group * cycle + slot]],
                                 sizes_t[order[group * cycle + slot]],
                                 order[group * cycle + slot], offsets[slot],
                                 record_shard, keep).map(
                lambda x: dict(x, epoch=epoch, group=group, slot=slot))

        return tf.data.Dataset.from_tensor_slices(slots).interleave(
            per_slot, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
            deterministic=True)

    def shuffle_window(w):
        count = tf.shape(w["q"])[0]
        if shuffle and window > 1:
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(stream_seed + 1, w["epoch"][0]),
                w["q"][0] // window)
            order = tf.argsort(tf.random.stateless_uniform([count], key))
        else:
            order = tf.range(count)
        out = {k: tf.gather(v, order) for k, v in w.items() if k != "reader"}
        reader = tf.tile(w["reader"][:1], [count, 1])  # [e, g, slot, q, offsets...]
        index = tf.range(count, dtype=tf.int64)[:, tf.newaxis]
        pad = tf.zeros([count, CYCLE - cycle], tf.int64)
        position = tf.concat([reader[:, :4], index, reader[:, 4:], pad], 1)
        out["position"] = tf.concat([tf.tile(layout_t[tf.newaxis], [count, 1]),
                                     tf.cast(position, tf.int32)], 1)
        # The augmentation seed: unique over the run (epoch in the high bits).
        out["q"] = out["epoch"] * 2**32 + out["q"]
        return out

    def epoch_elements(epoch):
        """One epoch: groups of files, then windows shuffled within the epoch (a window never
        mixes two epochs, so a small data set never repeats a video inside a window)."""
        order = file_order(epoch)
        first_epoch = tf.equal(epoch, e0)

        def group_of(group):
            first = tf.logical_and(first_epoch, tf.equal(group, g0))
            offsets = tf.where(first, offsets0_t, tf.zeros_like(offsets0_t))
            return group_elements(epoch, group, order, offsets,
                                  tf.where(first, tf.constant(slot0, tf.int64), 0))

        g_start = tf.where(first_epoch, tf.constant(g0, tf.int64), 0)
        raw = tf.data.Dataset.range(g_start, num_groups).flat_map(group_of)
        state = (tf.where(first_epoch, tf.constant(q0, tf.int64), 0), g_start,
                 tf.where(first_epoch, offsets0_t, tf.zeros_like(offsets0_t)))
        ds = raw.scan(state, _track).batch(window).map(shuffle_window).unbatch()
        return ds.skip(tf.where(first_epoch, tf.constant(skip0, tf.int64), 0))

    epochs = tf.data.Dataset.range(e0, 2**62) if repeat else tf.data.Dataset.range(e0, e0 + 1)
    ds = epochs.flat_map(epoch_elements)
    return ds.map(lambda x: dict({k: x[k] for k in ("file", "record", "q", "position",
                                                    "marker", "problem")},
                                 serialized=_release(x["serialized"])))


def _file_records(path: tf.Tensor, size: tf.Tensor, file_index: tf.Tensor, offset: tf.Tensor,
                  record_shard: Optional[tuple[int, int]],
                  keep: Optional[Callable[[dict], tf.Tensor]] = None) -> tf.data.Dataset:
    """One file's records from `offset` on (this pipeline's record shard only, and only those
    `keep` accepts), each with its index, then a marker element when the file vanished or was
    cut short."""
    exists = tf.size(tf.io.matching_files(path)) > 0
    # A cut inside a record's header raises DataLossError, elsewhere the reader just ends:
    # either way keep the records before the cut (the marker then reports it). A vanished
    # file is filtered out first (ignore_errors would retry opening it forever).
    recs = (tf.data.Dataset.from_tensors(path).filter(lambda _: exists)
            .flat_map(lambda p: tf.data.TFRecordDataset(p).ignore_errors())
            .map(lambda s: (s, False)))
    marker = tf.data.Dataset.from_tensors((tf.constant(b""), True))

    def count(state, element):
        serialized, is_marker = element
        num, total = state
        out = {"serialized": serialized, "file": file_index, "record": num,
               "marker": is_marker, "problem": tf.logical_and(is_marker, total != size)}
        grow = tf.cast(tf.logical_not(is_marker), tf.int64)
        length = tf.cast(tf.strings.length(serialized), tf.int64) + _RECORD_OVERHEAD
        return (num + grow, total + grow * length), out

    ds = recs.concatenate(marker).scan((tf.constant(0, tf.int64),
                                        tf.constant(0, tf.int64)), count).skip(offset)
    if record_shard is not None:
        shards, index = record_shard
        ds = ds.filter(lambda x: tf.equal(
            tf.where(x["marker"], x["file"], x["record"]) % shards, index))
    if keep is not None:  # A record the predicate cannot judge is not in the subset.
        ds = ds.filter(lambda x: tf.cond(x["marker"], lambda: tf.constant(True),
                                         lambda: keep(x))).ignore_errors()
    return ds.filter(lambda x: tf.logical_or(tf.logical_not(x["marker"]), x["problem"]))


def _track(state, x):
    """The reader's state before each raw element (where to reopen), and its raw index q."""
    q, group, offsets = state
    offsets = tf.where(tf.equal(x["group"], group), offsets, tf.zeros_like(offsets))
    reader = tf.concat([tf.stack([x["epoch"], x["group"], x["slot"], q]), offsets], 0)
    following = tf.tensor_scatter_nd_update(offsets, [[x["slot"]]], [x["record"] + 1])
    return (q + 1, x["group"], following), dict(x, q=q, reader=reader,
                                                serialized=_hold(x["serialized"]))


# A record's bytes (about 10 MB for a Kinetics video at short side 256) travel through the
# shuffle window held by a variant (a tf.data Optional): batching, permuting and unbatching a
# string tensor copies every byte three times (their cost per Kinetics clip: docs/BENCHMARKS.md,
# "Input pipeline"); a variant is copied by reference.
def _hold(serialized: tf.Tensor) -> tf.Tensor:
    return tf.raw_ops.OptionalFromValue(components=[serialized])


def _release(held: tf.Tensor) -> tf.Tensor:
    return tf.raw_ops.OptionalGetValue(optional=held, output_types=[tf.string],
                                       output_shapes=[[]])[0]
