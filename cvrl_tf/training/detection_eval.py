"""Evaluation of the detect mode: frame-level mAP at IoU 0.5 over the evaluated actions, as the
ActivityNet AVA evaluator computes it (cvrl_tf/frame_map.py), and the detections in AVA's CSV
format (model_dir/detections.csv) for the official evaluator.

Every replica scores its clips' proposal boxes (steps.make_detection_eval_step); the scores,
boxes, keyframe keys (as bytes) and ground truth of every replica are gathered to every worker
(strategy.gather) and turned into AVA rows on the host, so a multi-worker or TPU-pod run scores
the whole eval set. The ground truth comes from the records (float32 boxes); scoring the
written CSV against AVA's own ground-truth CSV with `python -m cvrl_tf.ava_eval` gives the
official figure to the last digit.
"""
from typing import Callable, Iterable, Optional

import numpy as np
import tensorflow as tf

from cvrl_tf import frame_map
from cvrl_tf import steps
from cvrl_tf.data import ava
from cvrl_tf.data import detection
from cvrl_tf.training import trainer as trainer_lib

DETECTIONS_CSV = "detections.csv"
# What each replica hands back besides its scores (the rest of the element stays on the host).
_PASSED = ("boxes", "box_mask", "key", "gt_boxes", "gt_mask", "gt_labels")


def _replica_fn(model, num_replicas: int) -> Callable:
    """The replica step: sigmoid scores of each proposal box, plus what scoring them needs.
    With several replicas, an empty replica batch (the remainder of a finite eval set) gives
    empty outputs (one replica never gets one)."""
    score = steps.make_detection_eval_step(model)

    def run(batch):
        return dict(score(batch), **{k: batch[k] for k in _PASSED})

    def step(batch):
        def empty():  # scores [0, M, C]: gt_labels has their shape (M boxes, C actions)
            return dict({k: batch[k][:0] for k in _PASSED},
                        scores=tf.zeros_like(batch["gt_labels"][:0]))

        return tf.cond(tf.shape(batch["video"])[0] > 0, lambda: run(batch), empty)

    return step if num_replicas > 1 else run


def _rows(outputs: dict, class_ids: Iterable[int]) -> tuple:
    """(ground-truth rows, detection rows) of one gathered batch (NumPy arrays)."""
    truth, detected = [], []
    for i in range(len(outputs["key"])):
        key = detection.key_text(outputs["key"][i])
        gt = outputs["gt_mask"][i] > 0
        boxes, labels = outputs["gt_boxes"][i][gt], outputs["gt_labels"][i][gt]
        box_of, action = np.nonzero(labels > 0.5)
        truth += frame_map.groundtruth_rows(key, boxes, action, box_of)
        valid = outputs["box_mask"][i] > 0
        detected += frame_map.detection_rows(
            key, outputs["boxes"][i][valid], outputs["scores"][i][valid], class_ids,
            max_per_key=frame_map.MAX_DETECTIONS_PER_KEY)
    return truth, detected


class DetectionEvaluator:
    """Frame mAP of a detection model over an eval set (see the module docstring).

    class_ids: the evaluated action ids (the label map's); names: {id: name} for the
    per-class summaries; detections_path: where the chief writes the AVA CSV (None: nowhere).
    """

    def __init__(self, *, strategy: tf.distribute.Strategy, dataset_fn, model, class_ids,
                 names: Optional[dict] = None, detections_path: Optional[str] = None,
                 stop_flag: Optional[tf.Variable] = None):
        self.strategy = strategy
        self._dataset = strategy.distribute_datasets_from_function(dataset_fn)
        self._class_ids = sorted(int(c) for c in class_ids)
        self._names = names or {}
        self._path = detections_path
        self._stop_flag = stop_flag
        step = _replica_fn(model, strategy.num_replicas_in_sync)

        @tf.function(autograph=False)
        def run(batch):
            outputs = strategy.run(step, args=(batch,))
            return {k: strategy.gather(v, axis=0) for k, v in outputs.items()}

        self._run = run

    def evaluate(self, num_steps=-1) -> dict:
        """{'frame_map', 'ap/<class>' ...} over the eval set (num_steps batches; -1: all)."""
        truth, detected = [], []
        for n, batch in enumerate(self._dataset):
            if 0 <= int(num_steps) <= n:
                break
            if self._stop_flag is not None and bool(self._stop_flag.numpy()):
                raise trainer_lib.EvaluationStopped()
            outputs = {k: v.numpy() for k, v in self._run(batch).items()}
            batch_truth, batch_detected = _rows(outputs, self._class_ids)
            truth += batch_truth
            detected += batch_detected
        if not truth:
            raise ValueError("The detection evaluation saw no ground-truth box of the evaluated "
                             "actions: check run.eval_data and run.eval_label_map.")
        mean_ap, per_class = frame_map.frame_map(truth, detected, self._class_ids)
        if self._path:
            ava.write_box_csv(self._path, detected, "detections", decimals=None)
        output = {"frame_map": mean_ap, "num_keyframes": float(len({r.key for r in truth}))}
        output.update({f"ap/{self._names.get(c, c)}": ap for c, ap in per_class.items()
                       if ap == ap})
        return output
