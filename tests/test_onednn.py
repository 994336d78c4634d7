"""Importing cvrl_tf turns oneDNN on before TensorFlow starts, unless the user chose already.

The whole chain (import cvrl_tf, then TensorFlow reads the variable and uses oneDNN) runs in a
fresh interpreter: TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when its first oneDNN check
runs, so the test process itself (TensorFlow already loaded) cannot tell. That the user's own
value is kept needs no TensorFlow: re-running cvrl_tf's import shows it.
"""
import importlib
import os
import subprocess
import sys

import pytest

import cvrl_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the variable is after `import cvrl_tf`, and whether TensorFlow then uses oneDNN.
_PROBE = ("import os, cvrl_tf; "
          "from tensorflow.python.util import _pywrap_util_port as port; "
          "print(repr(os.environ.get('TF_ENABLE_ONEDNN_OPTS')), port.IsMklEnabled())")


def test_import_turns_onednn_on_before_tensorflow_starts():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO  # this checkout's cvrl_tf
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1].split() == ["'1'", "True"]


@pytest.mark.parametrize("user_value", ["0", "1", ""])
def test_import_keeps_the_users_value(monkeypatch, user_value):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", user_value)
    importlib.reload(cvrl_tf)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == user_value


def test_import_sets_1_when_unset(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    importlib.reload(cvrl_tf)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
