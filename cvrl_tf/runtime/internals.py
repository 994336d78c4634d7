"""The one home of the TensorFlow and gin internals cvrl_tf relies on, each with why.

Every private name cvrl_tf touches is reached through a function here, never elsewhere, so that
a TensorFlow or gin upgrade that removes one fails here, loudly, naming it
(`MissingInternal`); tests/test_internals.py resolves every one of them (`check_all`) so an
upgrade is caught by `make test` before a run meets it.
"""
import importlib
from typing import Any, Callable, Optional


class MissingInternal(RuntimeError):
    """A TensorFlow or gin internal cvrl_tf needs is gone (an upgrade changed it)."""


def _resolve(module: str, attribute: str, why: str) -> Any:
    try:
        value = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
        return value
    except (ImportError, AttributeError) as e:
        raise MissingInternal(f"{module}.{attribute} is gone from this TensorFlow/gin version "
                              f"({e}); cvrl_tf uses it {why}, and needs an update for this "
                              f"version.") from e


# Op determinism: TF's public API can turn it on (tf.config.experimental.
# enable_op_determinism) but neither asks whether it is on nor turns it off again; a job
# turns it on for its own duration only (run.deterministic) and the trainer must know it is on
# (it may not read the clock in a graph then).
_FRAMEWORK_CONFIG = "tensorflow.python.framework.config"
_DETERMINISM_WHY = "to scope op determinism to one job (run.deterministic)"


def op_determinism_enabled() -> bool:
    return _resolve(_FRAMEWORK_CONFIG, "is_op_determinism_enabled", _DETERMINISM_WHY)()


def set_op_determinism(enabled: bool) -> None:
    name = "enable_op_determinism" if enabled else "disable_op_determinism"
    _resolve(_FRAMEWORK_CONFIG, name, _DETERMINISM_WHY)()


# MultiWorkerMirroredStrategy sets up TF's coordination service (worker heartbeats) with a
# 10 s timeout and no public way to change it; set up first, with our timeout, it is kept.
_COORDINATION_WHY = "to set the workers' heartbeat timeout (--worker_timeout)"


def configure_coordination_service(cluster, heartbeat_timeout_ms: int) -> bool:
    """Sets up the coordination service for this cluster's chief/worker jobs unless one is
    already set up; True when it configured it."""
    context = _resolve("tensorflow.python.eager.context", "context", _COORDINATION_WHY)()
    if context.coordination_service is not None:
        return False
    config_pb2 = _resolve("tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2",
                          "CoordinatedJob", _COORDINATION_WHY)
    leader = _resolve("tensorflow.python.distribute.multi_worker_util",
                      "coordination_leader", _COORDINATION_WHY)(cluster)
    jobs = [config_pb2(name=job, num_tasks=cluster.num_tasks(job))
            for job in ("chief", "worker") if job in cluster.jobs]
    context.configure_coordination_service(
        service_type="standalone", service_leader=leader, coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=heartbeat_timeout_ms)
    return True


def _server_private(server, name: str, why: str) -> Any:
    try:
        return getattr(server, name)
    except AttributeError as e:
        raise MissingInternal(f"tf.data service {type(server).__name__}.{name} is gone ({e}); "
                              f"cvrl_tf uses it {why}, and needs an update for this "
                              f"version.") from e


def data_service_worker_address(server) -> str:
    """The HOST:PORT a tf.data service WorkerServer bound (the port it chose for port 0):
    DispatchServer has a public `target`, WorkerServer keeps it private."""
    return _server_private(server, "_address", "to print the port a worker bound")


def data_service_num_workers(server) -> int:
    """Workers registered with a tf.data service DispatchServer (no public count exists)."""
    return _server_private(server, "_num_workers", "to print the dispatcher's worker count")()


# gin also tries an include such as 'runs/pretrain.gin' as Python package 'runs' + file; a
# plain folder of that name in the working directory (e.g. the demo's ./runs) is a namespace
# package without a file, and gin's check raises TypeError instead of moving on to the search
# path. gin offers no public hook for its file readers.
_GIN_WHY = "to let gin includes resolve next to a ./runs folder"


def make_gin_lookups_safe() -> None:
    """Wraps every gin file reader's existence check so that a crash means 'not found'."""
    readers = _resolve("gin.config", "_FILE_READERS", _GIN_WHY)
    readers[:] = [(reader, _safe(exists)) for reader, exists in readers]


def _safe(exists_fn: Callable[[str], bool]) -> Callable[[str], bool]:
    if getattr(exists_fn, "cvrl_tf_safe", False):
        return exists_fn

    def exists(path: str) -> bool:
        try:
            return exists_fn(path)
        except TypeError:
            return False

    exists.cvrl_tf_safe = True
    return exists


# Tests only: MirroredStrategy instances in one process start their collective keys at the
# same base and collide ("Collective instance 100 expected type ..."); TF's own tests bump it.
_MIRRORED = "tensorflow.python.distribute.mirrored_strategy"


def bump_collective_keys(amount: int = 100000) -> None:
    strategy = _resolve(_MIRRORED, "MirroredStrategy", "in tests")
    _resolve(_MIRRORED, "MirroredStrategy._collective_key_base", "in tests")
    strategy._collective_key_base += amount  # pylint: disable=protected-access


# Tests only: whether TensorFlow's oneDNN kernels are on in this process.
def onednn_enabled() -> bool:
    return _resolve("tensorflow.python.util._pywrap_util_port", "IsMklEnabled",
                    "in tests, to see whether oneDNN is on")()


def check_all(server: Optional[Any] = None) -> list:
    """Resolves every internal above (without changing anything); returns their names. The
    tf.data service's two are checked on a `server` when given (tests/test_service.py starts
    one)."""
    names = [(_FRAMEWORK_CONFIG, n) for n in ("is_op_determinism_enabled",
                                              "enable_op_determinism", "disable_op_determinism")]
    names += [("tensorflow.python.eager.context", "context"),
              ("tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2",
               "CoordinatedJob"),
              ("tensorflow.python.distribute.multi_worker_util", "coordination_leader"),
              ("gin.config", "_FILE_READERS"),
              (_MIRRORED, "MirroredStrategy._collective_key_base"),
              ("tensorflow.python.util._pywrap_util_port", "IsMklEnabled")]
    for module, attribute in names:
        _resolve(module, attribute, "(check_all)")
    if server is not None and hasattr(server, "target"):  # A DispatchServer.
        data_service_num_workers(server)
    elif server is not None:  # A WorkerServer.
        data_service_worker_address(server)
    return [f"{m}.{a}" for m, a in names]
