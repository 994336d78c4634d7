"""Labelled subsets: the class-balanced choice, the command and its errors, reading ids from
headers and contexts only, the pipeline's filter (one epoch, two input pipelines, bad records),
run.train_subset (epochs, the start-up checks, the copy, exact resume)."""
import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import train
from cvrl_tf.data import checks, pipeline, schema, subset, synthetic
from cvrl_tf.training import config, job, label_subset
from cvrl_tf.training.config import ConfigError

NUM_TRAIN = 24  # 4 videos of each of the 6 classes, in 4 shards.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=NUM_TRAIN, num_eval=6, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


def _videos(per_class):
    return [subset.Video(f"c{label}-{i:03d}", (label,), "f", i)
            for label, count in enumerate(per_class) for i in range(count)]


def _write(path, ids):
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return str(path)


def test_each_class_keeps_its_rounded_fraction_and_at_least_one():
    videos = _videos([150, 25, 3, 1])
    for fraction, want in ((0.01, [2, 1, 1, 1]), (0.1, [15, 3, 1, 1]), (1.0, [150, 25, 3, 1])):
        ids, counts = subset.choose(videos, fraction, seed=0)
        assert counts == {c: (n, total) for c, (n, total) in
                          enumerate(zip(want, [150, 25, 3, 1]))}, fraction
        assert len(ids) == len(set(ids)) == sum(want)
        for label, n in enumerate(want):
            assert sum(i.startswith(f"c{label}-") for i in ids) == n


def test_the_choice_is_a_function_of_the_seed_alone():
    videos = _videos([40, 40, 40])
    first, _ = subset.choose(videos, 0.1, seed=3)
    shuffled = list(videos)
    random.Random(1).shuffle(shuffled)  # Another file order.
    assert subset.choose(shuffled, 0.1, seed=3)[0] == first
    assert subset.choose(videos, 0.1, seed=4)[0] != first


def test_read_videos_reads_headers_and_contexts_only(tmp_path):
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    jpegs = schema.encode_frames(frames)
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    context_only = schema.make_sequence_example([], [2], "late")
    frames_only = tf.train.SequenceExample()
    frames_only.feature_lists.feature_list[schema.IMAGE_KEY].CopyFrom(
        schema.make_sequence_example(jpegs, None, None).feature_lists.feature_list[
            schema.IMAGE_KEY])
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(schema.make_sequence_example(jpegs, [1, 4], "a").SerializeToString())
        writer.write(schema.make_sequence_example(jpegs, 3, None).SerializeToString())
        writer.write(b"\x0a\x05these bytes are no SequenceExample")
        # A writer that put the frames before the context (protobuf merges the two parts).
        writer.write(frames_only.SerializeToString() + context_only.SerializeToString())
        writer.write(schema.make_sequence_example(jpegs, 5, "cut").SerializeToString())
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-10])  # The last record is cut short: training never reads it.
    videos, unreadable = subset.read_videos(str(tmp_path / "train-*"))
    assert [(v.id, v.labels, v.record) for v in videos] == [
        ("a", (1, 4), 0), ("train-00000-of-00001.tfrecord:1", (3,), 1), ("late", (2,), 3)]
    assert unreadable == [(path, 2)]
    heads = subset._context_heads(path)  # pylint: disable=protected-access
    assert len(heads[0]) < 60 < len(jpegs[0]) and len(heads[3]) > 16 * len(jpegs[0])


