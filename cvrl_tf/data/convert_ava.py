"""AVA videos + annotations -> detection TFRecords, one SequenceExample per keyframe.

    python -m cvrl_tf.data.convert_ava --videos DIR --annotations CSV --label_map PBTXT \
        --output_dir OUT --split_name train|eval [--proposals CSV|PKL] \
        [--excluded_timestamps CSV] [--fps 30] [--short_side 256] [--jpeg_quality 90] \
        [--num_shards N] [--workers W] [--window_frames 64] [--video_start auto|SECONDS]

Records: schema.make_detection_example (the keyframe's window of frames, its key, person boxes
with their actions, proposals with scores). Videos are `DIR/<video_id>.<any extension>`; how a
keyframe's second maps to a frame: cvrl_tf/data/ava_video.py (`--video_start auto` tells the
15-minute cuts from whole movies by duration). Rows of one keyframe with the same box are one
person with several actions. Train split: keyframes with ground truth; eval: keyframes with
ground truth or proposals. Excluded keyframes are not written. Skipped and malformed rows
(a box outside [0, 1] or with x1 >= x2, an action id not in the label map), videos missing
from DIR, keyframes outside their video and videos that fail to decode are named with their
cause in OUT/convert_report.json. Shards (one per video by default) are written and resumed
as by cvrl_tf.data.convert; OUT/example_counts.json counts keyframes.
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import tensorflow as tf
from google.protobuf import message

from cvrl_tf.data import ava, ava_video, schema, sharding
from cvrl_tf.runtime import cli

ACTION_LIST_NAME = "action_list.pbtxt"  # The label map of the records, next to label_map.txt.


@dataclasses.dataclass(frozen=True)
class Keyframe:
    """One keyframe to write: its people (boxes with action ids) and proposals."""
    video_id: str
    timestamp: int
    persons: tuple[ava.PersonBox, ...]
    proposals: tuple[tuple[ava.Box, float], ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How frames are stored: rate, size, JPEG quality, frames per keyframe, movie start."""
    fps: float = 30.0
    short_side: Optional[int] = 256
    jpeg_quality: int = 90
    window_frames: int = 64
    video_start: Optional[float] = None  # None: from each file's duration.


def _usable(rows: list[ava.BoxRow], path: str, classes: dict, excluded: set,
            skipped: list, excluded_seen: set) -> list[ava.BoxRow]:
    """The rows to write: bad ones go to `skipped` with their cause, excluded ones are left."""
    kept = []
    for row in rows:
        cause = ava.box_problem(row.box)
        if cause is None and row.action_id is not None and row.action_id not in classes:
            cause = f"action id {row.action_id} is not in the label map"
        if cause:
            skipped.append({"file": path, "line": row.line, "keyframe": row.key, "cause": cause})
        elif row.key in excluded:
            excluded_seen.add(row.key)
        else:
            kept.append(row)
    return kept


def collect_keyframes(annotations: str, classes: dict, split: str,
                      proposals: Optional[str] = None, excluded: Optional[str] = None
                      ) -> tuple[dict[str, list[Keyframe]], dict]:
    """({video_id: keyframes in time order}, row counts and skipped rows) of the split."""
    skipped, excluded_seen = [], set()
    excluded_keys = ava.read_excluded(excluded) if excluded else set()
    truth = ava.read_annotations(annotations, check_boxes=False)
    people = ava.merge_person_boxes(_usable(truth, annotations, classes, excluded_keys,
                                            skipped, excluded_seen))
    boxes = ava.read_proposals(proposals) if proposals else []
    found: dict[str, dict] = {}  # A box listed once per label (SlowFast's files) is one box.
    for row in _usable(boxes, proposals, classes, excluded_keys, skipped, excluded_seen):
        found.setdefault(row.key, {}).setdefault(row.box, row.score)
    keys = set(people) | (set(found) if split == "eval" else set())
    by_video: dict[str, list[Keyframe]] = {}
    for key in keys:
        video_id, timestamp = ava.split_key(key)
        by_video.setdefault(video_id, []).append(Keyframe(
            video_id, timestamp, tuple(people.get(key, ())),
            tuple(found.get(key, {}).items())))
    for keyframes in by_video.values():
        keyframes.sort(key=lambda k: k.timestamp)
    rows = {"annotation_rows": len(truth), "proposal_rows": len(boxes),
            "keyframes_excluded": len(excluded_seen), "rows_skipped": skipped}
    return dict(sorted(by_video.items())), rows


