"""The embedded motion data set: small labelled videos whose class is their MOTION.

Six classes: an object moving right / left / up / down, growing, shrinking. Shape (circle or
square), grey levels, size, speed, start point and the noisy, faintly textured background are
random in every class, and per-frame statistics are made class-independent: motion wraps around the
frame (a torus) from a uniform start, so the object position in any frame is uniform for every
class; moving objects take their size from a growing trajectory at a uniformly random frame,
and growing / shrinking are time reverses of each other, so the size distribution over frames
is the same for all classes. A single frame therefore cannot tell the class; two frames can.
The videos are grey on purpose: with a random colour per background and object, two clips of
one video were told apart from other videos by colour alone, and CVRL pretraining of the
demo's tiny R3D learned motion only in some runs (docs/DEMO.md); with grey levels, what two
clips of a video share is mostly their motion, which is what the demo is meant to show.

    python -m cvrl_tf.data.synthetic --output_dir DIR   # train/eval TFRecords + label_map.txt
    python -m cvrl_tf.data.synthetic --detection --output_dir DIR  # synthetic AVA (synthetic_ava)
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import concurrent.futures
import json
import os
import sys
from typing import Optional

import numpy as np
import tensorflow as tf

from cvrl_tf.data import schema
from cvrl_tf.runtime import cli

CLASS_NAMES = ("moving_right", "moving_left", "moving_up", "moving_down", "growing", "shrinking")
# Unit direction (dy, dx) per moving class; None for the size-changing classes.
_DIRECTIONS = {0: (0.0, 1.0), 1: (0.0, -1.0), 2: (-1.0, 0.0), 3: (1.0, 0.0)}


def _size_trajectory(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """Radii of a growing object, [L] increasing linearly from small to large."""
    r_small = rng.uniform(0.075, 0.135) * size
    r_large = rng.uniform(0.27, 0.39) * size
    return np.linspace(r_small, r_large, num_frames)


def background(rng: np.random.Generator, height: int, width: Optional[int] = None) -> tuple:
    """A static, faintly textured grey background [height, width, 3] (float, width defaults to
    height) and its grey level."""
    width = width or height
    level = rng.uniform(30.0, 225.0)
    coarse = rng.normal(0.0, 1.0, (4, 4, 1))
    texture = np.kron(coarse, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
    amplitude = rng.uniform(2.0, 8.0)
    return np.clip(level + amplitude * np.repeat(texture, 3, axis=-1), 0, 255), level


def object_level(rng: np.random.Generator, background_level: float) -> float:
    """An object's grey level, at least 70 levels from the background's (kept visible)."""
    level = rng.uniform(0, 255)
    while abs(level - background_level) < 70:
        level = rng.uniform(0, 255)
    return level


def shape_alpha(dy: np.ndarray, dx: np.ndarray, radius, square: bool) -> np.ndarray:
    """Coverage in [0, 1] of a square (half side `radius`) or disc (radius `radius`) at pixel
    offsets dy, dx from its centre, anti-aliased over one pixel."""
    dist = np.maximum(np.abs(dy), np.abs(dx)) if square else np.hypot(dy, dx)
    return np.clip(radius - dist + 0.5, 0.0, 1.0)


def noisy_frames(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey frames [..., H, W] (float) as uint8 RGB with per-channel pixel noise."""
    frames = np.repeat(grey[..., None], 3, axis=-1)
    frames += rng.normal(0.0, rng.uniform(3.0, 12.0), frames.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def sample_trajectory(rng: np.random.Generator, label: int, num_frames: int = 32,
                      size: int = 48) -> dict:
    """The object's per-frame centre (y, x on the torus, [L] each) and radius [L] for a class."""
    if label not in range(len(CLASS_NAMES)):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}.")
    t = np.arange(num_frames, dtype=np.float64)
    radii = _size_trajectory(rng, num_frames, size)
    if label == 5:
        radii = radii[::-1]
    elif label < 4:  # A moving object keeps the size of a growing one at a random frame.
        radii = np.full(num_frames, radii[rng.integers(num_frames)])
    start = rng.uniform(0, size, 2)
    speed = rng.uniform(1.2, 2.8) if label < 4 else 0.0
    dy, dx = _DIRECTIONS.get(label, (0.0, 0.0))
    return {"y": (start[0] + speed * dy * t) % size, "x": (start[1] + speed * dx * t) % size,
            "radius": radii}


def render_video(rng: np.random.Generator, label: int, num_frames: int = 32,
                 size: int = 48) -> np.ndarray:
    """One video of class `label`, uint8 [num_frames, size, size, 3]."""
    path = sample_trajectory(rng, label, num_frames, size)
    backdrop, bg_level = background(rng, size)
    level = object_level(rng, bg_level)
    square = rng.random() < 0.5
    grid = np.arange(size, dtype=np.float64) + 0.5
    # Distances on the torus, so motion wraps around and positions stay uniform.
    ddy = (grid[None, :, None] - path["y"][:, None, None] + size / 2) % size - size / 2
    ddx = (grid[None, None, :] - path["x"][:, None, None] + size / 2) % size - size / 2
    alpha = shape_alpha(ddy, ddx, path["radius"][:, None, None], square)
    # Object and background are grey: blend one channel, then add per-channel pixel noise.
    grey = alpha * level + (1.0 - alpha) * backdrop[None, :, :, 0]
    return noisy_frames(grey, rng)


