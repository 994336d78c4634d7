"""Importing cvrl_tf turns oneDNN on before TensorFlow starts, unless the user chose already.

Each case runs in a fresh interpreter: TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when its
first oneDNN check runs, so the test process itself (TensorFlow already loaded) cannot tell.
"""
import os
import subprocess
import sys
from typing import Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the variable is after `import cvrl_tf`, and whether TensorFlow then uses oneDNN.
_PROBE = ("import os, cvrl_tf; "
          "from tensorflow.python.util import _pywrap_util_port as port; "
          "print(repr(os.environ.get('TF_ENABLE_ONEDNN_OPTS')), port.IsMklEnabled())")


def _probe(value: Optional[str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = REPO  # this checkout's cvrl_tf
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].split()


@pytest.mark.parametrize("user_value, expected", [
    (None, ["'1'", "True"]),    # unset: cvrl_tf sets 1 and TensorFlow turns oneDNN on
    ("0", ["'0'", "False"]),    # the user's 0 is kept and honoured (even where TF defaults on)
])
def test_import_sets_onednn_unless_the_user_did(user_value, expected):
    assert _probe(user_value) == expected
