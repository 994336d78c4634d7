r"""The cvrl_tf binary: pretrain, linear-evaluate, fine-tune or evaluate, at any scale.

    python -m cvrl_tf.train --gin_file=gin/experiments/demo_pretrain.gin --model_dir=DIR \
        [--gin_param=run.train_length=100] [--strategy=default|one_device|mirrored|multi_worker]
        [--tpu=NAME|local] [--worker_timeout=60] [--collective_timeout=1800] [--verbose]

gin binds the one root, `run` (the fields of cvrl_tf.training.config.JobConfig), and a few
registered library functions (build_backbone, projection_head, finetune_classifier,
roi_head, build_dataset); library code never reads gin. See gin/experiments/ for launchable configs. A
restarted job continues where it stopped (the resume order: checkpoints.resume). Exit status:
0 when the run finished or stopped cleanly on a notice (SIGTERM, SIGINT, a GCE preemption;
the line printed says what was saved), 2 for a user error (one sentence), 1 for a lost worker
or a bug (a traceback).
"""
if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import dataclasses
import logging as std_logging
import os
import re
import sys
import time
from typing import Callable, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import gin
import tensorflow as tf

from cvrl_tf import models as _models
from cvrl_tf.data import pipeline as _pipeline
from cvrl_tf.runtime import cli
from cvrl_tf.runtime import internals
from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf.training import console
from cvrl_tf.training import distribute
from cvrl_tf.training import job
from cvrl_tf.training.config import ConfigError

# Registrations: the library functions gin may configure (their defaults stay gin-free).
build_backbone = gin.external_configurable(_models.build_backbone, module="cvrl_tf.models")
projection_head = gin.external_configurable(_models.projection_head, module="cvrl_tf.models")
finetune_classifier = gin.external_configurable(_models.finetune_classifier,
                                                module="cvrl_tf.models")
detection_head = gin.external_configurable(_models.roi_head, module="cvrl_tf.models")
build_dataset = gin.external_configurable(_pipeline.build_dataset, module="cvrl_tf.data")
# The one root: `run.<field>` binds the fields of config.JobConfig (names and defaults there;
# unknown names are refused by gin).
run = gin.external_configurable(config.JobConfig, "run", module="cvrl_tf.train")


def _gin_dir() -> str:
    """gin/ of the source tree (editable install), else the copy installed as cvrl_tf/gin."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    source_tree = os.path.join(os.path.dirname(package_dir), "gin")
    if os.path.isdir(os.path.join(source_tree, "experiments")):
        return source_tree
    return os.path.join(package_dir, "gin")


GIN_DIR = _gin_dir()


def job_config(model_dir: Optional[str] = None) -> config.JobConfig:
    """The JobConfig the parsed gin config describes; refuses settings left %gin.REQUIRED or
    not given at all (run.model_dir comes from --model_dir)."""
    try:
        cfg = run(model_dir=model_dir) if model_dir is not None else run()
    except TypeError as e:
        match = re.search(r"missing \d+ required (?:keyword-only |positional )?arguments?: "
                          r"'(\w+)'", str(e))
        if not match:
            raise
        name = match.group(1)
        what = ("pass --model_dir (where checkpoints, summaries and results go)"
                if name == "model_dir" else f"set run.{name} in the gin config")
        raise ConfigError(f"run.{name} is not set: {what}.") from None
    config.required_unset({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
                          gin.REQUIRED)
    return cfg


def _config_str() -> str:
    """The operative gin config (what was actually used), else the parsed one."""
    return gin.operative_config_str() or gin.config_str()


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str] = ()) -> None:
    """Parses gin files and bindings (unknown names refused); paths may be relative to gin/."""
    internals.make_gin_lookups_safe()
    gin.clear_config()
    gin.add_config_file_search_path(GIN_DIR)
    gin.add_config_file_search_path(os.path.dirname(GIN_DIR))
    root_logger = std_logging.getLogger()
    root_logger.addFilter(_quiet_gin_search)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                            skip_unknown=False, finalize_config=False)
    except (ValueError, IOError) as e:
        raise ConfigError(_gin_error(e)) from e
    finally:
        root_logger.removeFilter(_quiet_gin_search)


def _gin_error(error: Exception) -> str:
    """gin's parse error as one sentence naming the file or binding and the fix."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
    first = lines[0].rstrip(".")
    if isinstance(error, IOError) or "Unable to open file" in first:
        return (f"Bad gin config: {first}; give an existing file (paths may be relative to "
                f"the repository's gin/ folder, e.g. experiments/demo_pretrain.gin).")
    where = f" at `{lines[-1]}`" if len(lines) > 2 else ""
    return (f"Bad gin config: {first}{where}; fix the name or value (bindings target run, "
            f"whose parameters are the fields of cvrl_tf.training.config.JobConfig, and the "
            f"registered cvrl_tf.models / cvrl_tf.data functions).")