def test_the_command_writes_a_balanced_subset_and_prints_the_counts(data_dir, tmp_path, capsys):
    output = str(tmp_path / "subset.txt")
    args = ["--input", os.path.join(data_dir, "train-*"), "--fraction", "0.5", "--output",
            output]
    assert subset.main(args + ["--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "class 0 (moving_right): 2 of 4" in printed and "class 5 (shrinking): 2 of 4" in printed
    assert f"total: 12 of {NUM_TRAIN} videos (fraction 0.5, seed 0) written to {output}" in printed
    first = subset.read_ids(output)
    assert len(first) == 12 and all(i.startswith("synthetic-train-") for i in first)
    assert subset.main(args + ["--seed", "0"]) == 0 and subset.read_ids(output) == first
    assert subset.main(args + ["--seed", "1"]) == 0 and subset.read_ids(output) != first


def test_the_command_copies_the_subsets_records_for_long_runs(data_dir, tmp_path, capsys):
    copy_dir = str(tmp_path / "copy")
    assert subset.main(["--input", os.path.join(data_dir, "train-*"), "--fraction", "0.25",
                        "--output", str(tmp_path / "s.txt"), "--copy_to", copy_dir]) == 0
    assert f"their records copied to 1 shards in {copy_dir}" in capsys.readouterr().out
    ids = subset.read_ids(str(tmp_path / "s.txt"))
    copied, _ = subset.read_videos(os.path.join(copy_dir, "train-*"))
    assert sorted(v.id for v in copied) == sorted(ids) and len(ids) == 6
    assert schema.read_example_count(os.path.join(copy_dir, "train-*")) == 6
    assert schema.read_label_map(schema.label_map_path(copy_dir)) == list(
        synthetic.CLASS_NAMES)


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_the_command_refuses_a_fraction_outside_0_1(data_dir, tmp_path, capsys, fraction):
    with pytest.raises(SystemExit, match="2"):
        subset.main(["--input", os.path.join(data_dir, "train-*"), "--fraction", fraction,
                     "--output", str(tmp_path / "s.txt")])
    err = capsys.readouterr().err
    assert err == (f"Error: The fraction {float(fraction)} is outside (0, 1]; give e.g. "
                   f"0.01 for 1% of the labels.\n")
    assert not os.path.exists(tmp_path / "s.txt")


def test_the_command_refuses_a_pattern_without_files_and_records_without_labels(tmp_path,
                                                                                 capsys):
    pattern = str(tmp_path / "train-*")
    with pytest.raises(SystemExit, match="2"):
        subset.main(["--input", pattern, "--fraction", "0.1", "--output", "s.txt"])
    assert capsys.readouterr().err == (f"Error: File pattern {pattern!r} matches no "
                                       f"files.\n")
    path = str(tmp_path / "train-0.tfrecord")
    jpegs = schema.encode_frames(np.zeros((2, 8, 8, 3), np.uint8))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(schema.make_sequence_example(jpegs, 1, "labelled").SerializeToString())
        writer.write(schema.make_sequence_example(jpegs, None, "bare").SerializeToString())
    with pytest.raises(SystemExit, match="2"):
        subset.main(["--input", pattern, "--fraction", "0.1", "--output", "s.txt"])
    assert capsys.readouterr().err == (
        f"Error: 1 records have no label (clip/label/index), e.g. record 1 of {path} "
        f"(id 'bare'); a class-balanced subset needs every video's class.\n")


def test_read_ids_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "none.txt")
    with pytest.raises(ValueError, match=f"^The subset file {missing} does not exist;"):
        subset.read_ids(missing)
    empty = _write(tmp_path / "empty.txt", ["", "  "])
    with pytest.raises(ValueError, match=f"^The subset file {empty} lists no video id"):
        subset.read_ids(empty)
    assert subset.read_ids(_write(tmp_path / "ids.txt", ["b ", "", "a", "b"])) == ["b", "a"]


def test_membership_is_exact_even_when_hashes_collide(monkeypatch):
    ids = ["a", "bb", "c:1"]
    for contains in (subset.membership(ids), None):
        if contains is None:  # Every id on one hash: only the string comparison decides.
            monkeypatch.setattr(subset, "_hash", lambda s: tf.zeros_like(
                tf.strings.length(s), tf.int64))
            contains = subset.membership(ids)
        assert [bool(contains(tf.constant(x))) for x in ids + ["b", "", "c:10"]] == [
            True] * 3 + [False] * 3


def _ids_of(dataset, count):
    """The ids of the first `count` videos of a training dataset."""
    ids = []
    for batch in dataset:
        ids.extend(i.decode() for i in batch["id"].numpy())
        if len(ids) >= count:
            return ids[:count]
    return ids


def test_one_epoch_of_a_subset_is_its_videos_once(data_dir, tmp_path):
    ids, _ = subset.choose(subset.read_videos(os.path.join(data_dir, "train-*"))[0], 0.25, 0)
    dataset = pipeline.build_dataset(os.path.join(data_dir, "train-*"), "train", 2, 4, 2, 16,
                                     seed=1, subset_ids=ids, shuffle_buffer=4)
    read = _ids_of(dataset, 3 * len(ids))
    for epoch in range(3):
        assert sorted(read[epoch * len(ids):(epoch + 1) * len(ids)]) == sorted(ids)


@pytest.mark.parametrize("num_shards", [4, 1])  # Whole files per pipeline; records of one file.
def test_two_input_pipelines_read_disjoint_parts_covering_the_subset(tmp_path, num_shards):
    data_dir = str(tmp_path / "data")
    synthetic.write_dataset(data_dir, num_train=12, num_eval=6, num_frames=16, size=32,
                            num_shards=num_shards, seed=0)
    pattern = os.path.join(data_dir, "train-*")
    ids, _ = subset.choose(subset.read_videos(pattern)[0], 0.5, seed=2)
    cfg, builders = train.job_from_gin(
        ["models/tiny_motion.gin", "runs/finetune.gin"],
        [f"TRAIN_DATA={pattern!r}", "EVAL_DATA=''", "NUM_CLASSES=6", "PRETRAIN_DIR=''",
         "run.train_length=1", "run.global_batch_size=2", "run.num_frames=4",
         "run.crop_size=16", f"run.train_subset={_write(tmp_path / 's.txt', ids)!r}",
         "run.seed=0"], model_dir=str(tmp_path / "run"))
    counts = label_subset.check(ids, cfg.train_subset, pattern, 2)
    assert sum(counts) == len(ids) and min(counts) > 0
    dataset_fn = job._train_dataset_fn(cfg, builders, subset_ids=ids)  # pylint: disable=W0212
    parts = []
    for index in range(2):
        dataset = dataset_fn(tf.distribute.InputContext(2, index, 2))
        hashes = [h for b in dataset.take(counts[index]) for h in b["id_hash"].numpy()]
        parts.append(hashes[:counts[index]])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(pipeline.id_hash(tf.constant(ids)).numpy())


def test_bad_records_count_inside_the_subset_only(tmp_path):
    """A bad record in the subset is skipped and counted; one outside it is neither read nor
    counted (it is filtered out before parsing). A record whose context does not parse has no
    id to match, so no subset holds it: it is left out, uncounted."""
    jpegs = schema.encode_frames(np.zeros((16, 32, 32, 3), np.uint8))
    records = [schema.make_sequence_example(jpegs, i % 6, f"good-{i}") for i in range(6)]
    records += [schema.make_sequence_example([], 1, "in-no-frames"),
                schema.make_sequence_example(jpegs, 9, "in-bad-label"),
                schema.make_sequence_example([], 1, "out-no-frames"),
                schema.make_sequence_example(jpegs[:2] + [b"GIF89a"], 1, "out-not-jpeg")]
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record.SerializeToString())
        writer.write(b"\x0a\x05these bytes are no SequenceExample")
    ids = ["good-0", "good-2", "good-4", "in-no-frames", "in-bad-label",
           "train-00000-of-00001.tfrecord:10"]  # The unparseable record's default id.
    dataset = pipeline.build_dataset(path, "train", 1, 4, 2, 16, seed=0, repeat=False,
                                     num_classes=6, subset_ids=ids)
    good, skipped = [], np.zeros(len(checks.CAUSES), int)
    for batch in dataset:
        good.extend(i.decode() for i in batch["id"].numpy())
        skipped += batch["skipped"].numpy().sum(axis=0)
    assert sorted(good) == ["good-0", "good-2", "good-4"]
    counted = dict(zip(checks.CAUSES, skipped.tolist()))
    assert counted == dict.fromkeys(checks.CAUSES, 0) | {"no_frames": 1, "bad_label": 1}


