"""Pretraining-step speed: cvrl_tf's R3D-50 vs the Model Garden's, and the device-side
augmentation inside the step, side by side in one run.

Both models are R3D-50 (the CVRL stem; the Model Garden ResNet3D configured as docs/DESIGN.md says)
with the 3-layer projection head (cvrl_tf.models.projection_head; the Model Garden's
VideoSSLModel head), the same InfoNCE loss (cvrl_tf.losses.info_nce, tau 0.1) over [2B] clips,
SGD with momentum 0.9, float32, each in its own Keras (Keras 3 for cvrl_tf, tf_keras for the
Model Garden). cvrl_tf's step is steps.make_pretrain_step itself. Each step is timed with and
without XLA (jit_compile); rounds alternate the variants so that other load on the machine hits
them alike, and the median is reported (with the fastest step and the process CPU time per
step, which other load on the machine disturbs less). 'cvrl_tf + augment' feeds the step what
build_dataset(augment_on='device') emits (uint8 clips + parameter rows), so the step also runs
device_augment.augment_batch: its extra time is the augmentation's cost inside the step. On a
CPU without XLA that is the per-clip form (batched=False, the CPU default); under XLA it is the
batched form a TPU runs; 'augment alone' times augment_batch by itself. XLA makes Conv3D
training much slower on a CPU (docs/BENCHMARKS.md), so the XLA rows only show that everything
compiles and what it costs here, not TPU speed.

    python -m bench.train_step                          # minutes on 2 cores
    python -m bench.train_step --jit off --rounds 4     # quicker
    python -m bench.train_step --frames 16 --size 112 --batch 4   # closer to the paper
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import machine  # noqa: E402
from cvrl_tf.data import device_augment  # noqa: E402
from cvrl_tf.losses import info_nce  # noqa: E402
from cvrl_tf.models import CVRLModel, build_backbone, projection_head  # noqa: E402
from cvrl_tf.optimizers import build_optimizer  # noqa: E402
from cvrl_tf.steps import make_pretrain_step  # noqa: E402

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
TEMPORAL_KERNELS = (1, 1, 3, 3)
LEARNING_RATE, MOMENTUM, TEMPERATURE = 0.1, 0.9, 0.1


def model_garden_r3d(depth: int, input_shape: tuple):
    """The Model Garden ResNet3D configured as CVRL's R3D (the reference, tf_keras)."""
    # pylint: disable=import-outside-toplevel
    import tf_keras
    from official.vision.modeling.backbones import resnet_3d
    return resnet_3d.ResNet3D(
        model_id=depth, temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[(k,) * n for k, n in zip(TEMPORAL_KERNELS, BLOCKS[depth])],
        stem_type="v0", stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
        stem_pool_temporal_stride=1, norm_momentum=0.9, norm_epsilon=1e-5,
        input_specs=tf_keras.layers.InputSpec(shape=[None, *input_shape]))


def model_garden_pretrain_step(depth: int, input_shape: tuple, jit: bool):
    """VideoSSLModel (R3D + 3 x [Dense 2048, BN, ReLU] + Dense 128), info_nce, SGD momentum."""
    # pylint: disable=import-outside-toplevel
    import tf_keras
    from official.projects.video_ssl.modeling import video_ssl_model
    from official.vision.configs import common

    norm = common.NormActivation(activation="relu", use_sync_bn=False, norm_momentum=0.9,
                                 norm_epsilon=1e-5)
    model = video_ssl_model.VideoSSLModel(
        backbone=model_garden_r3d(depth, input_shape), normalize_feature=False,
        hidden_dim=2048, hidden_layer_num=3, hidden_norm_args=norm, projection_dim=128,
        input_specs={"image": tf_keras.layers.InputSpec(shape=[None, *input_shape])})
    optimizer = tf_keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    variables = model.trainable_variables

    @tf.function(jit_compile=jit)
    def step(batch):
        with tf.GradientTape() as tape:
            z1, z2 = tf.split(model({"image": batch["video"]}, training=True), 2, axis=0)
            loss, _ = info_nce(z1, z2, TEMPERATURE)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def cvrl_pretrain_step(model: CVRLModel, jit: bool, augment=None):
    """steps.make_pretrain_step on model (SGD momentum), as a tf.function."""
    optimizer = build_optimizer("sgd", LEARNING_RATE, momentum=MOMENTUM)
    optimizer.build(model.trainable_variables)
    kwargs = {} if augment is None else {"augment": augment}
    step = make_pretrain_step(model, optimizer, TEMPERATURE, **kwargs)
    return tf.function(lambda batch: step(batch)["loss"], jit_compile=jit)


