"""Extract clip features with an exported backbone (SavedModel) from TFRecords or raw videos.

    python -m cvrl_tf.features --saved_model DIR --input 'gs://BUCKET/data/ucf101/eval-*' \\
        --output features_test.npz --num_frames 32 --stride 2 --crop_size 224 --views 10x3
    python -m cvrl_tf.features --saved_model DIR --input videos.csv --label_map label_map.txt \\
        --output features.npz

--input ending in .csv or .txt is a video list (the converter's format: `path,label` rows,
header optional, paths relative to the list) and a local folder is read as class sub-folders
of videos; either is listed by video_list.read_video_list and decoded with PyAV by
convert.decode_video (same fps and short-side resize as conversion). Anything else is a
TFRecord glob (or 'tfds:...' pattern) read by build_dataset in eval mode. Either way each
video gives --views TEMPORALxSPATIAL clips (evenly spaced starts x left/center/right square
crops, as in evaluation) whose features are averaged. Output .npz: ids [N] str, labels [N]
int64 (-1 when unknown), features [N, F] float32. --projector_dir DIR also writes the features,
labels and one thumbnail per video (the middle frame of the central view) for TensorBoard's
embedding projector (cvrl_tf/viz/projector.py): `tensorboard --logdir DIR`.

--num_frames, --stride and --crop_size default to the clip the model was trained on, which
export records in cvrl_tf_export.json ("clip"); explicit flags win. An export without it
falls back to 16 frames, stride 2, crop 224 and says so.
"""
from __future__ import annotations

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import io
import os
import re
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tqdm

from cvrl_tf import export as export_lib
from cvrl_tf.viz import projector
from cvrl_tf.data import pipeline, schema, spatial, temporal
from cvrl_tf.data import video_list as video_list_lib
from cvrl_tf.runtime import cli

VIDEO_LIST_SUFFIXES = (".csv", ".txt")
# Without a recorded training clip: the paper's R3D-50 evaluation clip.
DEFAULT_CLIP = {"num_frames": 16, "stride": 2, "crop_size": 224}
THUMBNAIL_SIZE = 64  # Pixels a side of a projector thumbnail.