def _cfg(data_dir, tmp_path, subset_file, **fields):
    return config.JobConfig(mode="finetune", model_dir=str(tmp_path / "run"), num_classes=6,
                            train_data=os.path.join(data_dir, "train-*"),
                            train_subset=subset_file, **fields)


def test_epochs_count_the_subset_unless_num_train_examples_is_set(data_dir, tmp_path):
    subset_file = _write(tmp_path / "s.txt", [f"synthetic-train-{i:05d}" for i in range(6)])
    cfg = _cfg(data_dir, tmp_path, subset_file, global_batch_size=4, train_length="2 epochs",
               warmup="1 epochs")
    assert config.examples_per_epoch(cfg) == 6
    assert config.schedule(cfg).total == 3 and config.schedule(cfg).warmup == 2
    assert config.schedule(dataclass_replace(cfg, num_train_examples=40)).total == 20
    assert config.schedule(dataclass_replace(cfg, train_subset="")).total == 12  # 24 videos.


def dataclass_replace(cfg, **fields):
    import dataclasses  # pylint: disable=import-outside-toplevel
    return dataclasses.replace(cfg, **fields)


def test_start_up_errors_name_the_file_or_the_id(data_dir, tmp_path):
    missing = str(tmp_path / "none.txt")
    with pytest.raises(ConfigError, match=f"^run.train_subset: The subset file {missing} does "
                                          f"not exist;"):
        label_subset.prepare(_cfg(data_dir, tmp_path, missing), 1, True)
    empty = _write(tmp_path / "empty.txt", [])
    with pytest.raises(ConfigError, match=f"^run.train_subset: The subset file {empty} lists "
                                          f"no video id"):
        label_subset.prepare(_cfg(data_dir, tmp_path, empty), 1, True)
    stray = _write(tmp_path / "stray.txt", ["synthetic-train-00001", "nowhere"])
    with pytest.raises(ConfigError, match=(
            f"^run.train_subset={stray}: 1 of its 2 video ids are not in run.train_data="
            f"'{data_dir}/train-\\*', e.g. 'nowhere'; write the subset from the same data")):
        label_subset.prepare(_cfg(data_dir, tmp_path, stray), 1, True)
    one_file = _write(tmp_path / "one.txt", ["synthetic-train-00000", "synthetic-train-00004"])
    with pytest.raises(ConfigError, match="input pipeline 1 of 2 would read none of its 2 "):
        label_subset.prepare(_cfg(data_dir, tmp_path, one_file), 2, True)
    with pytest.raises(ConfigError, match="^run.train_subset needs TFRecord training data"):
        config.check(dataclass_replace(_cfg(data_dir, tmp_path, one_file),
                                       train_data="tfds:ucf101/ucf101_1/train"),
                     tf.distribute.get_strategy())
    assert not os.path.exists(tmp_path / "run")  # Nothing written by a refused start.


