"""The paper's findings in miniature: linear-eval top-1 on the embedded motion set, over seeds.

    python -m bench.findings                      # 6 conditions x 3 seeds, resumable
    python -m bench.findings --seeds 0,2 --conditions random_init,decreasing
    python -m bench.findings --steps_scale 0.05 --output_dir runs/findings_smoke  # a smoke run

Conditions (CONDITIONS): a randomly initialized backbone, and CVRL pretraining with the
interval distributions decreasing (power 1, the paper's choice: 'CVRL'), uniform, increasing
and zero (both clips at one start), and with per-frame instead of temporally consistent spatial
augmentation (decreasing intervals). Every run is the demo's: its model, data set and budget
come from gin/experiments/demo_pretrain.gin and demo_linear_eval.gin through
train.run_with_gin, the condition only adds its build_dataset bindings to the pretraining, and
--steps_scale shortens every duration alike. Seed s sets run.seed (input order, augmentation)
and, through keras.utils.set_random_seed before each run, the model's initialization; all
conditions of one seed start from the same weights, so a comparison within a seed is paired.

Each (condition, seed) writes OUTPUT_DIR/results/<condition>-seed<s>.json when its linear eval
ends; a rerun skips those, reuses finished trainings (their results.json; a pretraining that
trains again gets a new linear eval) and lets a half-finished one resume from its checkpoint.
OUTPUT_DIR/sweep.json pins the settings: a rerun with other settings (or after the demo's gin
files changed) stops instead of mixing (bench/sweep.py: the machinery bench.label_efficiency
shares).
At the end, from every result in OUTPUT_DIR: DOCS_DIR/findings.json (keeping the sections of
the other commands: sweep.SECTIONS), findings_ablations.png
(mean +- std over seeds, each seed a dot) and findings_embeddings.png (eval-set features of the
random and the CVRL backbone of the first seed that has both, as `make demo` draws them).
"""
import argparse
import os
import shlex
import shutil
import statistics
import sys
import time
from typing import Optional, Sequence

from bench import machine
from bench import sweep as sweep_lib
from bench.sweep import DOCS_DIR, parse_seeds, scaled_bindings, write_json  # noqa: F401
from cvrl_tf import demo
from cvrl_tf.data import schema

# Condition -> the pretraining's extra bindings; None: no pretraining (random backbone).
CONDITIONS = {
    "random_init": None,
    "decreasing": ["build_dataset.distribution='decreasing'", "build_dataset.power=1.0"],
    "uniform": ["build_dataset.distribution='uniform'"],
    "increasing": ["build_dataset.distribution='increasing'"],
    "zero": ["build_dataset.distribution='zero'"],
    "per_frame": ["build_dataset.distribution='decreasing'", "build_dataset.power=1.0",
                  "build_dataset.consistent=False"],
}
LABELS = {"random_init": "random init", "decreasing": "decreasing\n(CVRL)",
          "uniform": "uniform", "increasing": "increasing", "zero": "zero",
          "per_frame": "per-frame\naugmentation"}


