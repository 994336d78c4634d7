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
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "default", tpu: Optional[str] = None,
                 devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """Returns the strategy `name` (one of STRATEGIES); `tpu` (a name or 'local') wins."""
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
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "tpu":
        raise ValueError("strategy=tpu needs the TPU name: pass --tpu=NAME (--tpu=local on a "
                         "TPU VM).")
    raise ValueError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    """Connects to the TPU `tpu` ('local' on a TPU VM) and returns a TPUStrategy."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    if tpu != "local":  # A TPU VM's own chips need no remote connection.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


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
