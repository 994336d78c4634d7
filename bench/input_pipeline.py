"""Input-pipeline speed at Kinetics sizes, side by side on the same records.

Four pipelines read the same Kinetics-like records (bench/kinetics_like.py: short side 256,
250 frames, JPEG quality 90, photographs panned and zoomed over) and produce pretraining
batches (2 x 16 frames at stride 2 per video, 224 crops, full CVRL augmentation):

- cvrl_tf, device path (the default, build_dataset(augment_on='device')): the host part only,
  uint8 clips + per-clip parameters; the rest runs in the train step (bench/train_step.py).
- cvrl_tf, host path (augment_on='host'): everything in tf.data, float32 clips.
- the Model Garden video_ssl loader (Decoder, Parser, PostBatchProcessor).
- the decode bound: read + parse + decode of exactly the JPEG pixels the clips need (the same
  clip starts and crop windows, each frame's window decoded, nothing else).

Rounds alternate the pipelines (in a rotating order) so that other load on the machine hits
them alike; each figure is the median over rounds. CPU-seconds per clip are the process's
user + system time over the timed batches: the host cores one clip costs. The last line is
`RESULT ours_clips_per_s=.. official_clips_per_s=.. ratio=.. decode_bound_clips_per_s=..
bound_fraction=.. cpu_bound_fraction=.. ours_cpu_s_per_clip=..` (ours: the device path;
cpu_bound_fraction compares CPU-seconds per clip, which other load on the machine disturbs
less than clips/s).

    python -m bench.input_pipeline                      # a few minutes on 2 cores
    python -m bench.input_pipeline --rounds 3 --num_videos 8 --batches 2    # quicker
    python -m bench.input_pipeline --crop_size 112 --batch_size 16          # other shapes
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from bench import kinetics_like, machine  # noqa: E402
from cvrl_tf.data import schema, spatial, temporal  # noqa: E402
from cvrl_tf.data.pipeline import build_dataset  # noqa: E402

PIPELINES = ("ours_device", "ours_host", "official", "bound")
LABELS = {"ours_device": "cvrl_tf device path (host part)", "ours_host": "cvrl_tf host path",
          "official": "Model Garden video_ssl", "bound": "decode bound"}


def official_dataset(pattern: str, batch_size: int, num_frames: int, stride: int,
                     crop_size: int) -> tf.data.Dataset:
    """The Model Garden video_ssl pretraining input (Decoder, Parser, PostBatchProcessor)."""
    # pylint: disable=import-outside-toplevel
    from official.projects.video_ssl.configs import video_ssl as exp_cfg
    from official.projects.video_ssl.dataloaders import video_ssl_input

    params = exp_cfg.DataConfig(
        is_ssl=True, is_training=True, feature_shape=(num_frames, crop_size, crop_size, 3),
        temporal_stride=stride, num_classes=400, global_batch_size=batch_size,
        input_path=pattern, one_hot=True)
    decoder = video_ssl_input.Decoder()
    parse = video_ssl_input.Parser(params).parse_fn(params.is_training)
    post = video_ssl_input.PostBatchProcessor(params)
    files = tf.data.Dataset.list_files(pattern, shuffle=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=8,
                          num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(256).repeat()
    ds = ds.map(lambda s: parse(decoder.decode(s)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).map(post, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).map(lambda features, label: features["image"])


def decode_bound_dataset(pattern: str, batch_size: int, num_frames: int, stride: int,
                         crop_size: int) -> tf.data.Dataset:
    """Read + parse + decode of exactly the pixels the clips need: per video two clip starts
    (the decreasing interval) and per clip a crop window (as cvrl_tf samples them); each of
    the 2T frames decodes that window only. One number per video comes out."""
    files = sorted(tf.io.gfile.glob(pattern))
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE).repeat()
    ds = ds.map(schema.parse_sequence_example, num_parallel_calls=tf.data.AUTOTUNE)

    def decode(index, example):
        seeds = tf.random.experimental.stateless_split(tf.stack([index, 0]), 3)
        frames = example["frames"]
        length = tf.size(frames)
        starts = temporal.sample_clip_starts(length, num_frames, stride, seed=seeds[0])
        total = tf.constant(0)
        for view in (1, 2):
            jpegs = tf.gather(frames, temporal.clip_frame_indices(
                starts[view - 1], length, num_frames, stride))
            size = tf.io.extract_jpeg_shape(jpegs[0])
            window = spatial.sample_crop_window(seeds[view], size[0], size[1])
            pixels = tf.map_fn(lambda j, w=window: tf.io.decode_and_crop_jpeg(j, w, channels=3),
                               jpegs, fn_output_signature=tf.TensorSpec([None, None, 3],
                                                                        tf.uint8))
            total += tf.reduce_sum(tf.cast(pixels[:, 0, 0, 0], tf.int32))
        return total

    ds = ds.enumerate().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_dataset(name: str, pattern: str, args: argparse.Namespace) -> tf.data.Dataset:
    """One of PIPELINES with the benchmark's shapes."""
    shape = (args.batch_size, args.num_frames, args.stride, args.crop_size)
    if name == "official":
        return official_dataset(pattern, *shape)
    if name == "bound":
        return decode_bound_dataset(pattern, *shape)
    augment_on = "device" if name == "ours_device" else "host"
    return build_dataset(pattern, "pretrain", *shape, seed=None, augment_on=augment_on)


