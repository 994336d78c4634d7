"""`make demo`: CVRL beats a random backbone on the embedded motion data set, in minutes on a CPU.

    python -m cvrl_tf.demo --output_dir runs/demo

Steps, all through train.py's gin root (gin/experiments/demo_*.gin):
1. write the synthetic motion set (6 classes) to OUTPUT_DIR/data unless it is there;
2. pretrain a tiny R3D with CVRL (OUTPUT_DIR/pretrain);
3. linear-evaluate the pretrained backbone and a randomly initialized one of the same
   architecture (OUTPUT_DIR/linear_eval_cvrl, OUTPUT_DIR/linear_eval_random);
4. print a table and write OUTPUT_DIR/results.json:
   {"linear_top1": {"cvrl": x, "random_init": y}, "linear_top5": {...}, ...};
5. draw the eval-set features of the random and the CVRL backbone, coloured by class, to
   OUTPUT_DIR/embeddings.png (t-SNE, or PCA without scikit-learn; cvrl_tf/viz/plots.py), name it.
Training runs start fresh each time (the data set is reused). After the second loop of
pretraining the demo prints its measured clips/s and an ETA for the whole demo
(demo_clock.py); its measurements are in docs/DEMO.md.
"""
import time

_START = time.monotonic()  # before TensorFlow's import, which the ETA counts too

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import importlib.util
import os
import shutil
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf import export
from cvrl_tf import features
from cvrl_tf import train
from cvrl_tf.data import schema
from cvrl_tf.data import synthetic
from cvrl_tf.runtime import cli
from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import console
from cvrl_tf.training import demo_clock
from cvrl_tf.training import summaries
from cvrl_tf.viz import plots

PRETRAIN_GIN = "experiments/demo_pretrain.gin"
LINEAR_GIN = "experiments/demo_linear_eval.gin"


def data_bindings(data_dir: str) -> list[str]:
    """The demo's data set, and no per-record error catching on it: the demo wrote it, so a
    bad record is refused (named) instead of skipped. Catching costs a large share of the input
    pipeline on these 48x48 videos (build_dataset's skip_bad_records; docs/DEMO.md)."""
    return [f"TRAIN_DATA = {os.path.join(data_dir, 'train-*.tfrecord')!r}",
            f"EVAL_DATA = {os.path.join(data_dir, 'eval-*.tfrecord')!r}",
            "build_dataset.skip_bad_records = False"]


def ensure_data(data_dir: str, num_train: int, num_eval: int) -> None:
    """Writes the synthetic motion set to data_dir unless its label map is already there."""
    if tf.io.gfile.exists(schema.label_map_path(data_dir)):
        print(f"Using the motion data set in {data_dir}", flush=True)
        return
    print(f"Writing the motion data set to {data_dir} ...", flush=True)
    synthetic.write_dataset(data_dir, num_train=num_train, num_eval=num_eval)


def phase(name: str, gin_file: str, params: Sequence[str], pretrain: bool,
          cost: Optional[float] = None) -> demo_clock.Phase:
    """Steps and clips per step of one run, read from its gin config; `cost` its clips' cost
    relative to the first phase's (default: 1 for pretraining, 1 / LINEAR_SPEEDUP else)."""
    cfg, _ = train.job_from_gin([gin_file], params, model_dir="")
    steps = config.schedule(cfg).total
    if cost is None:
        cost = 1.0 if pretrain else 1.0 / demo_clock.LINEAR_SPEEDUP
    return demo_clock.Phase(name, steps, cfg.global_batch_size * (2 if pretrain else 1), cost)


def run_demo(output_dir: str, gin_params: Sequence[str] = (), num_train: int = 600,
             num_eval: int = 300, start: Optional[float] = None, verbose: bool = False) -> dict:
    """Runs the whole demo; returns (and writes) the results dict.

    `start` (time.monotonic()) is when the demo began, for its ETA; default: now.
    """
    start = time.monotonic() if start is None else start
    output_dir = os.path.abspath(output_dir)
    data_dir = os.path.join(output_dir, "data")
    times = {}
    ensure_data(data_dir, num_train, num_eval)
    times["start_up_and_data"] = time.monotonic() - start
    dirs = {name: os.path.join(output_dir, name)
            for name in ("pretrain", "linear_eval_cvrl", "linear_eval_random")}
    for path in dirs.values():
        if tf.io.gfile.exists(path):
            shutil.rmtree(path)
    params = data_bindings(data_dir) + list(gin_params)
    runs = [("pretrain", PRETRAIN_GIN, [], "CVRL pretraining"),
            ("linear_eval_cvrl", LINEAR_GIN, [f"PRETRAIN_DIR = {dirs['pretrain']!r}"],
             "Linear evaluation: cvrl backbone"),
            ("linear_eval_random", LINEAR_GIN, ["PRETRAIN_DIR = ''"],
             "Linear evaluation: random_init backbone")]
    clock = demo_clock.DemoClock(
        [phase(name, gin_file, params + extra, name == "pretrain")
         for name, gin_file, extra, _ in runs], start)
    outputs = {}
    for name, gin_file, extra, title in runs:
        t = time.monotonic()
        print(f"\n== {title} ==", flush=True)
        clock.begin(name)
        outputs[name] = train.run_with_gin([gin_file], params + extra, model_dir=dirs[name],
                                           on_loop=clock.on_loop, verbose=verbose)
        times[name] = time.monotonic() - t
    pretrain = outputs["pretrain"]
    linear = {"cvrl": outputs["linear_eval_cvrl"],
              "random_init": outputs["linear_eval_random"]}

    embedding_map = write_embedding_map(output_dir, dirs, data_dir, linear)
    results = {
        "embedding_map": embedding_map,
        "linear_top1": {k: float(v["eval"]["top1"]) for k, v in linear.items()},
        "linear_top5": {k: float(v["eval"]["top5"]) for k, v in linear.items()},
        "pretrain": {"steps": pretrain["global_step"],
                     "contrastive_accuracy": pretrain["train"].get("contrastive_accuracy"),
                     "probe_top1": pretrain["eval"].get("top1")},
        "num_eval_videos": linear["cvrl"]["eval"].get("num_examples"),
        "wall_time_sec": {**times, "total": time.monotonic() - start},
        "eta": clock.estimate,
        "model_dirs": dirs,
    }
    summaries.write_results(output_dir, results)
    _print_table(results)
    print(clock.summary(), flush=True)
    if embedding_map:
        print(f"Embedding map of the eval set (random init vs CVRL): {embedding_map}", flush=True)
    return results


