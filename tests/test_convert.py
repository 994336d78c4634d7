"""Tests for cvrl_tf.data.convert: real tiny videos (several codecs) -> TFRecords -> pipeline."""
import json
import math
import os
import shutil

import av
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import convert, pipeline, schema, video_list

H, W = 16, 24
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (class, container file, codec, source fps, frames). Frame i of video v has
# red = 10 + 20 i (its source index) and green = 20 + 40 v (the video), so content shows
# which source frame the resampler picked.
VIDEOS = {
    "v0": ("ClassA", "v0.avi", "mpeg4", 10, 10),
    "v1": ("ClassA", "v1.mp4", "libx264", 10, 10),
    "v2": ("ClassB", "v2.webm", "libvpx-vp9", 10, 10),
    "v3": ("ClassB", "v3.mkv", "mjpeg", 20, 12),
}


def _write_video(path: str, codec: str, fps: int, num_frames: int, v: int) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        container.start_encoding()  # Writes the header even when there is no frame.
        for i in range(num_frames):
            frame = np.zeros((H, W, 3), np.uint8)
            frame[..., 0], frame[..., 1], frame[..., 2] = 10 + 20 * i, 20 + 40 * v, 128
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> str:
    """UCF101-style folder: 4 real videos, a truncated mp4, a video with no frame, a text file."""
    root = str(tmp_path_factory.mktemp("videos"))
    for v, (label, name, codec, fps, n) in enumerate(VIDEOS.values()):
        os.makedirs(os.path.join(root, label), exist_ok=True)
        _write_video(os.path.join(root, label, name), codec, fps, n, v)
    with open(os.path.join(root, "ClassA", "v1.mp4"), "rb") as f:
        head = f.read(300)
    with open(os.path.join(root, "ClassB", "broken.mp4"), "wb") as f:
        f.write(head)  # Truncated: the moov atom is missing.
    _write_video(os.path.join(root, "ClassB", "empty.avi"), "mpeg4", 10, 0, 0)
    with open(os.path.join(root, "ClassA", "notes.txt"), "w") as f:
        f.write("not a video\n")
    return root


def _records(output_dir: str, split: str = "train") -> dict:
    """id -> (source frame indices, video index, frame shape, label, label text)."""
    out = {}
    for path in tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*.tfrecord")):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = schema.parse_sequence_example(serialized)
            frames = np.stack([tf.io.decode_jpeg(f).numpy() for f in parsed["frames"]])
            texts = tf.io.parse_single_sequence_example(
                serialized, {schema.LABEL_TEXT_KEY: tf.io.VarLenFeature(tf.string)}
            )[0][schema.LABEL_TEXT_KEY].values.numpy()
            red = frames[..., 0].mean(axis=(1, 2))
            out[parsed["id"].numpy().decode()] = (
                [int(round((r - 10) / 20)) for r in red],
                int(round((frames[..., 1].mean() - 20) / 40)),
                frames.shape[1:], parsed["label"].numpy().tolist(), texts.tolist())
    return out


def _expected(src_fps: float, fps: float, start: float, end: float) -> list[int]:
    n = math.ceil((end - start) * fps - 1e-6)
    return [int(math.floor((start + k / fps) * src_fps + 1e-6)) for k in range(n)]


def test_folder_convert_resamples_resizes_and_skips_bad_files(video_dir, tmp_path):
    out = str(tmp_path / "out")
    report = convert.convert(video_dir, out, fps=5, short_side=8, num_shards=2,
                             progress=False)
    assert report["videos_listed"] == 7
    assert report["videos_written"] == 4 and report["videos_skipped"] == 3
    skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"broken.mp4", "notes.txt", "empty.avi"} and all(skipped.values())
    assert skipped["empty.avi"] == "ValueError: no frames decoded"
    assert schema.read_label_map(os.path.join(out, "label_map.txt")) == ["ClassA", "ClassB"]
    assert sorted(os.listdir(out)) == ["convert_report.json", "example_counts.json",
                                       "label_map.txt", "train-00000-of-00002.tfrecord",
                                       "train-00001-of-00002.tfrecord"]
    assert schema.read_example_count(os.path.join(out, "train-*")) == 4
    saved = json.load(open(os.path.join(out, "convert_report.json")))["train"]
    assert saved["videos_written"] == 4 and saved["videos_skipped"] == 3
    assert saved["bytes"] == sum(os.path.getsize(os.path.join(out, f"train-0000{i}-of-00002"
                                                              ".tfrecord")) for i in (0, 1))
    records = _records(out)
    assert sorted(records) == sorted(VIDEOS)
    assert report["frames"] == sum(len(r[0]) for r in records.values())
    for v, (vid, (label, _, _, src_fps, n)) in enumerate(VIDEOS.items()):
        indices, video, shape, labels, texts = records[vid]
        assert indices == _expected(src_fps, 5, 0, n / src_fps), vid
        assert video == v and shape == (8, 12, 3)
        assert labels == [0 if label == "ClassA" else 1] and texts == [label.encode()]


