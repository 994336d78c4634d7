"""Tests for cvrl_tf.launch_tpu in dry-run mode (gcloud is neither needed nor called)."""
import shlex

import pytest

from cvrl_tf import launch_tpu

REPO = "https://github.com/example/cvrl_tf.git"
GIN = "gin/experiments/r3d50_k400_pretrain_200ep.gin"


def _run(capsys, *extra):
    argv = ["--zone", "us-central2-b", "--gin_file", GIN, "--dry_run", *extra]
    commands = launch_tpu.main(argv)
    printed = capsys.readouterr().out.splitlines()
    return commands, printed


@pytest.mark.parametrize("accelerator,generation,hosts", [
    ("v2-8", "2", 1), ("v3-8", "3", 1), ("v3-32", "3", 4), ("v4-8", "4", 1), ("v4-32", "4", 4),
    ("v5p-8", "5p", 1), ("v5p-128", "5p", 16), ("v5litepod-8", "5litepod", 1),
    ("v5litepod-16", "5litepod", 4), ("v6e-4", "6e", 1), ("v6e-64", "6e", 16)])
def test_parse_accelerator(accelerator, generation, hosts):
    shape = launch_tpu.parse_accelerator(accelerator)
    assert (shape.generation, shape.num_hosts, shape.is_pod) == (generation, hosts, hosts > 1)


@pytest.mark.parametrize("bad", ["v4", "tpu-v4-32", "v7-8", "v4-12", "v4-4", "v5litepod-6", ""])
def test_unknown_accelerator_format_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="accelerator_type"):
        launch_tpu.parse_accelerator(bad)


def test_single_host_dry_run_prints_exact_commands(capsys):
    commands, printed = _run(capsys, "--name", "cvrl-v4", "--accelerator_type", "v4-8",
                             "--model_dir", "gs://bucket/runs/exp1", "--repo_url", REPO,
                             "--gin_param", "train.steps = 100")
    assert printed[:3] == [shlex.join(c) for c in commands]
    create, install, train = commands
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cvrl-v4",
                      "--zone=us-central2-b", "--accelerator-type=v4-8",
                      "--version=tpu-vm-tf-2.20.0-pjrt"]
    assert install[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cvrl-v4",
                           "--zone=us-central2-b", "--worker=all"]
    assert install[8] == (
        "--command=set -e && python3 -m pip install -q --upgrade pip && rm -rf ~/cvrl_tf && "
        f"git clone --depth 1 {REPO} ~/cvrl_tf && python3 -m pip install -q -e ~/cvrl_tf && "
        "python3 -c \"import cvrl_tf, tensorflow as tf; print(tf.__version__)\"")
    assert train[:8] == install[:8]  # single host: --worker=all is that one host
    assert train[8] == (
        "--command=cd ~/cvrl_tf && export TPU_NAME=local NEXT_PLUGGABLE_DEVICE_USE_C_API=true "
        "TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so && nohup python3 -m cvrl_tf.train "
        f"--gin_file={GIN} '--gin_param=train.steps = 100' --model_dir=gs://bucket/runs/exp1 "
        "--tpu=local > ~/cvrl_tf_train.log 2>&1 < /dev/null & "
        "echo started cvrl_tf.train, log ~/cvrl_tf_train.log")
    assert "1 host(s)" in printed[3]


def test_pod_slice_dry_run_installs_everywhere_and_trains_from_worker_0(capsys):
    commands, printed = _run(capsys, "--name", "pod", "--accelerator_type", "v3-32",
                             "--model_dir", "gs://bucket/runs/exp2", "--repo_url", REPO,
                             "--repo_ref", "v0.1", "--project", "my-proj", "--spot")
    create, install, train = commands
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod",
                      "--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v3-32",
                      "--version=tpu-vm-tf-2.20.0-pod-pjrt", "--spot"]
    assert "--worker=all" in install and "--branch v0.1" in install[-1]
    assert "--worker=0" in train
    assert train[-1] == (
        "--command=cd ~/cvrl_tf && export TPU_NAME=pod TPU_LOAD_LIBRARY=0 && nohup python3 -m "
        f"cvrl_tf.train --gin_file={GIN} --model_dir=gs://bucket/runs/exp2 --tpu=pod "
        "> ~/cvrl_tf_train.log 2>&1 < /dev/null & "
        "echo started cvrl_tf.train, log ~/cvrl_tf_train.log")
    assert "4 host(s)" in printed[-1]


def test_wheel_install_and_runtime_override(capsys):
    commands, _ = _run(capsys, "--name", "t", "--accelerator_type", "v5p-16", "--model_dir",
                       "gs://b/runs/e", "--wheel", "dist/cvrl_tf-0.1.0-py3-none-any.whl",
                       "--runtime_version", "tpu-vm-tf-2.20.0-pod-pjrt-custom", "--skip_create")
    scp, install, train = commands  # --skip_create: no create command
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp",
                   "dist/cvrl_tf-0.1.0-py3-none-any.whl", "t:~/", "--zone=us-central2-b",
                   "--worker=all"]
    assert "python3 -m pip install -q ~/cvrl_tf-0.1.0-py3-none-any.whl" in install[-1]
    assert train[-1].startswith("--command=cd ~ && export TPU_NAME=t TPU_LOAD_LIBRARY=0")
    commands, _ = _run(capsys, "--name", "t", "--accelerator_type", "v4-8", "--model_dir",
                       "gs://b/runs/e", "--wheel", "gs://b/wheels/cvrl_tf-0.1.0-py3-none-any.whl")
    assert len(commands) == 3  # create, install (copies from GCS on the worker), train
    assert ("gcloud storage cp gs://b/wheels/cvrl_tf-0.1.0-py3-none-any.whl "
            "~/cvrl_tf-0.1.0-py3-none-any.whl") in commands[1][-1]


