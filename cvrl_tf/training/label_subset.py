"""A run's labelled subset (run.train_subset): read, checked against the data once, kept.

At the first start every id of the file must be a video of run.train_data, and every input
pipeline must hold some of them (else it would read empty epochs forever); the file is then
copied to model_dir/train_subset.txt and what was checked goes to model_dir/train_subset.json.
A restarted run that finds the same ids there (and the same data and pipeline count) skips the
check; one given a different subset stops, since its stream positions and epochs belong to the
first subset.

The check's cost: it reads each record's TFRecord header and its context, not the frames
(cvrl_tf.data.subset.read_videos): two small reads (a seek) per video, 16 files at a time,
some tens of MB for Kinetics-400's 240,000 videos (about 2.5 TB as converted), and about a
minute of CPU for them (measured per video in docs/RESULTS.md, "Fewer labels").
"""
import json
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from cvrl_tf.data import schema
from cvrl_tf.data import source
from cvrl_tf.data import subset as data_subset
from cvrl_tf.training import config
from cvrl_tf.training.config import ConfigError, JobConfig

COPY_NAME = "train_subset.txt"
CHECKED_NAME = "train_subset.json"


def prepare(cfg: JobConfig, num_pipelines: int, chief: bool) -> Optional[list[str]]:
    """The ids of run.train_subset (None when unset), checked at the first start; the chief
    keeps the copy and the record of the check in model_dir. ConfigError when the file is
    missing or empty, names a video the data lacks, leaves a pipeline without videos, or
    differs from the subset the run started with."""
    if not cfg.train_subset:
        return None
    ids = config.subset_ids(cfg)
    copy = os.path.join(cfg.model_dir, COPY_NAME)
    if tf.io.gfile.exists(copy):
        if set(data_subset.read_ids(copy)) != set(ids):
            raise ConfigError(f"run.train_subset={cfg.train_subset} differs from the subset "
                              f"this run started with ({copy}); resume with that file, or "
                              f"start a new run in another model_dir.")
        checked = _read_checked(cfg.model_dir)
        if (checked.get("train_data") == cfg.train_data
                and checked.get("num_input_pipelines") == num_pipelines):
            return ids
    per_pipeline = check(ids, cfg.train_subset, cfg.train_data, num_pipelines)
    if chief:
        tf.io.gfile.makedirs(cfg.model_dir)
        if cfg.train_subset != copy:
            tf.io.gfile.copy(cfg.train_subset, copy, overwrite=True)
        with tf.io.gfile.GFile(os.path.join(cfg.model_dir, CHECKED_NAME), "w") as f:
            json.dump({"file": cfg.train_subset, "num_videos": len(ids),
                       "train_data": cfg.train_data, "num_input_pipelines": num_pipelines,
                       "videos_per_pipeline": per_pipeline}, f, indent=1)
    return ids


def check(ids: list[str], path: str, file_pattern: str, num_pipelines: int) -> list[int]:
    """The subset's records each input pipeline reads; ConfigError when an id is not a video
    of the data or a pipeline would read none."""
    try:
        videos, _ = data_subset.read_videos(file_pattern)
        files = schema.resolve_files(file_pattern)
    except ValueError as e:
        raise ConfigError(f"run.train_data: {e}") from e
    wanted = set(ids)
    missing = wanted - {v.id for v in videos}
    if missing:
        first = next(i for i in ids if i in missing)
        raise ConfigError(f"run.train_subset={path}: {len(missing)} of its {len(ids)} video ids "
                          f"are not in run.train_data={file_pattern!r}, e.g. {first!r}; write "
                          f"the subset from the same data (python -m cvrl_tf.data.subset).")
    chosen = [v for v in videos if v.id in wanted]
    per_pipeline = []
    for pipeline in range(num_pipelines):
        share, record_shard = source.shard_files(files, num_pipelines, pipeline)
        share = set(share)
        per_pipeline.append(sum(
            v.file in share and (record_shard is None or v.record % record_shard[0] ==
                                 record_shard[1]) for v in chosen))
    if min(per_pipeline) == 0:
        empty = per_pipeline.index(0)
        raise ConfigError(f"run.train_subset={path}: input pipeline {empty} of {num_pipelines} "
                          f"would read none of its {len(ids)} videos (its share of the files "
                          f"holds none); use fewer workers or a larger subset.")
    logging.info("run.train_subset=%s: %d videos, read per input pipeline: %s", path,
                 len(ids), per_pipeline)
    return per_pipeline


def _read_checked(model_dir: str) -> dict:
    path = os.path.join(model_dir, CHECKED_NAME)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def summary(cfg: JobConfig, ids: Optional[list[str]]) -> Optional[dict]:
    """What results.json says of the subset: the file, its copy in model_dir, its size."""
    if ids is None:
        return None
    return {"file": cfg.train_subset, "copy": COPY_NAME, "num_videos": len(ids)}
