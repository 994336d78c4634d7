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
files changed) stops instead of mixing.
At the end, from every result in OUTPUT_DIR: DOCS_DIR/findings.json, findings_ablations.png
(mean +- std over seeds, each seed a dot) and findings_embeddings.png (eval-set features of the
random and the CVRL backbone of the first seed that has both, as `make demo` draws them).
"""
import argparse
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from typing import Optional, Sequence

import gin
import keras

from bench import machine
from cvrl_tf.training import config
from cvrl_tf import demo
from cvrl_tf.training import summaries
from cvrl_tf import train
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
DURATIONS = ("train_length", "warmup", "steps_per_loop", "checkpoint_every", "eval_every")
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def write_json(path: str, value: dict) -> None:
    """Writes value as indented JSON under a temporary name first: a killed run leaves none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(value, indent=2)
    # Lists of numbers or strings on one line: a condition's seeds read across.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2] (the first N seeds); '0,2' or '2,' -> those seeds."""
    try:
        if "," not in text:
            return list(range(int(text)))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds={text!r} is neither a count (3) nor a list (0,2).") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds={text!r} must name distinct seeds >= 0.")
    return seeds


def parse_conditions(text: str) -> list[str]:
    """'random_init,decreasing' -> those conditions, in CONDITIONS order."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown or not names:
        raise ValueError(f"--conditions={text!r}: unknown {unknown}; choose from "
                         f"{list(CONDITIONS)}.")
    return [c for c in CONDITIONS if c in names]


def scaled_bindings(gin_file: str, params: Sequence[str], scale: float) -> tuple[list, int]:
    """(bindings that shorten every duration of gin_file by `scale`, its training steps).

    The durations are read from the file itself (in steps, by config.schedule), so the sweep
    follows whatever the demo ships; scale 1 binds nothing.
    """
    train.parse_gin([gin_file], params)
    steps = config.schedule(train.job_config(model_dir=""))
    if scale == 1:
        return [], steps.total
    total = max(1, round(steps.total * scale))
    loop = min(steps.steps_per_loop, total)
    values = {"train_length": total, "warmup": min(round(steps.warmup * scale), total),
              "steps_per_loop": loop,
              "checkpoint_every": _loops(steps.checkpoint_every * scale, loop),
              "eval_every": _loops(steps.eval_every * scale, loop)}
    return [f"run.{name}={values[name]}" for name in DURATIONS], total


def _loops(steps: float, loop: int) -> int:
    """0 stays 0 (at the end only); else a whole number of loops, at least one."""
    return steps and loop * max(1, round(steps / loop))


def _float(value) -> Optional[float]:
    return None if value is None else float(value)


class Sweep:
    """The sweep's directories, bindings and bookkeeping; `run(condition, seed)` does one."""

    def __init__(self, output_dir: str, steps_scale: float = 1.0,
                 gin_params: Sequence[str] = (), command: str = ""):
        if not steps_scale > 0:
            raise ValueError(f"--steps_scale={steps_scale} must be > 0.")
        self.output_dir = os.path.abspath(output_dir)
        self.data_dir = os.path.join(self.output_dir, "data")
        self.results_dir = os.path.join(self.output_dir, "results")
        self.command = command
        size = inspect.signature(demo.run_demo).parameters  # The demo's own data set size.
        demo.ensure_data(self.data_dir, size["num_train"].default, size["num_eval"].default)
        data = demo.data_bindings(self.data_dir)
        self.params, self.steps, digest = {}, {}, hashlib.sha256()
        for key, gin_file in (("pretrain", demo.PRETRAIN_GIN), ("linear", demo.LINEAR_GIN)):
            scaled, self.steps[key] = scaled_bindings(gin_file, data + list(gin_params),
                                                      steps_scale)
            self.params[key] = data + scaled + list(gin_params)
            train.parse_gin([gin_file], self.params[key])
            digest.update(gin.config_str().replace(self.data_dir, "<data>").encode())
        self.settings = {"steps_scale": steps_scale, "gin_params": list(gin_params),
                         "steps": self.steps, "config_sha256": digest.hexdigest()}
        self._pin_settings()

    def _pin_settings(self) -> None:
        """Writes sweep.json, or stops if the output dir holds a sweep with other settings."""
        path = os.path.join(self.output_dir, "sweep.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                pinned = json.load(f)
            if pinned != self.settings:
                raise ValueError(
                    f"{path} holds a sweep with other settings ({pinned}, now "
                    f"{self.settings}; the demo's gin files or the flags changed); use another "
                    f"--output_dir, or delete that one to start over.")
            return
        write_json(path, self.settings)

    def model_dir(self, kind: str, condition: str, seed: int) -> str:
        return os.path.join(self.output_dir, f"seed{seed}", f"{kind}_{condition}")

    def result_path(self, condition: str, seed: int) -> str:
        return os.path.join(self.results_dir, f"{condition}-seed{seed}.json")

    def _train(self, kind: str, condition: str, seed: int, extra: Sequence[str],
               reuse: bool = True) -> tuple[dict, bool]:
        """One training run -> (its results, whether it trained now). Reused when its
        results.json says it is complete (and `reuse`), resumed from its checkpoints when it
        stopped half way, else trained from the start."""
        model_dir = self.model_dir(kind, condition, seed)
        previous = os.path.join(model_dir, summaries.RESULTS_JSON)
        if not reuse and os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        elif os.path.exists(previous):
            with open(previous, encoding="utf-8") as f:
                done = json.load(f)
            if done.get("global_step") == done.get("total_steps") == self.steps[kind]:
                print(f"  {kind}: finished before, reusing {model_dir}", flush=True)
                return done, False
        keras.utils.set_random_seed(seed)  # Model initialization (run.seed: the input).
        gin_file = demo.PRETRAIN_GIN if kind == "pretrain" else demo.LINEAR_GIN
        return train.run_with_gin([gin_file], self.params[kind] + [f"run.seed={seed}"] +
                                  list(extra), model_dir=model_dir), True

    def run(self, condition: str, seed: int) -> dict:
        """Pretrains (unless random_init) and linear-evaluates; writes and returns the result."""
        start = time.time()
        result = {"condition": condition, "seed": seed, "command": self.command,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "load_average": os.getloadavg()[0]}
        warm_start, wall, pretrained_now = "", {}, False
        if CONDITIONS[condition] is not None:
            pretrain, pretrained_now = self._train("pretrain", condition, seed,
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
        linear, trained = self._train("linear", condition, seed,
                                      [f"PRETRAIN_DIR = {warm_start!r}"],
                                      reuse=not pretrained_now)
        wall["linear_eval"] = time.time() - t if trained else linear["wall_time_sec"]
        result.update(top1=float(linear["eval"]["top1"]), top5=float(linear["eval"]["top5"]),
                      linear_steps=linear["global_step"],
                      wall_time_sec={**wall, "total": sum(wall.values())})
        write_json(self.result_path(condition, seed), result)
        return result

    def load_results(self) -> dict:
        """Every finished (condition, seed) in the output dir: {condition: [result, ...]}."""
        found = {c: [] for c in CONDITIONS}
        names = sorted(os.listdir(self.results_dir)) if os.path.isdir(self.results_dir) else []
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(self.results_dir, name), encoding="utf-8") as f:
                    result = json.load(f)
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
    def std(values: list) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

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


def _hms(seconds: float) -> str:
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m{int(seconds % 60):02d}s"


def _eta(sweep: Sweep, left: Sequence[str]) -> str:
    """The time the conditions left will take, at the mean pretraining and linear-eval times
    of every finished run in the output dir."""
    times = {"pretrain": [], "linear_eval": []}
    for results in sweep.load_results().values():
        for r in results:
            for kind, values in times.items():
                if kind in r["wall_time_sec"]:
                    values.append(r["wall_time_sec"][kind])
    pretrainings = sum(CONDITIONS[c] is not None for c in left)
    if not times["linear_eval"] or (pretrainings and not times["pretrain"]):
        return "unknown until a run of each kind finishes"
    return _hms(len(left) * statistics.fmean(times["linear_eval"]) +
                pretrainings * statistics.fmean(times["pretrain"] or [0.0]))


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
              f"{_hms(result['wall_time_sec']['total'])} ==", flush=True)
    results = sweep.load_results()
    if not results:
        return {}
    os.makedirs(docs_dir, exist_ok=True)
    findings = summarize(results, sweep)
    findings["figures"] = [os.path.basename(plot_ablations(
        os.path.join(docs_dir, "findings_ablations.png"), findings))]
    embeddings = sweep.write_embedding_map(results, docs_dir)
    if embeddings:
        findings["figures"].append(os.path.basename(embeddings))
    write_json(os.path.join(docs_dir, "findings.json"), findings)
    _print_table(findings)
    return findings


def _print_table(findings: dict) -> None:
    print(f"\nLinear-eval top-1 on the motion set (chance {100 * findings['chance_top1']:.1f}%, "
          f"pretraining {findings['steps']['pretrain']} steps):")
    for c, values in findings["top1"].items():
        seeds = ", ".join(f"{100 * v:.1f}" for v in values)
        print(f"  {c:<12} {100 * findings['mean'][c]:5.1f} \u00b1 {100 * findings['std'][c]:4.1f}"
              f"  (seeds {findings['seeds'][c]}: {seeds})")
    print(f"Total wall time of these runs: {_hms(findings['total_wall_time_sec'])}", flush=True)


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
