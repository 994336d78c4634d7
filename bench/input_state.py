"""Checkpoint bytes of the input's state: cvrl_tf's stream positions vs tf.data's iterator.

    python -m bench.input_state                # K400 recipe: 1024-record window, 32 replicas
    python -m bench.input_state --record_kb 100 --buffers 64,256

cvrl_tf checkpoints where each replica's stream stands (`books.InputState`: a position row
of `source.POSITION_SIZE` int32 per replica plus the skip counters), whatever the shuffle
window holds. The alternative, checkpointing the tf.data iterator
(`tf.train.Checkpoint(iterator=...)`), stores the shuffle buffer's records themselves. Both are
measured here as the bytes of a written checkpoint: InputState at the recipe's replica count,
and the iterator of `TFRecordDataset -> shuffle(buffer)` over records of `--record_kb` kB for
a few buffer sizes, extrapolated linearly to the recipe's buffer and a Kinetics-sized record.
Prints `RESULT input_state_bytes=... iterator_bytes_per_record=... kinetics_iterator_gb=...`.
"""
import argparse
import os
import tempfile

import numpy as np
import tensorflow as tf

from bench import machine
from cvrl_tf.training import books

# A Kinetics video as the converter writes it (short side 256, 10 s at 25 fps, JPEG q90):
# about 42 kB per frame (docs/BENCHMARKS.md) x 250 frames.
KINETICS_RECORD_BYTES = 42_000 * 250


def checkpoint_bytes(directory: str) -> int:
    """Bytes of every file a checkpoint wrote into directory."""
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


def input_state_bytes(num_replicas: int) -> int:
    """Checkpoint bytes of InputState alone for num_replicas replicas."""
    with tempfile.TemporaryDirectory() as tmp:
        tf.train.Checkpoint(input=books.InputState(num_replicas)).write(
            os.path.join(tmp, "ckpt"))
        return checkpoint_bytes(tmp)


def iterator_bytes(buffer: int, record_bytes: int) -> int:
    """Checkpoint bytes of a TFRecord -> shuffle(buffer) iterator whose buffer is full."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.tfrecord")
        rng = np.random.default_rng(0)
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(buffer + 8):
                writer.write(rng.integers(0, 256, record_bytes, dtype=np.uint8).tobytes())
        dataset = tf.data.TFRecordDataset(path).shuffle(buffer, seed=0).repeat()
        # No prefetch injected by tf.data's optimizer: its background fill would add a varying
        # number of records to the checkpoint, depending on how far it got before the save.
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
        iterator = iter(dataset)
        next(iterator)  # Fills the buffer.
        ckpt_dir = os.path.join(tmp, "ckpt")
        os.makedirs(ckpt_dir)
        tf.train.Checkpoint(iterator=iterator).write(os.path.join(ckpt_dir, "ckpt"))
        return checkpoint_bytes(ckpt_dir)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=32, help="replicas (a v3-32 has 32)")
    parser.add_argument("--buffer", type=int, default=1024, help="the recipe's shuffle buffer")
    parser.add_argument("--buffers", default="16,64,128", help="measured iterator buffers")
    parser.add_argument("--record_kb", type=int, default=100, help="measured record size")
    args = parser.parse_args(argv)
    print(machine.describe(), flush=True)
    ours = input_state_bytes(args.replicas)
    ours_one = input_state_bytes(1)
    print(f"cvrl_tf InputState: {ours} bytes for {args.replicas} replicas "
          f"({ours_one} for 1; the window's size does not enter)")
    record = args.record_kb * 1000
    sizes = {}
    for buffer in (int(b) for b in args.buffers.split(",")):
        sizes[buffer] = iterator_bytes(buffer, record)
        print(f"tf.data iterator, shuffle({buffer}) of {args.record_kb} kB records: "
              f"{sizes[buffer] / 1e6:.2f} MB", flush=True)
    buffers = sorted(sizes)
    per_record = (sizes[buffers[-1]] - sizes[buffers[0]]) / (buffers[-1] - buffers[0])
    kinetics = per_record / record * KINETICS_RECORD_BYTES * args.buffer
    print(f"Per buffered record: {per_record / record:.3f} x its bytes; at the recipe's "
          f"buffer of {args.buffer} Kinetics videos (~{KINETICS_RECORD_BYTES / 1e6:.1f} MB "
          f"each): {kinetics / 1e9:.1f} GB per input pipeline per checkpoint")
    result = {"input_state_bytes": ours, "iterator_bytes_per_record": per_record,
              "kinetics_iterator_gb": kinetics / 1e9}
    print("RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
