"""Bad records in a long run: pretraining skips each kind, counts every one exactly per cause,
reports a truncated shard by name, and stops when too many are bad."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import train
from cvrl_tf.training import books
from cvrl_tf.data import checks, schema

pytestmark = pytest.mark.slow

GOOD = 8     # good videos per epoch; the batch takes 4, so 4 steps consume exactly 2 epochs
STEPS = 4
EPOCHS = STEPS * 4 // GOOD


def _frames(seed, num=16):
    return np.random.default_rng(seed).integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)


def _bad_records():
    """One record of each bad kind a record can be, as serialized bytes."""
    jpegs = schema.encode_frames(_frames(99))
    return {
        "not_parseable": b"\x0a\x05these bytes are no SequenceExample",
        "no_frames": schema.make_sequence_example([], 1, "no-frames"),
        "not_jpeg": schema.make_sequence_example(jpegs[:3] + [b"GIF89a"] + jpegs[4:], 1,
                                                 "not-jpeg"),
        "corrupt_jpeg": schema.make_sequence_example([b"\xff\xd8\xff garbage"] * 16, 1,
                                                     "corrupt-jpeg"),
        "too_short": schema.make_sequence_example(jpegs[:3], 1, "too-short"),
        "bad_label": schema.make_sequence_example(jpegs, 9, "bad-label"),
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One shard: the bad records first, then GOOD good ones; and a second shard cut short
    inside its first record (it yields no record, then its truncation marker)."""
    path = tmp_path_factory.mktemp("bad")
    bad = _bad_records()
    with tf.io.TFRecordWriter(str(path / "train-00000-of-00002.tfrecord")) as writer:
        for record in bad.values():
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())
        for i in range(GOOD):
            example = schema.make_sequence_example(schema.encode_frames(_frames(i)), i % 6,
                                                   f"good-{i}")
            writer.write(example.SerializeToString())
    cut = path / "train-00001-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(cut)) as writer:
        writer.write(schema.make_sequence_example(schema.encode_frames(_frames(50)), 0,
                                                  "cut").SerializeToString())
    with open(cut, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    return str(path)


def test_pretraining_skips_every_kind_and_counts_each_exactly(data_dir, tmp_path, capfd):
    try:
        results = train.run_with_gin(
            ["experiments/demo_pretrain.gin"],
            [f"TRAIN_DATA={os.path.join(data_dir, 'train-*')!r}", "EVAL_DATA=''",
             f"run.train_length={STEPS}", "run.steps_per_loop=2", "run.global_batch_size=4",
             "run.min_video_frames=16", "run.image_summaries=False", "run.seed=0",
             "run.max_bad_fraction=1.0", "build_dataset.shuffle_buffer=1",
             "build_dataset.short_videos='skip'"],
            model_dir=str(tmp_path / "run"))
    except tf.errors.OpError as e:  # The claim broken, not the test: fail on it, by name.
        pytest.fail(f"pretraining stopped at a bad record instead of skipping it: "
                    f"{e.message.splitlines()[0]}")
    assert results["global_step"] == STEPS and np.isfinite(results["train"]["loss"])
    # Each epoch reads the shard's 6 bad and 8 good records and meets the cut shard once;
    # 4 steps of 4 videos consume exactly 2 epochs of good ones.
    expected = {cause: EPOCHS for cause in checks.CAUSES}
    assert results["input"] == {"read": EPOCHS * (len(checks.RECORD_CAUSES) + GOOD),
                                "skipped": expected}
    log = capfd.readouterr()
    log = log.out + log.err
    assert "skipped bad record not-jpeg: frame 3 is not a JPEG" in log
    assert "skipped bad record too-short: it has 3 frames, fewer than one clip spans" in log
    assert "skipped bad record bad-label: label 9 is outside [0, num_classes=6)" in log
    assert "skipped bad record train-00001-of-00002.tfrecord:0: the shard ends before" in log
    assert f"step {STEPS}/{STEPS} | " in log and "| skipped 14 of 28 records" in log
    with open(os.path.join(tmp_path, "run", "log.txt")) as f:  # the run's log file: per cause
        assert ("Input: 28 records read, skipped not_parseable 2, no_frames 2, not_jpeg 2, "
                "corrupt_jpeg 2, too_short 2, bad_label 2, truncated_shard 2") in f.read()


def test_too_many_bad_records_stop_the_run_naming_the_worst_cause():
    summary = {"read": 2000, "skipped": dict.fromkeys(checks.CAUSES, 0)}
    summary["skipped"].update(corrupt_jpeg=30, no_frames=2)
    last_bad = -np.ones((len(checks.CAUSES), 3), np.int32)
    last_bad[checks.CAUSES.index("corrupt_jpeg")] = (0, 3, 17)
    describe = lambda row: f"record {row[2]} of file {row[1]}"  # noqa: E731
    message = books.bad_fraction_error(summary, 0.01, describe, last_bad)
    assert message.startswith("32 of the 2000 training records read so far were bad (1.6%, "
                              "more than run.max_bad_fraction=0.01)")
    assert "most common cause is corrupt_jpeg (30 records, e.g. record 17 of file 3)" in message
    assert books.bad_fraction_error(summary, 0.02, describe, last_bad) is None
    small = dict(summary, read=500)  # Too few reads to judge yet.
    assert books.bad_fraction_error(small, 0.01, describe, last_bad) is None
