"""Labelled subsets: a class-balanced fraction of a data set's videos, as a file of video ids.

    python -m cvrl_tf.data.subset --input 'DIR/train-*' --fraction 0.01 --seed 0 --output FILE

A subset file lists video ids, one per line: `clip/media_id`, or for a record without one the
default id the pipeline gives it, "<file basename>:<record index>" (schema.default_id). Each
class keeps round(fraction x its videos) of them (halves round up), at least one, drawn from a
seed (SimCLR's 1% and 10% ImageNet subsets are class-balanced draws too); a video's class is
its first label, the one the pipeline trains on. Training reads the file with
run.train_subset and filters the record stream with `keep_ids` (source.records' `keep`), so
the data is never copied.

Reading ids and labels touches only each record's TFRecord header and the context at the
head of the record (`read_videos`): a few hundred bytes of a Kinetics video's ~10 MB.

Bad records: one in the subset is skipped and counted like any other; records outside it are
dropped before they are parsed, so they are neither read as good nor counted as bad (else a 1%
run would count the whole data set's bad records against 1% of its reads and stop at
max_bad_fraction). A record whose context does not parse has no id to match: no subset holds
it (the command leaves it out and says so; training drops it uncounted).

The filter saves decoding, not reading: an epoch of a fraction f reads 1/f epochs' worth of
records (at 1 %, every record of the data for each 1 % of it). Fine for trying a fraction; a
long run (SimCLR's 60 epochs of 1 % of Kinetics-400 would read its ~2.5 TB 60 times) should
first copy the subset's records to their own shards once (`copy_records`, `--copy_to DIR`)
and train on those.
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import collections
import math
import os
import struct
import sys
import concurrent.futures
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from cvrl_tf.data import schema
from cvrl_tf.runtime import cli

_HEADER = 12  # A TFRecord's uint64 length and the uint32 masked CRC of the length.
_FOOTER = 4   # The uint32 masked CRC of the data.
_CONTEXT_TAG = 0x0A  # SequenceExample field 1 (context), length-delimited.
_MAX_VARINT = 10


class Video(NamedTuple):
    """One record's id and labels, and where it is (file path, record index in the file)."""
    id: str
    labels: tuple
    file: str
    record: int


