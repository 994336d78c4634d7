"""tune_process turns oneDNN on (and TensorFlow's C++ log off) before TensorFlow starts, unless
the user chose already. (Importing cvrl_tf's modules sets nothing: tests/test_malloc.py checks
the environment and malloc in one fresh interpreter.)

The whole chain (tune_process, then TensorFlow reads the variable and uses oneDNN) runs in a
fresh interpreter: TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when its first oneDNN check
runs, so the test process itself (TensorFlow already loaded) cannot tell.
"""
import os
import subprocess
import sys

import pytest

from cvrl_tf import runtime
from cvrl_tf.runtime import process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV_NAMES = (process.ONEDNN_ENV, process.LOG_LEVEL_ENV)
# What the variables are after tune_process, and whether TensorFlow then uses oneDNN.
_PROBE = ("import os; from cvrl_tf import runtime; runtime.tune_process(); "
          "from cvrl_tf.runtime import internals; "
          "print(repr(os.environ.get('TF_ENABLE_ONEDNN_OPTS')), internals.onednn_enabled())")


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_NAMES}
    env["PYTHONPATH"] = REPO  # this checkout's cvrl_tf
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.scenario  # make test-scenarios: a fresh interpreter starting TensorFlow is the point.
def test_tune_process_turns_onednn_on_before_tensorflow_starts():
    assert _run(_PROBE).strip().splitlines()[-1].split() == ["'1'", "True"]


@pytest.mark.parametrize("user_value", ["0", "1", ""])
def test_tune_process_keeps_the_users_values(monkeypatch, user_value):
    for name in _ENV_NAMES:
        monkeypatch.setenv(name, user_value)
    tuned = runtime.tune_process()
    assert not tuned.onednn and not tuned.quiet
    assert all(os.environ[name] == user_value for name in _ENV_NAMES)


def test_tune_process_sets_what_is_unset(monkeypatch):
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    tuned = runtime.tune_process()
    assert tuned.onednn and tuned.quiet
    assert os.environ[process.ONEDNN_ENV] == "1" and os.environ[process.LOG_LEVEL_ENV] == "3"


def test_verbose_keeps_tensorflows_log(monkeypatch):
    monkeypatch.delenv(process.LOG_LEVEL_ENV, raising=False)
    assert not runtime.tune_process(verbose=True).quiet
    assert process.LOG_LEVEL_ENV not in os.environ
