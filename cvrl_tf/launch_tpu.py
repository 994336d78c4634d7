"""Create a Cloud TPU VM (single host or pod slice), install cvrl_tf, start training, delete it.

Prints (--dry_run) or runs the gcloud commands:

    python -m cvrl_tf.launch_tpu --name cvrl-v4 --zone us-central2-b --accelerator_type v4-32 \\
        --gin_file gin/models/r3d_50.gin --gin_file gin/runs/pretrain.gin \\
        --gin_param "TRAIN_DATA='gs://BUCKET/data/k400/train-*.tfrecord'" \\
        --gin_param "run.train_length='200 epochs'" \\
        --model_dir gs://BUCKET/runs/EXP --repo_url https://github.com/ORG/cvrl_tf.git --dry_run
    python -m cvrl_tf.launch_tpu --name cvrl-v4 --zone us-central2-b --accelerator_type v4-32 \\
        --delete

Spot capacity: --spot asks for a Spot TPU VM; --queued creates it through a queued resource
(waits in Google's queue until capacity is granted, instead of failing when none is free).
A preempted Spot TPU does not come back by itself: --supervise keeps watching the TPU and,
when it is preempted (or its queued resource suspended), deletes and re-creates it and starts
the same command again, which resumes from the newest good checkpoint in --model_dir (on GCS);
it stops once MODEL_DIR/results.json says the run reached its last step.

How TensorFlow drives a TPU (as Google's own TF-on-TPU-VM test harness does it):
- single host (v2-8, v3-8, v4-8, v5p-8, v5litepod-8, v6e-8): the trainer runs on the VM with
  --tpu=local (PJRT runtime: NEXT_PLUGGABLE_DEVICE_USE_C_API / TF_PLUGGABLE_DEVICE_LIBRARY_PATH).
- pod slice (more than one host): TPUStrategy is single-client. Every worker gets the package
  (install with --worker=all), but the trainer starts on worker 0 only, with --tpu=<TPU name>
  and TPU_LOAD_LIBRARY=0; it drives all hosts' chips through the pod runtime. Starting it on
  every worker would start one independent run per host. Workers share no disk: model_dir
  must be on GCS.
"""
from __future__ import annotations

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from typing import Callable, Sequence

from cvrl_tf.runtime import cli

DEFAULT_TF_VERSION = "2.20.0"  # Matches setup.py's tensorflow pin, so pip keeps the TPU build.
REPO_DIR = "~/cvrl_tf"
LOG_FILE = "~/cvrl_tf_train.log"
_ACCELERATOR = re.compile(r"^v(2|3|4|5p|5litepod|6e)-(\d+)$")
# Generations whose size counts TensorCores (8 per host); the others count chips.
_CORES_PER_HOST = {"2": 8, "3": 8, "4": 8, "5p": 8}


@dataclasses.dataclass(frozen=True)
class TpuShape:
    """An accelerator type split into generation, size and number of hosts (VMs)."""

    generation: str
    size: int
    num_hosts: int

    @property
    def is_pod(self) -> bool:
        return self.num_hosts > 1


