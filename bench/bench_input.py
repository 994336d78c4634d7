"""Input-pipeline speed: cvrl_tf's pretrain pipeline vs the Model Garden's video_ssl loader.

Both read the same synthetic TFRecords (written to a temporary directory unless --data_dir
holds them) and produce pretraining batches of 2B clips; the Model Garden loader applies its
own CVRL augmentation (decreasing interval, crop, flip, color jitter, blur, solarize).

    python -m bench.bench_input            # about a minute on 2 cores
    python -m bench.bench_input --frame_size 160 --num_videos 64 --crop_size 112 --batch_size 8
"""
import argparse
import os
import shutil
import tempfile
import time

import tensorflow as tf

from cvrl_tf.data import synthetic
from cvrl_tf.data.pipeline import build_dataset


def official_pretrain_dataset(file_pattern: str, batch_size: int, num_frames: int,
                              stride: int, crop_size: int, num_classes: int) -> tf.data.Dataset:
    """The Model Garden video_ssl pretraining input (Decoder, Parser, PostBatchProcessor)."""
    # pylint: disable=import-outside-toplevel
    from official.projects.video_ssl.configs import video_ssl as exp_cfg
    from official.projects.video_ssl.dataloaders import video_ssl_input

    params = exp_cfg.DataConfig(
        is_ssl=True, is_training=True, feature_shape=(num_frames, crop_size, crop_size, 3),
        temporal_stride=stride, num_classes=num_classes, global_batch_size=batch_size,
        input_path=file_pattern, one_hot=True)
    decoder = video_ssl_input.Decoder()
    parse = video_ssl_input.Parser(params).parse_fn(params.is_training)
    post = video_ssl_input.PostBatchProcessor(params)
    files = tf.data.Dataset.list_files(file_pattern, shuffle=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=8,
                          num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(256).repeat()
    ds = ds.map(lambda s: parse(decoder.decode(s)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).map(post, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def clips_per_second(ds: tf.data.Dataset, video_key, warmup: int, batches: int) -> float:
    """Steady-state clips/s over `batches` batches after `warmup` batches."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    clips = 0
    start = time.perf_counter()
    for _ in range(batches):
        clips += int(video_key(next(it)).shape[0])
    return clips / (time.perf_counter() - start)


def main() -> None:
    """Runs both pipelines on the same files and prints clips/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="synthetic set (written if missing)")
    parser.add_argument("--frame_size", type=int, default=48, help="synthetic frame size")
    parser.add_argument("--num_videos", type=int, default=600, help="synthetic train videos")
    parser.add_argument("--batch_size", type=int, default=32, help="videos per batch (B)")
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--crop_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="cvrl_bench_")
    try:
        _run(args, data_dir)
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def _run(args: argparse.Namespace, data_dir: str) -> None:
    """Writes the data if needed, then times both pipelines."""
    pattern = os.path.join(data_dir, "train-*.tfrecord")
    if not tf.io.gfile.glob(pattern):
        start = time.perf_counter()
        synthetic.write_dataset(data_dir, num_train=args.num_videos, num_eval=6,
                                size=args.frame_size)
        print(f"wrote the synthetic set to {data_dir} in {time.perf_counter() - start:.1f} s")
    shape = (args.batch_size, args.num_frames, args.stride, args.crop_size)
    print(f"pretrain batches: B={shape[0]} videos (2B clips), T={shape[1]}, stride={shape[2]}, "
          f"crop={shape[3]}; {args.batches} timed batches after {args.warmup} warm-up")

    ours = build_dataset(pattern, "pretrain", args.batch_size, args.num_frames, args.stride,
                         args.crop_size, seed=None)
    try:
        theirs = official_pretrain_dataset(pattern, args.batch_size, args.num_frames,
                                           args.stride, args.crop_size, synthetic_classes())
        next(iter(theirs))
    except Exception as e:  # pylint: disable=broad-except
        theirs = None
        print(f"Model Garden video_ssl input could not run on these files: {type(e).__name__}: "
              f"{e}")
    # Alternate the two and keep each one's best round: other load on the machine varies.
    ours_rate = theirs_rate = 0.0
    for _ in range(args.rounds):
        ours_rate = max(ours_rate, clips_per_second(ours, lambda b: b["video"], args.warmup,
                                                    args.batches))
        if theirs is not None:
            theirs_rate = max(theirs_rate, clips_per_second(
                theirs, lambda b: b[0]["image"], args.warmup, args.batches))
    print(f"cvrl_tf build_dataset:      {ours_rate:8.1f} clips/s")
    if theirs is not None:
        print(f"Model Garden video_ssl:     {theirs_rate:8.1f} clips/s")
        print(f"ratio cvrl_tf / Model Garden: {ours_rate / theirs_rate:.2f}x")


def synthetic_classes() -> int:
    """Number of classes of the synthetic set."""
    return len(synthetic.CLASS_NAMES)


if __name__ == "__main__":
    main()
