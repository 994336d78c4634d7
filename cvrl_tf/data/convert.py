"""Raw videos -> TFRecord SequenceExamples (docs/DESIGN.md schema), decoded with PyAV.

    python -m cvrl_tf.data.convert --input LIST.csv|CLASS_DIR --output_dir DIR \
        [--fps 25] [--short_side 256] [--jpeg_quality 90] [--num_shards N] [--workers W] \
        [--split_name train] [--label_map FILE] [--video_root DIR]

Each video is resampled to `fps` by timestamp, resized to `short_side` (aspect kept) and stored
as one JPEG per frame. One process task writes one shard to a hidden `.tmp-<shard>` file and
renames it when complete, so a killed run leaves no half shard and a rerun skips the finished
ones. A video that cannot be decoded is reported and skipped; DIR/convert_report.json keeps
the counts, and DIR/example_counts.json the videos per shard of each split (what training reads
to turn epochs into steps; schema.read_example_count). A shard finished by a killed run, whose
count no report holds, is counted from its records when the rerun resumes.
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import math
import os
import random
import re
import sys
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import av
import numpy as np
import tensorflow as tf
from google.protobuf import message

from cvrl_tf.data import schema, sharding
from cvrl_tf.data.sharding import REPORT_NAME
from cvrl_tf.data.video_list import VideoSpec, read_video_list
from cvrl_tf.runtime import cli

VIDEOS_PER_SHARD = 50  # Default sharding (a 10 s Kinetics clip's size: docs/BENCHMARKS.md).
_EPS = 1e-6  # Seconds: a tick this close to a frame's timestamp shows that frame.
T = TypeVar("T")


def resample_by_time(timed: Iterable[tuple[float, T]], fps: Optional[float],
                     start: Optional[float] = None, end: Optional[float] = None,
                     last_duration: Optional[float] = None) -> Iterator[T]:
    """Picks the item shown at each tick start + k / fps from (timestamp, item) pairs.

    An item is shown from its timestamp until the next one (the last for `last_duration`,
    default the gap before it). Ticks run over [start, end) (start defaults to the first
    timestamp). fps None or 0 keeps every item in the window.
    """
    prev, prev_t, gap, t0, k = None, 0.0, None, start, 0
    for t, item in timed:
        if end is not None and t >= end - _EPS:
            break
        if not fps:
            if start is None or t >= start - _EPS:
                yield item
            continue
        if t0 is None:
            t0 = t
        elif prev is None and t > t0:  # The video starts after `start`: no ticks before it.
            k = math.ceil((t - t0) * fps - _EPS)
        if prev is not None:
            while t0 + k / fps < t - _EPS:
                yield prev
                k += 1
            gap = t - prev_t
        prev, prev_t = item, t
    if fps and prev is not None:
        stop = prev_t + (last_duration or gap or 1.0 / fps)
        stop = min(stop, end) if end is not None else stop
        while t0 + k / fps < stop - _EPS:
            yield prev
            k += 1


def _target_size(width: int, height: int, short_side: Optional[int]) -> tuple[int, int]:
    if not short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_video(path: str, fps: Optional[float] = 25.0, short_side: Optional[int] = 256,
                 start: Optional[float] = None, end: Optional[float] = None
                 ) -> Iterator[np.ndarray]:
    """Yields uint8 RGB frames [H, W, 3] resampled to `fps` with the short side resized.

    A frame repeated by upsampling is yielded as the same array object, so callers can reuse
    its encoding.
    """
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        last_duration = 1.0 / float(rate) if rate else None
        if start and stream.time_base:
            try:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            except av.error.FFmpegError:
                container.seek(0, stream=stream)

        def timed() -> Iterator[tuple[float, av.VideoFrame]]:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i * (last_duration or 0.04)
                yield t, frame

        size, cache_key, cache = None, None, None
        for frame in resample_by_time(timed(), fps, start, end, last_duration):
            if frame is not cache_key:
                size = size or _target_size(frame.width, frame.height, short_side)
                cache_key, cache = frame, frame.reformat(
                    size[0], size[1], format="rgb24", interpolation="BICUBIC").to_ndarray()
            yield cache


def encode_video(spec: VideoSpec, label_index: int, fps: Optional[float],
                 short_side: Optional[int], jpeg_quality: int) -> tuple[bytes, int]:
    """Decodes one video into a serialized SequenceExample; returns it and its frame count."""
    jpegs, last, last_jpeg = [], None, b""
    for frame in decode_video(spec.path, fps, short_side, spec.start, spec.end):
        if frame is not last:
            last, last_jpeg = frame, schema.encode_frames(frame[None], jpeg_quality)[0]
        jpegs.append(last_jpeg)
    if not jpegs:
        raise ValueError("no frames decoded" + (" in the trim window" if spec.start else ""))
    example = schema.make_sequence_example(jpegs, [label_index], spec.video_id, [spec.label])
    return example.SerializeToString(), len(jpegs)


def write_shard(path: str, videos: Sequence[tuple[VideoSpec, int]], fps: Optional[float],
                short_side: Optional[int], jpeg_quality: int) -> dict:
    """Writes one shard; returns its counts and skipped videos."""
    stats = {"videos": 0, "frames": 0, "bytes": 0, "skipped": []}

    def records() -> Iterator[bytes]:
        for spec, label_index in videos:
            try:
                record, num_frames = encode_video(spec, label_index, fps, short_side,
                                                  jpeg_quality)
            except Exception as e:  # Any decoder failure skips this video, not the run.
                stats["skipped"].append({"path": spec.path,
                                         "reason": sharding.skip_reason(e)})
                continue
            stats["videos"] += 1
            stats["frames"] += num_frames
            yield record
    stats["bytes"] = sharding.write_records(path, records())
    return stats


def count_shard(path: str) -> dict:
    """Counts the videos and frames of a finished shard by reading its records (the counts of
    a shard that a killed run completed but never reported)."""
    stats = {"videos": 0, "frames": 0, "bytes": tf.io.gfile.stat(path).length, "skipped": []}
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        stats["videos"] += 1  # Every record is read as a video (a bad one is reported then).
        try:
            example = tf.train.SequenceExample.FromString(record)
        except message.DecodeError:
            continue
        stats["frames"] += len(example.feature_lists.feature_list[schema.IMAGE_KEY].feature)
    return stats


def _class_names(specs: Sequence[VideoSpec], label_map: Optional[str], output_dir: str
                 ) -> tuple[list[str], str]:
    """The label map to use (given file, else the output's existing one, else sorted names)."""
    existing = schema.label_map_path(output_dir)
    if label_map:
        names = schema.read_label_map(label_map)
        if (tf.io.gfile.exists(existing)
                and schema.read_label_map(existing) != names):
            raise ValueError(f"{existing!r} differs from --label_map {label_map!r}; use a new "
                             f"--output_dir or the same label map for every split.")
        return names, label_map
    if tf.io.gfile.exists(existing):
        return schema.read_label_map(existing), existing
    labels = {spec.label for spec in specs}
    if all(re.fullmatch(r"\d+", label) for label in labels):  # Integer labels are indices.
        return [str(i) for i in range(max(int(x) for x in labels) + 1)], "integer labels"
    return sorted(labels), "sorted class names"


def _label_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _label_indexer(names: Sequence[str]) -> Callable[[str], Optional[int]]:
    """Maps a label to its label-map index: the exact name, else the same name up to case,
    spaces and punctuation ('air_drumming' is 'air drumming'), else an integer index."""
    exact = {name: i for i, name in enumerate(names)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        loose.setdefault(_label_key(name), []).append(i)

    def index(label: str) -> Optional[int]:
        if label in exact:
            return exact[label]
        matches = loose.get(_label_key(label), [])
        if len(matches) == 1:
            return matches[0]
        return int(label) if label.isdigit() and int(label) < len(names) else None
    return index


def convert(input_path: str, output_dir: str, *, fps: Optional[float] = 25.0,
            short_side: Optional[int] = 256, jpeg_quality: int = 90,
            num_shards: Optional[int] = None, workers: int = 1, split_name: str = "train",
            label_map: Optional[str] = None, video_root: Optional[str] = None,
            progress: bool = True) -> dict:
    """Converts the listed videos into `output_dir/<split>-*-of-*.tfrecord`; returns the report.

    workers > 1 writes shards in that many processes. Finished shards are kept and skipped.
    """
    began = time.time()
    if (fps or 0) < 0 or (short_side or 0) < 0 or not 1 <= jpeg_quality <= 100 or workers < 1 \
            or (num_shards is not None and num_shards < 1):
        raise ValueError(f"Bad convert settings: fps={fps}, short_side={short_side} must be "
                         f">= 0, jpeg_quality={jpeg_quality} in [1, 100], workers={workers} "
                         f"and num_shards={num_shards} >= 1.")
    specs = read_video_list(input_path, video_root)
    names, label_source = _class_names(specs, label_map, output_dir)
    label_index, skipped, videos = _label_indexer(names), [], []
    for spec in specs:
        i = label_index(spec.label)
        if i is None:
            skipped.append({"path": spec.path,
                            "reason": f"label {spec.label!r} is not in the label map"})
        else:  # Records carry the label map's spelling of the class name.
            videos.append((dataclasses.replace(spec, label=names[i]), i))
    if not videos:
        raise ValueError(f"No video of {input_path!r} has a label in the label map "
                         f"({label_source}); check --label_map.")
    num_shards = num_shards or max(1, math.ceil(len(videos) / VIDEOS_PER_SHARD))
    tf.io.gfile.makedirs(output_dir)
    sharding.check_other_shardings(output_dir, split_name, num_shards)
    if not tf.io.gfile.exists(schema.label_map_path(output_dir)):
        schema.write_label_map(schema.label_map_path(output_dir), names)

    random.Random(0).shuffle(videos)  # Mix classes across and within shards, reproducibly.
    names = [schema.shard_filename(split_name, s, num_shards) for s in range(num_shards)]
    shards = sharding.finished_shards(output_dir, split_name, names, count_shard, "videos")
    done = sorted(shards)
    tasks = {name: (os.path.join(output_dir, name), videos[s::num_shards], fps, short_side,
                    jpeg_quality) for s, name in enumerate(names) if name not in shards}
    written, failed = sharding.run_shards(
        write_shard, tasks, {n: len(t[1]) for n, t in tasks.items()}, workers, progress,
        f"{split_name} shards", "video")
    shards.update(written)

    skipped += [item for s in shards.values() for item in s.get("skipped", [])]
    report = {
        "input": input_path, "output_dir": output_dir, "split": split_name,
        "fps": fps, "short_side": short_side, "jpeg_quality": jpeg_quality,
        "label_map": label_source, "num_classes": len(names), "num_shards": num_shards,
        "videos_listed": len(specs),
        "videos_written": sum(s["videos"] for s in shards.values()),
        "frames": sum(s["frames"] for s in shards.values()),
        "bytes": sum(s["bytes"] for s in shards.values()),
        "videos_skipped": len(skipped), "skipped": skipped,
        "shards_written": len(tasks) - len(failed), "shards_already_complete": done,
        "shards_failed": failed, "seconds": round(time.time() - began, 2),
        "shards": dict(sorted(shards.items())),
    }
    sharding.update_report(output_dir, split_name, report)
    schema.write_example_counts(output_dir, split_name,
                                {name: s["videos"] for name, s in shards.items()})
    return report


def _print_report(report: dict) -> None:
    print(f"{report['split']}: {report['videos_written']} videos written, {report['frames']} "
          f"frames, {report['bytes'] / 1e6:.1f} MB in {report['num_shards']} shards "
          f"({len(report['shards_already_complete'])} already complete) in "
          f"{report['seconds']:.1f} s; {report['videos_skipped']} videos skipped.")
    for item in report["skipped"][:20]:
        print(f"  skipped {item['path']}: {item['reason']}")
    if len(report["skipped"]) > 20:
        print(f"  ... {len(report['skipped']) - 20} more in {REPORT_NAME}")
    for item in report["shards_failed"]:
        print(f"  shard {item['shard']} FAILED: {item['reason']} (rerun to retry it)")


@cli.guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: convert and print the report; exit 1 if a shard failed, 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="CSV or folder of class folders")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fps", type=float, default=25.0, help="0 keeps the source rate")
    parser.add_argument("--short_side", type=int, default=256, help="0 keeps the size")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--num_shards", type=int, default=None,
                        help=f"default: one per {VIDEOS_PER_SHARD} videos")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--split_name", default="train")
    parser.add_argument("--label_map", default=None, help="class names in index order")
    parser.add_argument("--video_root", default=None, help="base of relative CSV paths")
    args = parser.parse_args(argv)
    try:
        report = convert(args.input, args.output_dir, fps=args.fps, short_side=args.short_side,
                         jpeg_quality=args.jpeg_quality, num_shards=args.num_shards,
                         workers=args.workers, split_name=args.split_name,
                         label_map=args.label_map, video_root=args.video_root)
    except ValueError as e:  # Bad input: one sentence, no traceback.
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    _print_report(report)
    return 1 if report["shards_failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
