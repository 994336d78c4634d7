"""Fewer labels in miniature: fine-tuned top-1 on the motion set from 1%, 10% and 100% of the
training labels, CVRL-pretrained against randomly initialized, over seeds.

    python -m bench.label_efficiency                # 3 fractions x 2 conditions x 3 seeds
    python -m bench.label_efficiency --seeds 0,2 --fractions 0.01,0.1
    python -m bench.label_efficiency --steps_scale 0.05 --output_dir runs/label_efficiency_smoke

The CVRL paper's semi-supervised comparison (SPEC.md, downstream evaluation 3) on the demo's
data, model and budget: per seed s, one CVRL pretraining (gin/experiments/demo_pretrain.gin)
serves every fraction; each fraction f < 1 is a class-balanced subset of the train split
drawn with seed s (cvrl_tf.data.subset: OUTPUT_DIR/subsets/<f>-seed<s>.txt), 100% is the whole
split; on it gin/experiments/demo_finetune.gin trains the whole network for the same number of
steps in every condition, from the pretraining ('cvrl') or from scratch ('scratch'). Seed s
also sets run.seed and, before each run, the initialization: within a seed both conditions
start their head (and the scratch backbone) from the same draw, so the comparison is paired.
Runs, resumption and settings pinning are bench.findings' (bench/sweep.py). At the end, from
every result in OUTPUT_DIR: the `semi_supervised` section of DOCS_DIR/findings.json and
DOCS_DIR/findings_label_efficiency.png (top-1 against the label fraction, log axis, mean +-
std over seeds, each seed a dot).
"""
import argparse
import os
import shlex
import statistics
import sys
import time
from typing import Optional, Sequence

from bench import machine
from bench import sweep as sweep_lib
from cvrl_tf import demo
from cvrl_tf.data import schema
from cvrl_tf.data import subset

FINETUNE_GIN = "experiments/demo_finetune.gin"
FRACTIONS = (0.01, 0.1, 1.0)
CONDITIONS = ("cvrl", "scratch")
LABELS = {"cvrl": "CVRL pretrained, fine-tuned", "scratch": "random init, trained"}
FIGURE = "findings_label_efficiency.png"


def label(fraction: float) -> str:
    """0.01 -> '1%' (the key of a fraction in findings.json)."""
    return f"{100 * fraction:g}%"


def run_name(fraction: float, condition: str = "") -> str:
    """0.01, 'cvrl' -> '1pct_cvrl' (model dirs and result files); no condition: '1pct'."""
    return f"{100 * fraction:g}pct" + (f"_{condition}" if condition else "")


def parse_fractions(text: str) -> list[float]:
    """'0.01,0.1' -> [0.01, 0.1], each in (0, 1], ascending."""
    try:
        fractions = sorted({float(f) for f in text.split(",") if f.strip()})
    except ValueError:
        raise ValueError(f"--fractions={text!r} is not a comma list of numbers.") from None
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"--fractions={text!r} must be fractions in (0, 1], e.g. 0.01,0.1,1.")
    return fractions


class Sweep(sweep_lib.Sweep):
    """`run(fraction, condition, seed)` fine-tunes one (pretraining the seed first if needed)."""

    def __init__(self, output_dir: str, steps_scale: float = 1.0,
                 gin_params: Sequence[str] = (), command: str = ""):
        super().__init__(output_dir, {"pretrain": demo.PRETRAIN_GIN, "finetune": FINETUNE_GIN},
                         steps_scale, gin_params, command)
        self._pretrained_now = set()  # Seeds whose pretraining trained in this process.

    def subset_file(self, fraction: float, seed: int) -> str:
        """The seed's subset of the train split (written once); '' for the whole split."""
        if fraction == 1.0:
            return ""
        path = os.path.join(self.output_dir, "subsets", f"{run_name(fraction)}-seed{seed}.txt")
        if not os.path.exists(path):
            subset.make_subset(os.path.join(self.data_dir, "train-*.tfrecord"), fraction, seed,
                               path)
        return path

    def _pretrain(self, seed: int) -> tuple[dict, float]:
        """The seed's CVRL pretraining (trained or reused) and its wall time."""
        start = time.time()
        results, trained = self.train("pretrain", "cvrl", seed, [])
        if trained:
            self._pretrained_now.add(seed)
        return results, time.time() - start if trained else results["wall_time_sec"]

    def run(self, fraction: float, condition: str, seed: int) -> dict:
        """Fine-tunes one (fraction, condition, seed); writes and returns its result."""
        result = {"fraction": fraction, "condition": condition, "seed": seed,
                  "command": self.command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "load_average": os.getloadavg()[0]}
        wall, warm_start = {}, ""
        if condition == "cvrl":
            pretrain, wall["pretrain"] = self._pretrain(seed)
            warm_start = self.model_dir("pretrain", "cvrl", seed)
            result["pretrain"] = {"steps": pretrain["global_step"],
                                  "probe_top1": pretrain["eval"].get("top1")}
        subset_file = self.subset_file(fraction, seed)
        start = time.time()
        # A new pretraining gets new fine-tunings, never ones of an earlier backbone.
        finetune, trained = self.train(
            "finetune", run_name(fraction, condition), seed,
            [f"PRETRAIN_DIR = {warm_start!r}", f"run.train_subset = {subset_file!r}"],
            reuse=seed not in self._pretrained_now or condition != "cvrl")
        wall["finetune"] = time.time() - start if trained else finetune["wall_time_sec"]
        result.update(top1=float(finetune["eval"]["top1"]), top5=float(finetune["eval"]["top5"]),
                      finetune_steps=finetune["global_step"],
                      labelled_videos=(finetune.get("train_subset") or {}).get(
                          "num_videos", self.num_train),
                      train_loss=float(finetune["train"]["loss"]),
                      train_accuracy=float(finetune["train"]["accuracy"]),
                      wall_time_sec=wall)
        sweep_lib.write_json(self.result_path(run_name(fraction, condition), seed), result)
        return result

    @property
    def num_train(self) -> int:
        return schema.read_example_count(os.path.join(self.data_dir, "train-*.tfrecord"))