def batches(num_clips: int, input_shape: tuple) -> tuple:
    """A float32 batch (host-augmented) and a device batch (uint8 + parameter rows)."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (num_clips, *input_shape), dtype=np.uint8)
    rows = [device_augment.draw_params(tf.constant([0, i]), 1 if i < num_clips // 2 else 2,
                                       input_shape[1]) for i in range(num_clips)]
    device = {"video": tf.constant(video), device_augment.PARAMS_KEY: tf.stack(rows)}
    host = {"video": tf.constant(video.astype(np.float32) / 255.0)}
    return host, device


def main() -> None:
    """Builds the steps, times them in alternating rounds, prints a table and RESULT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, choices=sorted(BLOCKS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="videos per step (2x clips)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="timed steps per variant, no XLA")
    parser.add_argument("--xla_rounds", type=int, default=2, help="timed steps per variant, XLA")
    parser.add_argument("--jit", choices=("off", "on", "both"), default="both")
    args = parser.parse_args()

    input_shape = (args.frames, args.size, args.size, 3)
    num_clips = 2 * args.batch
    host, device = batches(num_clips, input_shape)
    ours = CVRLModel(build_backbone(args.depth, input_shape=input_shape), projection_head())
    print(f"{machine.describe()}; R3D-{args.depth}, {num_clips} clips of "
          f"{args.frames}x{args.size}x{args.size}, float32, SGD momentum {MOMENTUM}")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    results, lowest, cpu_ms = {}, {}, {}
    for jit in modes:
        suffix = " (XLA)" if jit else ""
        steps = {
            "cvrl_tf": (cvrl_pretrain_step(ours, jit), host),
            "model_garden": (model_garden_pretrain_step(args.depth, input_shape, jit), host),
            # What a TPU runs under XLA: the batched form; on a CPU, the per-clip form.
            "cvrl_tf + augment": (cvrl_pretrain_step(ours, jit, lambda b, j=jit: (
                device_augment.augment_batch(b, batched=j))), device),
            "augment alone": (tf.function(lambda b, j=jit: device_augment.augment_batch(
                b, batched=j)["video"][0, 0, 0, 0], jit_compile=jit), device),
        }
        times = {name: [] for name in steps}
        cpu = {name: [] for name in steps}
        for name, (step, batch) in steps.items():  # Trace, compile, warm up.
            start = time.perf_counter()
            step(batch).numpy()
            first = time.perf_counter() - start
            step(batch).numpy()
            print(f"{name + suffix:<26} first call (trace/compile) {first:7.1f} s", flush=True)
        for _ in range(args.xla_rounds if jit else args.rounds):
            for name, (step, batch) in steps.items():
                start, start_cpu = time.perf_counter(), machine.cpu_seconds()
                step(batch).numpy()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(machine.cpu_seconds() - start_cpu)
        for name in steps:
            results[name + suffix] = 1000 * statistics.median(times[name])
            lowest[name + suffix] = 1000 * min(times[name])
            cpu_ms[name + suffix] = 1000 * statistics.median(cpu[name])
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"{'step':<26}{'ms/step':>10}{'min ms':>10}{'CPU ms':>10}{'clips/s':>10}   (median "
          f"of {args.rounds} rounds, XLA {args.xla_rounds})")
    for name, ms in results.items():
        print(f"{name:<26}{ms:>10.0f}{lowest[name]:>10.0f}{cpu_ms[name]:>10.0f}"
              f"{1000 * num_clips / ms:>10.2f}")
    fields = {}
    for jit in modes:
        suffix, key = (" (XLA)", "_xla") if jit else ("", "")
        ours_ms, official_ms = results["cvrl_tf" + suffix], results["model_garden" + suffix]
        augment_ms = results["cvrl_tf + augment" + suffix] - ours_ms
        alone_ms = results["augment alone" + suffix]
        print(f"device augmentation{suffix}: {augment_ms:+.0f} ms per step inside the step "
              f"({100 * augment_ms / ours_ms:+.1f}%), {alone_ms:.0f} ms alone "
              f"({alone_ms / num_clips:.1f} ms per clip, {'batched' if jit else 'per-clip'} form)")
        fields.update({f"ours{key}_ms": ours_ms, f"official{key}_ms": official_ms,
                       f"ratio{key}": ours_ms / official_ms, f"augment{key}_ms": augment_ms,
                       f"augment_alone{key}_ms": alone_ms})
    print("RESULT " + " ".join(f"{k}={v:.3f}" if k.startswith("ratio") else f"{k}={v:.0f}"
                               for k, v in fields.items()))


if __name__ == "__main__":
    main()
