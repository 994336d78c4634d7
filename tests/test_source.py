"""cvrl_tf.data.source: the resumable record stream and the files that break."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import source


def write_files(directory, lengths, prefix="r"):
    """TFRecord files whose records name themselves: b'<file>:<record>'."""
    paths = []
    for f, length in enumerate(lengths):
        path = os.path.join(directory, f"{prefix}{f:02d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(length):
                writer.write(f"{f}:{i}".encode())
        paths.append(path)
    return paths


def take(files, count, start=None, **kwargs):
    """(record name, raw index q, position) of the first `count` elements."""
    kwargs = dict(dict(seed=3, window=4), **kwargs)
    ds = source.records(files, source.file_sizes(files), start=start, **kwargs)
    return [(x["serialized"].numpy().decode(), int(x["q"]), x["position"].numpy())
            for x in ds.take(count)]


@pytest.mark.parametrize("lengths,shard", [
    ((7, 10, 13, 4, 9), None),                    # one group, files end at different times
    ((5,) * 11 + (9, 2, 6, 3, 8, 1, 4, 7), None),  # three groups of up to 8 files
    ((12, 9, 15), (2, 1)),                         # record-level sharding
])
def test_a_resumed_stream_continues_exactly(tmp_path, lengths, shard):
    files = write_files(str(tmp_path), lengths)
    total = sum(lengths) // (shard[0] if shard else 1)
    full = take(files, 3 * total, record_shard=shard)
    for k in (0, 3, total // 2, total - 1, total + 5, 2 * total + 1):
        resumed = take(files, 3 * total - k - 1, start=full[k][2], record_shard=shard)
        assert [(a, q) for a, q, _ in resumed] == [(a, q) for a, q, _ in full[k + 1:]], k


def test_every_record_once_per_epoch_in_a_fresh_order(tmp_path):
    lengths = (5, 8, 3, 6, 7, 2, 9, 4, 5, 6)
    files = write_files(str(tmp_path), lengths)
    total = sum(lengths)
    expected = sorted(f"{f}:{i}" for f, n in enumerate(lengths) for i in range(n))
    names = [a for a, _, _ in take(files, 2 * total, window=1)]
    assert sorted(names[:total]) == expected and sorted(names[total:]) == expected
    assert names[:total] != names[total:]  # Each epoch has its own file order.
    # Windows of 11 records (55 = 5 windows per epoch) are shuffled too.
    shuffled = [a for a, _, _ in take(files, 2 * total, window=11)]
    assert sorted(shuffled[:total]) == expected and sorted(shuffled[total:]) == expected
    assert shuffled[:total] != names[:total]
    unshuffled = [a for a, _, _ in take(files, total, shuffle=False, repeat=False)]
    assert sorted(unshuffled) == expected and len(unshuffled) == total


def test_the_position_is_small_and_independent_of_the_window(tmp_path):
    files = write_files(str(tmp_path), (30, 30))
    for window in (4, 1024):
        position = take(files, 3, window=window)[-1][2]
        assert position.shape == (source.POSITION_SIZE,) and position.dtype == np.int32
    layout = source.layout(0, 1, 3, 2, 1024)
    assert source.matches(position, layout) and not source.matches(
        position, source.layout(0, 2, 3, 2, 1024))


def test_a_truncated_or_vanished_file_yields_what_it_has_and_a_marker(tmp_path):
    files = write_files(str(tmp_path), (6, 6, 6, 6))
    sizes = source.file_sizes(files)
    with open(files[1], "rb") as f:
        data = f.read()
    with open(files[1], "wb") as f:
        f.write(data[:len(data) // 2 + 5])  # Cut in the middle of record 3's data.
    with open(files[2], "rb") as f:
        data = f.read()
    with open(files[2], "wb") as f:
        f.write(data[:len(data) // 3 + 2])  # Cut in record 2's header (TF raises there).
    os.remove(files[3])
    ds = source.records(files, sizes, shuffle=False, repeat=False)
    elements = list(ds.as_numpy_iterator())
    names = [x["serialized"].decode() for x in elements if not x["marker"]]
    markers = [(int(x["file"]), int(x["record"])) for x in elements if x["marker"]]
    assert sorted(names) == ([f"0:{i}" for i in range(6)] + ["1:0", "1:1", "1:2"]
                             + ["2:0", "2:1"])
    assert sorted(markers) == [(1, 3), (2, 2), (3, 0)]
    assert all(x["problem"] for x in elements if x["marker"])


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.tfrecord cannot be read"):
        source.file_sizes([str(tmp_path / "nope.tfrecord")])


def test_shard_files():
    files = [f"f{i}" for i in range(5)]
    assert source.shard_files(files, 2, 1) == (["f1", "f3"], None)
    assert source.shard_files(files[:1], 2, 1) == (["f0"], (2, 1))
    assert source.shard_files(files, 1, 0) == (files, None)


def _keep_odd(x):
    """Records whose index (after the ':') is odd; raises on a name without a number."""
    index = tf.strings.to_number(tf.strings.split(x["serialized"], ":")[-1], tf.int32)
    return tf.equal(index % 2, 1)


@pytest.mark.parametrize("lengths,shard", [((7, 10, 13, 4, 9), None), ((12, 9, 15), (2, 1))])
def test_a_kept_subset_resumes_exactly_and_counts_only_kept_records(tmp_path, lengths, shard):
    files = write_files(str(tmp_path), lengths)
    kept = sorted(f"{f}:{i}" for f, n in enumerate(lengths) for i in range(n)
                  if i % 2 and (shard is None or i % shard[0] == shard[1]))
    full = take(files, 3 * len(kept), record_shard=shard, keep=_keep_odd)
    for epoch in range(3):  # Every kept record once per epoch, nothing else.
        assert sorted(a for a, _, _ in full[epoch * len(kept):(epoch + 1) * len(kept)]) == kept
    assert sorted(q % 2**32 for _, q, _ in full[:len(kept)]) == list(range(len(kept)))
    for k in (0, 3, len(kept) // 2, len(kept) - 1, len(kept) + 2):
        resumed = take(files, 3 * len(kept) - k - 1, start=full[k][2], record_shard=shard,
                       keep=_keep_odd)
        assert [(a, q) for a, q, _ in resumed] == [(a, q) for a, q, _ in full[k + 1:]], k


def test_keep_leaves_out_records_it_cannot_judge_and_passes_markers(tmp_path):
    files = write_files(str(tmp_path), (4, 4))
    with tf.io.TFRecordWriter(files[0]) as writer:  # A record whose name has no number.
        for name in (b"0:0", b"0:x", b"0:1", b"0:3"):
            writer.write(name)
    sizes = source.file_sizes(files)
    with open(files[1], "rb") as f:
        data = f.read()
    with open(files[1], "wb") as f:
        f.write(data[:len(data) // 2 + 5])  # Cut in record 2.
    ds = source.records(files, sizes, shuffle=False, repeat=False, keep=_keep_odd)
    elements = list(ds.as_numpy_iterator())
    assert sorted(x["serialized"].decode() for x in elements if not x["marker"]) == [
        "0:1", "0:3", "1:1"]
    assert [(int(x["file"]), int(x["record"])) for x in elements if x["marker"]] == [(1, 2)]
