"""Where the host's time goes: CPU milliseconds per clip of each stage, on one thread.

Runs the per-video work of each pipeline of bench/input_pipeline.py as one tf.function on a
single thread (no tf.data, no parallelism, process CPU time), on the same Kinetics-like
records and seeds, so the figures add up and other load on the machine barely moves them:

- parse: the record into its frames (every pipeline pays it)
- decode bound: parse + clip starts + crop windows + decode of exactly the window pixels
- resize + round: the bilinear resize to the crop size and the rounding to uint8, alone
- cvrl_tf device path: parse + crop/decode/resize/round + the parameter rows (the host part)
- cvrl_tf host path: the above + device_augment.apply_params on the two clips (per-clip form)
- Model Garden video_ssl: its Decoder + Parser (full-frame decode, crop, resize, colour ops)

    python -m bench.host_profile [--data_dir DIR] [--videos 8] [--repeats 3]
"""
import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from bench import kinetics_like, machine  # noqa: E402
from cvrl_tf.data import clips, schema, spatial, temporal  # noqa: E402

T, STRIDE, CROP = 16, 2, 224
AUG = dict(area_range=(0.3, 1.0), aspect_ratio_range=(0.5, 2.0))


def _windows(frames, seed):
    """(JPEGs [T], crop window) of both clips, sampled as cvrl_tf samples them."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    length = tf.size(frames)
    starts = temporal.sample_clip_starts(length, T, STRIDE, seed=seeds[0])
    out = []
    for view in (1, 2):
        jpegs = tf.gather(frames, temporal.clip_frame_indices(starts[view - 1], length, T,
                                                              STRIDE))
        size = tf.io.extract_jpeg_shape(jpegs[0])
        out.append((jpegs, spatial.sample_crop_window(seeds[view], size[0], size[1])))
    return out


def _decode(jpegs, window):
    return tf.map_fn(lambda j: tf.io.decode_and_crop_jpeg(j, window, channels=3), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def stages() -> dict:
    """name -> tf.function(serialized record, seed) doing that stage for one video."""
    # pylint: disable=import-outside-toplevel
    from official.projects.video_ssl.configs import video_ssl as exp_cfg
    from official.projects.video_ssl.dataloaders import video_ssl_input
    params = exp_cfg.DataConfig(is_ssl=True, is_training=True, feature_shape=(T, CROP, CROP, 3),
                                temporal_stride=STRIDE, num_classes=400, global_batch_size=1,
                                input_path="", one_hot=True)
    official = video_ssl_input.Parser(params).parse_fn(True)
    decoder = video_ssl_input.Decoder()

    def frames(s):
        return schema.parse_sequence_example(s)["frames"]

    def bound(s, seed):
        return [_decode(j, w)[:, 0, 0, 0] for j, w in _windows(frames(s), seed)]

    def ours(s, seed, on_device):
        return clips.pretrain_clips(
            frames(s), seed, T, STRIDE, CROP, "decreasing", 1.0, True, AUG, on_device)

    return {
        "parse": tf.function(lambda s, seed: tf.size(frames(s))),
        "decode bound": tf.function(bound),
        "cvrl_tf device path": tf.function(lambda s, seed: ours(s, seed, True)),
        "cvrl_tf host path": tf.function(lambda s, seed: ours(s, seed, False)),
        "Model Garden video_ssl": tf.function(lambda s, seed: official(decoder.decode(s))),
    }


def resize_stage(records, seeds) -> tf.types.experimental.ConcreteFunction:
    """Decoded windows of every (record, seed), and a function resizing + rounding them."""
    decoded = []
    for s, seed in zip(records, seeds):
        for jpegs, window in _windows(schema.parse_sequence_example(s)["frames"], seed):
            decoded.append(_decode(jpegs, window))
    resize = tf.function(lambda x: spatial._resize(x, CROP, True),  # pylint: disable=W0212
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    return decoded, resize


def main() -> None:
    """Times every stage on the same videos and seeds; prints ms per clip."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="records (written there if missing)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4,
                        help="passes over the videos (new clips each time)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="cvrl_profile_")
    try:
        pattern = (kinetics_like.existing_pattern(data_dir)
                   or kinetics_like.write_records(data_dir, args.videos))
        records = list(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).take(
            args.videos))
        # Every pass uses new seeds: new clip starts and crop windows.
        records = records * args.repeats
        seeds = [tf.constant([i, 11], tf.int64) for i in range(len(records))]
        fns = stages()
        for fn in fns.values():  # Trace.
            fn(records[0], seeds[0])
        cpu = {name: 0.0 for name in fns}
        for s, seed in zip(records, seeds):
            for name, fn in fns.items():
                start = time.process_time()
                fn(s, seed)
                cpu[name] += time.process_time() - start
        decoded, resize = resize_stage(records, seeds)
        resize(decoded[0])
        start = time.process_time()
        for clip in decoded:
            resize(clip)
        clips = 2 * len(records)
        cpu["resize + round"] = time.process_time() - start
        print(f"{machine.describe()}; one thread, {clips} clips of {T}x{CROP}x{CROP} "
              f"(T={T}, stride {STRIDE}) from {args.videos} videos")
        for name in ("parse", "decode bound", "resize + round", "cvrl_tf device path",
                     "cvrl_tf host path", "Model Garden video_ssl"):
            print(f"{name:<26}{1000 * cpu[name] / clips:8.2f} ms CPU per clip")
        print(f"decode bound / device path: {cpu['decode bound'] / cpu['cvrl_tf device path']:.3f}")
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