def parse_conditions(text: str) -> list[str]:
    """'random_init,decreasing' -> those conditions, in CONDITIONS order."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown or not names:
        raise ValueError(f"--conditions={text!r}: unknown {unknown}; choose from "
                         f"{list(CONDITIONS)}.")
    return [c for c in CONDITIONS if c in names]


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


class Sweep(sweep_lib.Sweep):
    """The ablation sweep: `run(condition, seed)` pretrains and linear-evaluates one."""

    def __init__(self, output_dir: str, steps_scale: float = 1.0,
                 gin_params: Sequence[str] = (), command: str = ""):
        super().__init__(output_dir, {"pretrain": demo.PRETRAIN_GIN, "linear": demo.LINEAR_GIN},
                         steps_scale, gin_params, command)

    def run(self, condition: str, seed: int) -> dict:
        """Pretrains (unless random_init) and linear-evaluates; writes and returns the result."""
        start = time.time()
        result = {"condition": condition, "seed": seed, "command": self.command,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "load_average": os.getloadavg()[0]}
        warm_start, wall, pretrained_now = "", {}, False
        if CONDITIONS[condition] is not None:
            pretrain, pretrained_now = self.train("pretrain", condition, seed,
                                                  CONDITIONS[condition])
            warm_start = self.model_dir("pretrain", condition, seed)
            wall["pretrain"] = (time.time() - start if pretrained_now else
                                pretrain["wall_time_sec"])  # Reused: its own time.
            result["pretrain"] = {
                "steps": pretrain["global_step"], "resumed_at": pretrain.get("start_step"),
                "contrastive_accuracy": _float(pretrain["train"].get("contrastive_accuracy")),
                "probe_top1": _float(pretrain["eval"].get("top1"))}
        t = time.time()
        # A new pretraining gets a new linear eval, never one of an earlier backbone.
        linear, trained = self.train("linear", condition, seed,
                                     [f"PRETRAIN_DIR = {warm_start!r}"],
                                     reuse=not pretrained_now)
        wall["linear_eval"] = time.time() - t if trained else linear["wall_time_sec"]
        result.update(top1=float(linear["eval"]["top1"]), top5=float(linear["eval"]["top5"]),
                      linear_steps=linear["global_step"],
                      wall_time_sec={**wall, "total": sum(wall.values())})
        write_json(self.result_path(condition, seed), result)
        return result

    def by_condition(self) -> dict:
        """Every finished (condition, seed) in the output dir: {condition: [result, ...]}."""
        found = {c: [] for c in CONDITIONS}
        for result in self.load_results():
            found[result["condition"]].append(result)
        return {c: sorted(rs, key=lambda r: r["seed"]) for c, rs in found.items() if rs}

    def write_embedding_map(self, results: dict, docs_dir: str) -> Optional[str]:
        """DOCS_DIR/findings_embeddings.png: random init beside CVRL (decreasing) for the first
        seed that has both, drawn by the demo's own write_embedding_map."""
        cvrl = {r["seed"]: r for r in results.get("decreasing", [])}
        pairs = [(r, cvrl[r["seed"]]) for r in results.get("random_init", [])
                 if r["seed"] in cvrl]
        if not pairs:
            return None
        random_init, pretrained = pairs[0]
        seed = random_init["seed"]
        path = os.path.join(docs_dir, "findings_embeddings.png")
        sources = [self.result_path(c, seed) for c in ("random_init", "decreasing")]
        if os.path.exists(path) and os.path.getmtime(path) > max(map(os.path.getmtime,
                                                                      sources)):
            return path  # Drawn after both runs ended: up to date.
        dirs = {"pretrain": self.model_dir("pretrain", "decreasing", seed),
                "linear_eval_random": self.model_dir("linear", "random_init", seed)}
        linear = {"cvrl": {"eval": {"top1": pretrained["top1"]}},
                  "random_init": {"eval": {"top1": random_init["top1"]}}}
        drawn = demo.write_embedding_map(os.path.join(self.output_dir, f"seed{seed}"), dirs,
                                         self.data_dir, linear)
        if drawn is None:
            return None
        shutil.copyfile(drawn, path)
        return path