def parse_accelerator(accelerator_type: str) -> TpuShape:
    """Parses 'v4-32' style accelerator types; raises ValueError on an unknown format."""
    match = _ACCELERATOR.match(accelerator_type or "")
    if not match:
        raise ValueError(
            f"--accelerator_type={accelerator_type!r} is not a known TPU type: expected "
            "vGEN-SIZE with GEN in 2, 3, 4, 5p, 5litepod, 6e (e.g. v3-8, v4-32, v5p-16, "
            "v5litepod-16, v6e-8).")
    generation, size = match.group(1), int(match.group(2))
    if generation in _CORES_PER_HOST:
        per_host = _CORES_PER_HOST[generation]
        if size < per_host or size % per_host:
            raise ValueError(f"--accelerator_type={accelerator_type!r}: a v{generation} size "
                             f"counts TensorCores and must be a multiple of {per_host}.")
        return TpuShape(generation, size, size // per_host)
    # v5e / v6e count chips: 1, 4 or 8 chips fit on one host; larger slices have 4 per host.
    if size in (1, 4, 8):
        return TpuShape(generation, size, 1)
    if size % 4:
        raise ValueError(f"--accelerator_type={accelerator_type!r}: a v{generation} slice "
                         "larger than 8 chips must be a multiple of 4 chips.")
    return TpuShape(generation, size, size // 4)


def default_runtime_version(shape: TpuShape, tf_version: str = DEFAULT_TF_VERSION) -> str:
    """The TensorFlow TPU VM image: tpu-vm-tf-X.Y.Z[-pod]-pjrt."""
    return f"tpu-vm-tf-{tf_version}{'-pod' if shape.is_pod else ''}-pjrt"


def _gcloud(verb: str, name: str, zone: str, project: str | None) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={zone}"]
    return cmd + ([f"--project={project}"] if project else [])


def _queued(verb: str, name: str, zone: str, project: str | None) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "queued-resources", verb, name, f"--zone={zone}"]
    return cmd + ([f"--project={project}"] if project else [])


def wait_queued_command(name: str, zone: str, project: str | None = None,
                        poll_seconds: int = 60) -> list[str]:
    """A shell loop that returns when the queued resource is ACTIVE (the TPU exists) and fails
    when it ends FAILED or SUSPENDED."""
    describe = shlex.join(_queued("describe", name, zone, project)
                          + ["--format=value(state.state)"])
    script = (f'while true; do s="$({describe})"; echo "queued resource {name}: $s"; '
              f'case "$s" in ACTIVE) exit 0;; FAILED|SUSPENDED) exit 1;; esac; '
              f"sleep {int(poll_seconds)}; done")
    return ["bash", "-c", script]


def _ssh(name: str, zone: str, project: str | None, worker: str, command: str) -> list[str]:
    return _gcloud("ssh", name, zone, project) + [f"--worker={worker}", f"--command={command}"]


def install_command(repo_url: str | None = None, repo_ref: str | None = None,
                    wheel: str | None = None) -> str:
    """Shell command that installs cvrl_tf on one worker (from git or from a wheel)."""
    steps = ["set -e", "python3 -m pip install -q --upgrade pip"]
    if repo_url:
        branch = f" --branch {shlex.quote(repo_ref)}" if repo_ref else ""
        steps += [f"rm -rf {REPO_DIR}",
                  f"git clone --depth 1{branch} {shlex.quote(repo_url)} {REPO_DIR}",
                  f"python3 -m pip install -q -e {REPO_DIR}"]
    else:
        remote = f"~/{shlex.quote(os.path.basename(wheel))}"
        if wheel.startswith("gs://"):
            steps.append(f"gcloud storage cp {shlex.quote(wheel)} {remote}")
        steps.append(f"python3 -m pip install -q {remote}")
    # Shows the TensorFlow in use: the image's TPU build, unless pip had to replace it.
    steps.append('python3 -c "import cvrl_tf, tensorflow as tf; print(tf.__version__)"')
    return " && ".join(steps)


def train_command(name: str, shape: TpuShape, gin_files: Sequence[str], model_dir: str,
                  gin_params: Sequence[str] = (), runtime_version: str = "",
                  workdir: str = REPO_DIR) -> str:
    """Shell command that starts `cvrl_tf.train` in the background (nohup, log in ~)."""
    if shape.is_pod:
        env = f"export TPU_NAME={shlex.quote(name)} TPU_LOAD_LIBRARY=0"
        tpu = name
    else:
        env = "export TPU_NAME=local"
        if "pjrt" in runtime_version:
            env += (" NEXT_PLUGGABLE_DEVICE_USE_C_API=true"
                    " TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so")
        tpu = "local"
    args = ["python3", "-m", "cvrl_tf.train"]
    args += [f"--gin_file={g}" for g in gin_files]
    args += [f"--gin_param={p}" for p in gin_params]
    args += [f"--model_dir={model_dir}", f"--tpu={tpu}"]
    run = " ".join(shlex.quote(a) for a in args)
    return (f"cd {workdir} && {env} && nohup {run} > {LOG_FILE} 2>&1 < /dev/null & "
            f"echo started cvrl_tf.train, log {LOG_FILE}")


def build_commands(name: str, zone: str, accelerator_type: str,
                   gin_files: Sequence[str] = (), model_dir: str = "",
                   project: str | None = None, runtime_version: str | None = None,
                   repo_url: str | None = None, repo_ref: str | None = None,
                   wheel: str | None = None, gin_params: Sequence[str] = (),
                   delete: bool = False, skip_create: bool = False,
                   spot: bool = False, queued: bool = False) -> list[list[str]]:
    """The gcloud argv lists for one launch (create, install, train) or for --delete."""
    if not name or not zone:
        raise ValueError("--name and --zone are required.")
    shape = parse_accelerator(accelerator_type)
    if delete:
        if queued:  # --force deletes the TPU VM with its queued resource.
            return [_queued("delete", name, zone, project) + ["--force", "--quiet"]]
        return [_gcloud("delete", name, zone, project) + ["--quiet"]]
    if not gin_files:
        raise ValueError("--gin_file is required to start training (or pass --delete).")
    if not model_dir:
        raise ValueError("--model_dir is required to start training.")
    if shape.is_pod and not model_dir.startswith("gs://"):
        raise ValueError(
            f"--model_dir={model_dir!r} is not on GCS: the {shape.num_hosts} hosts of a "
            f"{accelerator_type} pod slice share no disk, so use gs://BUCKET/runs/EXP.")
    if bool(repo_url) == bool(wheel):
        raise ValueError("Pass exactly one of --repo_url (git clone on every worker) or "
                         "--wheel (a .whl file, local or gs://) to install cvrl_tf.")
    if wheel and not wheel.endswith(".whl"):
        raise ValueError(f"--wheel={wheel!r} is not a .whl file; build one with "
                         "`python -m pip wheel --no-deps -w dist .`.")
    runtime_version = runtime_version or default_runtime_version(shape)
    commands = []
    if not skip_create and queued:
        commands.append(_queued("create", name, zone, project) + [
            f"--node-id={name}", f"--accelerator-type={accelerator_type}",
            f"--runtime-version={runtime_version}"] + (["--spot"] if spot else []))
        commands.append(wait_queued_command(name, zone, project))
    elif not skip_create:
        create = _gcloud("create", name, zone, project) + [
            f"--accelerator-type={accelerator_type}", f"--version={runtime_version}"]
        commands.append(create + (["--spot"] if spot else []))
    if wheel and not wheel.startswith("gs://"):
        scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", wheel, f"{name}:~/",
               f"--zone={zone}"] + ([f"--project={project}"] if project else [])
        commands.append(scp + ["--worker=all"])
    commands.append(_ssh(name, zone, project, "all",
                         install_command(repo_url, repo_ref, wheel)))
    workdir = REPO_DIR if repo_url else "~"
    commands.append(_ssh(name, zone, project, "0" if shape.is_pod else "all",
                         train_command(name, shape, gin_files, model_dir, gin_params,
                                       runtime_version, workdir)))
    return commands


