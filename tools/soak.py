"""Soak: the demo's pretraining for a few thousand steps, interrupted at random points by SIGTERM
and SIGKILL in turn and restarted each time with the same command, beside the same command run
straight through. Not part of `make test`; its recorded run: docs/BENCHMARKS.md, "Reliability:
the soak run".

    python -m tools.soak [--steps 3000] [--interruptions 12] [--seed 0] [--output_dir DIR]
                         [--keep] [--videos 600] [--checkpoint_every 100]

Both runs are `python -m cvrl_tf.train --gin_file=experiments/demo_pretrain.gin` on the demo's
synthetic set (written first) at a global batch of 8 videos, run.seed=--seed,
run.deterministic=True and run.record_example_ids=True. Each interruption waits for a loop
line at or past a step drawn at random (seeded by --seed), then for a random part of a loop,
and sends its signal; a SIGTERM'd run must save its step and exit 0 within 30 s (a Spot VM's
notice), a SIGKILLed one die; the same command is started again at once (a run that hangs for
10 minutes, crashes or stops otherwise ends the soak). At the end it checks:
- weights: every value of the two final checkpoints (weights, BatchNorm statistics,
  optimizer slots, step, input state) equal: max_weight_diff must be 0 (the seeded,
  deterministic runs replay each other bit for bit);
- steps: every record of the interrupted run's ids file (one line per step and run) holds the
  reference's videos for that step; each run's records are consecutive steps from the step it
  restored; after a SIGTERM the next run starts where it stopped (no step twice), after a
  SIGKILL at or before it (no step skipped) and at most --checkpoint_every steps earlier;
  the last run reaches the end;
- memory: the reference run's resident memory (VmRSS, read at every loop line) grows less
  than 5% from its first tenth of loops to its last (medians). Judged on the reference, the
  run's longest uninterrupted stretch: the interrupted runs' stretches are a few hundred steps,
  most of them start-up. Their figures are printed per interruption, not judged; the
  reference's samples are kept in logs/reference_rss.tsv.
Prints one line per interruption and a RESULT line, e.g.
    RESULT interruptions=12 max_weight_diff=0 rss_growth=1.8% steps=3000 redone=412
(redone: the steps trained twice, those a SIGKILL lost since the last checkpoint) and exits 1
when a check fails (each failure named on a FAIL line), keeping --output_dir.
"""
import argparse
import dataclasses
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads (tools.runs).
from tools import runs  # noqa: E402  pylint: disable=wrong-import-position

BATCH = 8             # Videos per step: thousands of steps in minutes on 2 cores.
STEPS_PER_LOOP = 10   # The demo's: one console line (and one memory sample) per 10 steps.
MAX_RSS_GROWTH = 0.05
STOP_SECONDS = 30     # A SIGTERM'd run saves and exits within a Spot VM's notice.
STALL_SECONDS = 600   # No loop line for this long: the run hangs.
LOOP_LINE = re.compile(r"^step (\d+)/\d+ \|")
PREEMPTED = re.compile(r"^Preempted: saved the checkpoint of step (\d+) ")
ORIGIN = re.compile(r"^Initialized from (scratch|checkpoint:.*ckpt-(\d+))$", re.M)


class SoakError(Exception):
    """A run misbehaved in a way that ends the soak at once (it hung, crashed, or did not
    stop on SIGTERM)."""


@dataclasses.dataclass
class Process:
    """A training process and its log, followed as it grows: each loop line's (step, time,
    resident kB)."""
    proc: subprocess.Popen
    log: str
    loops: list = dataclasses.field(default_factory=list)
    _offset: int = 0

    def follow(self) -> List[str]:
        """Reads the log's new lines, sampling the process's memory at each loop line."""
        lines, self._offset = runs.log_lines(self.log, self._offset)
        for line in lines:
            match = LOOP_LINE.match(line)
            if match:
                rss = runs.resident_kb(self.proc.pid)
                self.loops.append((int(match.group(1)), time.time(), rss))
        return lines

    def follow_to_exit(self, timeout: float) -> int:
        """Follows the log until the process exits; its status. SoakError when it stalls."""
        last = time.time()
        while self.proc.poll() is None:
            if self.follow():
                last = time.time()
            if time.time() - last > timeout:
                raise SoakError(f"{self.log}: no output for {timeout:.0f} s")
            time.sleep(0.05)
        self.follow()
        return self.proc.returncode

    def stretch(self) -> str:
        """'rss A->B MB over N loops' of this process, for the progress lines."""
        rss = [kb for _, _, kb in self.loops if kb]
        if not rss:
            return "no loop"
        return f"rss {rss[0] / 1024:.0f}->{rss[-1] / 1024:.0f} MB over {len(rss)} loops"


