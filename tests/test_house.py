"""Rules of the house that a reader relies on, checked over the whole package: no function over
120 lines, and TensorFlow's and gin's internals reached only through cvrl_tf/runtime/internals.py.
"""
import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cvrl_tf"
INTERNALS = PACKAGE / "runtime" / "internals.py"
MAX_FUNCTION_LINES = 120
# A private name of TensorFlow or gin: a `tensorflow.python` / `tensorflow.compiler` import,
# or an attribute starting with one underscore read off tf, a strategy or gin.
_PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+tensorflow\.(python|compiler|core)\b", re.M)
_PRIVATE_ATTRIBUTE = re.compile(r"\b(tf|gin|strategy|extended|server|config)\.(_[a-z]\w*)")


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_no_function_is_longer_than_120_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                                f"{node.name} ({length} lines)")
    assert not long, "split these: " + "; ".join(long)


def test_tensorflow_and_gin_internals_only_in_the_internals_module():
    found = []
    for path in _sources():
        if path == INTERNALS:
            continue
        text = path.read_text()
        for match in list(_PRIVATE_IMPORT.finditer(text)) + list(
                _PRIVATE_ATTRIBUTE.finditer(text)):
            line = text[:match.start()].count("\n") + 1
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line} {match.group(0).strip()}")
    assert not found, "move these into cvrl_tf/runtime/internals.py: " + "; ".join(found)