def _quiet_gin_search(record: std_logging.LogRecord) -> bool:
    """Drops gin's 'Path not found' errors for search-path locations it merely tried."""
    return not str(record.msg).startswith("Path not found")


def job_from_gin(gin_files: Sequence[str], gin_params: Sequence[str] = (),
                 model_dir: Optional[str] = None) -> Tuple[config.JobConfig, config.Builders]:
    """Parses the config; returns the JobConfig and the gin-configured builders of its job."""
    parse_gin(gin_files, gin_params)
    builders = config.Builders(backbone=build_backbone, projection_head=projection_head,
                               finetune_classifier=finetune_classifier, dataset=build_dataset,
                               detection_head=detection_head, config_str=_config_str)
    return job_config(model_dir), builders


def run_with_gin(gin_files: Sequence[str], gin_params: Sequence[str] = (),
                 strategy: Optional[tf.distribute.Strategy] = None,
                 model_dir: Optional[str] = None, on_loop: Optional[Callable] = None,
                 verbose: bool = False) -> dict:
    """Parses the config and runs its job in this process (used by demo.py and tests)."""
    cfg, builders = job_from_gin(gin_files, gin_params, model_dir)
    return job.run_job(cfg, strategy=strategy or tf.distribute.get_strategy(),
                       builders=builders, on_loop=on_loop, verbose=verbose)


FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "gin config files (repeatable; relative to gin/ ok).")
flags.DEFINE_multi_string("gin_param", [],
                          "gin bindings, e.g. run.train_length=100 (repeatable).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, summaries and results go.")
flags.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES[:-1]),
                  "tf.distribute strategy when --tpu is not given.")
flags.DEFINE_string("tpu", None, "Cloud TPU name, or 'local' on a TPU VM: uses TPUStrategy.")
flags.DEFINE_float("worker_timeout", distribute.WORKER_TIMEOUT,
                   "multi_worker: seconds within which the workers notice a lost worker and "
                   "stop (a health check every worker_timeout / 4 seconds).")
flags.DEFINE_float("collective_timeout", distribute.COLLECTIVE_TIMEOUT,
                   "multi_worker: seconds one collective may wait for its peers (a worker "
                   "alive but stuck); longer than any one worker's extra work between steps.")
flags.DEFINE_bool("verbose", False, "Print every metric of every loop, TensorFlow's C++ log "
                  "and Python's log lines, and tracebacks of user errors.")


def _checkpoint_step(prefix: str) -> int:
    """The global step a checkpoint holds (job.py saves it as `step`)."""
    return int(tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def lost_worker_message(error: BaseException, model_dir: str) -> str:
    """The one line a surviving worker prints when a peer is lost: who, the last checkpoint,
    and how to resume."""
    latest, _ = checkpoints.latest_good(model_dir) if tf.io.gfile.isdir(model_dir) else (None, [])
    where = (f"the last checkpoint is step {_checkpoint_step(latest)} in {model_dir}"
             if latest else f"no checkpoint was saved in {model_dir} yet")
    return (f"Lost {distribute.lost_worker(error)}: training stopped ({type(error).__name__}); "
            f"{where}. Restart all workers with the same command to resume from it.")


def _exit_lost_worker(error: BaseException, model_dir: str) -> None:
    """Prints the lost-worker line and leaves at once (status 1)."""
    message = lost_worker_message(error, model_dir)
    logging.error("%s\n%s", message, error)
    print(message, flush=True)
    # Not sys.exit: TF's teardown would wait (docs/DESIGN.md, "A lost worker") on the lost
    # peer's shutdown barrier; nothing is left to save.
    std_logging.shutdown()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


@cli.guard
def main(argv: Sequence[str]) -> None:
    """Parses flags and gin, builds the strategy, runs the job."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.gin_file:
        raise app.UsageError("Pass --gin_file (e.g. gin/experiments/demo_pretrain.gin).")
    console.setup_logging(FLAGS.verbose)
    cfg, builders = job_from_gin(FLAGS.gin_file, FLAGS.gin_param, FLAGS.model_dir)
    start = time.time()
    strategy = distribute.get_strategy(FLAGS.strategy, tpu=FLAGS.tpu,
                                       worker_timeout=FLAGS.worker_timeout,
                                       collective_timeout=FLAGS.collective_timeout)
    try:
        results = job.run_job(cfg, strategy=strategy, builders=builders,
                              verbose=FLAGS.verbose)
    except distribute.PEER_ERRORS as e:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        _exit_lost_worker(e, cfg.model_dir)
    logging.info("Finished in %.1f s: %s", time.time() - start, results.get("eval", {}))


if __name__ == "__main__":
    app.run(main)
