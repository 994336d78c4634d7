"""Kinetics-like benchmark records: natural photographs panned and zoomed over, as JPEG frames.

Noise and flat synthetic frames decode at unrealistic speeds (noise is slow, flat fast), so
the frames are views of the two photographs scikit-learn ships (`load_sample_images`, 427x640)
moving slowly from one random viewport to another: short side 256 (16:9, 456x256, as
`ffmpeg -vf scale=-2:256` makes of a YouTube video), 250 frames (10 s at 25 fps), JPEG quality
90 with 4:2:0 chroma, which gives about the bytes per frame of ffmpeg's mjpeg encoder at
`-q:v 2` (docs/BENCHMARKS.md, "Input pipeline"). The records use cvrl_tf's schema
(docs/DESIGN.md), which the Model Garden video_ssl loader reads too.
"""
import os
from typing import Optional

import cv2
import numpy as np
import tensorflow as tf

from cvrl_tf.data import schema

WIDTH, HEIGHT = 456, 256


def photographs() -> list[np.ndarray]:
    """The photographs the frames are cut from, uint8 [H, W, 3] (shipped with scikit-learn)."""
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
    return list(load_sample_images().images)


def pan_and_zoom(photo: np.ndarray, num_frames: int, rng: np.random.Generator,
                 width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """uint8 [L, height, width, 3]: a viewport of the photo's aspect moving and zooming
    linearly from one random position and scale to another."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    max_w = min(pw, ph * aspect)

    def viewport():
        w = max_w * rng.uniform(0.55, 1.0)
        h = w / aspect
        return np.array([rng.uniform(0, ph - h), rng.uniform(0, pw - w), h, w])

    first, last = viewport(), viewport()
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i, t in enumerate(np.linspace(0.0, 1.0, num_frames)):
        y, x, h, w = (1 - t) * first + t * last
        # An affine map of the viewport onto the frame (sub-pixel smooth motion).
        matrix = np.array([[w / width, 0, x], [0, h / height, y]], np.float64)
        frames[i] = cv2.warpAffine(photo, matrix, (width, height),
                                   flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REFLECT)
    return frames


def write_records(out_dir: str, num_videos: int = 16, num_frames: int = 250,
                  num_shards: int = 4, quality: int = 90, seed: int = 0,
                  width: int = WIDTH, height: int = HEIGHT) -> str:
    """Writes num_videos records into num_shards files; returns their glob pattern."""
    rng = np.random.default_rng(seed)
    photos = photographs()
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"train-{s:05d}-of-{num_shards:05d}.tfrecord")
             for s in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for v in range(num_videos):
            photo = photos[v % len(photos)]
            if rng.random() < 0.5:
                photo = photo[:, ::-1]
            frames = pan_and_zoom(np.ascontiguousarray(photo), num_frames, rng, width, height)
            example = schema.make_sequence_example(
                schema.encode_frames(frames, quality), v % 400, f"kinetics_like-{v:05d}")
            writers[v % num_shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    return os.path.join(out_dir, "train-*.tfrecord")


def existing_pattern(out_dir: Optional[str]) -> Optional[str]:
    """The records' glob pattern if out_dir already holds them, else None."""
    if not out_dir:
        return None
    pattern = os.path.join(out_dir, "train-*.tfrecord")
    return pattern if tf.io.gfile.glob(pattern) else None
