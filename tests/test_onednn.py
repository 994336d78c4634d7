"""tune_process turns oneDNN on (and TensorFlow's C++ log off) before TensorFlow starts, unless
the user chose already; importing cvrl_tf's modules sets nothing.

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
# Every module of the package imported, nothing called: the environment is unchanged. The
# libraries cvrl_tf imports are imported first (TensorFlow itself sets TF2_BEHAVIOR and more).
_IMPORT_ALL = """
import ast, importlib, os, pathlib, pkgutil, sys
import cvrl_tf
package = pathlib.Path(cvrl_tf.__file__).parent
third_party = set()
for path in package.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module
                 and not node.level else [])
        third_party |= {n.split(".")[0] for n in names}
third_party -= set(sys.stdlib_module_names) | {"cvrl_tf"}
for name in sorted(third_party):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
before = dict(os.environ)
for module in pkgutil.walk_packages(cvrl_tf.__path__, "cvrl_tf."):
    importlib.import_module(module.name)
print(sorted(set(os.environ.items()) ^ set(before.items())))
"""


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_NAMES}
    env["PYTHONPATH"] = REPO  # this checkout's cvrl_tf
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True).stdout


def test_tune_process_turns_onednn_on_before_tensorflow_starts():
    assert _run(_PROBE).strip().splitlines()[-1].split() == ["'1'", "True"]


def test_importing_every_module_changes_no_environment_variable():
    assert _run(_IMPORT_ALL).strip().splitlines()[-1] == "[]"


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