def load_feature_fn(saved_model_dir: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The SavedModel's float32 signature as a function: clips [N, T, S, S, 3] -> [N, F]."""
    if not tf.io.gfile.exists(os.path.join(saved_model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"SavedModel {saved_model_dir} does not exist (no saved_model.pb); "
                                "write it with `python -m cvrl_tf.export`.")
    loaded = tf.saved_model.load(saved_model_dir)
    for name in ("serving_float32", "serving_default"):
        fn = loaded.signatures.get(name)
        spec = fn.structured_input_signature[1].get("video") if fn is not None else None
        if spec is not None and spec.dtype == tf.float32:
            break
    else:
        raise ValueError(f"SavedModel {saved_model_dir} has no float32 `video` signature; "
                         f"it has {sorted(loaded.signatures)}.")

    def features(clips: tf.Tensor) -> tf.Tensor:
        return fn(video=tf.convert_to_tensor(clips, tf.float32))["features"]

    features.saved_model = loaded  # Keeps the variables alive as long as the function.
    return features


def clip_features(fn: Callable, clips: tf.Tensor, batch_size: int) -> np.ndarray:
    """Features [N, F] of clips [N, T, S, S, 3], run through `fn` batch_size clips at a time."""
    count = int(clips.shape[0])
    return np.concatenate([fn(clips[i:i + batch_size]).numpy()
                           for i in range(0, count, batch_size)])


def eval_views(frames: np.ndarray, num_frames: int, stride: int, crop_size: int,
               num_temporal_views: int, num_spatial_views: int) -> tf.Tensor:
    """Decoded uint8 frames [L, H, W, 3] -> [Vt * Vs, T, S, S, 3] float32 in [0, 1].

    The same views as build_dataset's eval mode (temporal-major: v = t * Vs + s), built from
    the public temporal/spatial pieces the pipeline uses.
    """
    frames = tf.convert_to_tensor(frames, tf.uint8)
    length = tf.shape(frames)[0]
    starts = temporal.eval_clip_starts(length, num_frames, stride, num_temporal_views)
    indices = temporal.clip_frame_indices(starts, length, num_frames, stride)  # [Vt, T]
    clips = tf.gather(frames, tf.reshape(indices, [-1]))
    windows = spatial.eval_crop_windows(tf.shape(frames)[1], tf.shape(frames)[2],
                                        num_spatial_views)
    count = num_temporal_views * num_frames
    views = [tf.reshape(spatial.crop_and_resize(clips, tf.tile(windows[s:s + 1], [count, 1]),
                                                crop_size),
                        [num_temporal_views, num_frames, crop_size, crop_size, 3])
             for s in range(num_spatial_views)]
    return tf.reshape(tf.stack(views, axis=1), [-1, num_frames, crop_size, crop_size, 3])


def middle_frames(views: tf.Tensor, num_temporal_views: int, num_spatial_views: int,
                  size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Views [..., V, T, S, S, 3] in [0, 1] -> uint8 thumbnails [..., size, size, 3]: the
    middle frame of the central view (middle temporal view, centre crop when there are 3)."""
    view = (num_temporal_views // 2) * num_spatial_views + num_spatial_views // 2
    frame = views[..., view, views.shape[-4] // 2, :, :, :]
    thumbs = tf.image.resize(tf.cast(frame, tf.float32) * 255.0, (size, size), "area")
    return tf.cast(tf.clip_by_value(tf.round(thumbs), 0, 255), tf.uint8).numpy()


def _label_indices(labels: Sequence[str], label_map: str | None) -> list[int]:
    """Class names (or integer strings) -> indices via label_map, else ints, else sorted names."""
    if label_map:
        names = schema.read_label_map(label_map)
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(f"Labels {unknown[:5]} are not in the label map {label_map}.")
        return [names.index(label) for label in labels]
    if all(re.fullmatch(r"\d+", label) for label in labels):
        return [int(label) for label in labels]
    names = sorted(set(labels))
    print(f"No --label_map: labels are indices into the sorted class names ({len(names)}).")
    return [names.index(label) for label in labels]


def extract_from_videos(fn: Callable, video_list: str, num_frames: int, stride: int,
                        crop_size: int, num_temporal_views: int, num_spatial_views: int,
                        batch_size: int = 8, label_map: str | None = None,
                        fps: float | None = 25.0, short_side: int | None = 256,
                        thumbnails: bool = False) -> dict:
    """Features of every video in a list file (decoded with PyAV); see the module docstring.

    thumbnails=True adds 'thumbnails' uint8 [N, 64, 64, 3] (`middle_frames`).
    """
    from cvrl_tf.data import convert  # PyAV is needed only on this path.

    specs = video_list_lib.read_video_list(video_list)
    labels = _label_indices([spec.label for spec in specs], label_map)
    features, thumbs = [], []
    for spec in tqdm.tqdm(specs, desc="videos", unit="video"):
        try:
            frames = np.stack(list(convert.decode_video(spec.path, fps, short_side, spec.start,
                                                        spec.end)))
        except (OSError, ValueError) as e:
            raise ValueError(f"Video {spec.path} (listed in {video_list}) could not be "
                             f"decoded: {e}") from e
        views = eval_views(frames, num_frames, stride, crop_size, num_temporal_views,
                           num_spatial_views)
        features.append(clip_features(fn, views, batch_size).mean(axis=0))
        if thumbnails:
            thumbs.append(middle_frames(views, num_temporal_views, num_spatial_views))
    result = {"ids": np.array([spec.video_id for spec in specs], dtype=str),
              "labels": np.array(labels, dtype=np.int64),
              "features": np.stack(features).astype(np.float32)}
    if thumbnails:
        result["thumbnails"] = np.stack(thumbs)
    return result


def extract_from_records(fn: Callable, file_pattern: str, num_frames: int, stride: int,
                         crop_size: int, num_temporal_views: int, num_spatial_views: int,
                         batch_size: int = 8, thumbnails: bool = False,
                         show_progress: bool = True) -> dict:
    """Features of every video matched by a TFRecord glob, via build_dataset's eval mode.

    thumbnails=True adds 'thumbnails' uint8 [N, 64, 64, 3] (`middle_frames`); show_progress=False
    hides the progress bar (a caller with its own console, like the demo).
    """
    ds = pipeline.build_dataset(file_pattern, "eval", batch_size, num_frames, stride, crop_size,
                                num_temporal_views=num_temporal_views,
                                num_spatial_views=num_spatial_views, repeat=False,
                                drop_remainder=False)
    num_views = num_temporal_views * num_spatial_views
    ids, labels, features, thumbs = [], [], [], []
    with tqdm.tqdm(desc="videos", unit="video", disable=not show_progress) as progress:
        for batch in ds:
            video = batch["video"]
            b = int(video.shape[0])
            flat = tf.reshape(video, [b * num_views, num_frames, crop_size, crop_size, 3])
            out = clip_features(fn, flat, batch_size)
            features.append(out.reshape(b, num_views, -1).mean(axis=1))
            ids.extend(i.decode("utf-8") for i in batch["id"].numpy())
            labels.append(batch["label"].numpy())
            if thumbnails:
                thumbs.append(middle_frames(video, num_temporal_views, num_spatial_views))
            progress.update(b)
    if not ids:
        raise ValueError(f"File pattern {file_pattern} yielded no videos.")
    result = {"ids": np.array(ids, dtype=str),
              "labels": np.concatenate(labels).astype(np.int64),
              "features": np.concatenate(features).astype(np.float32)}
    if thumbnails:
        result["thumbnails"] = np.concatenate(thumbs)
    return result


def parse_views(views: str) -> tuple[int, int]:
    """'10x3' -> (10 temporal, 3 spatial); '1' -> (1, 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:x\s*(\d+))?\s*", views or "")
    if not match or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise ValueError(f"--views={views!r} must be TEMPORALxSPATIAL with positive counts, "
                         "e.g. 10x3 (30 views) or 1x1 (center clip, center crop).")
    return int(match.group(1)), int(match.group(2) or 1)


def resolve_clip(saved_model: str, num_frames: int | None = None, stride: int | None = None,
                 crop_size: int | None = None) -> dict:
    """The clip to extract with: given values win, then the export's training clip, then
    DEFAULT_CLIP (printing a note, since a model run on another clip gives weaker features)."""
    given = {"num_frames": num_frames, "stride": stride, "crop_size": crop_size}
    missing = [k for k, v in given.items() if v is None]
    if not missing:
        return given
    trained = export_lib.read_export_clip(saved_model)
    fallback = trained or DEFAULT_CLIP
    clip = {k: fallback[k] if v is None else v for k, v in given.items()}
    flags = " ".join(f"--{k} {clip[k]}" for k in missing)
    if trained:
        print(f"Using the model's training clip from {export_lib.METADATA_JSON}: {flags}")
    else:
        print(f"Note: {saved_model} records no training clip (no 'clip' in "
              f"{export_lib.METADATA_JSON}); using {flags}. Pass the flags that match how the "
              f"model was trained.")
    return clip


def extract(saved_model: str, input_path: str, output: str, num_frames: int | None = None,
            stride: int | None = None, crop_size: int | None = None, views: str = "10x3",
            batch_size: int = 8, label_map: str | None = None, fps: float | None = 25.0,
            short_side: int | None = 256, projector_dir: str | None = None) -> dict:
    """Extracts features for `input_path` and writes them to the .npz `output`.

    num_frames, stride and crop_size left None come from `resolve_clip`. With projector_dir,
    also writes the embedding projector's files there (`_write_projector`).
    """
    num_temporal, num_spatial = parse_views(views)
    fn = load_feature_fn(saved_model)
    clip = resolve_clip(saved_model, num_frames, stride, crop_size)
    args = (clip["num_frames"], clip["stride"], clip["crop_size"], num_temporal, num_spatial,
            batch_size)
    thumbnails = projector_dir is not None
    if input_path.lower().endswith(VIDEO_LIST_SUFFIXES) or os.path.isdir(input_path):
        result = extract_from_videos(fn, input_path, *args, label_map=label_map, fps=fps,
                                     short_side=short_side, thumbnails=thumbnails)
    else:
        result = extract_from_records(fn, input_path, *args, thumbnails=thumbnails)
    if thumbnails:
        _write_projector(projector_dir, result.pop("thumbnails"), result, input_path, label_map)
    if os.path.dirname(output):
        tf.io.gfile.makedirs(os.path.dirname(output))
    buffer = io.BytesIO()  # np.savez needs a seekable file; GFile (gs://) writes are not.
    np.savez(buffer, **result)
    with tf.io.gfile.GFile(output, "wb") as f:
        f.write(buffer.getvalue())
    return result


def _write_projector(projector_dir: str, thumbnails: np.ndarray, result: dict, input_path: str,
                     label_map: str | None) -> None:
    """The projector files; class names from label_map, else the records' label_map.txt."""
    if not label_map and not input_path.startswith("tfds:") and not (
            input_path.lower().endswith(VIDEO_LIST_SUFFIXES) or os.path.isdir(input_path)):
        beside = schema.label_map_path(os.path.dirname(schema.resolve_files(input_path)[0]))
        label_map = beside if tf.io.gfile.exists(beside) else None
    names = schema.read_label_map(label_map) if label_map else None
    projector.write_projector(projector_dir, result["features"], result["labels"],
                              result["ids"], thumbnails, names)
    print(f"Wrote the embedding projector files to {projector_dir}: "
          f"tensorboard --logdir {projector_dir}")


@cli.guard
def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model", required=True, help="directory from cvrl_tf.export")
    parser.add_argument("--input", required=True,
                        help="TFRecord glob / 'tfds:...' pattern, .csv/.txt video list or "
                        "folder of class sub-folders")
    parser.add_argument("--output", required=True, help="features .npz to write")
    trained = " (default: the model's training clip, else %s)"
    parser.add_argument("--num_frames", type=int, default=None,
                        help="frames per clip (T)" + trained % DEFAULT_CLIP["num_frames"])
    parser.add_argument("--stride", type=int, default=None,
                        help="temporal stride of a clip" + trained % DEFAULT_CLIP["stride"])
    parser.add_argument("--crop_size", type=int, default=None,
                        help="square crop side (S)" + trained % DEFAULT_CLIP["crop_size"])
    parser.add_argument("--views", default="10x3", help="TEMPORALxSPATIAL views per video")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per backbone call")
    parser.add_argument("--label_map", default=None, help="label_map.txt for a video list")
    parser.add_argument("--fps", type=float, default=25.0, help="decode fps for a video list")
    parser.add_argument("--short_side", type=int, default=256,
                        help="resize the short side when decoding a video list (0: keep)")
    parser.add_argument("--projector_dir", default=None,
                        help="also write TensorBoard embedding projector files here")
    args = parser.parse_args(argv)
    try:
        result = extract(args.saved_model, args.input, args.output, args.num_frames,
                         args.stride, args.crop_size, args.views, args.batch_size,
                         args.label_map, args.fps or None, args.short_side or None,
                         args.projector_dir)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"features: error: {e}\n")
    print(f"Wrote {args.output}: {len(result['ids'])} videos, "
          f"features {result['features'].shape[1]}-d.")
    return result


if __name__ == "__main__":
    main()
