"""Frame-level mAP at IoU 0.5 on AVA keyframes, as the ActivityNet AVA evaluator computes it.

The evaluator is ActivityNet's `Evaluation/get_ava_performance.py` in its form with excluded
timestamps and keys "<video_id>,<seconds:04d>" (the one SlowFast copies), on the TF object
detection API's Pascal VOC evaluation. Its rules, each kept here:
1. Only the label map's classes count: rows of other action ids are dropped on both sides.
2. Rows of an excluded keyframe are dropped on both sides.
3. Per keyframe at most the 50 best-scored detections are kept (all classes together; kept
   with a heap, so that among equal scores at the cut the lower action id goes first), then
   ranked by score, descending and stable.
4. Detections with ymin >= ymax or xmin >= xmax are dropped.
5. Per keyframe and class, in rank order, a detection goes to the ground-truth box of highest
   IoU (the first such box on ties): a true positive if that IoU >= 0.5 and the box is not yet
   taken, else a false positive. Every detection on a keyframe without ground truth of its
   class is a false positive.
6. Per class, its detections over all keyframes ranked by score (NumPy's argsort reversed, as
   the evaluator ranks them: ties in that order) give precision and recall; AP is the area
   under the precision envelope at the steps of recall (VOC). A class without ground truth has
   no AP (NaN) and is left out of the mean; one with ground truth but no detection has AP 0.
Rows are `cvrl_tf.data.ava.BoxRow`s (read from AVA CSVs, or `detection_rows` from arrays);
boxes are (ymin, xmin, ymax, xmax), normalized. Pure NumPy.
"""
import heapq
import math
from typing import Iterable, Optional, Sequence

import numpy as np

from cvrl_tf.data.ava import BoxRow, split_key

IOU_THRESHOLD = 0.5
MAX_DETECTIONS_PER_KEY = 50  # The evaluator's cap per keyframe (0: none, as SlowFast's copy).


def _offer(heap: list, entry: tuple, capacity: int) -> None:
    """Keeps the `capacity` best (score, ...) entries in a heap, as the evaluator does (0: all);
    an entry that ties the worst kept score at a full heap is not taken."""
    if capacity < 1 or len(heap) < capacity:
        heapq.heappush(heap, entry)
    elif entry[0] > heap[0][0]:
        heapq.heapreplace(heap, entry)


def _entry(row: BoxRow) -> tuple:
    """(score, action id, ymin, xmin, ymax, xmax) of a row. The evaluator reads an 8th column
    as the score on both sides: on the ground-truth side (the person id) it only orders the
    boxes, which decides ties of IoU."""
    rank = row.score if row.score is not None else row.person_id
    return (1.0 if rank is None else float(rank), row.action_id, *(float(v) for v in row.box))


def _ranked(rows: Iterable[BoxRow], class_ids: set, capacity: int) -> dict[str, np.ndarray]:
    """{key: [n, 6] (score, action id, ymin, xmin, ymax, xmax)} of the label map's rows, at most
    `capacity` per key (0: all), ranked by score as the evaluator ranks them; keys in first-seen
    order. Rows are read once, so an iterator of a large file is never held whole."""
    heaps: dict[str, list] = {}
    for row in rows:
        if row.action_id in class_ids:
            _offer(heaps.setdefault(row.key, []), _entry(row), capacity)
    return {key: np.array(sorted(heap, key=lambda e: -e[0]), dtype=float).reshape(-1, 6)
            for key, heap in heaps.items()}


def iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union [N, M] of (ymin, xmin, ymax, xmax) boxes."""
    heights = np.maximum(0.0, np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
                         - np.maximum(boxes1[:, None, 0], boxes2[None, :, 0]))
    widths = np.maximum(0.0, np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
                        - np.maximum(boxes1[:, None, 1], boxes2[None, :, 1]))
    intersection = heights * widths
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    return intersection / (area1[:, None] + area2[None, :] - intersection)


def match(detected: np.ndarray, groundtruth: np.ndarray, threshold: float) -> np.ndarray:
    """True positives [N] of one keyframe's ranked detections of one class (rule 5)."""
    is_tp = np.zeros(len(detected), dtype=bool)
    if len(detected) == 0 or len(groundtruth) == 0:
        return is_tp
    overlaps = iou(detected, groundtruth)
    best = np.argmax(overlaps, axis=1)
    taken = np.zeros(len(groundtruth), dtype=bool)
    for i, j in enumerate(best):
        if overlaps[i, j] >= threshold and not taken[j]:
            is_tp[i] = taken[j] = True
    return is_tp


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_groundtruth: int) -> float:
    """VOC AP of one class's detections (rule 6); NaN without ground truth."""
    if num_groundtruth == 0:
        return math.nan
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)[::-1]
    true_positives = np.cumsum(is_tp[order].astype(int))
    false_positives = np.cumsum(1 - is_tp[order].astype(int))
    precision = true_positives.astype(float) / (true_positives + false_positives)
    recall = true_positives.astype(float) / num_groundtruth
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # The envelope.
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def frame_map(groundtruth: Iterable[BoxRow], detections: Iterable[BoxRow],
              class_ids: Iterable[int], excluded: Iterable[str] = (), *,
              iou_threshold: float = IOU_THRESHOLD,
              max_detections_per_key: int = MAX_DETECTIONS_PER_KEY
              ) -> tuple[float, dict[int, float]]:
    """(mAP, {class id: AP}) of detections against ground truth over the label map's class ids,
    without the excluded keyframe keys. AP is NaN for a class without ground truth; mAP is the
    mean over the others (NaN when none has any)."""
    class_ids = {int(c) for c in class_ids}
    if not class_ids:
        raise ValueError("frame_map needs the label map's class ids; none were given.")
    excluded = set(excluded)
    truth = {k: v for k, v in _ranked(groundtruth, class_ids, 0).items() if k not in excluded}
    num_gt = {c: 0 for c in class_ids}
    for entries in truth.values():
        for c in entries[:, 1].astype(int):
            num_gt[c] += 1
    scores = {c: [] for c in class_ids}
    hits = {c: [] for c in class_ids}
    for key, entries in _ranked(detections, class_ids, max_detections_per_key).items():
        if key in excluded:
            continue
        boxes = entries[:, 2:]
        entries = entries[(boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])]
        gt = truth.get(key, np.zeros([0, 6]))
        for c in np.unique(entries[:, 1]).astype(int):
            mine = entries[entries[:, 1] == c]
            scores[c].append(mine[:, 0])
            hits[c].append(match(mine[:, 2:], gt[gt[:, 1] == c, 2:], iou_threshold))
    per_class = {c: average_precision(np.concatenate(scores[c] or [np.zeros(0)]),
                                      np.concatenate(hits[c] or [np.zeros(0, bool)]), num_gt[c])
                 for c in sorted(class_ids)}
    if all(math.isnan(ap) for ap in per_class.values()):
        return math.nan, per_class
    by_index = np.full(max(per_class), np.nan)  # As the evaluator averages: ids 1..max in order.
    by_index[np.array(list(per_class)) - 1] = list(per_class.values())
    return float(np.nanmean(by_index)), per_class


def detection_rows(key: str, boxes, scores, class_ids: Optional[Iterable[int]] = None,
                   max_per_key: int = 0) -> list[BoxRow]:
    """Scored rows of one keyframe from a model's arrays: boxes [P, 4] (ymin, xmin, ymax, xmax)
    and scores [P, C], column c being action id c + 1 (action index c in the records); only
    `class_ids` when given. Rows go box by box, class by class, as a CSV written from the
    arrays would; max_per_key > 0 keeps only the rows the evaluator would keep of them (given
    the label map's class_ids and MAX_DETECTIONS_PER_KEY: then frame_map scores them as it
    scores all of them, and they are far fewer to hold)."""
    video_id, timestamp = split_key(key)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scores = np.asarray(scores, dtype=float).reshape(len(boxes), -1)
    wanted = None if class_ids is None else {int(c) for c in class_ids}
    rows = [BoxRow(video_id, timestamp, tuple(boxes[p].tolist()), action_id=c + 1,
                   score=float(scores[p, c]))
            for p in range(len(boxes)) for c in range(scores.shape[1])
            if wanted is None or c + 1 in wanted]
    if max_per_key < 1:
        return rows
    heap = []  # Kept in the heap's own order: offered again in that order, it stays the same.
    for n, row in enumerate(rows):
        _offer(heap, _entry(row) + (n,), max_per_key)
    return [rows[entry[-1]] for entry in heap]


def groundtruth_rows(key: str, boxes, label_index: Sequence[int],
                     label_box: Sequence[int]) -> list[BoxRow]:
    """Ground-truth rows of one keyframe from a detection record's arrays ('gt_boxes',
    'gt_label_index', 'gt_label_box' of schema.parse_detection_example)."""
    video_id, timestamp = split_key(key)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return [BoxRow(video_id, timestamp, tuple(boxes[b].tolist()), action_id=int(k) + 1)
            for k, b in zip(label_index, label_box)]