@dataclasses.dataclass
class Interrupted:
    """One run of the interrupted sequence: the step it restored, how it ended, and the ids
    file's length then."""
    signal: Optional[str]  # 'SIGTERM', 'SIGKILL', or None for the run that finished
    start: int
    records_after: int
    stopped_at: Optional[int] = None  # The step a SIGTERM'd run saved,
    seconds: float = 0.0  # and how long after the signal it exited.


def train_params(data_dir: str, steps: int, seed: int, checkpoint_every: int) -> List[str]:
    return [f"TRAIN_DATA={os.path.join(data_dir, 'train-*.tfrecord')!r}", "EVAL_DATA=''",
            f"run.train_length={steps}", f"run.global_batch_size={BATCH}",
            f"run.steps_per_loop={STEPS_PER_LOOP}", f"run.checkpoint_every={checkpoint_every}",
            f"run.seed={seed}", "run.deterministic=True", "run.record_example_ids=True"]


def draw_targets(rng: random.Random, steps: int, count: int) -> List[int]:
    """`count` distinct steps at random between the first loop and two loops before the end,
    ascending: where the interruptions aim."""
    candidates = range(STEPS_PER_LOOP, steps - 2 * STEPS_PER_LOOP)
    if count > len(candidates):
        raise ValueError(f"--steps {steps} leaves room for at most {len(candidates)} "
                         f"interruptions; give more steps or fewer interruptions.")
    return sorted(rng.sample(candidates, count))


def interrupt(run: Process, target: int, sig: int, rng: random.Random) -> None:
    """Waits for a loop line at or past `target`, then a random part of a loop; signals."""
    last = time.time()
    while not run.loops or run.loops[-1][0] < target:
        if run.follow():
            last = time.time()
        if run.proc.poll() is not None:
            raise SoakError(f"the run ended (status {run.proc.returncode}) before step "
                            f"{target}: {run.log}")
        if time.time() - last > STALL_SECONDS:
            raise SoakError(f"{run.log}: no output for {STALL_SECONDS} s")
        time.sleep(0.05)
    loop_seconds = (run.loops[-1][1] - run.loops[-2][1]) if len(run.loops) > 1 else 0.0
    time.sleep(rng.uniform(0.0, loop_seconds))
    run.proc.send_signal(sig)


def end_interrupted(run: Process, sig: int, model_dir: str) -> Interrupted:
    """Waits for the signalled run to end and checks how: SIGTERM, status 0 within
    STOP_SECONDS and the Preempted line; SIGKILL, killed."""
    sent = time.time()
    status = run.follow_to_exit(STOP_SECONDS if sig == signal.SIGTERM else STALL_SECONDS)
    name = signal.Signals(sig).name
    records = len(runs.example_ids(model_dir))
    if sig == signal.SIGKILL:
        if status != -signal.SIGKILL:
            raise SoakError(f"the run ended with status {status} before SIGKILL: {run.log}")
        return Interrupted(name, restored_step(run.log), records)
    seconds = time.time() - sent
    stopped = [int(m.group(1)) for m in map(PREEMPTED.match, runs.read(run.log).splitlines())
               if m]
    if status != 0 or len(stopped) != 1 or seconds > STOP_SECONDS:
        raise SoakError(f"SIGTERM: status {status}, {len(stopped)} 'Preempted' lines after "
                        f"{seconds:.1f} s (at most {STOP_SECONDS} s): {run.log}")
    return Interrupted(name, restored_step(run.log), records, stopped[0], seconds)


