"""Frame-level AP/mAP (cvrl_tf.frame_map) and its command (cvrl_tf.ava_eval): cases worked out
by hand, the CSV path, and agreement with a brute-force implementation written here."""
import math
import random

import numpy as np
import pytest

from cvrl_tf import ava_eval, frame_map
from cvrl_tf.data import ava

A, B, C = "vid_a,0902", "vid_a,0903", "vid_b,0902"
LEFT = (0.0, 0.0, 1.0, 0.5)  # (ymin, xmin, ymax, xmax): the left half of the frame
RIGHT = (0.0, 0.5, 1.0, 1.0)
SMALL = (0.1, 0.1, 0.2, 0.2)


def gt(key, box, action_id):
    video, second = ava.split_key(key)
    return ava.BoxRow(video, second, box, action_id=action_id)


def det(key, box, action_id, score):
    video, second = ava.split_key(key)
    return ava.BoxRow(video, second, box, action_id=action_id, score=score)


def test_a_perfect_ranking_has_ap_one():
    """3 boxes of class 1 found at ranks 1-3: precision 1 at recall 1/3, 2/3, 1; AP = 1."""
    truth = [gt(A, LEFT, 1), gt(A, RIGHT, 1), gt(B, LEFT, 1)]
    found = [det(A, LEFT, 1, 0.9), det(A, RIGHT, 1, 0.8), det(B, LEFT, 1, 0.7)]
    assert frame_map.frame_map(truth, found, [1]) == (1.0, {1: 1.0})


def test_a_false_positive_ranked_above_a_true_positive():
    """2 boxes; ranked TP (0.9), FP (0.8), TP (0.7): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    The envelope is 1 up to recall 1/2 and 2/3 up to 1: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6."""
    truth = [gt(A, LEFT, 1), gt(B, LEFT, 1)]
    found = [det(A, LEFT, 1, 0.9), det(A, SMALL, 1, 0.8), det(B, LEFT, 1, 0.7)]
    mean_ap, per_class = frame_map.frame_map(truth, found, [1])
    assert per_class[1] == pytest.approx(5 / 6, abs=1e-12) and mean_ap == per_class[1]


def test_iou_049_is_a_miss_and_051_a_hit():
    """The box LEFT (area 0.5) against a box on its left side of width 0.5 w: IoU = w. Class 1's
    only detection has IoU 0.51 (TP, AP 1), class 2's 0.49 (FP, AP 0), class 3's exactly 0.5
    (a hit: IoU >= 0.5). mAP = (1 + 0 + 1) / 3."""
    truth = [gt(A, LEFT, 1), gt(A, LEFT, 2), gt(A, LEFT, 3)]
    found = [det(A, (0.0, 0.0, 1.0, 0.255), 1, 0.9), det(A, (0.0, 0.0, 1.0, 0.245), 2, 0.9),
             det(A, (0.0, 0.0, 1.0, 0.25), 3, 0.9)]
    overlaps = frame_map.iou(np.array([r.box for r in found]), np.array([LEFT]))
    np.testing.assert_allclose(overlaps[:, 0], [0.51, 0.49, 0.5], rtol=1e-12)
    mean_ap, per_class = frame_map.frame_map(truth, found, [1, 2, 3])
    assert per_class == {1: 1.0, 2: 0.0, 3: 1.0} and mean_ap == pytest.approx(2 / 3)


def test_duplicate_detections_of_one_box():
    """Boxes LEFT and MID (IoU 1/3 with each other). D1 = LEFT (0.9) takes LEFT. D2 (0.8) has
    IoU 2/3 with LEFT and 0.54 with MID: it goes to LEFT, its best box, already taken, so it is
    a false positive although MID is free. D3 = MID (0.7) takes MID. TP, FP, TP: AP = 5/6.
    (Giving D2 the best free box would have made it TP, TP, FP: AP 1.)"""
    mid = (0.0, 0.25, 1.0, 0.75)
    truth = [gt(A, LEFT, 1), gt(A, mid, 1)]
    found = [det(A, LEFT, 1, 0.9), det(A, (0.0, 0.1, 1.0, 0.6), 1, 0.8), det(A, mid, 1, 0.7)]
    _, per_class = frame_map.frame_map(truth, found, [1])
    assert per_class[1] == pytest.approx(5 / 6, abs=1e-12)
    again = [det(A, LEFT, 1, 0.9), det(A, LEFT, 1, 0.8)]  # The same box twice: TP, then FP.
    assert frame_map.frame_map([gt(A, LEFT, 1)], again, [1])[1][1] == 1.0  # P = 1, 1/2; R = 1