def _print_table(results: dict) -> None:
    top1, top5 = results["linear_top1"], results["linear_top5"]
    gain = 100 * (top1["cvrl"] - top1["random_init"])
    print("\nLinear evaluation on the motion data set (6 classes, chance 16.7 %):")
    print(f"  {'backbone':<22}{'top-1':>8}{'top-5':>8}")
    print(f"  {'CVRL pretrained':<22}{100 * top1['cvrl']:>7.1f}%{100 * top5['cvrl']:>7.1f}%")
    print(f"  {'random init':<22}{100 * top1['random_init']:>7.1f}%"
          f"{100 * top5['random_init']:>7.1f}%")
    print(f"  CVRL - random: {gain:+.1f} points of top-1; "
          f"wall time {results['wall_time_sec']['total'] / 60:.1f} min")


def write_embedding_map(output_dir: str, dirs: dict, data_dir: str, linear: dict
                        ) -> Optional[str]:
    """OUTPUT_DIR/embeddings.png: eval-set features (centre clip) of the random backbone (the
    linear eval's frozen one) and of the CVRL backbone, t-SNE (PCA without scikit-learn),
    coloured by class."""
    clip = checkpoints.read_clip_json(dirs["pretrain"])
    if clip is None:
        print(f"No {checkpoints.CLIP_JSON} in {dirs['pretrain']}: no embedding map.", flush=True)
        return None
    print("\n== Embedding map of the eval set ==", flush=True)
    panels = []
    for name, key, model_dir in (("random init", "random_init", dirs["linear_eval_random"]),
                                 ("CVRL", "cvrl", dirs["pretrain"])):
        backbone = export.load_backbone(model_dir)
        out = features.extract_from_records(
            lambda clips, b=backbone: b(clips, training=False), os.path.join(
                data_dir, "eval-*.tfrecord"), clip["num_frames"], clip["stride"],
            clip["crop_size"], 1, 1, batch_size=100, show_progress=False)
        top1 = 100 * float(linear[key]["eval"]["top1"])
        panels.append((f"{name}: linear top-1 {top1:.1f}%", out["features"], out["labels"]))
    names = schema.read_label_map(schema.label_map_path(data_dir))
    # t-SNE when scikit-learn is installed: two PCA axes show the demo's six motions poorly.
    method = "tsne" if importlib.util.find_spec("sklearn") else "pca"
    return plots.plot_embedding_map(
        os.path.join(output_dir, "embeddings.png"), panels, names, method=method,
        title=f"Eval-set features, centre clip ({'t-SNE' if method == 'tsne' else 'PCA'})")


def parser_for(doc: str, output_dir: str) -> argparse.ArgumentParser:
    """The demos' command line: --output_dir, --gin_param (repeatable), --verbose."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--gin_param", action="append", default=[],
                        help="extra gin binding for every run, e.g. run.train_length=100")
    parser.add_argument("--verbose", action="store_true",
                        help="every metric of every loop, and Python's log lines")
    return parser


def written(output_dir: str, results: dict) -> dict:
    """The demos' last line, naming where their results are."""
    print(f"Results written to {os.path.abspath(output_dir)}", flush=True)
    return results


@cli.guard
def main(argv: Optional[Sequence[str]] = None) -> dict:
    """CLI entry point; the last line printed names the output directory."""
    args = parser_for(__doc__, "runs/demo").parse_args(argv)
    console.setup_logging(args.verbose)
    return written(args.output_dir, run_demo(args.output_dir, args.gin_param, start=_START,
                                             verbose=args.verbose))


if __name__ == "__main__":
    main()