def describe(number: int, total: int, ended: Interrupted, run: Process,
             records: Sequence[runs.IdRecord]) -> str:
    """The progress line of an interruption."""
    last_step = records[ended.records_after - 1][0] if ended.records_after else None
    what = (f"saved step {ended.stopped_at}, exit 0 after {ended.seconds:.1f} s"
            if ended.signal == "SIGTERM"
            else f"killed after step {last_step}")
    return f"interruption {number}/{total}: {ended.signal}: {what}; {run.stretch()}; restarting"


def launch(command: Sequence[str], log: str, started: list) -> Process:
    """Starts a training process (added to `started`, which the soak ends on the way out)."""
    process = Process(runs.start(command, log), log)
    started.append(process.proc)
    return process


def run_interrupted(args, model_dir: str, log_dir: str, targets: Sequence[int],
                    rng: random.Random, started: list) -> List[Interrupted]:
    """The interrupted sequence: start, interrupt at each target (SIGTERM first, then in turn
    SIGKILL), restart with the same command; the last run goes to the end."""
    command = runs.train_command(model_dir, args.params)
    ended = []
    for number, target in enumerate(targets, 1):
        run = launch(command, os.path.join(log_dir, f"run-{number}.log"), started)
        sig = signal.SIGTERM if number % 2 else signal.SIGKILL
        interrupt(run, target, sig, rng)
        ended.append(end_interrupted(run, sig, model_dir))
        print(describe(number, len(targets), ended[-1], run, runs.example_ids(model_dir)),
              flush=True)
    last_log = os.path.join(log_dir, f"run-{len(targets) + 1}.log")
    run = launch(command, last_log, started)
    status = run.follow_to_exit(STALL_SECONDS)
    if status != 0:
        raise SoakError(f"the last run ended with status {status}: {last_log}")
    ended.append(Interrupted(None, restored_step(last_log), len(runs.example_ids(model_dir))))
    return ended


def restored_step(log: str) -> int:
    """The step a run started from, as its 'Initialized from' line says (scratch: 0)."""
    match = ORIGIN.search(runs.read(log))
    if not match:
        raise SoakError(f"no 'Initialized from' line in {log}")
    return int(match.group(2) or 0)


def check_steps(reference: Sequence[runs.IdRecord], records: Sequence[runs.IdRecord],
                ended: Sequence[Interrupted], steps: int, checkpoint_every: int
                ) -> Tuple[List[str], int]:
    """The failures of the 'steps' check (module docstring) and how many steps were done
    twice (the steps a SIGKILLed run did after its last checkpoint)."""
    failures = []
    if [step for step, _ in reference] != list(range(steps)):
        failures.append("the reference run did not record steps 0.. once each in order")
    want = dict(reference)
    wrong = [step for step, ids in records if want.get(step) != ids]
    if wrong:
        failures.append(f"{len(wrong)} recorded steps read other videos than the reference's, "
                        f"first step {wrong[0]}")
    redone, reached, begin, previous = 0, 0, 0, None
    for number, run in enumerate(ended, 1):
        done = [step for step, _ in records[begin:run.records_after]]
        if done != list(range(run.start, run.start + len(done))):
            failures.append(f"run {number} did not record consecutive steps from step "
                            f"{run.start}, the step it restored")
        if run.start > reached or (previous == "SIGTERM" and run.start != reached) or (
                previous == "SIGKILL" and reached - run.start > checkpoint_every):
            failures.append(f"run {number} restored step {run.start} after the run before it "
                            f"({previous}) had reached step {reached}")
        redone += max(reached - run.start, 0)
        begin, reached, previous = run.records_after, run.start + len(done), run.signal
    if reached != steps:
        failures.append(f"the last run ended at step {reached}, not {steps}")
    return failures, redone