def run_commands(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Prints each command; unless dry_run, runs it and stops at the first failure."""
    if not dry_run and shutil.which("gcloud") is None:
        raise RuntimeError("gcloud is not on PATH: install the Google Cloud CLI, or pass "
                           "--dry_run to print the commands.")
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(list(cmd), check=True)


# TPU VM states that need a delete and re-create (a Spot VM is not restarted by Google).
LOST_STATES = ("PREEMPTED", "TERMINATED", "STOPPED", "SUSPENDED", "FAILED", "NOT_FOUND")


def tpu_state(name: str, zone: str, project: str | None, runner: Callable) -> str:
    """The TPU VM's state (READY, CREATING, PREEMPTED, ...), NOT_FOUND when gcloud finds none."""
    out = runner(_gcloud("describe", name, zone, project) + ["--format=value(state)"])
    return (out or "").strip() or "NOT_FOUND"


def run_finished(model_dir: str, runner: Callable) -> bool:
    """True when MODEL_DIR/results.json records a run that reached its last step."""
    text = runner(["gcloud", "storage", "cat", f"{model_dir.rstrip('/')}/results.json"])
    try:
        results = json.loads(text or "")
    except ValueError:
        return False
    return (not results.get("preempted")
            and results.get("global_step", -1) >= results.get("total_steps", 0) > 0)


def supervise(launch: Sequence[Sequence[str]], delete: Sequence[str], name: str, zone: str,
              project: str | None, model_dir: str, runner: Callable, execute: Callable,
              poll_seconds: float = 300, max_restarts: int = 100,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """Watches a launched run until it finishes; re-creates and restarts a lost TPU.

    Every poll_seconds: a finished run (run_finished) ends the watch; a TPU in LOST_STATES is
    deleted and `launch` runs again (the run resumes from model_dir's newest good checkpoint).
    runner(argv) -> stdout ('' on failure) reads; execute(argv) runs a command. Returns the
    number of restarts; raises RuntimeError after max_restarts.
    """
    restarts = 0
    while True:
        sleep(poll_seconds)
        if run_finished(model_dir, runner):
            print(f"# {model_dir}/results.json: the run reached its last step "
                  f"({restarts} restart(s)).", flush=True)
            return restarts
        state = tpu_state(name, zone, project, runner)
        if state not in LOST_STATES:
            continue
        if restarts >= max_restarts:
            raise RuntimeError(f"TPU {name} was lost {restarts + 1} times; gave up after "
                               f"--max_restarts={max_restarts}.")
        restarts += 1
        print(f"# TPU {name} is {state}: deleting and re-creating it, restart {restarts} "
              f"(the run resumes from the newest good checkpoint in {model_dir}).", flush=True)
        if state != "NOT_FOUND":
            execute(list(delete))
        for cmd in launch:
            execute(list(cmd))


def _read(argv: Sequence[str]) -> str:
    """stdout of a command, '' when it fails (a missing TPU or file is an answer, not an error)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def _execute(argv: Sequence[str]) -> None:
    print(shlex.join(argv), flush=True)
    subprocess.run(list(argv), check=True)


@cli.guard
def main(argv: Sequence[str] | None = None) -> list[list[str]]:
    """CLI entry point; returns the commands it printed or ran."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), europe-west4-a")
    parser.add_argument("--accelerator_type", required=True, help="e.g. v3-8, v4-8, v4-32")
    parser.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    parser.add_argument("--runtime_version", default=None,
                        help="TPU VM image (default tpu-vm-tf-%s[-pod]-pjrt)" % DEFAULT_TF_VERSION)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file for cvrl_tf.train, relative to the repo (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[], help="gin binding (repeatable)")
    parser.add_argument("--model_dir", default="", help="gs://BUCKET/runs/EXP")
    parser.add_argument("--repo_url", default=None, help="git URL of cvrl_tf to clone and install")
    parser.add_argument("--repo_ref", default=None, help="branch or tag of --repo_url")
    parser.add_argument("--wheel", default=None, help="cvrl_tf wheel, local path or gs://")
    parser.add_argument("--skip_create", action="store_true", help="reuse an existing TPU VM")
    parser.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
    parser.add_argument("--queued", action="store_true",
                        help="create the TPU through a queued resource (waits for capacity)")
    parser.add_argument("--supervise", action="store_true",
                        help="after starting, watch the TPU; re-create and restart it when it "
                             "is preempted, until the run finishes")
    parser.add_argument("--poll_minutes", type=float, default=5.0,
                        help="--supervise: minutes between checks")
    parser.add_argument("--max_restarts", type=int, default=100,
                        help="--supervise: give up after this many re-creations")
    parser.add_argument("--delete", action="store_true", help="only delete the TPU VM")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    try:
        commands = build_commands(
            args.name, args.zone, args.accelerator_type, args.gin_file, args.model_dir,
            args.project, args.runtime_version, args.repo_url, args.repo_ref, args.wheel,
            args.gin_param, args.delete, args.skip_create, args.spot, args.queued)
        if args.supervise and (args.delete or args.dry_run):
            raise ValueError("--supervise watches a real run: it cannot go with --delete or "
                             "--dry_run.")
    except ValueError as e:
        parser.error(str(e))
    run_commands(commands, args.dry_run)
    if args.supervise:
        delete = build_commands(args.name, args.zone, args.accelerator_type, delete=True,
                                project=args.project, queued=args.queued)[0]
        launch = build_commands(
            args.name, args.zone, args.accelerator_type, args.gin_file, args.model_dir,
            args.project, args.runtime_version, args.repo_url, args.repo_ref, args.wheel,
            args.gin_param, False, False, args.spot, args.queued)
        supervise(launch, delete, args.name, args.zone, args.project, args.model_dir,
                  _read, _execute, poll_seconds=60 * args.poll_minutes,
                  max_restarts=args.max_restarts)
        return commands
    if not args.delete:
        shape = parse_accelerator(args.accelerator_type)
        tail = _ssh(args.name, args.zone, args.project, "0", f"tail -f {LOG_FILE}")
        print(f"# {shape.num_hosts} host(s). Follow the log: {shlex.join(tail)}")
    return commands


if __name__ == "__main__":
    main()
