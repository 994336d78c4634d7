"""The synthetic AVA set (cvrl_tf.data.synthetic_ava): AVA's formats, boxes where the shapes
are, actions that match the motion, determinism, and the command."""
import os

import av
import numpy as np
import pytest

from cvrl_tf import frame_map
from cvrl_tf.data import ava, convert_ava, synthetic, synthetic_ava
from tests.test_convert_ava import records


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("synthetic_ava")
    return synthetic_ava.write_dataset(str(out), num_train=6, num_val=3, seconds=6, fps=10)


def _frames(info: dict, video_id: str) -> np.ndarray:
    """The decoded video as grey float frames [L, H, W]."""
    with av.open(os.path.join(info["videos"], f"{video_id}.mp4")) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
                        ).astype(float).mean(-1)


def _objects(grey: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background (the frame's median) after a 3x3 mean."""
    padded = np.pad(grey, 1, mode="edge")
    h, w = grey.shape
    smooth = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return np.abs(smooth - np.median(smooth)) > 35


def test_files_are_ava_files(written):
    notes = written["annotations"]
    assert ava.read_label_map(os.path.join(notes, "action_list.pbtxt")) == synthetic_ava.ACTIONS
    train = ava.read_annotations(os.path.join(notes, "train.csv"))
    val = ava.read_annotations(os.path.join(notes, "val.csv"))
    assert {r.video_id for r in train} == {f"train_{i:03d}" for i in range(6)}
    assert {r.timestamp for r in train + val} == {902, 903, 904}
    assert len({r.key for r in train}) == written["train_keyframes"] == 18
    for key, persons in ava.merge_person_boxes(train + val).items():
        assert 2 <= len(persons) <= 3, key
        for person in persons:  # One direction and one size action each.
            assert len(person.action_ids) == 2 and person.action_ids[0] <= 4 < person.action_ids[1]
    proposals = ava.read_proposals(os.path.join(notes, "val_proposals.csv"))
    assert {r.key for r in proposals} == {r.key for r in val}
    assert all(r.action_id is None and 0 <= r.score <= 1 for r in proposals)
    excluded = ava.read_excluded(os.path.join(notes, "val_excluded.csv"))
    assert len(excluded) == 2 and excluded <= {r.key for r in val}
    with av.open(os.path.join(written["videos"], "val_000.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.height, stream.width, stream.frames) == (64, 96, 60)


def test_boxes_are_where_the_shapes_are(written):
    """At each keyframe's frame, a box's middle is object and a ring 3-5 px outside it is
    background (checked for boxes 6 px clear of the others)."""
    rows = ava.read_annotations(os.path.join(written["annotations"], "train.csv"))
    checked = 0
    for key, persons in ava.merge_person_boxes(rows).items():
        video_id, timestamp = ava.split_key(key)
        mask = _objects(_frames(written, video_id)[(timestamp - 900) * 10])
        h, w = mask.shape
        pixels = [np.array(p.box) * [h, w, h, w] for p in persons]
        for n, (y0, x0, y1, x1) in enumerate(pixels):
            if any(b[0] < y1 + 6 and b[2] > y0 - 6 and b[1] < x1 + 6 and b[3] > x0 - 6
                   for m, b in enumerate(pixels) if m != n):
                continue
            inner = mask[int(y0 + (y1 - y0) / 4):int(y1 - (y1 - y0) / 4) + 1,
                         int(x0 + (x1 - x0) / 4):int(x1 - (x1 - x0) / 4) + 1]
            ring = np.zeros_like(mask)  # Pixels 3 to 5 px outside the box.
            ring[max(0, int(y0) - 5):int(y1) + 6, max(0, int(x0) - 5):int(x1) + 6] = True
            ring[max(0, int(y0) - 2):int(y1) + 3, max(0, int(x0) - 2):int(x1) + 3] = False
            assert inner.mean() > 0.95 and mask[ring].mean() < 0.05, (key, n)
            checked += 1
    assert checked >= 15


def test_actions_match_the_motion(written):
    """Over 0.8 s around its keyframe an actor clear of the others moves >= 3 px mostly in its
    direction, and its area grows by > 15 %, shrinks by > 13 % or stays within those."""
    rows = ava.read_annotations(os.path.join(written["annotations"], "train.csv"))
    checked = 0
    for key, persons in ava.merge_person_boxes(rows).items():
        video_id, timestamp = ava.split_key(key)
        frames = _frames(written, video_id)
        h, w = frames.shape[1:]
        near = [np.array(p.box) * [h, w, h, w] + [-14, -14, 14, 14] for p in persons]
        for n, person in enumerate(persons):
            y0, x0, y1, x1 = near[n]
            if any(b[0] < y1 and b[2] > y0 and b[1] < x1 and b[3] > x0
                   for m, b in enumerate(near) if m != n):
                continue
            ys, xs = np.mgrid[0:h, 0:w] + 0.5
            inside = (ys > y0) & (ys < y1) & (xs > x0) & (xs < x1)
            seen = []
            for f in ((timestamp - 900) * 10 - 4, (timestamp - 900) * 10 + 4):
                mask = _objects(frames[f]) & inside
                seen.append((ys[mask].mean(), xs[mask].mean(), mask.sum()))
            dy, dx = seen[1][0] - seen[0][0], seen[1][1] - seen[0][1]
            growth = seen[1][2] / seen[0][2]
            direction, size = person.action_ids
            along, across = {1: (-dx, dy), 2: (dx, dy), 3: (-dy, dx), 4: (dy, dx)}[direction]
            assert along > 3 and along > abs(across), (key, n, dy, dx)
            assert {5: growth > 1.15, 6: growth < 0.87, 7: 0.87 <= growth <= 1.15}[size], \
                (key, n, growth)
            checked += 1
    assert checked >= 3


def test_deterministic_in_the_seed(written, tmp_path):
    again = synthetic_ava.write_dataset(str(tmp_path / "a"), num_train=6, num_val=3)
    other = synthetic_ava.write_dataset(str(tmp_path / "b"), num_train=6, num_val=3, seed=1)
    for name in ("videos/train_003.mp4", "videos/val_001.mp4", "annotations/train.csv",
                 "annotations/val_proposals.csv", "annotations/val_excluded.csv"):
        first = open(os.path.join(os.path.dirname(written["videos"]), name), "rb").read()
        assert open(os.path.join(os.path.dirname(again["videos"]), name), "rb").read() == first
    assert open(os.path.join(other["annotations"], "train.csv")).read() != \
        open(os.path.join(written["annotations"], "train.csv")).read()


def test_the_command(tmp_path, capsys):
    assert synthetic.main(["--detection", "--output_dir", str(tmp_path), "--num_train", "1",
                           "--num_eval", "1", "--seconds", "5", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert '"train_keyframes": 2' in out and "python -m cvrl_tf.data.convert_ava" in out
    assert sorted(os.listdir(tmp_path / "videos")) == ["train_000.mp4", "val_000.mp4"]
    with pytest.raises(SystemExit) as stop:
        synthetic.main(["--detection", "--output_dir", str(tmp_path), "--height", "63"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("Error: height=63 and width=96 must be even "
                                       "and >= 32.\n")


def test_convert_ava_writes_the_csv_boxes_and_actions(written, tmp_path):
    """Both splits through convert_ava as AVA would go: the records hold the CSV's boxes (as
    float32), actions and proposals in order; excluded keyframes are not written; and the
    records' boxes, scored as detections, are a perfect answer to the CSV's ground truth."""
    notes, out = written["annotations"], str(tmp_path)
    settings = convert_ava.Settings(fps=10, short_side=None, window_frames=8)
    for split, csv, extra in (("train", "train.csv", {}),
                              ("eval", "val.csv", {
                                  "proposals": os.path.join(notes, "val_proposals.csv"),
                                  "excluded_timestamps": os.path.join(notes, "val_excluded.csv")})):
        convert_ava.convert_ava(written["videos"], os.path.join(notes, csv),
                                written["label_map"], out, split, settings=settings,
                                num_shards=2, progress=False, **extra)
    truth = ava.read_annotations(os.path.join(notes, "val.csv"))
    excluded = ava.read_excluded(os.path.join(notes, "val_excluded.csv"))
    proposals = ava.merge_person_boxes(ava.read_proposals(os.path.join(notes,
                                                                       "val_proposals.csv")))
    for split, rows in (("train", ava.read_annotations(os.path.join(notes, "train.csv"))),
                        ("eval", truth)):
        got = records(out, split)
        people = {k: v for k, v in ava.merge_person_boxes(rows).items() if k not in excluded}
        assert sorted(got) == sorted(people)
        for key, persons in people.items():
            record = got[key]
            np.testing.assert_array_equal(record["gt_boxes"],
                                          np.float32([p.box for p in persons]))
            pairs = [(b, a - 1) for b, p in enumerate(persons) for a in p.action_ids]
            assert list(zip(record["gt_label_box"], record["gt_label_index"])) == pairs
            if split == "eval":
                np.testing.assert_array_equal(record["proposals"],
                                              np.float32([p.box for p in proposals[key]]))
            assert record["frames"].shape == (8,) and record["keyframe_index"] == 4
    found = []
    for key, record in records(out, "eval").items():
        scores = np.zeros([len(record["gt_boxes"]), len(synthetic_ava.ACTIONS)])
        scores[record["gt_label_box"], record["gt_label_index"]] = 1.0
        found += frame_map.detection_rows(key, record["gt_boxes"], scores)
    mean_ap, _ = frame_map.frame_map(truth, found, synthetic_ava.ACTIONS, excluded)
    assert mean_ap == 1.0
