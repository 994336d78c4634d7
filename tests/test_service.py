"""tf.data service: addresses, start-up checks, an in-process dispatcher and two workers on
127.0.0.1 serving the pipeline and a tiny pretraining, and the command-line servers."""
import glob
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import config
from cvrl_tf import train
from cvrl_tf.data import pipeline, schema, service, synthetic
from cvrl_tf.runtime import internals

pytestmark = pytest.mark.slow

NUM_TRAIN = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("motion"))
    synthetic.write_dataset(path, num_train=NUM_TRAIN, num_eval=8, num_frames=16, size=32,
                            num_shards=4, seed=0)
    return path


@pytest.fixture
def servers():
    """A dispatcher and two workers in this process, on free ports of 127.0.0.1."""
    dispatcher = service.start_dispatcher(0)
    address = f"127.0.0.1:{dispatcher.target.rsplit(':', 1)[1]}"
    workers = [service.start_worker(address, 0, "127.0.0.1") for _ in range(2)]
    yield dispatcher, workers, address
    for worker in workers:  # Before the dispatcher: their tasks would wait for it.
        worker.stop()
    dispatcher.stop()


@pytest.fixture
def cluster(servers):
    """The dispatcher's address and the two workers."""
    _, workers, address = servers
    return f"grpc://{address}", workers


def _video_ids(data_dir):
    """Every training video's id, read from the records."""
    records = tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(data_dir, "train-*"))))
    return sorted(schema.parse_sequence_example(s)["id"].numpy().decode() for s in records)


def test_parse_address():
    assert service.parse_address("grpc://10.0.0.5:5050") == ("10.0.0.5", 5050)
    assert service.parse_address("data-host:5050") == ("data-host", 5050)
    assert service.parse_address("grpc://[::1]:5050") == ("::1", 5050)
    for bad in ("http://h:5050", "h", "h:0", "h:port", "grpc://h:70000", ":5050", "grpc://h"):
        with pytest.raises(ValueError, match="tf.data service address"):
            service.parse_address(bad)


def test_advertised_worker_address():
    assert service.advertised_address("h:1", "10.1.2.3") == "10.1.2.3:%port%"
    assert service.advertised_address("h:1", "10.1.2.3:6000") == "10.1.2.3:6000"
    assert service.advertised_address("h:1", "::1") == "[::1]:%port%"
    assert service.advertised_address("127.0.0.1:1") == "127.0.0.1:%port%"


def _job(**fields):
    values = dict(mode="pretrain", model_dir="/unused", train_data="x-*", train_length=4,
                  base_lr=0.1)
    values.update(fields)
    return config.JobConfig(**values)


def test_config_checks_the_address_and_refuses_determinism():
    strategy = tf.distribute.get_strategy()
    config.check(_job(data_service_address="grpc://h:5050"), strategy)
    with pytest.raises(config.ConfigError, match="run.data_service_address: .*'h'"):
        config.check(_job(data_service_address="h"), strategy)
    with pytest.raises(config.ConfigError, match="no fixed order"):
        config.check(_job(data_service_address="h:1", deterministic=True, seed=1), strategy)


def test_the_servers_internals_the_command_prints_still_exist(servers):
    """The dispatcher's worker count and a worker's bound port (runtime/internals.py)."""
    dispatcher, workers, _ = servers
    internals.check_all(dispatcher)
    internals.check_all(workers[0])
    assert internals.data_service_num_workers(dispatcher) == 2
    assert re.fullmatch(r"[\w.]+:\d+", internals.data_service_worker_address(workers[0]))


def test_unreachable_dispatcher_fails_fast_naming_it():
    port = _free_port()  # Nothing listens on it.
    start = time.time()
    with pytest.raises(ValueError, match=f"dispatcher at grpc://127.0.0.1:{port} cannot be "):
        service.distribute(tf.data.Dataset.range(3), f"grpc://127.0.0.1:{port}")
    assert time.time() - start < 5


def test_workers_serve_every_video_once_per_epoch_fields_unchanged(data_dir, cluster):
    address, workers = cluster
    built = pipeline.build_dataset(os.path.join(data_dir, "train-*"), "pretrain", 4, 8, 2, 32,
                                   repeat=False, drop_remainder=False)
    served = service.distribute(built, address.replace("grpc://", ""))
    assert served.element_spec == built.element_spec
    ids = []
    for batch in served:  # Per video (augment_on='device'): both clips of a video in one row.
        assert batch["video"].shape[0] == batch["id"].shape[0]
        assert batch["video"].shape[1] == 2
        ids += [i.decode() for i in batch["id"].numpy()]
    assert sorted(ids) == _video_ids(data_dir)  # Each video exactly once.
    assert all(w._num_tasks() > 0 for w in workers)  # pylint: disable=protected-access


