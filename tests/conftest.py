"""Test set-up: quiet TensorFlow, split the CPU into two logical devices, shared fixtures.

Two logical CPUs let MirroredStrategy tests run two replicas on this machine
(see docs/DESIGN.md). This must happen before TensorFlow initializes devices.
The `two_replica_strategy` fixture gives each test its own strategy on those two devices.
TensorFlow is imported only by the processes that run tests: under `make test` the
pytest-xdist controller, which runs none, skips it (about 5 CPU-seconds).
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # The pytest-xdist controller: its workers run the tests.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # Devices already initialized by an earlier import.
        pass
    # No Grappler rewrites of the tf.functions run in the test processes: they change how fast
    # a graph runs, not what it computes, and cost each tiny run 2-4 s of start-up (about a
    # tenth of the in-process tests' CPU time). Runs in subprocesses (resume, multi-worker,
    # service, the command line) keep TensorFlow's defaults, as users get them.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(autouse=True)
def _the_same_draws_in_any_order():
    """Every test starts from one random state (Python, NumPy, TensorFlow, Keras): under
    `make test` (pytest-xdist) a file runs after different files from run to run, and a draw
    that depends on what ran before would make a test pass or fail by luck."""
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(0)


@pytest.fixture
def two_replica_strategy() -> "tf.distribute.MirroredStrategy":
    """A fresh MirroredStrategy over the 2 logical CPUs, on collective keys no other uses.

    MirroredStrategy instances in one process start their collective keys at the same base and
    collide ("Collective instance 100 expected type ..."); TF's own tests bump the base too.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from cvrl_tf.runtime import internals  # pylint: disable=import-outside-toplevel
    internals.bump_collective_keys()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    internals.bump_collective_keys()  # for whoever comes next
    return strategy


# `make test` runs the files on two processes (pytest-xdist, --dist loadfile), each file on one
# of them in collection order: the longest files go first so that neither process is left
# with a long one at the end. Seconds measured serially on 2 cores; the rest keep their order.
_LONGEST_FIRST = ("test_recipes.py", "test_train.py", "test_run_lifecycle.py",
                  "test_multiworker.py", "test_pipeline.py", "test_subset.py",
                  "test_pipeline_pretrain.py", "test_resume_replicas.py", "test_soak.py",
                  "test_resume.py", "test_steps.py", "test_detection_data.py",
                  "test_device_augment.py", "test_detection.py", "test_bench.py",
                  "test_service.py", "test_findings.py", "test_label_efficiency.py",
                  "test_demo.py", "test_demo_detection.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    # tools/slow_cpu.sh caps oneDNN at AVX2 kernels; TensorFlow still sees this CPU's
    # AVX-512 BF16 and sends bfloat16 ops to oneDNN, which then has none for them ("could not
    # create a primitive descriptor", or a segfault). An artefact of the cap: on a CPU
    # without AVX-512, TensorFlow keeps bfloat16 ops off oneDNN (it tests the CPU's AVX512F).
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa not in ("ALL", "DEFAULT"):
        skip = pytest.mark.skip(reason=f"ONEDNN_MAX_CPU_ISA={isa}: oneDNN has no bfloat16 "
                                       "kernels for the ops TensorFlow sends it")
        for item in items:
            if item.get_closest_marker("bfloat16"):
                item.add_marker(skip)