def test_csv_convert_upsamples_trims_and_uses_label_map(video_dir, tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,start,end\n"
                        "ClassA/v0.avi,ClassA,0.3,0.7\n"
                        "ClassB/v2.webm,ClassB,,\n"
                        "ClassB/missing.mp4,ClassB,,\n"
                        "ClassB/v3.mkv,Unknown,,\n")
    label_map = tmp_path / "labels.txt"
    label_map.write_text("ClassB\nClassA\n")
    out = str(tmp_path / "out")
    report = convert.convert(str(csv_path), out, fps=25, short_side=0, split_name="eval",
                             label_map=str(label_map), video_root=video_dir, progress=False)
    reasons = sorted(s["reason"] for s in report["skipped"])
    assert reasons == ["file not found", "label 'Unknown' is not in the label map"]
    assert os.listdir(out).count("eval-00000-of-00001.tfrecord") == 1
    records = _records(out, "eval")
    assert sorted(records) == ["v0_0.3_0.7", "v2"]
    indices, _, shape, labels, _ = records["v0_0.3_0.7"]
    assert indices == _expected(10, 25, 0.3, 0.7) and len(indices) == 10
    assert shape == (H, W, 3) and labels == [1]
    indices, _, _, labels, _ = records["v2"]
    assert indices == _expected(10, 25, 0, 1.0) and len(indices) == 25 and labels == [0]
    assert schema.read_label_map(os.path.join(out, "label_map.txt")) == ["ClassB", "ClassA"]
    label_map.write_text("ClassA\nClassB\n")
    with pytest.raises(ValueError, match="differs from --label_map"):
        convert.convert(str(csv_path), out, label_map=str(label_map), video_root=video_dir)
    label_map.write_text("Other\n")
    with pytest.raises(ValueError, match="has a label in the label map"):
        convert.convert(str(csv_path), str(tmp_path / "o2"), label_map=str(label_map),
                        video_root=video_dir)


def test_converted_records_feed_build_dataset(video_dir, tmp_path):
    out = str(tmp_path / "out")
    convert.convert(video_dir, out, fps=10, short_side=12, num_shards=2, progress=False)
    pattern = os.path.join(out, "train-*")
    train = pipeline.build_dataset(pattern, "train", global_batch_size=2, num_frames=4,
                                   stride=2, crop_size=8, seed=0)
    batch = next(iter(train))
    assert batch["video"].shape == (2, 4, 8, 8, 3) and batch["video"].dtype == tf.float32
    assert set(batch["label"].numpy().tolist()) <= {0, 1}
    evaluation = pipeline.build_dataset(pattern, "eval", global_batch_size=1, num_frames=2,
                                        stride=2, crop_size=8, num_temporal_views=2,
                                        num_spatial_views=1, drop_remainder=False)
    seen = {b["id"].numpy()[0].decode(): b["label"].numpy()[0] for b in evaluation}
    assert seen == {"v0": 0, "v1": 0, "v2": 1, "v3": 1}


def test_rerun_keeps_finished_shards_and_overwrites_stale_tmp(video_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    finished = out / "train-00000-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(finished)) as writer:
        writer.write(b"marker")
    stale = out / ".tmp-train-00001-of-00002.tfrecord"
    stale.write_bytes(b"half a shard from a killed run")
    report = convert.convert(video_dir, str(out), fps=5, short_side=8, num_shards=2,
                             progress=False)
    assert report["shards_already_complete"] == ["train-00000-of-00002.tfrecord"]
    assert report["shards_written"] == 1 and not stale.exists()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(finished))] == [b"marker"]
    second = list(tf.data.TFRecordDataset(str(out / "train-00001-of-00002.tfrecord")))
    assert second and all(schema.parse_sequence_example(r)["frames"].shape[0] > 0
                          for r in second)
    with pytest.raises(ValueError, match="another sharding"):
        convert.convert(video_dir, str(out), num_shards=3, progress=False)