def test_pretraining_reads_from_the_workers(data_dir, cluster, tmp_path, caplog):
    address, workers = cluster
    assert [w._num_tasks() for w in workers] == [0, 0]  # pylint: disable=protected-access
    overrides = {"TRAIN_DATA": repr(os.path.join(data_dir, "train-*")), "EVAL_DATA": "''",
                 "run.train_length": 4, "run.steps_per_loop": 4, "run.checkpoint_every": 0,
                 "run.image_summaries": False,
                 "run.global_batch_size": 8, "run.min_video_frames": 16, "run.seed": 1,
                 "run.data_service_address": repr(address)}
    with caplog.at_level(logging.WARNING):
        results = train.run_with_gin(["experiments/demo_pretrain.gin"],
                                     [f"{k}={v}" for k, v in overrides.items()],
                                     model_dir=str(tmp_path / "pretrain"))
    assert results["global_step"] == 4 and np.isfinite(results["train"]["loss"])
    assert results["train"]["num_candidates"] == 16  # 8 videos x 2 clips per step.
    # Training created a service job, with a task on each worker (none before).
    assert all(w._num_tasks() > 0 for w in workers)  # pylint: disable=protected-access
    notes = [r.getMessage() for r in caplog.records if "fresh order" in r.getMessage()]
    assert len(notes) == 1 and address in notes[0]


def _start(args, log):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as stderr:  # A file: an unread pipe could fill up and block it.
        return subprocess.Popen([sys.executable, "-m", "cvrl_tf.data.service"] + args,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def _interrupt(process):
    """SIGINT, then the exit code (None, and killed, if it has not exited within 60 s)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.scenario  # make test-scenarios: the two server processes are the point.
def test_command_line_servers_serve_and_stop_on_interrupt(tmp_path):
    port = _free_port()  # Both start at once: the worker waits for the dispatcher.
    dispatcher = _start(["--dispatcher", "--port", str(port)], tmp_path / "dispatcher.log")
    worker = _start(["--worker", "--dispatcher_address", f"127.0.0.1:{port}", "--port", "0",
                     "--worker_address", "127.0.0.1"], tmp_path / "worker.log")
    try:
        line = dispatcher.stdout.readline()
        assert re.search(rf"dispatcher at grpc://\S+:{port}: train with", line), (
            line, (tmp_path / "dispatcher.log").read_text())
        line = worker.stdout.readline()
        if line.startswith("Waiting for the dispatcher"):
            line = worker.stdout.readline()
        assert re.search(r"worker at 127\.0\.0\.1:\d+ for the dispatcher", line), (
            line, (tmp_path / "worker.log").read_text())
        served = service.distribute(tf.data.Dataset.range(20), f"grpc://127.0.0.1:{port}")
        assert sorted(int(x) for x in served.as_numpy_iterator()) == list(range(20))
    finally:  # The worker first, as in the fixture.
        codes = [_interrupt(worker), _interrupt(dispatcher)]
    assert codes == [0, 0]


@pytest.mark.parametrize("args, message", [
    ([], "one of the arguments --dispatcher --worker is required"),
    (["--worker"], "--worker needs --dispatcher_address"),
    (["--worker", "--dispatcher_address", "h"], "is not 'grpc://HOST:PORT'"),
    (["--dispatcher", "--worker_address", "h"], "--worker_address does not apply"),
    (["--worker", "--dispatcher_address", "h:1", "--work_dir", "d"], "--work_dir does not"),
    (["--dispatcher", "--port", "70000"], "not in 0..65535"),
])
def test_command_line_refuses_bad_flags(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        service.main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_command_line_refuses_a_taken_port(capsys):
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        with pytest.raises(SystemExit):
            service.main(["--dispatcher", "--port", str(holder.getsockname()[1])])
    assert "is in use" in capsys.readouterr().err


def test_a_server_that_does_not_stop_in_time_is_reported(monkeypatch):
    class Stuck:
        def stop(self):
            time.sleep(3)

    monkeypatch.setattr(service, "STOP_TIMEOUT_S", 0.1)
    stop = threading.Event()
    stop.set()
    start = time.time()
    assert not service._wait(stop, Stuck())  # pylint: disable=protected-access
    assert time.time() - start < 1
