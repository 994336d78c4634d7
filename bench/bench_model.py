"""Training-step speed of cvrl_tf's R3D vs the Model Garden ResNet3D, same configuration.

Float32 on CPU, default oneDNN path, no XLA. Each step is forward + backward + an SGD update
(the same hand-written update for both models). Timings alternate between the two models in
rounds so that load from other processes hits both alike; the median step time is reported.

    python -m bench.bench_model                       # R3D-50, 8x64x64 clips, batch 8
    python -m bench.bench_model --frames 4 --size 32  # quicker smoke run
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cvrl_tf.models import build_backbone  # noqa: E402

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
TEMPORAL_KERNELS = (1, 1, 3, 3)


def model_garden_r3d(depth: int, input_shape: tuple):
    """The Model Garden ResNet3D configured as CVRL's R3D (the reference, tf_keras)."""
    import tf_keras
    from official.vision.modeling.backbones import resnet_3d
    return resnet_3d.ResNet3D(
        model_id=depth, temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[(k,) * n for k, n in zip(TEMPORAL_KERNELS, BLOCKS[depth])],
        stem_type="v0", stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=2,
        stem_pool_temporal_stride=1, norm_momentum=0.9, norm_epsilon=1e-5,
        input_specs=tf_keras.layers.InputSpec(shape=[None, *input_shape]))


def make_step(model, pooled_fn):
    """A tf.function train step: loss on the pooled feature, gradients, plain SGD update."""
    variables = model.trainable_variables

    @tf.function(jit_compile=False)
    def step(clips):
        with tf.GradientTape() as tape:
            pooled = pooled_fn(model(clips, training=True))
            loss = tf.reduce_mean(tf.square(pooled))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(1e-3 * g)
        return loss

    return step


def count(weights) -> int:
    """Number of scalars in a list of variables."""
    return int(sum(np.prod(w.shape) for w in weights))


def main() -> None:
    """Builds both models, times their train steps in alternating rounds, prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, choices=sorted(BLOCKS))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps_per_round", type=int, default=1)
    args = parser.parse_args()

    input_shape = (args.frames, args.size, args.size, 3)
    clips = tf.constant(np.random.default_rng(0).random(
        (args.batch, *input_shape), dtype=np.float32))
    ours = build_backbone(args.depth, input_shape=input_shape)
    reference = model_garden_r3d(args.depth, input_shape)
    steps = {
        "cvrl_tf": make_step(ours, lambda out: out),
        "model_garden": make_step(reference, lambda out: tf.reduce_mean(
            out[max(out.keys())], axis=(1, 2, 3))),
    }
    models = {"cvrl_tf": ours, "model_garden": reference}
    times = {name: [] for name in steps}
    for step in steps.values():  # Trace and warm up.
        step(clips).numpy()
        step(clips).numpy()
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps_per_round):
                start = time.perf_counter()
                step(clips).numpy()
                times[name].append(time.perf_counter() - start)

    print(f"R3D-{args.depth} train step (fwd+bwd+SGD), float32, CPU, no XLA, "
          f"clips {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
          f"{args.rounds * args.steps_per_round} timed steps each")
    print(f"{'model':<14}{'params':>14}{'trainable':>14}{'ms/step':>10}{'clips/s':>10}")
    speed = {}
    for name, model in models.items():
        median = statistics.median(times[name])
        speed[name] = args.batch / median
        print(f"{name:<14}{count(model.weights):>14,}{count(model.trainable_weights):>14,}"
              f"{1000 * median:>10.1f}{speed[name]:>10.2f}")
    print(f"speed ratio cvrl_tf / model_garden: {speed['cvrl_tf'] / speed['model_garden']:.2f}")


if __name__ == "__main__":
    main()
