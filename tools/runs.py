"""Whole `python -m cvrl_tf.train` processes, for tools/soak.py and the scenario tests
(tests/test_resume.py, tests/test_multiworker.py): the command and its environment, a process
writing its log, and what a run leaves in its model_dir (checkpoints, per-step example ids,
results.json) read back for comparison with another run's."""
import glob
import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_GIN = "experiments/demo_pretrain.gin"
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"  # Where job.py's checkpoint keeps the global step.

IdRecord = Tuple[int, Tuple[int, ...]]  # (step, the video id hashes of that step)


def train_command(model_dir: str, params: Sequence[str], gin_file: str = DEMO_GIN,
                  flags: Sequence[str] = ()) -> List[str]:
    """`python -m cvrl_tf.train` of gin_file with these bindings and extra flags."""
    return ([sys.executable, "-m", "cvrl_tf.train", f"--gin_file={gin_file}",
             f"--model_dir={model_dir}", *flags] + [f"--gin_param={p}" for p in params])


def start(args: Sequence[str], log_path: str, **env: str) -> subprocess.Popen:
    """Starts args from the repository root with this checkout's cvrl_tf, on the CPU, quiet
    TensorFlow C++ logs, env added; stdout and stderr go to log_path."""
    environment = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                       CUDA_VISIBLE_DEVICES="", **env)
    with open(log_path, "w") as log:  # The child keeps its own copy of the file.
        return subprocess.Popen(list(args), cwd=REPO, env=environment, stdout=log,
                                stderr=subprocess.STDOUT)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def free_ports(n: int) -> List[int]:
    """n TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def checkpoint_numbers(model_dir: str) -> List[int]:
    """The numbers N of the ckpt-N whose index file is in model_dir, ascending."""
    return sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                  for p in glob.glob(os.path.join(model_dir, "ckpt-*.index")))


def wait_for_checkpoint_after(proc: subprocess.Popen, model_dir: str, step: int,
                              deadline: float) -> int:
    """Waits until a checkpoint numbered above `step` is in model_dir; returns its number."""
    while True:
        later = [n for n in checkpoint_numbers(model_dir) if n > step]
        if later:
            return later[0]
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def checkpoint_step(prefix: str) -> int:
    """The global step a checkpoint holds."""
    return int(tf.train.load_checkpoint(prefix).get_tensor(STEP_KEY))


def checkpoint_values(model_dir: str) -> Dict[str, np.ndarray]:
    """Every value of model_dir's newest checkpoint (weights, BN statistics, optimizer slots,
    step, input state) but the save counter (runs interrupted differently save different
    numbers of checkpoints)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def largest_difference(want: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> float:
    """The largest absolute difference between two checkpoints' values, over every value;
    inf when they hold different names or shapes."""
    if want.keys() != got.keys():
        return float("inf")
    largest = 0.0
    for name, value in want.items():
        if np.shape(value) != np.shape(got[name]):
            return float("inf")
        if np.size(value):
            diff = np.abs(np.asarray(got[name], np.float64) - np.asarray(value, np.float64))
            largest = max(largest, float(np.max(diff)))
    return largest


def example_ids(model_dir: str, task: str = "worker-0") -> List[IdRecord]:
    """Every (step, video id hashes) line of a task's run.record_example_ids file, in the
    order written: all runs of the model_dir, a step twice when a killed run did it and the
    resumed run did it again."""
    records = []
    with open(os.path.join(model_dir, "example_ids", f"{task}.txt")) as f:
        for number, line in enumerate(f, 1):
            step, ids = line.split(" ", 1)
            ids = ids.strip()
            if not (ids.startswith("[") and ids.endswith("]")):
                raise ValueError(f"line {number} of {f.name} is cut off: {line!r}")
            records.append((int(step), tuple(int(i) for i in ids[1:-1].split())))
    return records


def last_per_step(records: Sequence[IdRecord]) -> Dict[int, Tuple[int, ...]]:
    """{step: ids} keeping each step's last record (what the run that got further read)."""
    return dict(records)


def results(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


def log_lines(path: str, offset: int = 0) -> Tuple[List[str], int]:
    """The complete lines of a growing log from byte `offset` on, and the offset after them."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return data[:end].decode(errors="replace").splitlines(), offset + end


def resident_kb(pid: int) -> Optional[int]:
    """The process's resident memory (VmRSS, kB), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
