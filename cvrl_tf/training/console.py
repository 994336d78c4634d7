"""The console of a run, and its log file: a person reads one line per loop, per evaluation
and per warning on stdout; the log file (model_dir/log.txt) keeps everything, the full metric
dictionary of every loop included. Commands keep Python logging off the console
(`setup_logging`) unless --verbose."""
import contextlib
import logging as std_logging
import os
from typing import Iterator

from absl import logging
import tensorflow as tf

LOG_FILE = "log.txt"


def say(message: str) -> None:
    """One line for the person at the console (and the log)."""
    logging.info(message)
    print(message, flush=True)


def warn(message: str) -> None:
    """A warning the user must act on: one line on the console (and the log)."""
    logging.warning(message)
    print(f"Warning: {message}", flush=True)


def setup_logging(verbose: bool = False) -> None:
    """A command's Python logging: absl's handler on the root logger (else the first library
    to log through the standard module would install one printing every INFO line), showing
    errors only unless `verbose`: the console has the lines above instead, and the log file
    gets everything."""
    logging.use_absl_handler()
    logging.get_absl_handler().setLevel(std_logging.INFO if verbose else std_logging.ERROR)


class _GFileStream:
    """A text stream appending to a tf.io.gfile file (local or GCS), flushed per record."""

    def __init__(self, path: str):
        self._file = tf.io.gfile.GFile(path, "a")

    def write(self, text: str) -> None:
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def log_file(directory: str) -> Iterator[str]:
    """Appends every log record of INFO and above to directory/log.txt while the block runs."""
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, LOG_FILE)
    stream = _GFileStream(path)
    handler = std_logging.StreamHandler(stream)
    handler.setLevel(std_logging.INFO)
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = std_logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    if root.level > std_logging.INFO or root.level == std_logging.NOTSET:
        root.setLevel(std_logging.INFO)
    absl_level = logging.get_verbosity()
    if absl_level < logging.INFO:
        logging.set_verbosity(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        logging.set_verbosity(absl_level)
        stream.close()
