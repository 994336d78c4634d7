"""How much slower this CPU is than the one the time goals were measured on, in a minute.

The demo's and the suite's 10-minute goals are for any 2-core machine of the kind cvrl_tf is
used on, but most measurements come from one 2-core AMD EPYC (Zen 5, AVX-512; REFERENCE
below). This measures the same three things here and divides:

- python: a fixed pure-Python workload (the suite is mostly Python: tracing, start-up).
- trace: tracing the demo model's pretraining step (tf.function, no AutoGraph, as the trainer
  does), the work every short run starts with.
- eigen, onednn: clips/s of that bare step (CVRLModel with the tiny R3D at width 16, 64 videos
  x 2 views of 8x32x32, Adam) with TensorFlow's oneDNN kernels off and on, each in a fresh
  process (TF_ENABLE_ONEDNN_OPTS is read once per process). With oneDNN off TensorFlow runs
  the same Eigen code on every x86 CPU, so 'eigen' is the core's own speed; 'onednn' adds the
  instruction set (AVX-512 here, AVX2 on older CPUs).

Width 16 is the model of the issue that reported the slow machines (an AVX2-only AMD EPYC), so
the bare-step figures it reported can be compared with this command's (both:
docs/BENCHMARKS.md, "This machine against others"). It prints the estimates `make test` ~
python x its time here and `make demo` ~ onednn x its time here, and one line
`RESULT python_factor=... trace_factor=... eigen_factor=... onednn_factor=...
est_make_test_min=... est_make_demo_min=...`. Run it on an idle machine:

    python -m bench.machine_factor            # about a minute here
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measured with this command on the reference machine: 2-core AMD EPYC VM (lscpu family 26,
# Zen 5, AVX-512, oneDNN on by default), idle, 2026-11-30; medians of its repeats.
REFERENCE = {
    "machine": "2-core AMD EPYC (Zen 5, AVX-512), 2026-11-30",
    "python_s": 0.457, "trace_s": 1.02, "eigen_clips_per_s": 218.0, "onednn_clips_per_s": 715.0,
    # The same machine: pytest's own time of `make test` since the scenarios moved to
    # `make test-scenarios` (docs/BENCHMARKS.md, "The test suite") and the whole demo at 540
    # pretraining steps (docs/DEMO.md).
    "make_test_s": 162.0, "make_demo_s": 160.0,
}
CLIP = (8, 32, 32, 3)


def python_seconds(n: int = 2_000_000) -> float:
    """Seconds of a fixed pure-Python workload (dicts, strings, calls, like tracing code)."""
    start = time.perf_counter()
    total = 0
    for i in range(n):
        entry = {"name": f"op_{i}", "inputs": (i, i + 1)}
        total += len(entry["name"]) + sum(entry["inputs"]) % 7
    assert total > 0
    return time.perf_counter() - start


def measure_step(width: int = 16, batch: int = 64, steps: int = 5, repeats: int = 5) -> dict:
    """Tracing seconds and clips/s of the bare pretraining step in this process."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    import tensorflow as tf

    from cvrl_tf.models import CVRLModel, build_backbone, projection_head
    from cvrl_tf.optimizers import build_optimizer
    from cvrl_tf.steps import make_pretrain_step

    backbone = build_backbone(depth=50, base_filters=width, blocks_per_stage=[1, 1, 1, 1],
                              spatial_strides=[1, 1, 2, 2], input_shape=CLIP)
    model = CVRLModel(backbone, projection_head(num_hidden=2, hidden_dim=256, output_dim=64),
                      probe_classes=6)
    optimizer = build_optimizer("adam", 2e-3)
    optimizer.build(model.trainable_variables)
    step = tf.function(make_pretrain_step(model, optimizer), autograph=False)
    rng = np.random.default_rng(0)
    data = {"video": tf.constant(rng.random((2 * batch,) + CLIP, np.float32)),
            "label": tf.constant(rng.integers(0, 6, 2 * batch))}
    start = time.perf_counter()
    step.get_concrete_function(data)
    trace_s = time.perf_counter() - start
    for _ in range(2):
        step(data)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = step(data)
        float(out["loss"])
        rates.append(2 * batch * steps / (time.perf_counter() - start))
    return {"trace_s": trace_s, "clips_per_s": statistics.median(rates)}


def _step_in_fresh_process(onednn: str, args: argparse.Namespace) -> dict:
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
    code = ("import json, sys; from bench import machine_factor as m; "
            f"print('STEP ' + json.dumps(m.measure_step({args.width}, {args.batch}, "
            f"{args.steps}, {args.repeats})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("STEP ")]
    if out.returncode or not lines:
        raise RuntimeError(f"the step measurement with TF_ENABLE_ONEDNN_OPTS={onednn} failed:\n"
                           f"{out.stderr[-2000:]}")
    return json.loads(lines[-1][5:])


def factors(measured: dict, reference: dict = None) -> dict:
    """Reference speed / this machine's speed for each measure (>1: this machine is slower),
    and the estimated minutes of `make test` and `make demo` here."""
    ref = reference or REFERENCE
    out = {"python_factor": measured["python_s"] / ref["python_s"],
           "trace_factor": measured["trace_s"] / ref["trace_s"],
           "eigen_factor": ref["eigen_clips_per_s"] / measured["eigen_clips_per_s"],
           "onednn_factor": ref["onednn_clips_per_s"] / measured["onednn_clips_per_s"]}
    out["est_make_test_min"] = out["python_factor"] * ref["make_test_s"] / 60
    out["est_make_demo_min"] = out["onednn_factor"] * ref["make_demo_s"] / 60
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=16, help="base_filters of the tiny R3D")
    parser.add_argument("--batch", type=int, default=64, help="videos per step (2x clips)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    args = parser.parse_args(argv)
    print(machine.describe(), flush=True)
    python_s = statistics.median(python_seconds() for _ in range(5))
    print(f"python workload: {python_s:.3f} s", flush=True)
    off = _step_in_fresh_process("0", args)
    print(f"bare step, oneDNN off: {off['clips_per_s']:.0f} clips/s", flush=True)
    on = _step_in_fresh_process("1", args)
    print(f"bare step, oneDNN on: {on['clips_per_s']:.0f} clips/s; tracing it: "
          f"{on['trace_s']:.2f} s", flush=True)
    measured = {"python_s": python_s, "trace_s": on["trace_s"],
                "eigen_clips_per_s": off["clips_per_s"], "onednn_clips_per_s": on["clips_per_s"]}
    print("MEASURED " + json.dumps(measured))
    result = {}
    if (args.width, args.batch) == (16, 64):  # The reference's step; else no factors.
        result = factors(measured)
        print(f"Against {REFERENCE['machine']}: make test ~{result['est_make_test_min']:.1f} "
              f"min, make demo ~{result['est_make_demo_min']:.1f} min on this machine.")
        print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in result.items()))
    return dict(measured, **result)


if __name__ == "__main__":
    main()