def video_files(videos_dir: str) -> dict[str, str]:
    """{video id: path} of the files in videos_dir, the id being the name before the last dot
    (hidden and temporary files ignored; of two files with one id, the first by name)."""
    if not os.path.isdir(videos_dir):
        raise ValueError(f"--videos {videos_dir!r} is not a directory.")
    files = {}
    for name in sorted(os.listdir(videos_dir)):
        path = os.path.join(videos_dir, name)
        if not name.startswith(".") and "." in name and os.path.isfile(path):
            files.setdefault(name.rsplit(".", 1)[0], path)
    return files


def _record(keyframe: Keyframe, jpegs: list[bytes], keyframe_index: int) -> bytes:
    persons, found = keyframe.persons, keyframe.proposals
    return schema.make_detection_example(
        jpegs, ava.keyframe_key(keyframe.video_id, keyframe.timestamp), keyframe_index,
        keyframe.timestamp, [p.box for p in persons],
        [[a - 1 for a in p.action_ids] for p in persons],
        [-1 if p.person_id is None else p.person_id for p in persons],
        [b for b, _ in found], [s for _, s in found]).SerializeToString()


def _new_stats() -> dict:
    return {"videos": 0, "keyframes": 0, "boxes": 0, "actions": {}, "proposals": 0,
            "bytes": 0, "movie_start": {}, "keyframes_skipped": [], "videos_failed": []}


def _count(stats: dict, video_id: str, actions: Sequence[int], boxes: int,
           proposals: int) -> None:
    """Adds one written keyframe of `video_id` to a shard's counts."""
    stats["keyframes"] += 1
    stats["boxes"] += boxes
    stats["proposals"] += proposals
    for a in actions:
        stats["actions"][str(a)] = stats["actions"].get(str(a), 0) + 1
    if video_id not in stats["movie_start"]:
        stats["videos"] += 1