def measure(ds: tf.data.Dataset, clips_per_batch: int, warmup: int, batches: int,
            min_seconds: float) -> tuple:
    """(clips/s, CPU-seconds per clip) over at least `batches` batches and `min_seconds`,
    after `warmup` batches (which also fill the shuffle buffers)."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    cpu, start = machine.cpu_seconds(), time.perf_counter()
    count = 0
    while count < batches or time.perf_counter() - start < min_seconds:
        next(it)
        count += 1
    elapsed, cpu = time.perf_counter() - start, machine.cpu_seconds() - cpu
    del it
    clips = count * clips_per_batch
    return clips / elapsed, cpu / clips


def main() -> None:
    """Writes (or reuses) the records, times the pipelines in rounds, prints the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None,
                        help="records directory (written there if missing; default: a temp dir)")
    parser.add_argument("--num_videos", type=int, default=16)
    parser.add_argument("--video_frames", type=int, default=250, help="frames per video")
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--short_side", type=int, default=kinetics_like.HEIGHT,
                        help="frame height; frames are 16:9")
    parser.add_argument("--batch_size", type=int, default=8, help="videos per batch (B)")
    parser.add_argument("--num_frames", type=int, default=16, help="frames per clip (T)")
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--crop_size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="batches before timing")
    parser.add_argument("--batches", type=int, default=3, help="timed batches, at least")
    parser.add_argument("--min_seconds", type=float, default=4.0, help="timed seconds, at least")
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help=f"comma-separated subset of {PIPELINES}")
    args = parser.parse_args()
    names = [n for n in args.pipelines.split(",") if n]
    if not names or set(names) - set(PIPELINES):
        parser.error(f"--pipelines must name some of {PIPELINES}, got {args.pipelines!r}.")

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="cvrl_bench_")
    try:
        pattern = kinetics_like.existing_pattern(data_dir)
        if pattern is None:
            start = time.perf_counter()
            width = 2 * round(args.short_side * 8 / 9)  # 16:9, even (ffmpeg scale=-2:H)
            pattern = kinetics_like.write_records(data_dir, args.num_videos, args.video_frames,
                                                  quality=args.jpeg_quality, width=width,
                                                  height=args.short_side)
            print(f"wrote {args.num_videos} Kinetics-like videos ({args.video_frames} frames, "
                  f"{width}x{args.short_side}, JPEG q{args.jpeg_quality}) "
                  f"in {time.perf_counter() - start:.0f} s")
        run(pattern, names, args)
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def run(pattern: str, names: list, args: argparse.Namespace) -> None:
    """Times `names` in alternating rounds and prints the table and the RESULT line."""
    clips_per_batch = 2 * args.batch_size
    print(f"{machine.describe()} (at start)")
    print(f"pretraining batches: B={args.batch_size} videos = {clips_per_batch} clips of "
          f"{args.num_frames} frames at stride {args.stride}, {args.crop_size}x{args.crop_size}; "
          f"{args.rounds} rounds, >= {args.batches} batches and >= {args.min_seconds:.0f} s "
          f"timed per pipeline and round")
    rates = {n: [] for n in names}
    cpus = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            rate, cpu = measure(make_dataset(name, pattern, args), clips_per_batch,
                                args.warmup, args.batches, args.min_seconds)
            rates[name].append(rate)
            cpus[name].append(cpu)
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names)
              + " clips/s", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<34}{'clips/s':>10}{'CPU-s/clip':>12}   (medians of {args.rounds})")
    median = {n: statistics.median(rates[n]) for n in names}
    cpu = {n: statistics.median(cpus[n]) for n in names}
    for n in names:
        print(f"{LABELS[n]:<34}{median[n]:>10.1f}{cpu[n]:>12.4f}")
    fields = {"ours_clips_per_s": median.get("ours_device"),
              "official_clips_per_s": median.get("official")}
    if "ours_device" in median and "official" in median:
        fields["ratio"] = median["ours_device"] / median["official"]
    fields["decode_bound_clips_per_s"] = median.get("bound")
    if "ours_device" in median and "bound" in median:
        fields["bound_fraction"] = median["ours_device"] / median["bound"]
        # The same fraction in CPU-seconds per clip: what it is when both can use every core.
        fields["cpu_bound_fraction"] = cpu["bound"] / cpu["ours_device"]
    if "ours_device" in cpu:
        fields["ours_cpu_s_per_clip"] = cpu["ours_device"]
    print("RESULT " + " ".join(f"{k}={v:.1f}" if k.endswith("clips_per_s") else f"{k}={v:.4f}"
                               for k, v in fields.items() if v is not None))


if __name__ == "__main__":
    main()