@tf.function(autograph=False)
def _encode_video(frames: tf.Tensor, quality: int) -> tf.Tensor:
    """JPEG bytes of every frame in one call (the same bytes as schema.encode_frames); traced
    once per frame shape and quality."""
    return tf.map_fn(lambda frame: tf.io.encode_jpeg(frame, quality=quality), frames,
                     fn_output_signature=tf.string)


def _video_record(seed: int, split: str, split_key: int, index: int, label: int,
                  num_frames: int, size: int, jpeg_quality: int) -> bytes:
    """One serialized SequenceExample; its content depends only on (seed, split, index)."""
    frames = render_video(np.random.default_rng([seed, split_key, index]), label, num_frames,
                          size)
    jpegs = list(_encode_video(frames, jpeg_quality).numpy())
    return schema.make_sequence_example(jpegs, label, f"synthetic-{split}-{index:05d}",
                                        [CLASS_NAMES[label]]).SerializeToString()


def write_split(output_dir: str, split: str, num_videos: int, num_frames: int, size: int,
                num_shards: int, seed: int, jpeg_quality: int = 90) -> list[str]:
    """Writes one split as `<split>-0000i-of-0000N.tfrecord`, classes balanced, and records its
    videos per shard in example_counts.json (schema.write_example_counts); returns the files."""
    num_shards = max(1, min(num_shards, num_videos))
    split_key = sum(split.encode())
    labels = np.random.default_rng([seed, split_key]).permutation(
        np.arange(num_videos) % len(CLASS_NAMES))
    paths = [os.path.join(output_dir, schema.shard_filename(split, i, num_shards))
             for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    # Videos render and encode on every core (numpy's generators and the JPEG encoder release
    # the GIL); map() keeps their order, so the files do not depend on the thread count.
    try:
        with concurrent.futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 1)) as pool:
            records = pool.map(lambda i: _video_record(seed, split, split_key, i, int(labels[i]),
                                                       num_frames, size, jpeg_quality),
                               range(num_videos))
            for i, record in enumerate(records):
                writers[i % num_shards].write(record)
    finally:
        for w in writers:
            w.close()
    schema.write_example_counts(output_dir, split, {  # Video i went to shard i % num_shards.
        path: len(range(s, num_videos, num_shards)) for s, path in enumerate(paths)})
    return paths


def write_dataset(output_dir: str, num_train: int = 600, num_eval: int = 300,
                  num_frames: int = 32, size: int = 48, num_shards: int = 4, seed: int = 0
                  ) -> dict:
    """Writes the motion data set (train and eval splits, label_map.txt, example_counts.json);
    deterministic in seed.

    Returns {'train_pattern', 'eval_pattern', 'label_map', 'num_train', 'num_eval',
    'num_classes', 'class_names', 'num_frames', 'size'}.
    """
    if min(num_train, num_eval, num_frames, size, num_shards) < 1:
        raise ValueError("num_train, num_eval, num_frames, size and num_shards must be >= 1.")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}.")
    tf.io.gfile.makedirs(output_dir)
    write_split(output_dir, "train", num_train, num_frames, size, num_shards, seed)
    write_split(output_dir, "eval", num_eval, num_frames, size, num_shards, seed)
    label_map = schema.label_map_path(output_dir)
    schema.write_label_map(label_map, CLASS_NAMES)
    return {
        "train_pattern": os.path.join(output_dir, "train-*.tfrecord"),
        "eval_pattern": os.path.join(output_dir, "eval-*.tfrecord"),
        "label_map": label_map,
        "num_train": num_train,
        "num_eval": num_eval,
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "num_frames": num_frames,
        "size": size,
    }


@cli.guard
def main(argv: Optional[list] = None) -> int:
    """CLI: write the data set (the motion set, or with --detection the synthetic AVA set) and
    print its summary as JSON; exit 2 with one sentence on bad settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--detection", action="store_true",
                        help="the synthetic AVA set (videos + AVA annotation files) instead")
    parser.add_argument("--num_train", type=int, default=None, help="videos (600; AVA: 48)")
    parser.add_argument("--num_eval", type=int, default=None, help="videos (300; AVA: 16)")
    parser.add_argument("--num_frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=int, default=6, help="AVA: seconds per video")
    parser.add_argument("--fps", type=int, default=10, help="AVA: frames per second")
    parser.add_argument("--height", type=int, default=64, help="AVA: frame height")
    parser.add_argument("--width", type=int, default=96, help="AVA: frame width")
    args = parser.parse_args(argv)
    if args.detection:
        # Imported here: synthetic_ava draws its actors with this module's helpers.
        from cvrl_tf.data import synthetic_ava  # pylint: disable=import-outside-toplevel
        info = synthetic_ava.write_dataset(
            args.output_dir, args.num_train or 48, args.num_eval or 16, args.seconds,
            args.fps, args.height, args.width, args.seed)
    else:
        info = write_dataset(args.output_dir, args.num_train or 600, args.num_eval or 300,
                             args.num_frames, args.size, args.num_shards, args.seed)
    print(json.dumps(info, indent=2))
    if args.detection:
        print(f"Next, convert it:\n{synthetic_ava.next_commands(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