def rss_growth(process: Process) -> float:
    """Growth of the resident memory from the first tenth of loops to the last (medians; the
    first and the last loop in runs of fewer than 20 loops); nan without two samples."""
    rss = [kb for _, _, kb in process.loops if kb]
    if len(rss) < 2:
        return float("nan")
    tenth = max(len(rss) // 10, 1)
    return statistics.median(rss[-tenth:]) / statistics.median(rss[:tenth]) - 1.0


def write_memory(process: Process, path: str) -> None:
    """The process's memory samples as 'step<TAB>VmRSS kB' lines."""
    with open(path, "w") as f:
        f.writelines(f"{step}\t{kb}\n" for step, _, kb in process.loops if kb)


def write_data(directory: str, videos: int) -> None:
    """The demo's synthetic set (its training split sized `videos`) in directory."""
    log = os.path.join(os.path.dirname(directory), "data.log")
    status = runs.start([sys.executable, "-m", "cvrl_tf.data.synthetic", "--output_dir",
                         directory, "--num_train", str(videos), "--num_eval", "4"], log).wait()
    if status != 0:
        raise SoakError(f"writing the synthetic set failed (status {status}): {log}")


def soak(args) -> List[str]:
    """Runs the reference and the interrupted sequence side by side; returns the failures
    and prints the RESULT line."""
    rng = random.Random(args.seed)
    targets = draw_targets(rng, args.steps, args.interruptions)
    write_data(os.path.join(args.output_dir, "data"), args.videos)
    args.params = train_params(os.path.join(args.output_dir, "data"), args.steps, args.seed,
                               args.checkpoint_every)
    reference_dir, model_dir = (os.path.join(args.output_dir, name)
                                for name in ("reference", "interrupted"))
    log_dir = os.path.join(args.output_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    reference_log = os.path.join(log_dir, "reference.log")
    started = []
    reference = launch(runs.train_command(reference_dir, args.params), reference_log, started)
    status = []
    follower = threading.Thread(target=lambda: status.append(
        reference.follow_to_exit(STALL_SECONDS)), daemon=True)
    follower.start()
    try:
        ended = run_interrupted(args, model_dir, log_dir, targets, rng, started)
        follower.join()
    finally:
        for proc in started:  # Left running only when the soak stopped early.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if status != [0]:
        raise SoakError(f"the reference run failed: {reference_log}")
    return judge(args, reference, reference_dir, model_dir, ended)


def judge(args, reference: Process, reference_dir: str, model_dir: str,
          ended: Sequence[Interrupted]) -> List[str]:
    """The checks of the module docstring; prints the RESULT line; returns the failures."""
    difference = runs.largest_difference(runs.checkpoint_values(reference_dir),
                                         runs.checkpoint_values(model_dir))
    failures, redone = check_steps(runs.example_ids(reference_dir), runs.example_ids(model_dir),
                                   ended, args.steps, args.checkpoint_every)
    if difference != 0.0:
        failures.append(f"the final checkpoints differ (largest difference {difference:g})")
    growth = rss_growth(reference)
    write_memory(reference, os.path.join(args.output_dir, "logs", "reference_rss.tsv"))
    if not growth < MAX_RSS_GROWTH:
        failures.append(f"the reference run's memory grew {growth:.1%} "
                        f"(limit {MAX_RSS_GROWTH:.0%})")
    print(f"RESULT interruptions={len(ended) - 1} max_weight_diff={difference:g} "
          f"rss_growth={growth:.1%} steps={args.steps} redone={redone}", flush=True)
    return failures


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each run")
    parser.add_argument("--interruptions", type=int, default=12,
                        help="SIGTERM and SIGKILL in turn, at random steps")
    parser.add_argument("--seed", type=int, default=0,
                        help="run.seed of both runs, and the interruptions' draws")
    parser.add_argument("--output_dir", default=None,
                        help="data, runs and logs (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true",
                        help="keep --output_dir when every check passed (kept on a failure)")
    parser.add_argument("--videos", type=int, default=600,
                        help="training videos of the synthetic set (the demo's: 600)")
    parser.add_argument("--checkpoint_every", type=int, default=100, help="steps")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    args.output_dir = args.output_dir or tempfile.mkdtemp(prefix="cvrl_tf_soak_")
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    try:
        failures = soak(args)
    except (SoakError, ValueError) as e:
        failures = [str(e)]
    for failure in failures:
        print(f"FAIL {failure}", flush=True)
    where = f"; runs and logs in {args.output_dir}"
    if not failures and not args.keep:
        shutil.rmtree(args.output_dir, ignore_errors=True)
        where = ""
    print(f"Soak {'failed' if failures else 'passed'} in {time.time() - start:.0f} s{where}.",
          flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
