"""What the miniature sweeps share (bench.findings, bench.label_efficiency): the demo's data and
gin files shortened alike, settings pinned per output dir, trainings reused or resumed, the
ETA, per-run results, and docs/findings.json written section by section.

A sweep's runs live in OUTPUT_DIR: data/ (the demo's motion set), seed<s>/<kind>_<name>/ (the
model dirs), results/<name>-seed<s>.json (one per finished run) and sweep.json, which pins
the settings: a rerun with other settings (or after the demo's gin files changed) stops
instead of mixing results.
"""
import hashlib
import inspect
import json
import os
import re
import shutil
import statistics
from typing import Mapping, Optional, Sequence

import gin
import keras

from cvrl_tf import demo
from cvrl_tf import train
from cvrl_tf.training import config
from cvrl_tf.training import summaries

DURATIONS = ("train_length", "warmup", "steps_per_loop", "checkpoint_every", "eval_every")
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
FINDINGS_JSON = "findings.json"
# Keys of docs/findings.json that a command other than bench.findings writes (and keeps).
SECTIONS = ("semi_supervised",)


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


def write_findings(docs_dir: str, values: dict, section: Optional[str] = None) -> str:
    """docs/findings.json: bench.findings' values (section None) keep the other commands'
    SECTIONS; a section replaces only its own key."""
    path = os.path.join(docs_dir, FINDINGS_JSON)
    existing = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    if section is None:
        values = dict(values, **{k: existing[k] for k in SECTIONS if k in existing})
    else:
        values = dict(existing, **{section: values})
    write_json(path, values)
    return path


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


def hms(seconds: float) -> str:
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m{int(seconds % 60):02d}s"


def std(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); 0 for one value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def eta(results: Sequence[dict], runs: Mapping[str, int]) -> str:
    """The time `runs` ({kind: how many}) will take at the mean time per kind of the finished
    results (their 'wall_time_sec' per kind)."""
    times = {kind: [r["wall_time_sec"][kind] for r in results if kind in r["wall_time_sec"]]
             for kind in runs}
    if any(count and not times[kind] for kind, count in runs.items()):
        return "unknown until a run of each kind finishes"
    return hms(sum(count * statistics.fmean(times[kind]) for kind, count in runs.items()
                   if count))


class Sweep:
    """Runs of the demo's gin files (`gin_files`: {kind: file}) in one output dir, every
    duration scaled by `steps_scale`, extra `gin_params` on every run; the data is the demo's
    motion set at the demo's size, written once."""

    def __init__(self, output_dir: str, gin_files: Mapping[str, str], steps_scale: float = 1.0,
                 gin_params: Sequence[str] = (), command: str = ""):
        if not steps_scale > 0:
            raise ValueError(f"--steps_scale={steps_scale} must be > 0.")
        self.output_dir = os.path.abspath(output_dir)
        self.data_dir = os.path.join(self.output_dir, "data")
        self.results_dir = os.path.join(self.output_dir, "results")
        self.command = command
        self.gin_files = dict(gin_files)
        size = inspect.signature(demo.run_demo).parameters  # The demo's own data set size.
        demo.ensure_data(self.data_dir, size["num_train"].default, size["num_eval"].default)
        data = demo.data_bindings(self.data_dir)
        self.params, self.steps, digest = {}, {}, hashlib.sha256()
        for kind, gin_file in self.gin_files.items():
            scaled, self.steps[kind] = scaled_bindings(gin_file, data + list(gin_params),
                                                       steps_scale)
            self.params[kind] = data + scaled + list(gin_params)
            train.parse_gin([gin_file], self.params[kind])
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

    def model_dir(self, kind: str, name: str, seed: int) -> str:
        return os.path.join(self.output_dir, f"seed{seed}", f"{kind}_{name}")

    def result_path(self, name: str, seed: int) -> str:
        return os.path.join(self.results_dir, f"{name}-seed{seed}.json")

    def train(self, kind: str, name: str, seed: int, extra: Sequence[str],
              reuse: bool = True) -> tuple[dict, bool]:
        """One training run -> (its results, whether it trained now). Reused when its
        results.json says it is complete (and `reuse`), resumed from its checkpoints when it
        stopped half way, else trained from the start. Seed s sets run.seed (input order,
        augmentation) and, through keras.utils.set_random_seed, the initialization."""
        model_dir = self.model_dir(kind, name, seed)
        previous = os.path.join(model_dir, summaries.RESULTS_JSON)
        if not reuse and os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        elif os.path.exists(previous):
            with open(previous, encoding="utf-8") as f:
                done = json.load(f)
            if done.get("global_step") == done.get("total_steps") == self.steps[kind]:
                print(f"  {kind}: finished before, reusing {model_dir}", flush=True)
                return done, False
        keras.utils.set_random_seed(seed)
        return train.run_with_gin([self.gin_files[kind]], self.params[kind] +
                                  [f"run.seed={seed}"] + list(extra),
                                  model_dir=model_dir), True

    def load_results(self) -> list[dict]:
        """Every finished run's result in the output dir, in file name order."""
        names = sorted(os.listdir(self.results_dir)) if os.path.isdir(self.results_dir) else []
        found = []
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(self.results_dir, name), encoding="utf-8") as f:
                    found.append(json.load(f))
        return found