def test_delete_prints_only_the_delete_command(capsys):
    commands = launch_tpu.main(["--name", "pod", "--zone", "europe-west4-a",
                                "--accelerator_type", "v3-32", "--delete", "--dry_run"])
    expected = ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod",
                "--zone=europe-west4-a", "--quiet"]
    assert commands == [expected]
    assert capsys.readouterr().out.strip() == shlex.join(expected)


def test_pod_needs_gcs_model_dir_but_single_host_does_not(capsys):
    with pytest.raises(ValueError, match="not on GCS: the 4 hosts of a v4-32 pod slice"):
        launch_tpu.build_commands("p", "z", "v4-32", [GIN], "/home/me/runs/exp", repo_url=REPO)
    commands = launch_tpu.build_commands("p", "z", "v4-8", [GIN], "runs/exp", repo_url=REPO)
    assert "--model_dir=runs/exp" in commands[-1][-1]


def test_cli_errors_exit_with_one_sentence(capsys):
    with pytest.raises(SystemExit):
        launch_tpu.main(["--name", "p", "--zone", "z", "--accelerator_type", "v4-32",
                         "--gin_file", GIN, "--model_dir", "/tmp/run", "--repo_url", REPO])
    assert "pod slice share no disk" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch_tpu.main(["--name", "p", "--zone", "z", "--accelerator_type", "v4-8",
                         "--gin_file", GIN, "--model_dir", "gs://b/r"])
    assert "exactly one of --repo_url" in capsys.readouterr().err


def test_running_without_gcloud_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(launch_tpu.shutil, "which", lambda _: None)
    with pytest.raises(RuntimeError, match="gcloud is not on PATH"):
        launch_tpu.run_commands([["gcloud", "version"]], dry_run=False)


def test_queued_spot_creates_through_a_queued_resource_and_waits(capsys):
    commands, _ = _run(capsys, "--name", "qr", "--accelerator_type", "v4-8", "--spot",
                       "--queued", "--model_dir", "gs://bucket/runs/q", "--repo_url", REPO)
    create, wait = commands[:2]
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "qr",
                      "--zone=us-central2-b", "--node-id=qr", "--accelerator-type=v4-8",
                      "--runtime-version=tpu-vm-tf-2.20.0-pjrt", "--spot"]
    assert wait[:2] == ["bash", "-c"]
    assert ("gcloud compute tpus queued-resources describe qr --zone=us-central2-b "
            "'--format=value(state.state)'") in wait[2]
    assert "ACTIVE) exit 0" in wait[2] and "FAILED|SUSPENDED) exit 1" in wait[2]
    delete, = launch_tpu.build_commands("qr", "us-central2-b", "v4-8", delete=True, queued=True)
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "qr",
                      "--zone=us-central2-b", "--force", "--quiet"]


class FakeCloud:
    """gcloud as a script: the TPU's state at each poll, and results.json once finished."""

    def __init__(self, states, finish_at):
        self.states, self.finish_at, self.polls, self.executed = list(states), finish_at, 0, []

    def read(self, argv):
        if argv[:3] == ["gcloud", "storage", "cat"]:
            self.polls += 1
            if self.polls >= self.finish_at:
                return '{"global_step": 10, "total_steps": 10, "preempted": false}'
            return '{"global_step": 4, "total_steps": 10, "preempted": true}'
        assert argv[4] == "describe"
        return self.states.pop(0)

    def execute(self, argv):
        self.executed.append(argv)


def test_supervise_recreates_a_preempted_tpu_until_the_run_finishes(capsys):
    launch = launch_tpu.build_commands("spot", "z", "v4-8", [GIN], "gs://b/run",
                                       repo_url=REPO, spot=True)
    delete = launch_tpu.build_commands("spot", "z", "v4-8", delete=True)[0]
    cloud = FakeCloud(["READY\n", "PREEMPTED\n", "CREATING\n", "READY\n"], finish_at=5)
    slept = []
    restarts = launch_tpu.supervise(launch, delete, "spot", "z", None, "gs://b/run",
                                    cloud.read, cloud.execute, poll_seconds=7,
                                    sleep=slept.append)
    assert restarts == 1 and slept == [7] * 5
    assert cloud.executed == [delete] + launch  # deleted once, then the same launch again
    out = capsys.readouterr().out
    assert "TPU spot is PREEMPTED: deleting and re-creating it, restart 1" in out
    assert "reached its last step (1 restart(s))" in out


def test_supervise_gives_up_after_max_restarts():
    cloud = FakeCloud(["PREEMPTED"] * 5, finish_at=99)
    with pytest.raises(RuntimeError, match="lost 3 times; gave up after --max_restarts=2"):
        launch_tpu.supervise([["launch"]], ["delete"], "spot", "z", None, "gs://b/run",
                             cloud.read, cloud.execute, max_restarts=2, sleep=lambda s: None)
    assert cloud.executed == [["delete"], ["launch"]] * 2
