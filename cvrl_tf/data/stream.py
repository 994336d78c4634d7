"""Where a pipeline's videos come from: TFRecord files (through source.py, in an order a run
resumes exactly) or TFDS, as parsed examples with their stream bookkeeping.

`examples(file_pattern, ...)` returns (the stream's seed, a dataset of dicts): what the
record parser gives ('frames' tf.string [L], 'label', 'id', ...), plus 'status' (0 or a
checks.py cause), 'q' (the raw index: the element's augmentation seed), 'position', 'file'
and 'record'. A record that does not parse is skipped-and-counted (`skip`) or refused, as
checks.py decides.
"""
import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence, Union

from absl import logging
import numpy as np
import tensorflow as tf

from cvrl_tf.data import checks, schema, source, subset

BOOKKEEPING = ("q", "position", "file", "record")


def _empty_video(default_id: tf.Tensor) -> dict:
    return {"frames": tf.zeros([0], tf.string), "label": tf.zeros([0], tf.int32),
            "id": default_id}


@dataclasses.dataclass(frozen=True)
class Parser:
    """How records become examples: parse(serialized, default_id) -> dict, and empty(default_id)
    -> the same structure with no frames (for shard markers and unparseable records)."""
    parse: Callable[[tf.Tensor, tf.Tensor], dict] = schema.parse_sequence_example
    empty: Callable[[tf.Tensor], dict] = _empty_video


def examples(file_pattern: Union[str, Sequence[str]], *, input_context, training: bool,
             repeat: bool, skip: bool, deterministic: bool, shuffle_buffer: int,
             seed: Optional[int], start_positions: Optional[np.ndarray],
             tfds_data_dir: Optional[str] = None, subset_ids: Optional[Sequence[str]] = None,
             parser: Parser = Parser()) -> tuple:
    """(stream seed, parsed examples) of this input pipeline (see the module docstring);
    `subset_ids`: only these videos (subset.keep_ids filters the records before the windows)."""
    num_pipes = input_context.num_input_pipelines if input_context else 1
    pipe_id = input_context.input_pipeline_id if input_context else 0
    if isinstance(file_pattern, str) and file_pattern.startswith("tfds:"):
        if subset_ids is not None:
            raise ValueError(f"A subset of videos (subset_ids) needs TFRecord files, not the "
                             f"TFDS pattern {file_pattern!r}.")
        return _tfds_stream(file_pattern, input_context, tfds_data_dir, seed, training,
                            shuffle_buffer, repeat, start_positions, pipe_id, num_pipes)
    window = shuffle_buffer if training else 1
    files, record_shard = source.shard_files(schema.resolve_files(file_pattern), num_pipes,
                                             pipe_id)
    seed, start = _start_of(start_positions, seed, pipe_id, num_pipes, len(files), window)
    basenames = [os.path.basename(f) for f in files]
    keep = None if subset_ids is None else subset.keep_ids(subset_ids, basenames)
    ds = source.records(files, source.file_sizes(files), pipeline=pipe_id,
                        num_pipelines=num_pipes, record_shard=record_shard, seed=seed,
                        window=window, shuffle=training, repeat=repeat, start=start, keep=keep)
    names = tf.constant(basenames)
    parse = functools.partial(_parse, names=names, parser=parser)
    unparseable = functools.partial(_unparseable, parser=parser)
    ds = ds.apply(checks.attempt(parse, unparseable, deterministic) if skip
                  else lambda d: d.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=deterministic))
    return seed, ds


def _parse(element: dict, names: tf.Tensor, parser: Parser) -> dict:
    """A record of source.records as a parsed example (a shard marker: empty, with its
    status); default id '<file basename>:<record index>'."""
    default_id = schema.default_id(names, element["file"], element["record"])

    def parsed():
        return dict(parser.parse(element["serialized"], default_id), status=tf.constant(0))

    def marker():
        return dict(parser.empty(default_id), status=tf.constant(checks.TRUNCATED_SHARD))

    example = tf.cond(element["marker"], marker, parsed)
    return dict(example, **{k: element[k] for k in BOOKKEEPING})


def _unparseable(element: dict, parser: Parser) -> dict:
    """What _parse gives for a record that does not parse."""
    default_id = tf.strings.join(["record ", tf.strings.as_string(element["record"]),
                                  " of file ", tf.strings.as_string(element["file"])])
    return dict(parser.empty(default_id), status=tf.constant(checks.NOT_PARSEABLE),
                **{k: element[k] for k in BOOKKEEPING})


def _start_of(start_positions, seed, pipe_id, num_pipes, num_files, window):
    """(stream seed, start position or None) of this input pipeline from a stored table."""
    start = None
    if start_positions is not None:
        start = source.latest(start_positions, pipe_id, num_pipes, num_files, window, seed)
        if start is None:
            logging.warning("Input pipeline %d: the stored input positions belong to another "
                            "layout (pipelines, files, shuffle window or seed); starting a "
                            "fresh order.", pipe_id)
    if start is not None:
        seed = source.seed_of(start)
        logging.info("Input pipeline %d resumes its data stream exactly: epoch %d, record %d "
                     "of the pipeline's stream.", pipe_id, source.epoch_of(start),
                     source.records_before(start))
    elif seed is None:
        seed = source.fresh_seed()
    return seed, start


def _tfds_examples(file_pattern: str, input_context, data_dir: Optional[str]):
    """'tfds:<name>[/<config>]/<split>' -> parsed examples from cvrl_tf.data.tfds_source."""
    spec = file_pattern[len("tfds:"):]
    if "/" not in spec:
        raise ValueError(f"TFDS pattern {file_pattern!r} needs the form 'tfds:<name>[/<config>]"
                         f"/<split>', e.g. 'tfds:ucf101/ucf101_1_256/train'.")
    name, split = spec.rsplit("/", 1)
    try:
        from cvrl_tf.data import tfds_source  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ValueError(f"File pattern {file_pattern!r} needs cvrl_tf.data.tfds_source, which "
                         f"could not be imported ({e}).") from e
    return tfds_source.tfds_examples(name, split, input_context=input_context, data_dir=data_dir)


def _tfds_stream(file_pattern, input_context, data_dir, seed, training, shuffle_buffer, repeat,
                 start_positions, pipe_id, num_pipes):
    """(seed, parsed TFDS examples with stream bookkeeping): shuffled by a buffer, so a resumed
    run continues with a fresh order (seeded by where it stopped), never from the start."""
    seed = source.fresh_seed() if seed is None else seed
    resumed = None
    if start_positions is not None:
        resumed = source.latest(start_positions, pipe_id, num_pipes, 0, 0, None)
    if resumed is not None:
        seed = source.seed_of(resumed) ^ source.records_before(resumed)
        logging.warning("Input pipeline %d reads TFDS, which cannot resume its order exactly: "
                        "continuing with a fresh order.", pipe_id)
    ds = _tfds_examples(file_pattern, input_context, data_dir)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    layout = tf.constant(source.layout(pipe_id, num_pipes, seed, 0, 0))
    first = source.records_before(resumed) if resumed is not None else 0

    def bookkeeping(q, example):
        q = q + first
        position = tf.concat([layout, tf.zeros([3], tf.int32), tf.cast([q], tf.int32),
                              tf.zeros([source.POSITION_SIZE - 9], tf.int32)], 0)
        return dict(example, q=q, position=position, file=tf.constant(-1, tf.int64), record=q,
                    status=tf.constant(0))

    return seed, ds.enumerate().map(bookkeeping)
