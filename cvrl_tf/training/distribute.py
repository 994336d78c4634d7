"""tf.distribute strategies by name, and who writes what in a multi-worker run.

One code path serves every scale: the trainer calls `strategy.run` on replica step
functions and builds its input with `strategy.distribute_datasets_from_function`.
Only the chief writes checkpoints and summaries to `model_dir`; the other workers
must still take part in saving (it can involve collectives), so they save to a
private temporary directory that is removed at the end, as the TensorFlow
multi-worker guide recommends.
"""
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

from cvrl_tf.runtime import internals

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# multi_worker: a worker silent for this many seconds counts as lost (coordination service
# heartbeats; TF's default is 10 s, which a host busy writing a checkpoint could miss).
WORKER_TIMEOUT = 60.0
# multi_worker: a collective that waits longer than this fails (a peer alive but stuck).
COLLECTIVE_TIMEOUT = 1800.0


def get_strategy(name: str = "default", tpu: Optional[str] = None,
                 devices: Optional[Sequence[str]] = None,
                 worker_timeout: float = WORKER_TIMEOUT,
                 collective_timeout: float = COLLECTIVE_TIMEOUT) -> tf.distribute.Strategy:
    """Returns the strategy `name` (one of STRATEGIES); `tpu` (a name or 'local') wins.

    multi_worker only: `worker_timeout` bounds how long the workers take to notice a lost peer
    and fail (tf.errors.UnavailableError naming it) instead of hanging; `collective_timeout`
    bounds one collective (tf.errors.DeadlineExceededError), for a peer that is alive but stuck.
    """
    if tpu:
        return _tpu_strategy(tpu)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = devices[0] if devices else (
            "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            logging.warning("strategy=multi_worker without TF_CONFIG runs a single worker; "
                            "set TF_CONFIG on every host to span several.")
        return _multi_worker_strategy(worker_timeout, collective_timeout)
    if name == "tpu":
        raise ValueError("strategy=tpu needs the TPU name: pass --tpu=NAME (--tpu=local on a "
                         "TPU VM).")
    raise ValueError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")


def _multi_worker_strategy(worker_timeout: float, collective_timeout: float
                           ) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MWMS whose workers notice a lost peer within `worker_timeout` seconds.

    In TF 2.20 the workers' coordination service watches them: each sends heartbeats, and a
    task silent for `heartbeat_timeout_in_ms` (TF's default: 10 s) is declared down; every
    pending collective then fails with UnavailableError naming it ("The following tasks are
    unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1"). MWMS configures
    that service only when none is, so it is configured here first, the same way but with
    the timeout given. (MWMS's older Python health check is off whenever the service is on.)
    """
    if not worker_timeout > 0 or not collective_timeout > 0:
        raise ValueError(f"worker_timeout={worker_timeout!r} and collective_timeout="
                         f"{collective_timeout!r} must be > 0 seconds.")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if resolver.task_type in ("chief", "worker"):
        internals.configure_coordination_service(resolver.cluster_spec(),
                                                 int(worker_timeout * 1000))
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
        timeout_seconds=collective_timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                     communication_options=options)


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    """Connects to the TPU `tpu` ('local' on a TPU VM) and returns a TPUStrategy."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    if tpu != "local":  # A TPU VM's own chips need no remote connection.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


# What a lost peer raises in the surviving workers: the coordination service's abort
# (Unavailable), a collective's timeout (DeadlineExceeded), or collectives cancelled after them.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError, tf.errors.AbortedError)


# In the error of a worker whose heartbeat to the coordination service timed out.
_HEARTBEAT_RPC = "RPC: /tensorflow.CoordinationService/Heartbeat"


def lost_worker(error: BaseException, tf_config: Optional[Mapping[str, Any]] = None) -> str:
    """Names the peer an error of PEER_ERRORS is about, as 'worker 1 (host:port)' from the
    task the error names and TF_CONFIG's cluster; 'a peer worker (...)' when it names none."""
    if tf_config is None:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    cluster = tf_config.get("cluster", {})
    me = tf_config.get("task", {})
    myself = (me.get("type"), int(me.get("index", 0)))
    named = [(job, int(index)) for job, index in
             re.findall(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)", str(error))]
    if _HEARTBEAT_RPC in str(error):
        # This worker's heartbeat went unanswered: the silent one is the coordination
        # service's leader (TF's choice: the chief, else worker 0), whom the error does not name.
        named.append(("chief", 0) if "chief" in cluster else ("worker", 0))
    named = [task for task in named if task != myself]
    if named:
        job, index = named[0]
        addresses = cluster.get(job, [])
        where = f" ({addresses[index]})" if index < len(addresses) else ""
        return f"{job} {index}{where}"
    others = [f"{job} {i} ({address})" for job, addresses in cluster.items()
              for i, address in enumerate(addresses)
              if (job, i) != myself]
    return "a peer worker" + (f" (one of: {', '.join(others)})" if others else "")


def task_info(strategy: tf.distribute.Strategy) -> tuple[Optional[str], int]:
    """Returns (task_type, task_id) of this process; (None, 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None and not isinstance(
            strategy, tf.distribute.TPUStrategy):
        return resolver.task_type, int(resolver.task_id or 0)
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and task:
        return task.get("type"), int(task.get("index", 0))
    return None, 0


def num_input_pipelines(strategy: tf.distribute.Strategy) -> int:
    """The input pipelines `distribute_datasets_from_function` makes: one per worker (the
    chief and workers of TF_CONFIG's cluster), one per host of a TPU, else one."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        cluster = strategy.cluster_resolver.cluster_spec()
        return max(1, sum(cluster.num_tasks(job) for job in ("chief", "worker")
                          if job in cluster.jobs))
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return strategy.extended.num_hosts
    return 1


def is_chief_task(task_type: Optional[str], task_id: int, cluster: Mapping[str, Any]) -> bool:
    """The chief owns model_dir: task 'chief', else worker 0 when the cluster has no chief."""
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the process that writes checkpoints and summaries to model_dir."""
    task_type, task_id = task_info(strategy)
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return is_chief_task(task_type, task_id, cluster)


def write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: model_dir on the chief, a private temp dir elsewhere."""
    if is_chief(strategy):
        return model_dir
    task_type, task_id = task_info(strategy)
    path = os.path.join(model_dir, f"workertemp_{task_type}_{task_id}")
    if tf.io.gfile.exists(path):  # A stale one from a crashed run.
        tf.io.gfile.rmtree(path)
    tf.io.gfile.makedirs(path)
    return path


def remove_write_dir(path: str, model_dir: str) -> None:
    """Removes a non-chief's temporary write dir (a no-op for model_dir itself)."""
    if os.path.normpath(path) != os.path.normpath(model_dir) and tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
