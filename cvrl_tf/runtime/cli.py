"""What every cvrl_tf command does alike: settle the process before TensorFlow starts, and turn
a user's mistake into one sentence and a non-zero exit instead of a traceback.

A command module starts with

    if __name__ == "__main__":
        from cvrl_tf.runtime import cli
        cli.start()

before its own imports (which load TensorFlow), and runs its main through `cli.guard(main)`.
User errors are the checks' own sentences: a ValueError (ConfigError included) or
FileNotFoundError raised by cvrl_tf's code, and an in-graph check's failure (a TensorFlow error
whose message carries IN_GRAPH_PREFIX, e.g. a bad record refused in evaluation). Anything else
is a bug and keeps its traceback; `--verbose` keeps the traceback of user errors too.
"""
import os
import re
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from cvrl_tf.runtime.process import tune_process

VERBOSE_FLAG = "--verbose"
IN_GRAPH_PREFIX = "cvrl_tf: "  # How in-graph checks start their messages (data/checks.py).
USAGE_EXIT = 2  # A user's mistake (as argparse and absl exit on a bad flag).
_GIN_CALL_NOTE = "\n  In call to configurable"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_state = {"verbose": False}


def verbose_requested(argv: Sequence[str]) -> bool:
    """True when the command line asks for --verbose (before any flag parser runs)."""
    return any(arg == VERBOSE_FLAG or arg.lower() in ("--verbose=true", "--verbose=1")
               for arg in argv[1:])


def start(argv: Optional[Sequence[str]] = None) -> bool:
    """The first thing a command does: tune_process (verbose on --verbose). Returns verbose."""
    argv = sys.argv if argv is None else argv
    _state["verbose"] = verbose_requested(argv)
    try:
        tune_process(verbose=_state["verbose"])
    except ValueError as e:
        fail(str(e))
    return _state["verbose"]


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    """Prints one sentence as the command's error and exits with `code`."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def user_error(error: BaseException) -> Optional[str]:
    """The sentence of a user's mistake, or None for a bug (see the module docstring)."""
    if isinstance(error, (ValueError, FileNotFoundError)) and _raised_by_cvrl_tf(error):
        # gin appends where a configurable was called; the sentence is the first part.
        return str(error).split(_GIN_CALL_NOTE)[0].strip() or type(error).__name__
    match = re.search(re.escape(IN_GRAPH_PREFIX) + r"([^\n]*)", str(error))
    if match and type(error).__module__.startswith("tensorflow"):
        return match.group(1).strip()
    return None


def _raised_by_cvrl_tf(error: BaseException) -> bool:
    """True when `error` was raised by a `raise` statement of cvrl_tf's own code (a check),
    not by a library called from it (TensorFlow's filtered tracebacks end in our frames)."""
    frames = traceback.extract_tb(error.__traceback__)
    return (bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE)
            and (frames[-1].line or "").lstrip().startswith("raise"))


def guard(main: Callable) -> Callable:
    """main, with user errors printed as one sentence (exit 2) instead of a traceback."""
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as e:  # pylint: disable=broad-except
            message = None if _state["verbose"] else user_error(e)
            if message is None:
                raise
            fail(message)
    guarded.__name__ = getattr(main, "__name__", "main")
    guarded.__doc__ = main.__doc__
    return guarded
