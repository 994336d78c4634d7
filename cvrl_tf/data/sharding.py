"""Writing a split as shards, shared by the converters: each shard written whole (temporary
file + rename) by one task, tasks run in processes, finished shards kept on a rerun (their
counts from the last report or from their records), and convert_report.json per split.
"""
import concurrent.futures
import json
import multiprocessing
import os
from typing import Callable, Iterable, Mapping, Sequence

import tensorflow as tf
import tqdm

REPORT_NAME = "convert_report.json"


def skip_reason(error: Exception) -> str:
    """A decoder or file error as the reason a video was skipped."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    return f"{type(error).__name__}: {error}".strip()


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Writes records to `path` via a hidden temporary file + rename (a killed run leaves no
    half shard); returns the file's size in bytes."""
    # A hidden name outside the `<split>-*` pattern, so readers never pick up a half shard.
    tmp_path = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    with tf.io.TFRecordWriter(tmp_path) as writer:
        for record in records:
            writer.write(record)
    tf.io.gfile.rename(tmp_path, path, overwrite=True)
    return tf.io.gfile.stat(path).length




def check_other_shardings(output_dir: str, split: str, num_shards: int) -> None:
    """Refuses to mix shardings of one split (the file pattern would read both)."""
    suffix = f"-of-{num_shards:05d}.tfrecord"
    others = [name for name in tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*.tfrecord"))
              if not name.endswith(suffix)]
    if others:
        raise ValueError(f"{output_dir!r} already holds {split} shards of another sharding "
                         f"({os.path.basename(others[0])}); remove them or pass the same "
                         f"--num_shards.")


def read_reports(output_dir: str) -> dict:
    """The reports of earlier runs by split ({} when missing or unreadable)."""
    path = os.path.join(output_dir, REPORT_NAME)
    try:
        return json.loads(tf.io.gfile.GFile(path).read()) if tf.io.gfile.exists(path) else {}
    except ValueError:
        return {}


def update_report(output_dir: str, split: str, report: dict) -> None:
    """Replaces `split`'s entry of output_dir's convert_report.json, keeping the others."""
    path = os.path.join(output_dir, REPORT_NAME)
    reports = read_reports(output_dir)
    reports[split] = report
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(reports, indent=1) + "\n")


def finished_shards(output_dir: str, split: str, names: Sequence[str],
                    count: Callable[[str], dict], key: str) -> dict:
    """{name: counts} of the shards among `names` already on disk (finished by an earlier run:
    kept): from the split's last report when it has them (its entry holds `key`), else counted
    from the shard's records by `count` (a run killed before its report)."""
    old = read_reports(output_dir).get(split, {}).get("shards", {})
    shards = {}
    for name in names:
        path = os.path.join(output_dir, name)
        if tf.io.gfile.exists(path):
            known = old.get(name, {})
            shards[name] = known if known.get(key) is not None else count(path)
    return shards


def run_shards(write: Callable[..., dict], tasks: Mapping[str, tuple], sizes: Mapping[str, int],
               workers: int, progress: bool, desc: str, unit: str) -> tuple[dict, list]:
    """Runs write(*tasks[name]) for every shard, in `workers` processes when > 1, with a
    progress bar of sizes[name] units per shard; returns ({name: counts}, failed shards). A
    crashed shard is reported, not fatal: a rerun retries it."""
    done, failed = {}, []
    bar = tqdm.tqdm(total=sum(sizes.values()), unit=unit, disable=not progress, desc=desc)
    if workers > 1 and len(tasks) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(
            min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"))
        futures = {pool.submit(write, *task): name for name, task in tasks.items()}
        results = ((futures[f], f) for f in concurrent.futures.as_completed(futures))
    else:
        pool, results = None, ((name, task) for name, task in tasks.items())
    for name, job in results:
        try:
            done[name] = job.result() if pool else write(*job)
        except Exception as e:  # pylint: disable=broad-except
            failed.append({"shard": name, "reason": skip_reason(e)})
        bar.update(sizes[name])
    bar.close()
    if pool:
        pool.shutdown()
    return done, failed


