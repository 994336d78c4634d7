"""AVA videos + CSVs -> detection records (cvrl_tf.data.convert_ava): rows to records,
skipped rows and keyframes named, train vs eval keyframes, resuming, the command line."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import ava, ava_video, convert_ava, schema
from tests.test_ava_video import coded_frames, frame_indices

ANNOTATIONS = """cutA,0902,0.1,0.2,0.3,0.4,1,0
cutA,0902,0.1,0.2,0.3,0.4,3,0
cutA,0902,0.5,0.5,0.9,0.95,2,1
cutA,0903,0.1,0.2,0.3,0.4,1,0
cutA,0904,0.5,0.2,0.3,0.4,1,0
cutA,0902,0.1,0.2,0.3,0.4,9,0
cutA,0906,0.1,0.2,0.3,0.4,1,0
cutA,0905,0.6,0.2,0.9,0.4,2,4
gone,0902,0.1,0.2,0.3,0.4,1,0
"""
PROPOSALS = ("cutA,0902,0.1,0.2,0.3,0.4,,0.9\ncutA,0904,0.2,0.2,0.6,0.6,,0.8\n"
             "cutA,0902,0.1,0.2,0.3,0.4,2,0.9\n")  # The first box again, with a label.
SETTINGS = convert_ava.Settings(fps=10, short_side=None, jpeg_quality=95, window_frames=8)


@pytest.fixture(scope="module")
def ava_dir(tmp_path_factory) -> dict:
    """A 5 s cut of 'cutA' (movie seconds 900-905, frames coded with their index), a video
    'gone' that is missing, and the annotation files (rows: see ANNOTATIONS)."""
    root = tmp_path_factory.mktemp("ava")
    (root / "videos").mkdir()
    ava_video.write_video(str(root / "videos" / "cutA.mp4"), coded_frames(50), fps=10)
    (root / "videos" / "notes.txt").write_text("not a video of the list\n")
    files = {"annotations": ANNOTATIONS, "proposals": PROPOSALS, "excluded": "cutA,0903\n"}
    for name, text in files.items():
        (root / f"{name}.csv").write_text(text)
    ava.write_label_map(str(root / "actions.pbtxt"), {1: "stand", 2: "sit", 3: "talk"})
    return {"videos": str(root / "videos"), "label_map": str(root / "actions.pbtxt"),
            **{name: str(root / f"{name}.csv") for name in files}}


def _convert(ava_dir, out, split, **kwargs):
    return convert_ava.convert_ava(
        ava_dir["videos"], ava_dir["annotations"], ava_dir["label_map"], str(out), split,
        excluded_timestamps=ava_dir["excluded"], settings=SETTINGS, progress=False, **kwargs)


def records(out, split) -> dict:
    """{key: parsed record as NumPy} of a split."""
    found = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(str(out), f"{split}-*.tfrecord"))):
        for serialized in tf.data.TFRecordDataset(path):
            parsed = {k: v.numpy() for k, v in schema.parse_detection_example(serialized).items()}
            found[parsed["id"].decode()] = parsed
    return found


def test_train_records_hold_the_csv_boxes_and_actions(ava_dir, tmp_path):
    report = _convert(ava_dir, tmp_path, "train")
    got = records(tmp_path, "train")
    assert sorted(got) == ["cutA,0902", "cutA,0905"]  # 0903 excluded, 0904's row bad, 0906 out
    first = got["cutA,0902"]
    np.testing.assert_array_equal(first["gt_boxes"], np.float32([[0.2, 0.1, 0.4, 0.3],
                                                                 [0.5, 0.5, 0.95, 0.9]]))
    np.testing.assert_array_equal(first["gt_label_index"], [0, 2, 1])  # action ids 1, 3; 2
    np.testing.assert_array_equal(first["gt_label_box"], [0, 0, 1])
    assert first["proposals"].shape == (0, 4) and first["timestamp"] == 902
    assert first["keyframe_index"] == 4 and frame_indices(first["frames"]) == list(range(16, 24))
    assert frame_indices(got["cutA,0905"]["frames"]) == [46, 47, 48, 49, 49, 49, 49, 49]
    assert report["keyframes"] == 2 and report["boxes"] == 3 and report["videos_written"] == 1
    assert report["actions_per_class"] == {"stand": 1, "sit": 2, "talk": 1}
    assert report["keyframes_excluded"] == 1 and report["videos_as_cut_files"] == 1
    assert [(r["line"], r["cause"]) for r in report["rows_skipped"]] == [
        (5, "box with x1 >= x2 (0.5 >= 0.3)"), (6, "action id 9 is not in the label map")]
    assert report["videos_missing"] == [{"video_id": "gone", "keyframes": 1,
                                         "cause": "no file gone.* in --videos"}]
    assert [k["keyframe"] for k in report["keyframes_skipped"]] == ["cutA,0906"]
    assert schema.read_example_count(str(tmp_path / "train-*")) == 2
    assert schema.read_label_map(str(tmp_path / "label_map.txt")) == ["stand", "sit", "talk"]
    saved = json.load(open(tmp_path / "convert_report.json"))["train"]
    assert saved["keyframes"] == 2 and saved["window_frames"] == 8


def test_eval_keeps_keyframes_with_proposals_only(ava_dir, tmp_path):
    report = _convert(ava_dir, tmp_path, "eval", proposals=ava_dir["proposals"])
    got = records(tmp_path, "eval")
    assert sorted(got) == ["cutA,0902", "cutA,0904", "cutA,0905"]
    np.testing.assert_array_equal(got["cutA,0902"]["proposals"], np.float32([[0.2, 0.1, 0.4,
                                                                              0.3]]))
    np.testing.assert_array_equal(got["cutA,0902"]["proposal_scores"], np.float32([0.9]))
    assert got["cutA,0904"]["gt_boxes"].shape == (0, 4)
    assert report["proposals"] == 2 and report["proposal_rows"] == 3


def test_a_rerun_resumes_and_counts_a_shard_no_report_holds(ava_dir, tmp_path):
    first = _convert(ava_dir, tmp_path, "eval", proposals=ava_dir["proposals"])
    os.remove(tmp_path / "convert_report.json")  # As if killed after its shard, before this.
    again = _convert(ava_dir, tmp_path, "eval", proposals=ava_dir["proposals"])
    assert again["shards_already_complete"] == ["eval-00000-of-00001.tfrecord"]
    assert again["shards_written"] == 0
    for key in ("keyframes", "boxes", "proposals", "actions_per_class", "videos_written"):
        assert again[key] == first[key], key
    with pytest.raises(ValueError, match="another sharding"):
        _convert(ava_dir, tmp_path, "eval", num_shards=2)
    ava.write_label_map(str(tmp_path / "other.pbtxt"), {1: "stand"})
    with pytest.raises(ValueError, match="differs from --label_map"):
        convert_ava.convert_ava(ava_dir["videos"], ava_dir["annotations"],
                                str(tmp_path / "other.pbtxt"), str(tmp_path), "train")


def test_videos_read_as_whole_movies_have_no_keyframe_here(ava_dir, tmp_path):
    """With --video_start 0 the 5 s file is movie seconds 0-5: every keyframe is outside it."""
    report = convert_ava.convert_ava(
        ava_dir["videos"], ava_dir["annotations"], ava_dir["label_map"], str(tmp_path), "train",
        settings=convert_ava.Settings(fps=10, window_frames=4, video_start=0), progress=False)
    assert report["keyframes"] == 0 and len(report["keyframes_skipped"]) == 4
    assert report["keyframes_skipped"][0]["cause"].endswith("from movie second 0 for 5.0 s")


def test_no_video_found_is_one_sentence(ava_dir, tmp_path):
    with pytest.raises(ValueError, match=r"None of the 2 videos with train keyframes in .* is "
                                         r"in --videos"):
        convert_ava.convert_ava(str(tmp_path), ava_dir["annotations"], ava_dir["label_map"],
                                str(tmp_path / "out"), "train", progress=False)


def test_the_command_prints_a_summary_or_one_sentence(ava_dir, tmp_path, capsys):
    args = ["--videos", ava_dir["videos"], "--annotations", ava_dir["annotations"],
            "--label_map", ava_dir["label_map"], "--output_dir", str(tmp_path),
            "--split_name", "train", "--fps", "10", "--short_side", "0", "--window_frames", "4",
            "--workers", "1"]
    assert convert_ava.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("train: 3 keyframes of 1 videos written (4 person boxes")
    assert "skipped video gone: no file gone.* in --videos" in out
    with pytest.raises(SystemExit, match="2"):
        convert_ava.main(args[:-2] + ["--video_start", "soon"])
    assert capsys.readouterr().err == ("Error: --video_start must be auto or "
                                       "seconds, got 'soon'.\n")
    with pytest.raises(SystemExit, match="2"):
        convert_ava.main(args[:3] + [ava_dir["videos"] + "/x.csv"] + args[4:])
    assert capsys.readouterr().err.startswith("Error: AVA file ")


@pytest.mark.slow
@pytest.mark.scenario  # make test-scenarios: the worker processes are the point.
def test_shards_in_worker_processes(ava_dir, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("cutA", "cutB"):
        os.symlink(os.path.join(ava_dir["videos"], "cutA.mp4"), videos / f"{name}.mp4")
    (tmp_path / "gt.csv").write_text("cutA,0902,0.1,0.2,0.3,0.4,1,0\n"
                                     "cutB,0903,0.1,0.2,0.3,0.4,2,0\n")
    assert convert_ava.main(["--videos", str(videos), "--annotations", str(tmp_path / "gt.csv"),
                             "--label_map", ava_dir["label_map"], "--output_dir",
                             str(tmp_path / "out"), "--split_name", "train", "--fps", "10",
                             "--window_frames", "4", "--workers", "2"]) == 0
    got = records(tmp_path / "out", "train")
    assert sorted(got) == ["cutA,0902", "cutB,0903"]
    assert frame_indices(got["cutB,0903"]["frames"]) == [28, 29, 30, 31]