def read_videos(file_pattern: str, threads: int = 16) -> tuple[list[Video], list[tuple]]:
    """(every record's Video in file order, (file, record) of the records whose context does
    not parse). Reads each record's header and context only; CRCs are not checked (the frames
    are not read), and a record cut short at the end of a file is left out, as training does.
    """
    files = schema.resolve_files(file_pattern)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        heads = list(pool.map(_context_heads, files))
    rows = [(path, i, head) for path, file_heads in zip(files, heads)
            for i, head in enumerate(file_heads)]
    if not rows:
        return [], []
    names = [f"{os.path.basename(path)}:{i}" for path, i, _ in rows]
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(rows)), [h for _, _, h in rows],
                                             names))
    ds = ds.map(lambda k, head, name: (k, schema.parse_context(head, name)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    videos, parsed = [], set()
    for k, context in ds.as_numpy_iterator():
        path, record, _ = rows[k]
        videos.append(Video(context["id"].decode(), tuple(int(v) for v in context["label"]),
                            path, record))
        parsed.add(int(k))
    unreadable = [(path, i) for k, (path, i, _) in enumerate(rows) if k not in parsed]
    return videos, unreadable


def _context_heads(path: str) -> list[bytes]:
    """Per record of a TFRecord file, a serialized SequenceExample with only the record's
    context: the first field as protobuf writers order them (field 1 first), else the whole
    record (a writer that put the frames first)."""
    try:
        size = tf.io.gfile.stat(path).length
        heads = []
        with tf.io.gfile.GFile(path, "rb") as f:
            position = 0
            while position + _HEADER <= size:
                f.seek(position)
                (length,) = struct.unpack("<Q", f.read(_HEADER)[:8])
                end = position + _HEADER + length + _FOOTER
                if end > size:  # Cut short: training reads the records before the cut.
                    break
                heads.append(_context_head(f, length))
                position = end
        return heads
    except tf.errors.OpError as e:
        raise ValueError(f"TFRecord file {path} cannot be read: {e.message}") from e


def _context_head(f, length: int) -> bytes:
    """The context field at f's position in a record of `length` bytes (see _context_heads)."""
    head = f.read(min(length, 1 + _MAX_VARINT))
    if head[:1] == bytes([_CONTEXT_TAG]):
        size, shift, i = 0, 0, 1
        while i < len(head) and shift < 64:
            size |= (head[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not head[i - 1] & 0x80:
                if i + size <= length:
                    return head[:i + size] + f.read(max(0, i + size - len(head)))
                break
    return head + f.read(length - len(head))


def choose(videos: Sequence[Video], fraction: float, seed: int
           ) -> tuple[list[str], dict[int, tuple[int, int]]]:
    """(the chosen ids sorted by class then id, {class: (chosen, videos)}): each class keeps
    max(1, round(fraction x its videos)) distinct ids drawn with numpy's generator of
    (seed, class), independent of the files' order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"The fraction {fraction} is outside (0, 1]; give e.g. 0.01 for 1% of "
                         f"the labels.")
    if seed < 0:
        raise ValueError(f"The seed {seed} must be >= 0.")
    unlabelled = [v for v in videos if not v.labels]
    if unlabelled:
        first = unlabelled[0]
        raise ValueError(f"{len(unlabelled)} records have no label (clip/label/index), e.g. "
                         f"record {first.record} of {first.file} (id {first.id!r}); a "
                         f"class-balanced subset needs every video's class.")
    by_class = collections.defaultdict(set)
    for video in videos:
        by_class[video.labels[0]].add(video.id)
    chosen, counts = [], {}
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        keep = max(1, math.floor(fraction * len(ids) + 0.5))
        picks = np.random.default_rng([seed, label]).choice(len(ids), keep, replace=False)
        chosen.extend(sorted(ids[i] for i in picks))
        counts[label] = (keep, len(ids))
    return chosen, counts


def write_ids(path: str, ids: Sequence[str]) -> None:
    """Writes a subset file, one id per line (a temporary file renamed: never half written)."""
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def read_ids(path: str) -> list[str]:
    """The distinct ids of a subset file in file order (blank lines and surrounding spaces
    ignored); ValueError naming the file when it is missing or holds none."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"The subset file {path} does not exist; write one with `python -m "
                         f"cvrl_tf.data.subset`.")
    with tf.io.gfile.GFile(path) as f:
        ids = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    if not ids:
        raise ValueError(f"The subset file {path} lists no video id (one per line).")
    return ids


def membership(ids: Sequence[str]) -> Callable[[tf.Tensor], tf.Tensor]:
    """A graph function: is this id (string scalar) one of `ids`? Exact (a 64-bit hash finds
    the candidates in a sorted table, then the strings are compared); constants only, so it
    serializes with the dataset (tf.data service) and needs no table resource."""
    ids = np.array(sorted(set(ids)), dtype=object)
    hashes = _hash(tf.constant(list(ids), tf.string)).numpy()
    order = np.argsort(hashes, kind="stable")
    hashes_t = tf.constant(hashes[order])
    ids_t = tf.constant(list(ids[order]), tf.string)

    def contains(video_id: tf.Tensor) -> tf.Tensor:
        key = _hash(video_id)[tf.newaxis]
        low = tf.searchsorted(hashes_t, key, side="left")[0]
        high = tf.searchsorted(hashes_t, key, side="right")[0]
        return tf.reduce_any(tf.equal(ids_t[low:high], video_id))

    return contains


def _hash(ids: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(ids, 2**63 - 1)


def keep_ids(ids: Sequence[str], file_names: Sequence[str]) -> Callable[[dict], tf.Tensor]:
    """source.records' `keep` predicate for a subset: the record's id (from its context; the
    default id from `file_names`, the basenames of the stream's files) is one of `ids`."""
    if not ids:
        raise ValueError("A subset filter needs at least one video id.")
    contains = membership(ids)
    names = tf.constant(list(file_names), tf.string)

    def keep(record: dict) -> tf.Tensor:
        default = schema.default_id(names, record["file"], record["record"])
        return contains(schema.parse_context(record["serialized"], default)["id"])

    return keep


def copy_records(file_pattern: str, ids: Sequence[str], output_dir: str, split: str = "train",
                 num_shards: int = 0) -> list[str]:
    """Writes the records of `ids` to output_dir's shards `<split>-0000i-of-N.tfrecord` (N:
    num_shards, default one per 256 videos), with their counts (example_counts.json) and the
    label map beside the first input file; returns the shards. Records without clip/media_id
    get new default ids there (their new file and index)."""
    files = schema.resolve_files(file_pattern)
    keep = keep_ids(ids, [os.path.basename(f) for f in files])
    records = tf.data.Dataset.from_tensor_slices(np.arange(len(files))).interleave(
        lambda i: tf.data.TFRecordDataset(tf.gather(files, i)).enumerate().map(
            lambda k, serialized: {"serialized": serialized, "file": i, "record": k}),
        cycle_length=4, num_parallel_calls=4, deterministic=True)
    records = records.filter(keep).ignore_errors().map(lambda x: x["serialized"])
    num_shards = num_shards or max(1, math.ceil(len(set(ids)) / 256))
    tf.io.gfile.makedirs(output_dir)
    paths = [os.path.join(output_dir, schema.shard_filename(split, i, num_shards))
             for i in range(num_shards)]
    counts = dict.fromkeys(paths, 0)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for k, serialized in enumerate(records.as_numpy_iterator()):
            writers[k % num_shards].write(serialized)
            counts[paths[k % num_shards]] += 1
    finally:
        for writer in writers:
            writer.close()
    schema.write_example_counts(output_dir, split, counts)
    label_map = schema.label_map_path(os.path.dirname(files[0]))
    if tf.io.gfile.exists(label_map):
        tf.io.gfile.copy(label_map, schema.label_map_path(output_dir), overwrite=True)
    return paths


def _class_names(file_pattern: str) -> dict[int, str]:
    """Class names from the label map next to the first matched file, if there is one."""
    path = schema.label_map_path(os.path.dirname(schema.resolve_files(file_pattern)[0]))
    return dict(enumerate(schema.read_label_map(path))) if tf.io.gfile.exists(path) else {}


def make_subset(file_pattern: str, fraction: float, seed: int, output: str) -> dict:
    """Reads the data, chooses the subset, writes it; returns what the command prints."""
    if not 0.0 < fraction <= 1.0:  # Before reading a large data set.
        raise ValueError(f"The fraction {fraction} is outside (0, 1]; give e.g. 0.01 for 1% of "
                         f"the labels.")
    videos, unreadable = read_videos(file_pattern)
    if not videos:
        raise ValueError(f"The files of {file_pattern!r} hold no readable record.")
    ids, counts = choose(videos, fraction, seed)
    write_ids(output, ids)
    return {"ids": ids, "counts": counts, "num_videos": len({v.id for v in videos}),
            "unreadable": unreadable, "class_names": _class_names(file_pattern)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: write the subset, print per-class counts; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="TFRecord glob of the training split")
    parser.add_argument("--fraction", type=float, required=True, help="e.g. 0.01 or 0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="the subset file to write")
    parser.add_argument("--copy_to", default="",
                        help="also copy the subset's records to shards in this directory")
    args = parser.parse_args(argv)
    try:
        made = make_subset(args.input, args.fraction, args.seed, args.output)
        copied = (copy_records(args.input, made["ids"], args.copy_to) if args.copy_to else [])
    except ValueError as e:  # Bad input: one sentence, no traceback.
        cli.fail(str(e))
    for label, (kept, total) in made["counts"].items():
        name = made["class_names"].get(label, "")
        print(f"class {label}{f' ({name})' if name else ''}: {kept} of {total}")
    if made["unreadable"]:
        path, record = made["unreadable"][0]
        print(f"{len(made['unreadable'])} records are not SequenceExamples and were left out, "
              f"e.g. record {record} of {path}.")
    print(f"total: {len(made['ids'])} of {made['num_videos']} videos (fraction {args.fraction}, "
          f"seed {args.seed}) written to {args.output}")
    if copied:
        print(f"their records copied to {len(copied)} shards in {args.copy_to} (train on those "
              f"without run.train_subset)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