def write_ava_shard(path: str, jobs: Sequence[tuple[str, str, list[Keyframe]]],
                    settings: Settings) -> dict:
    """Writes the keyframes of (video id, file, keyframes) jobs into one shard; its counts."""
    stats = _new_stats()

    def video_records(video_id: str, video_path: str, keyframes: list[Keyframe]
                      ) -> Iterator[bytes]:
        by_time = {k.timestamp: k for k in keyframes}
        start, outside, windows = ava_video.keyframe_windows(
            video_path, list(by_time), settings.fps, settings.short_side,
            settings.window_frames, settings.jpeg_quality, settings.video_start)
        stats["keyframes_skipped"] += [{"keyframe": ava.keyframe_key(video_id, t), "cause": c}
                                       for t, c in outside]
        for timestamp, jpegs in windows:
            keyframe = by_time[timestamp]
            yield _record(keyframe, jpegs, settings.window_frames // 2)
            _count(stats, video_id, [a for p in keyframe.persons for a in p.action_ids],
                   len(keyframe.persons), len(keyframe.proposals))
            stats["movie_start"][video_id] = start

    def records() -> Iterator[bytes]:
        for video_id, video_path, keyframes in jobs:
            written = stats["keyframes"]
            try:
                yield from video_records(video_id, video_path, keyframes)
            except Exception as e:  # pylint: disable=broad-except
                stats["videos_failed"].append({
                    "video_id": video_id, "path": video_path, "reason": sharding.skip_reason(e),
                    "keyframes_written": stats["keyframes"] - written})
    stats["bytes"] = sharding.write_records(path, records())
    return stats


def count_ava_shard(path: str) -> dict:
    """The counts of a finished shard read from its records (one a killed run never
    reported)."""
    stats = _new_stats()
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        try:
            context = tf.train.SequenceExample.FromString(record).context.feature
        except message.DecodeError:
            continue
        key = context[schema.MEDIA_ID_KEY].bytes_list.value[0].decode()
        video_id, _ = ava.split_key(key)
        _count(stats, video_id, [i + 1 for i in context[schema.REGION_LABEL_KEY].int64_list.value],
               len(context[schema.BOX_KEYS[0]].float_list.value),
               len(context[schema.PROPOSAL_SCORE_KEY].float_list.value))
        stats["movie_start"].setdefault(video_id, None)
    stats["bytes"] = tf.io.gfile.stat(path).length
    return stats


def _write_label_maps(output_dir: str, classes: dict, label_map: str) -> None:
    """OUT/action_list.pbtxt (the label map) and OUT/label_map.txt (line i: action id i + 1,
    the records' action index i); refuses a different label map from an earlier split."""
    existing = os.path.join(output_dir, ACTION_LIST_NAME)
    if os.path.exists(existing):
        if ava.read_label_map(existing) != classes:
            raise ValueError(f"{existing!r} differs from --label_map {label_map!r}; use a new "
                             f"--output_dir or the same label map for every split.")
        return
    names = [classes.get(i, f"(action id {i} is not in the label map)")
             for i in range(1, max(classes) + 1)]
    schema.write_label_map(schema.label_map_path(output_dir), names)
    ava.write_label_map(existing, classes)


def _check(settings: Settings, split: str, workers: int, num_shards: Optional[int]) -> None:
    if not (settings.fps > 0 and settings.window_frames >= 1 and workers >= 1
            and 1 <= settings.jpeg_quality <= 100 and (settings.short_side or 0) >= 0
            and (num_shards is None or num_shards >= 1) and split in ("train", "eval")
            and (settings.video_start is None or settings.video_start >= 0)):
        raise ValueError(f"Bad convert_ava settings: fps={settings.fps} must be > 0, "
                         f"window_frames={settings.window_frames}, workers={workers} and "
                         f"num_shards={num_shards} >= 1, jpeg_quality={settings.jpeg_quality} "
                         f"in [1, 100], short_side={settings.short_side} and video_start="
                         f"{settings.video_start} >= 0, split_name={split!r} train or eval.")


def convert_ava(videos_dir: str, annotations: str, label_map: str, output_dir: str,
                split_name: str, *, proposals: Optional[str] = None,
                excluded_timestamps: Optional[str] = None, settings: Settings = Settings(),
                num_shards: Optional[int] = None, workers: int = 1, progress: bool = True
                ) -> dict:
    """Converts one split into `output_dir/<split>-*-of-*.tfrecord`; returns the report."""
    began = time.time()
    _check(settings, split_name, workers, num_shards)
    classes = ava.read_label_map(label_map)
    by_video, rows = collect_keyframes(annotations, classes, split_name, proposals,
                                       excluded_timestamps)
    files = video_files(videos_dir)
    jobs = [(v, files[v], k) for v, k in by_video.items() if v in files]
    missing = [{"video_id": v, "keyframes": len(k), "cause": f"no file {v}.* in --videos"}
               for v, k in by_video.items() if v not in files]
    if not jobs:
        raise ValueError(f"None of the {len(by_video)} videos with {split_name} keyframes in "
                         f"{annotations} is in --videos {videos_dir!r} (as <video_id>.<ext>).")
    num_shards = num_shards or len(jobs)
    tf.io.gfile.makedirs(output_dir)
    sharding.check_other_shardings(output_dir, split_name, num_shards)
    _write_label_maps(output_dir, classes, label_map)
    names = [schema.shard_filename(split_name, s, num_shards) for s in range(num_shards)]
    shards = sharding.finished_shards(output_dir, split_name, names, count_ava_shard,
                                      "keyframes")
    tasks = {name: (os.path.join(output_dir, name), jobs[s::num_shards], settings)
             for s, name in enumerate(names) if name not in shards}
    done = sorted(shards)
    written, failed = sharding.run_shards(write_ava_shard, tasks,
                                          {n: len(t[1]) for n, t in tasks.items()}, workers,
                                          progress, f"{split_name} videos", "video")
    shards.update(written)
    report = _report(shards, classes, rows, missing, failed, done)
    report.update(videos_dir=videos_dir, annotations_file=annotations,
                  proposals_file=proposals, excluded_timestamps_file=excluded_timestamps,
                  label_map_file=label_map, output_dir=output_dir, split=split_name,
                  num_shards=num_shards, seconds=round(time.time() - began, 2),
                  **dataclasses.asdict(settings))
    sharding.update_report(output_dir, split_name, report)
    schema.write_example_counts(output_dir, split_name,
                                {name: s["keyframes"] for name, s in shards.items()})
    return report


def _report(shards: dict, classes: dict, rows: dict, missing: list, failed: list,
            done: list) -> dict:
    """The split's counts and every skipped item, summed over its shards."""
    actions = {name: sum(s["actions"].get(str(i), 0) for s in shards.values())
               for i, name in classes.items()}
    starts = [v for s in shards.values() for v in s["movie_start"].values() if v is not None]
    return {
        "num_classes": max(classes), **{k: v for k, v in rows.items() if k != "rows_skipped"},
        "videos_written": sum(s["videos"] for s in shards.values()),
        "keyframes": sum(s["keyframes"] for s in shards.values()),
        "boxes": sum(s["boxes"] for s in shards.values()),
        "proposals": sum(s["proposals"] for s in shards.values()),
        "bytes": sum(s["bytes"] for s in shards.values()),
        "actions_per_class": actions,
        "videos_as_cut_files": sum(1 for v in starts if v == ava_video.CUT_START),
        "videos_as_whole_movies": sum(1 for v in starts if v == 0),
        "rows_skipped": rows["rows_skipped"], "videos_missing": missing,
        "keyframes_skipped": [k for s in shards.values() for k in s["keyframes_skipped"]],
        "videos_failed": [v for s in shards.values() for v in s["videos_failed"]],
        "shards_written": len(shards) - len(done), "shards_already_complete": done,
        "shards_failed": failed, "shards": dict(sorted(shards.items())),
    }


def _print_report(report: dict) -> None:
    print(f"{report['split']}: {report['keyframes']} keyframes of {report['videos_written']} "
          f"videos written ({report['boxes']} person boxes, "
          f"{sum(report['actions_per_class'].values())} actions, {report['proposals']} "
          f"proposals), {report['bytes'] / 1e6:.1f} MB in {report['num_shards']} shards "
          f"({len(report['shards_already_complete'])} already complete) in "
          f"{report['seconds']:.1f} s; {report['keyframes_excluded']} excluded keyframes left "
          f"out; {report['videos_as_cut_files']} videos read as 15-minute cuts, "
          f"{report['videos_as_whole_movies']} as whole movies.")
    problems = ([(f"row {i['file']}:{i['line']}", i["cause"]) for i in report["rows_skipped"]]
                + [(f"video {i['video_id']}", i["cause"]) for i in report["videos_missing"]]
                + [(f"keyframe {i['keyframe']}", i["cause"])
                   for i in report["keyframes_skipped"]]
                + [(f"video {i['video_id']}", i["reason"]) for i in report["videos_failed"]]
                + [(f"shard {i['shard']} FAILED", i["reason"] + " (rerun to retry it)")
                   for i in report["shards_failed"]])
    for what, cause in problems[:20]:
        print(f"  skipped {what}: {cause}")
    if len(problems) > 20:
        print(f"  ... {len(problems) - 20} more in {sharding.REPORT_NAME}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: convert and print the report; exit 1 if a shard failed, 2 on bad
    input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", required=True, help="folder of <video_id>.<ext> files")
    parser.add_argument("--annotations", required=True, help="AVA annotation CSV")
    parser.add_argument("--label_map", required=True, help="AVA action list (pbtxt)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split_name", required=True, choices=("train", "eval"))
    parser.add_argument("--proposals", default=None, help="person boxes: CSV or .pkl")
    parser.add_argument("--excluded_timestamps", default=None)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--short_side", type=int, default=256, help="0 keeps the size")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--num_shards", type=int, default=None, help="default: one per video")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--window_frames", type=int, default=64,
                        help="frames stored per keyframe, the keyframe at the centre")
    parser.add_argument("--video_start", default="auto",
                        help="movie second the files start at (900: 15-minute cuts, 0: whole "
                             "movies); auto: from each file's duration")
    args = parser.parse_args(argv)
    try:
        start = None if args.video_start == "auto" else float(args.video_start)
    except ValueError:
        cli.fail(f"--video_start must be auto or seconds, got {args.video_start!r}.")
    settings = Settings(args.fps, args.short_side, args.jpeg_quality, args.window_frames, start)
    try:
        report = convert_ava(args.videos, args.annotations, args.label_map, args.output_dir,
                             args.split_name, proposals=args.proposals,
                             excluded_timestamps=args.excluded_timestamps, settings=settings,
                             num_shards=args.num_shards, workers=args.workers)
    except ValueError as e:  # Bad input: one sentence, no traceback.
        cli.fail(str(e))
    _print_report(report)
    return 1 if report["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