def summarize(results: Sequence[dict], sweep: Sweep) -> dict:
    """The `semi_supervised` section: per fraction and condition one top-1 per seed, mean,
    std, the paired gain of CVRL per seed, times and the machine."""
    table = {}
    for r in sorted(results, key=lambda r: (r["fraction"], r["seed"])):
        table.setdefault(label(r["fraction"]), {}).setdefault(r["condition"], []).append(r)

    def per(key):
        return {f: {c: [r[key] for r in rs] for c, rs in conds.items()}
                for f, conds in table.items()}

    top1 = per("top1")
    gains = {}
    for f, conds in table.items():
        if all(c in conds for c in CONDITIONS):
            scratch = {r["seed"]: r["top1"] for r in conds["scratch"]}
            gains[f] = [r["top1"] - scratch[r["seed"]] for r in conds["cvrl"]
                        if r["seed"] in scratch]
    num_classes = len(schema.read_label_map(schema.label_map_path(sweep.data_dir)))
    # Each cvrl run names its seed's pretraining time; the one pretraining counts once.
    pretrain = {r["seed"]: r["wall_time_sec"]["pretrain"] for r in results
                if "pretrain" in r["wall_time_sec"]}
    return {
        "fractions": sorted({r["fraction"] for r in results}),
        "labelled_videos": {f: next(iter(cs.values()))[0]["labelled_videos"]
                            for f, cs in table.items()},
        "top1": top1, "seeds": per("seed"),
        "mean": {f: {c: statistics.fmean(v) for c, v in cs.items()} for f, cs in top1.items()},
        "std": {f: {c: sweep_lib.std(v) for c, v in cs.items()} for f, cs in top1.items()},
        "std_note": "sample standard deviation over seeds (n - 1); 0 for one seed",
        "cvrl_minus_scratch": gains,
        "top5": per("top5"), "train_accuracy": per("train_accuracy"),
        "chance_top1": 1.0 / num_classes,
        "steps": {"pretrain": sweep.steps["pretrain"], "finetune": sweep.steps["finetune"]},
        "steps_scale": sweep.settings["steps_scale"], "gin_params": sweep.settings["gin_params"],
        "finetune_wall_time_sec": {f: {c: [r["wall_time_sec"]["finetune"] for r in rs]
                                       for c, rs in cs.items()} for f, cs in table.items()},
        "pretrain_wall_time_sec": {str(s): t for s, t in sorted(pretrain.items())},
        "total_wall_time_sec": sum(pretrain.values()) + sum(
            r["wall_time_sec"]["finetune"] for r in results),
        "commands": sorted({r["command"] for r in results}),
        "cpu": machine.cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
        "figure": FIGURE,
    }