def test_counts_are_right_after_a_killed_run_resumes(video_dir, tmp_path):
    """A run killed after its first shard left no report: the rerun counts that shard."""
    full = str(tmp_path / "full")
    convert.convert(video_dir, full, fps=5, short_side=8, num_shards=2, progress=False)
    out = tmp_path / "killed"
    out.mkdir()
    first = "train-00000-of-00002.tfrecord"
    shutil.copy(os.path.join(full, first), out / first)  # All the killed run left behind.
    in_first = sum(1 for _ in tf.data.TFRecordDataset(str(out / first)))
    report = convert.convert(video_dir, str(out), fps=5, short_side=8, num_shards=2,
                             progress=False)
    assert report["shards_already_complete"] == [first] and report["videos_written"] == 4
    assert report["shards"][first]["videos"] == in_first > 0
    assert report["frames"] == sum(len(r[0]) for r in _records(str(out)).values())
    assert schema.read_example_count(str(out / "train-*.tfrecord")) == 4
    assert schema.read_example_count(str(out / first)) == in_first
    again = convert.convert(video_dir, str(out), fps=5, short_side=8, num_shards=2,
                            progress=False)  # Everything finished: counts from the report.
    assert again["shards_written"] == 0 and again["videos_written"] == 4
    # A second split in the same directory keeps the first one's counts.
    convert.convert(video_dir, str(out), fps=5, short_side=8, num_shards=1,
                    split_name="eval", progress=False)
    counts = json.load(open(out / "example_counts.json"))
    assert {k: v["num_examples"] for k, v in counts.items()} == {"train": 4, "eval": 4}
    assert schema.read_example_count(str(out / "*.tfrecord")) == 8


@pytest.mark.slow
@pytest.mark.scenario  # make test-scenarios: the worker processes are the point.
def test_cli_with_worker_processes(video_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    code = convert.main(["--input", video_dir, "--output_dir", out, "--fps", "5",
                         "--short_side", "8", "--num_shards", "2", "--workers", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 videos written" in printed and "3 videos skipped" in printed
    assert "broken.mp4" in printed and "notes.txt" in printed
    assert sorted(_records(out)) == sorted(VIDEOS)
    assert convert.main(["--input", video_dir, "--output_dir", out, "--num_shards", "3"]) == 2
    assert "another sharding" in capsys.readouterr().err


def test_resample_by_time():
    frames = [(i / 10, i) for i in range(10)]
    assert list(convert.resample_by_time(frames, None)) == list(range(10))
    assert list(convert.resample_by_time(frames, 5)) == [0, 2, 4, 6, 8]
    assert list(convert.resample_by_time(frames, 25)) == _expected(10, 25, 0, 1.0)
    assert list(convert.resample_by_time(frames, 10, start=0.25, end=0.55)) == [2, 3, 4]
    uneven = [(0.0, 0), (0.1, 1), (0.35, 2), (0.4, 3)]  # Variable frame rate.
    assert list(convert.resample_by_time(uneven, 10, last_duration=0.1)) == [0, 1, 1, 1, 3]
    offset = [(5.0 + i / 10, i) for i in range(4)]  # Timestamps need not start at 0.
    assert list(convert.resample_by_time(offset, 20)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_read_video_list_formats(tmp_path):
    (tmp_path / "ucf.txt").write_text("Archery/v_Archery_g01_c01.avi\n"
                                      "Bowling/v_Bowling_g01_c01.avi\n")
    specs = video_list.read_video_list(str(tmp_path / "ucf.txt"), video_root="/videos")
    assert [(s.path, s.label, s.video_id) for s in specs] == [
        ("/videos/Archery/v_Archery_g01_c01.avi", "Archery", "v_Archery_g01_c01"),
        ("/videos/Bowling/v_Bowling_g01_c01.avi", "Bowling", "v_Bowling_g01_c01")]
    (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                       "air drumming,abc,3,13,train\n")
    (spec,) = video_list.read_video_list(str(tmp_path / "k400.csv"))
    assert spec.path == str(tmp_path / "abc_000003_000013.mp4")
    assert (spec.label, spec.start, spec.end) == ("air drumming", None, None)
    (tmp_path / "plain.csv").write_text("a/x.mp4,dog,1.5,4\n")
    (spec,) = video_list.read_video_list(str(tmp_path / "plain.csv"))
    assert (spec.label, spec.start, spec.end, spec.video_id) == ("dog", 1.5, 4.0, "x_1.5_4")
    with pytest.raises(ValueError, match="neither a video list file nor a folder"):
        video_list.read_video_list(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("name,count", [("ucf101", 101), ("hmdb51", 51),
                                        ("kinetics400", 400), ("kinetics600", 600)])
def test_shipped_label_maps(name, count):
    path = os.path.join(REPO, "data", "label_maps", f"{name}.txt")
    if name == "kinetics600" and not os.path.exists(path):
        pytest.skip("kinetics600.txt is written by the converter (see data/kinetics600.md)")
    lines = open(path, encoding="utf-8").read().splitlines()
    assert len(lines) == count and len(set(lines)) == count
    assert all(line and line == line.strip() for line in lines)


def test_ucf101_label_map_is_the_tfds_label_order():
    import tensorflow_datasets as tfds
    names = tfds.builder("ucf101/ucf101_1").info.features["label"].names
    assert schema.read_label_map(os.path.join(REPO, "data", "label_maps", "ucf101.txt")) == names