def summarize(results: dict, sweep: Sweep) -> dict:
    """The findings.json content: per-seed top-1 per condition, mean/std, times, machine."""
    std = sweep_lib.std
    top1 = {c: [r["top1"] for r in rs] for c, rs in results.items()}
    wall = {c: [r["wall_time_sec"]["total"] for r in rs] for c, rs in results.items()}
    num_classes = len(schema.read_label_map(schema.label_map_path(sweep.data_dir)))
    return {
        "top1": top1,
        "seeds": {c: [r["seed"] for r in rs] for c, rs in results.items()},
        "mean": {c: statistics.fmean(v) for c, v in top1.items()},
        "std": {c: std(v) for c, v in top1.items()},
        "std_note": "sample standard deviation over seeds (n - 1); 0 for one seed",
        "top5": {c: [r["top5"] for r in rs] for c, rs in results.items()},
        "wall_time_sec": wall,
        "total_wall_time_sec": sum(sum(v) for v in wall.values()),
        "load_average_at_start": {c: [r.get("load_average") for r in rs]
                                  for c, rs in results.items()},
        "chance_top1": 1.0 / num_classes,
        "steps": {"pretrain": sweep.steps["pretrain"], "linear_eval": sweep.steps["linear"]},
        "steps_scale": sweep.settings["steps_scale"],
        "gin_params": sweep.settings["gin_params"],
        "commands": sorted({r["command"] for rs in results.values() for r in rs}),
        "cpu": machine.cpu_model(), "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def plot_ablations(path: str, findings: dict) -> str:
    """A bar per condition (mean top-1 over seeds, +- std error bars), each seed a dot."""
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conditions = list(findings["top1"])
    colors = {"random_init": "0.6", "per_frame": "tab:orange"}
    figure = Figure(figsize=(1.2 * len(conditions) + 2.0, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    x = range(len(conditions))
    means = [100 * findings["mean"][c] for c in conditions]
    ax.bar(x, means, yerr=[100 * findings["std"][c] for c in conditions], capsize=5,
           color=[colors.get(c, "tab:blue") for c in conditions], alpha=0.8)
    for i, c in enumerate(conditions):
        values = [100 * v for v in findings["top1"][c]]
        ax.plot([i] * len(values), values, "o", color="k", markersize=3)
        ax.annotate(f"{means[i]:.1f}", (i, means[i]), textcoords="offset points",
                    xytext=(12, 3), fontsize=8)
    ax.axhline(100 * findings["chance_top1"], color="k", linestyle=":", linewidth=1)
    ax.text(-0.55, 100 * findings["chance_top1"], "chance", fontsize=7, va="bottom")
    ax.set_xticks(list(x), [LABELS[c] for c in conditions], fontsize=8)
    ax.set_ylabel("linear-eval top-1 (%)")
    ax.set_ylim(0, 100)
    seeds = "/".join(map(str, sorted({len(v) for v in findings["top1"].values()})))
    ax.set_title(f"Motion set, pretraining {findings['steps']['pretrain']} steps: mean "
                 f"\u00b1 std over {seeds} seed(s), dots: seeds", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _eta(sweep: Sweep, left: Sequence[str]) -> str:
    """The time the conditions left will take, at the mean pretraining and linear-eval times
    of every finished run in the output dir."""
    pretrainings = sum(CONDITIONS[c] is not None for c in left)
    return sweep_lib.eta(sweep.load_results(), {"linear_eval": len(left),
                                                "pretrain": pretrainings})


def run_sweep(sweep: Sweep, conditions: Sequence[str], seeds: Sequence[int],
              docs_dir: str = DOCS_DIR) -> dict:
    """Runs every missing (condition, seed), seed by seed; writes findings.json and figures."""
    todo = [(c, s) for s in seeds for c in conditions
            if not os.path.exists(sweep.result_path(c, s))]
    print(f"{len(seeds) * len(conditions) - len(todo)} of {len(seeds) * len(conditions)} runs "
          f"finished before; {len(todo)} to go (pretraining {sweep.steps['pretrain']} steps, "
          f"linear eval {sweep.steps['linear']} steps; {machine.describe()}).", flush=True)
    for i, (condition, seed) in enumerate(todo):
        print(f"\n== [{i + 1}/{len(todo)}] {condition}, seed {seed} (ETA of the rest: "
              f"{_eta(sweep, [c for c, _ in todo[i:]])}) ==", flush=True)
        result = sweep.run(condition, seed)
        print(f"== {condition}, seed {seed}: linear top-1 {100 * result['top1']:.1f}% in "
              f"{sweep_lib.hms(result['wall_time_sec']['total'])} ==", flush=True)
    results = sweep.by_condition()
    if not results:
        return {}
    os.makedirs(docs_dir, exist_ok=True)
    findings = summarize(results, sweep)
    findings["figures"] = [os.path.basename(plot_ablations(
        os.path.join(docs_dir, "findings_ablations.png"), findings))]
    embeddings = sweep.write_embedding_map(results, docs_dir)
    if embeddings:
        findings["figures"].append(os.path.basename(embeddings))
    sweep_lib.write_findings(docs_dir, findings)
    _print_table(findings)
    return findings


def _print_table(findings: dict) -> None:
    print(f"\nLinear-eval top-1 on the motion set (chance {100 * findings['chance_top1']:.1f}%, "
          f"pretraining {findings['steps']['pretrain']} steps):")
    for c, values in findings["top1"].items():
        seeds = ", ".join(f"{100 * v:.1f}" for v in values)
        print(f"  {c:<12} {100 * findings['mean'][c]:5.1f} \u00b1 {100 * findings['std'][c]:4.1f}"
              f"  (seeds {findings['seeds'][c]}: {seeds})")
    print(f"Total wall time of these runs: {sweep_lib.hms(findings['total_wall_time_sec'])}",
          flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="3",
                        help="a count N (seeds 0..N-1) or a comma list (0,2; one seed: 2,)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma list of {list(CONDITIONS)}")
    parser.add_argument("--output_dir", default="runs/findings")
    parser.add_argument("--steps_scale", type=float, default=1.0,
                        help="multiplies every duration of the demo's runs (0.05: a smoke run)")
    parser.add_argument("--docs_dir", default=DOCS_DIR,
                        help="where findings.json and the figures go (default: the repo's docs/)")
    parser.add_argument("--gin_param", action="append", default=[],
                        help="extra gin binding for every run (a new sweep: see sweep.json)")
    args = parser.parse_args(argv)
    try:
        seeds, conditions = parse_seeds(args.seeds), parse_conditions(args.conditions)
        if not args.steps_scale > 0:
            raise ValueError(f"--steps_scale={args.steps_scale} must be > 0.")
    except ValueError as e:
        parser.error(str(e))
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m bench.findings"] + [shlex.quote(a) for a in argv])
    sweep = Sweep(args.output_dir, args.steps_scale, args.gin_param, command)
    return run_sweep(sweep, conditions, seeds, args.docs_dir)


if __name__ == "__main__":
    main()