def test_a_class_without_ground_truth_is_left_out_of_the_mean():
    """Class 1 found perfectly (AP 1); class 2 has only false positives and no ground truth
    (AP NaN, not 0): mAP = 1. Class 3 is not in the label map: its rows count nowhere."""
    truth = [gt(A, LEFT, 1), gt(A, RIGHT, 3)]
    found = [det(A, LEFT, 1, 0.5), det(A, RIGHT, 2, 0.9), det(A, SMALL, 3, 0.99)]
    mean_ap, per_class = frame_map.frame_map(truth, found, [1, 2])
    assert mean_ap == 1.0 and per_class[1] == 1.0 and math.isnan(per_class[2])
    assert set(per_class) == {1, 2}
    nothing, per_class = frame_map.frame_map([gt(A, LEFT, 3)], found, [1, 2])
    assert math.isnan(nothing) and all(math.isnan(v) for v in per_class.values())


def test_an_excluded_timestamp_is_ignored_on_both_sides():
    """Keyframe B is excluded: its ground truth and its detection (an FP scored 0.95) are both
    dropped, so A's hit gives AP 1. Counting B on both sides: FP, TP with 2 boxes, AP = 1/2 *
    1/2 = 1/4; dropping only its detection: recall 1/2 at precision 1, AP 1/2; dropping only
    its ground truth: FP, TP with 1 box, AP 1/2."""
    truth = [gt(A, LEFT, 1), gt(B, LEFT, 1)]
    found = [det(A, LEFT, 1, 0.9), det(B, SMALL, 1, 0.95)]
    assert frame_map.frame_map(truth, found, [1], excluded={B}) == (1.0, {1: 1.0})
    assert frame_map.frame_map(truth, found, [1])[0] == pytest.approx(0.25)
    assert frame_map.frame_map(truth, found[:1], [1])[0] == pytest.approx(0.5)
    assert frame_map.frame_map(truth[:1], found, [1])[0] == pytest.approx(0.5)


def test_detections_on_a_keyframe_without_ground_truth_are_false_positives():
    """C has no ground truth: its detection (0.99) ranks first as an FP; then A's TP: AP 1/2."""
    found = [det(A, LEFT, 1, 0.9), det(C, LEFT, 1, 0.99)]
    assert frame_map.frame_map([gt(A, LEFT, 1)], found, [1])[0] == pytest.approx(0.5)


def test_only_the_50_best_detections_of_a_keyframe_count():
    """50 false positives (0.5..0.99) above the one true positive (0.1), all on keyframe A: the
    evaluator keeps A's 50 best, so the hit is gone (AP 0). Without the cap the hit ranks 51st:
    precision 1/51 at recall 1, AP 1/51. Invalid boxes (ymin >= ymax) are dropped, not FPs."""
    misses = [det(A, SMALL, 1, 0.5 + i / 100) for i in range(50)]
    found = misses + [det(A, LEFT, 1, 0.1)]
    assert frame_map.frame_map([gt(A, LEFT, 1)], found, [1])[0] == 0.0
    uncapped = frame_map.frame_map([gt(A, LEFT, 1)], found, [1], max_detections_per_key=0)
    assert uncapped[0] == pytest.approx(1 / 51)
    inverted = det(A, (0.9, 0.0, 0.1, 0.5), 1, 0.99)
    assert frame_map.frame_map([gt(A, LEFT, 1)], [inverted, found[-1]], [1])[0] == 1.0


TALL = (0.05, 0.10, 0.95, 0.30)  # Tall and thin: with x and y swapped it misses itself.


