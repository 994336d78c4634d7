"""Frame-level mAP of AVA detections in AVA CSV format (the ActivityNet evaluator's numbers).

    python -m cvrl_tf.ava_eval --groundtruth ava_val_v2.2.csv --detections detections.csv \
        --label_map ava_action_list_v2.2_for_activitynet_2019.pbtxt \
        [--excluded_timestamps ava_val_excluded_timestamps_v2.2.csv] [--max_detections_per_key 50]

Prints one line per class of the label map (id, AP, name; "-" for a class without ground
truth, left out of the mean) and `mAP=<value>` last. The rules: cvrl_tf/frame_map.py.
"""
import argparse
import sys
from typing import Optional, Sequence

from cvrl_tf import frame_map
from cvrl_tf.data import ava
from cvrl_tf.runtime import cli


def evaluate_files(groundtruth: str, detections: str, label_map: str,
                   excluded_timestamps: Optional[str] = None,
                   max_detections_per_key: int = frame_map.MAX_DETECTIONS_PER_KEY
                   ) -> tuple[float, dict[int, float], dict[int, str]]:
    """(mAP, {class id: AP}, {class id: name}) of AVA CSV files; ValueError naming a bad file."""
    classes = ava.read_label_map(label_map)
    truth = ava.read_annotations(groundtruth)
    if not any(row.action_id in classes for row in truth):
        raise ValueError(f"Ground truth {groundtruth} has no row of the {len(classes)} classes "
                         f"of {label_map}; check --label_map.")
    excluded = ava.read_excluded(excluded_timestamps) if excluded_timestamps else set()
    mean_ap, per_class = frame_map.frame_map(
        truth, ava.iter_detections(detections), classes, excluded,
        max_detections_per_key=max_detections_per_key)
    return mean_ap, per_class, classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: print the per-class table and mAP; exit 2 on a bad file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groundtruth", required=True, help="AVA annotation CSV")
    parser.add_argument("--detections", required=True, help="AVA CSV with scores")
    parser.add_argument("--label_map", required=True, help="the evaluated actions (pbtxt)")
    parser.add_argument("--excluded_timestamps", default=None, help="video_id,timestamp CSV")
    parser.add_argument("--max_detections_per_key", type=int,
                        default=frame_map.MAX_DETECTIONS_PER_KEY,
                        help="best detections kept per keyframe (the evaluator's 50; 0: all)")
    args = parser.parse_args(argv)
    try:
        mean_ap, per_class, names = evaluate_files(
            args.groundtruth, args.detections, args.label_map, args.excluded_timestamps,
            args.max_detections_per_key)
    except ValueError as e:  # Bad input: one sentence, no traceback.
        cli.fail(str(e))
    for class_id, ap in per_class.items():
        shown = "     -" if ap != ap else f"{ap:.4f}"
        print(f"{class_id:4d}  {shown}  {names[class_id]}")
    print(f"mAP={mean_ap:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