def test_the_first_start_checks_and_copies_a_resume_does_not_check(data_dir, tmp_path,
                                                                   monkeypatch):
    subset_file = _write(tmp_path / "s.txt", ["synthetic-train-00003", "synthetic-train-00007"])
    cfg = _cfg(data_dir, tmp_path, subset_file)
    assert label_subset.prepare(cfg, 1, True) == ["synthetic-train-00003",
                                                  "synthetic-train-00007"]
    with open(os.path.join(cfg.model_dir, "train_subset.txt")) as f, open(subset_file) as g:
        assert f.read() == g.read()
    with open(os.path.join(cfg.model_dir, "train_subset.json")) as f:
        assert json.load(f)["videos_per_pipeline"] == [2]

    def no_check(*_):
        raise AssertionError("checked again")

    monkeypatch.setattr(label_subset, "check", no_check)
    assert len(label_subset.prepare(cfg, 1, False)) == 2  # Resumed: no second reading.
    other = _write(tmp_path / "other.txt", ["synthetic-train-00003"])
    with pytest.raises(ConfigError, match=f"^run.train_subset={other} differs from the subset "
                                          f"this run started with"):
        label_subset.prepare(dataclass_replace(cfg, train_subset=other), 1, True)


# A run on a subset stopped mid-epoch and resumed reads the uninterrupted run's videos, step by
# step and replica by replica: tests/test_resume_replicas.py (two replicas, on a subset).