def test_csv_ground_truth_meets_model_arrays_in_tf_box_order(tmp_path):
    """The ground truth file gives corners x1, y1, x2, y2; the model's boxes are (ymin, xmin,
    ymax, xmax). Read right, they are the same boxes (AP 1); a reader that swapped x and y
    would give IoU 0.08 and AP 0."""
    path = tmp_path / "gt.csv"
    path.write_text("vid_a,0902,0.10,0.05,0.30,0.95,1,0\n"  # TALL, written by hand
                    "vid_a,0902,0.60,0.05,0.80,0.95,2,1\n")
    found = frame_map.detection_rows(A, [TALL, (0.05, 0.6, 0.95, 0.8)],
                                     [[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    assert [(r.action_id, r.score) for r in found[:3]] == [(1, 0.9), (2, 0.1), (3, 0.5)]
    mean_ap, per_class = frame_map.frame_map(ava.read_annotations(str(path)), found, [1, 2])
    assert (mean_ap, per_class) == (1.0, {1: 1.0, 2: 1.0})
    assert len(frame_map.detection_rows(A, [TALL], [[0.9, 0.1, 0.5]], class_ids=[1, 3])) == 2


def _write_files(tmp_path, found, excluded=()):
    (tmp_path / "gt.csv").write_text("vid_a,0902,0.10,0.05,0.30,0.95,1,0\n"
                                     "vid_a,0903,0.10,0.05,0.30,0.95,1,0\n"
                                     "vid_a,0903,0.10,0.05,0.30,0.95,3,0\n")
    ava.write_box_csv(str(tmp_path / "det.csv"), found, "detections", decimals=None)
    ava.write_label_map(str(tmp_path / "lm.pbtxt"), {1: "stand", 2: "sit"})
    ava.write_excluded(str(tmp_path / "ex.csv"), excluded)
    return [str(tmp_path / n) for n in ("gt.csv", "det.csv", "lm.pbtxt", "ex.csv")]


def test_ava_eval_reads_the_files_and_prints_the_table(tmp_path, capsys):
    """A: hit (0.9); B: FP (0.95) above nothing; B excluded -> AP(1) = 1, class 2 has no
    ground truth, class 3 is not evaluated."""
    found = [det(A, TALL, 1, 0.9), det(B, SMALL, 1, 0.95), det(A, SMALL, 2, 0.3)]
    gt_csv, det_csv, label_map, excluded = _write_files(tmp_path, found, [("vid_a", 903)])
    assert ava_eval.main(["--groundtruth", gt_csv, "--detections", det_csv, "--label_map",
                          label_map, "--excluded_timestamps", excluded]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["   1  1.0000  stand", "   2       -  sit", "mAP=1.000000"]
    assert ava_eval.main(["--groundtruth", gt_csv, "--detections", det_csv,
                          "--label_map", label_map]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "mAP=0.250000"  # FP, TP of 2 boxes


def test_ava_eval_refuses_a_bad_file_in_one_sentence(tmp_path, capsys):
    gt_csv, det_csv, label_map, _ = _write_files(tmp_path, [det(A, TALL, 1, 0.9)])
    with open(det_csv, "a") as f:
        f.write("vid_a,0902,0.1,0.1,0.2\n")
    with pytest.raises(SystemExit, match="2"):
        ava_eval.main(["--groundtruth", gt_csv, "--detections", det_csv,
                       "--label_map", label_map])
    err = capsys.readouterr().err
    assert err == f"Error: AVA file {det_csv}, line 2: expected 8 columns " \
                  "(video_id, timestamp, x1, y1, x2, y2, action_id, ...) or 7, got 5.\n"
    ava.write_label_map(label_map, {7: "other"})
    with pytest.raises(SystemExit, match="2"):
        ava_eval.main(["--groundtruth", gt_csv, "--detections", det_csv,
                       "--label_map", label_map])
    assert "has no row of the 1 classes" in capsys.readouterr().err


def _brute_force(truth, found, class_ids, excluded, cap=50):
    """AP per class, straight from the definition: keep each keyframe's `cap` best detections
    of the evaluated classes; walk a class's detections best first; each goes to the box of its
    keyframe and class with the highest IoU (the first on ties), a hit if IoU >= 0.5 and that
    box is free; AP = sum over hits of the best precision at that rank or below, over boxes."""
    def overlap(a, b):
        h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - h * w
        return h * w / union

    kept = []
    for key in {r.key for r in found} - set(excluded):
        mine = sorted((r for r in found if r.key == key and r.action_id in class_ids),
                      key=lambda r: -r.score)
        kept += [r for r in mine[:cap] if r.box[0] < r.box[2] and r.box[1] < r.box[3]]
    result = {}
    for c in class_ids:
        boxes = [(r.key, r.box) for r in truth if r.action_id == c and r.key not in excluded]
        if not boxes:
            result[c] = math.nan
            continue
        taken, hits = set(), []
        for r in sorted((r for r in kept if r.action_id == c), key=lambda r: -r.score):
            options = [(overlap(r.box, box), i) for i, (key, box) in enumerate(boxes)
                       if key == r.key]
            best = max(options, key=lambda o: o[0], default=(0.0, None))
            hit = best[0] >= 0.5 and best[1] not in taken
            taken.add(best[1] if hit else None)
            hits.append(hit)
        precision = [sum(hits[:i + 1]) / (i + 1) for i in range(len(hits))]
        result[c] = sum(max(precision[i:]) for i, h in enumerate(hits) if h) / len(boxes)
    return result


def _random_case(seed):
    rng = random.Random(seed)
    class_ids = list(range(1, 13))
    keys = [f"v{v},{902 + t:04d}" for v in range(6) for t in range(8)]

    def box():
        y, x = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
        return (y, x, y + rng.uniform(0.05, 0.3), x + rng.uniform(0.05, 0.3))

    truth = [gt(k, box(), rng.choice(class_ids + [13, 14])) for k in keys
             for _ in range(rng.randint(0, 4))]
    found = []
    for k in keys:
        for _ in range(rng.randint(0, 70)):
            near = [r for r in truth if r.key == k]
            if near and rng.random() < 0.6:
                r = rng.choice(near)
                jitter = [rng.gauss(0, 0.03) for _ in range(4)]
                b, c = tuple(v + j for v, j in zip(r.box, jitter)), r.action_id
                c = c if rng.random() < 0.8 else rng.choice(class_ids)
            else:
                b, c = box(), rng.choice(class_ids + [13])
            found.append(det(k, b, c, rng.random()))
    rng.shuffle(found)
    return truth, found, class_ids, set(rng.sample(keys, 4))


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_a_brute_force_implementation(seed):
    truth, found, class_ids, excluded = _random_case(seed)
    mean_ap, per_class = frame_map.frame_map(truth, found, class_ids, excluded)
    expected = _brute_force(truth, found, class_ids, excluded)
    assert per_class.keys() == expected.keys()
    for c, ap in expected.items():
        assert (math.isnan(ap) and math.isnan(per_class[c])) or abs(ap - per_class[c]) < 1e-9
    known = [ap for ap in expected.values() if not math.isnan(ap)]
    assert abs(mean_ap - sum(known) / len(known)) < 1e-9
    assert 0.05 < mean_ap < 0.95  # Neither trivial nor hopeless: the cases test something.


def test_model_arrays_capped_early_score_as_all_their_rows_and_their_csv(tmp_path):
    """A detect mode keeps only the rows the evaluator keeps (detection_rows(max_per_key=50)):
    the same mAP, to the bit, as all the rows and as the CSV written from them, here with many
    tied scores (0, 1 and one decimal) where the evaluator's order of ties matters."""
    rng = np.random.default_rng(3)
    class_ids = [1, 2, 3, 4, 5, 6, 8]
    truth, every, capped = [], [], []
    for t in range(12):
        key = f"v,{902 + t:04d}"
        boxes = rng.uniform(0, 0.5, (10, 2))
        boxes = np.concatenate([boxes, boxes + rng.uniform(0.1, 0.5, (10, 2))], 1)
        truth += [gt(key, tuple(b), int(a)) for b in boxes[:4] for a in rng.choice(9, 2) + 1]
        found = boxes + rng.normal(0, 0.02, (10, 4))
        scores = np.round(rng.uniform(-0.5, 1.5, (10, 9)), 1).clip(0, 1)
        every += frame_map.detection_rows(key, found, scores)
        capped += frame_map.detection_rows(key, found, scores, class_ids, max_per_key=50)
    assert len(capped) == 12 * 50 and len(every) == 12 * 90
    full = frame_map.frame_map(truth, every, class_ids)
    assert frame_map.frame_map(truth, capped, class_ids) == full
    ava.write_box_csv(str(tmp_path / "gt.csv"), [r._replace(person_id=0) for r in truth],
                      "annotations", decimals=None)
    ava.write_box_csv(str(tmp_path / "det.csv"), every, "detections", decimals=None)
    ava.write_label_map(str(tmp_path / "lm.pbtxt"), {c: f"c{c}" for c in class_ids})
    files = ava_eval.evaluate_files(*(str(tmp_path / n) for n in ("gt.csv", "det.csv",
                                                                   "lm.pbtxt")))
    assert files[:2] == full and 0.1 < full[0] < 0.9
