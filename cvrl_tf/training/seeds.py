"""The seed of a run: run.seed, or one drawn at the run's first start and kept in its
model_dir (seed.json), so that every restart of the run reads the same stream of videos and
augmentations and a preempted or killed run continues where it stood, by default.

All workers of a multi-worker run take the chief's draw (a MAX over the workers, where the
others offer 0), so they agree without a shared file system race.
"""
import dataclasses
import os
from typing import Optional

import tensorflow as tf

from cvrl_tf.data import source
from cvrl_tf.training import checkpoints
from cvrl_tf.training import distribute
from cvrl_tf.training.config import JobConfig

SEED_JSON = "seed.json"


def stored_seed(model_dir: str) -> Optional[int]:
    """The seed a run stored in model_dir, or None."""
    path = os.path.join(model_dir, SEED_JSON)
    if not tf.io.gfile.exists(path):
        return None
    value = checkpoints.read_json(path, "Run seed").get("seed")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"Run seed file {path} must hold {{\"seed\": <int>}}, got {value!r}.")
    return value


def _checkpointed_seed(model_dir: str) -> Optional[int]:
    """The stream seed the newest readable checkpoint's input positions carry (a run from
    before seed.json existed drew one and kept it only there), or None."""
    if not tf.io.gfile.isdir(model_dir):
        return None
    prefix, _ = checkpoints.latest_good(model_dir)
    if prefix is None:
        return None
    reader = tf.train.load_checkpoint(prefix)
    key = "input/positions/.ATTRIBUTES/VARIABLE_VALUE"
    if not reader.has_tensor(key):
        return None
    rows = reader.get_tensor(key)
    return source.seed_of(rows[0]) if len(rows) else None


def _agreed(strategy: tf.distribute.Strategy, offer: int) -> int:
    """The largest offer over the workers (each replica offers its worker's value)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(offer, tf.int64))
        return int(strategy.reduce(tf.distribute.ReduceOp.MAX, values, axis=None).numpy())
    return offer


def settle(cfg: JobConfig, strategy: tf.distribute.Strategy) -> JobConfig:
    """cfg with run.seed set: its own, the one stored in model_dir, or a new draw (stored).

    A run whose batches come from the tf.data service has no replayable order: its seed still
    initializes the model, and is drawn and stored the same way."""
    if cfg.seed is not None:
        return cfg
    seed = stored_seed(cfg.model_dir)
    if seed is None:
        seed = _checkpointed_seed(cfg.model_dir)
    if seed is None:
        chief = distribute.is_chief(strategy)
        seed = _agreed(strategy, source.fresh_seed() + 1 if chief else 0)
        if chief:
            checkpoints.write_json(cfg.model_dir, SEED_JSON, {"seed": seed})
    return dataclasses.replace(cfg, seed=seed)