def plot(path: str, section: dict) -> str:
    """Top-1 against the label fraction (log x): mean +- std per condition, each seed a dot."""
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    colors = {"cvrl": "tab:blue", "scratch": "0.5"}
    for condition in CONDITIONS:
        points = [(f, section["top1"][label(f)][condition]) for f in section["fractions"]
                  if condition in section["top1"][label(f)]]
        if not points:
            continue
        xs = [x for x, _ in points]
        means = [100 * statistics.fmean(v) for _, v in points]
        errors = [100 * sweep_lib.std(v) for _, v in points]
        ax.errorbar(xs, means, yerr=errors, capsize=4, marker="s", color=colors[condition],
                    label=LABELS[condition])
        for x, values in points:
            ax.plot([x] * len(values), [100 * v for v in values], "o", color="k", markersize=3,
                    alpha=0.6)
    ax.axhline(100 * section["chance_top1"], color="k", linestyle=":", linewidth=1)
    ax.text(min(section["fractions"]), 100 * section["chance_top1"], " chance", fontsize=7,
            va="bottom")
    ax.set_xscale("log")
    ax.set_xticks(section["fractions"], [label(f) for f in section["fractions"]])
    ax.set_xlabel("fraction of the training labels (class-balanced)")
    ax.set_ylabel("top-1 on the eval set (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    seeds = "/".join(map(str, sorted({len(v) for cs in section["top1"].values()
                                      for v in cs.values()})))
    ax.set_title(f"Motion set, {section['steps']['finetune']} fine-tuning steps: mean "
                 f"\u00b1 std over {seeds} seed(s), dots: seeds", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    return path


def run_sweep(sweep: Sweep, fractions: Sequence[float], seeds: Sequence[int],
              docs_dir: str = sweep_lib.DOCS_DIR) -> dict:
    """Runs every missing (fraction, condition, seed), seed by seed; writes the section of
    findings.json and the figure from every result in the output dir."""
    todo = [(f, c, s) for s in seeds for f in fractions for c in CONDITIONS
            if not os.path.exists(sweep.result_path(run_name(f, c), s))]
    total = len(seeds) * len(fractions) * len(CONDITIONS)
    print(f"{total - len(todo)} of {total} runs finished before; {len(todo)} to go "
          f"(pretraining {sweep.steps['pretrain']} steps, fine-tuning "
          f"{sweep.steps['finetune']} steps; {machine.describe()}).", flush=True)
    for i, (fraction, condition, seed) in enumerate(todo):
        pending = {s for f, c, s in todo[i:] if c == "cvrl"
                   and not os.path.exists(os.path.join(sweep.model_dir("pretrain", "cvrl", s),
                                                       "results.json"))}
        left = sweep_lib.eta(sweep.load_results(), {"finetune": len(todo) - i,
                                                    "pretrain": len(pending)})
        print(f"\n== [{i + 1}/{len(todo)}] {label(fraction)} of the labels, {condition}, seed "
              f"{seed} (ETA of the rest: {left}) ==", flush=True)
        result = sweep.run(fraction, condition, seed)
        print(f"== {label(fraction)}, {condition}, seed {seed}: top-1 "
              f"{100 * result['top1']:.1f}%, fine-tuned in "
              f"{sweep_lib.hms(result['wall_time_sec']['finetune'])} ==", flush=True)
    results = sweep.load_results()
    if not results:
        return {}
    os.makedirs(docs_dir, exist_ok=True)
    section = summarize(results, sweep)
    plot(os.path.join(docs_dir, FIGURE), section)
    sweep_lib.write_findings(docs_dir, section, section="semi_supervised")
    _print_table(section)
    return section


def _print_table(section: dict) -> None:
    print(f"\nFine-tuned top-1 on the motion set (chance {100 * section['chance_top1']:.1f}%, "
          f"{section['steps']['finetune']} steps):")
    for f, conds in section["top1"].items():
        for c, values in conds.items():
            seeds = ", ".join(f"{100 * v:.1f}" for v in values)
            print(f"  {f:>5} {c:<8} {100 * section['mean'][f][c]:5.1f} \u00b1 "
                  f"{100 * section['std'][f][c]:4.1f}  (seeds {section['seeds'][f][c]}: {seeds})")
    print(f"Total wall time of these runs: {sweep_lib.hms(section['total_wall_time_sec'])}",
          flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="3",
                        help="a count N (seeds 0..N-1) or a comma list (0,2; one seed: 2,)")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        help="comma list of label fractions in (0, 1]")
    parser.add_argument("--output_dir", default="runs/label_efficiency")
    parser.add_argument("--steps_scale", type=float, default=1.0,
                        help="multiplies every duration of the demo's runs (0.05: a smoke run)")
    parser.add_argument("--docs_dir", default=sweep_lib.DOCS_DIR,
                        help="where findings.json and the figure go (default: the repo's docs/)")
    parser.add_argument("--gin_param", action="append", default=[],
                        help="extra gin binding for every run (a new sweep: see sweep.json)")
    args = parser.parse_args(argv)
    try:
        seeds, fractions = sweep_lib.parse_seeds(args.seeds), parse_fractions(args.fractions)
        if not args.steps_scale > 0:
            raise ValueError(f"--steps_scale={args.steps_scale} must be > 0.")
    except ValueError as e:
        parser.error(str(e))
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m bench.label_efficiency"] + [shlex.quote(a) for a in argv])
    sweep = Sweep(args.output_dir, args.steps_scale, args.gin_param, command)
    return run_sweep(sweep, fractions, seeds, args.docs_dir)


if __name__ == "__main__":
    main()
