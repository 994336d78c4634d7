"""tools.mutants stays runnable: each active mutation applies once and names existing tests; a
mutation counts as caught only when a test fails on an assertion (tools/mutants_plugin.py).

(Running the mutations takes minutes and is not part of the suite: `python -m tools.mutants`.)
"""
import pathlib
import shutil

import pytest

from tools import mutants
from tools import mutants_plugin
from tools import mutants_run

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_mutate_needs_the_search_text_exactly_once():
    mutation = mutants.Mutation("m", "f.py", "b = 1", "b = 2", ("tests/x.py",), "b is 1")
    assert mutants.mutate("a = 0\nb = 1\n", mutation) == "a = 0\nb = 2\n"
    for text in ("a = 0\n", "b = 1\nb = 1\n"):
        with pytest.raises(mutants.MutationError, match="f.py: the search text 'b = 1' occurs"):
            mutants.mutate(text, mutation)


@pytest.mark.parametrize("mutation", [m for m in mutants.MUTATIONS if not m.pending],
                         ids=lambda m: m.name)
def test_active_mutations_apply_and_name_existing_tests(mutation):
    source = (REPO / mutation.path).read_text()
    assert mutants.mutate(source, mutation) != source
    for target in mutation.tests:
        path, _, function = target.partition("::")
        function, _, parameter = function.partition("[")
        text = (REPO / path).read_text()
        assert not function or f"def {function}(" in text, f"{target} does not exist"
        if path == "tests/test_recipes.py" and parameter:  # Its ids: the experiments' names.
            assert (REPO / "gin" / "experiments" / f"{parameter[:-1]}.gin").exists(), target


def test_names_are_unique_and_the_copy_holds_the_repository():
    names = [m.name for m in mutants.MUTATIONS]
    assert len(names) == len(set(names))
    files = mutants.repository_files(REPO)
    assert "cvrl_tf/losses.py" in files and "tools/mutants.py" in files
    assert not any(name.startswith((".git/", ".venv/")) for name in files)


def _record(nodeid, assertion, scenario=False, when="call", exception="AssertionError"):
    return {"nodeid": nodeid, "when": when, "outcome": "failed", "exception": exception,
            "assertion": assertion, "scenario": scenario}


def test_verdict_counts_only_assertion_failures_and_knows_scenarios():
    verdict = mutants_plugin.verdict
    passed = {"nodeid": "t::a", "when": "call", "outcome": "passed", "exception": "",
              "assertion": False, "scenario": False}
    assert verdict(0, [passed]) == ("missed", ())
    assert verdict(None, []) == ("timeout", ())
    assert verdict(1, [_record("t::a", False, exception="ValueError")]) == ("error", ())
    assert verdict(1, [_record("t::a", False, when="setup", exception="OSError")]) == (
        "error", ())
    assert verdict(2, [_record("t.py", False, when="collect", exception="collection error")]
                   ) == ("error", ())
    assert verdict(4, []) == ("error", ())  # e.g. a test id that does not exist.
    assert verdict(1, [_record("t::a", False, exception="ValueError"),
                       _record("t::b", True)]) == ("caught", ("t::b",))
    assert verdict(1, [_record("t::s", True, scenario=True)]) == ("scenarios", ("t::s",))


FAKE_TESTS = '''
import numpy as np
import pytest


@pytest.fixture
def broken():
    raise OSError("set-up fails")


def test_passes():
    pass


def test_asserts():
    assert 1 == 2


def test_numpy_asserts():
    np.testing.assert_array_equal([1], [2])


def test_did_not_raise():
    with pytest.raises(ValueError):
        pass


def test_raises_another_exception():
    raise ValueError("not an assertion")


def test_set_up_fails(broken):
    pass


@pytest.mark.scenario
def test_scenario_asserts():
    assert False
'''


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory):
    """A repository of one test file with every kind of outcome, plus the check's tools."""
    root = tmp_path_factory.mktemp("fake_repo")
    (root / "tests").mkdir()
    (root / "tests" / "test_fake.py").write_text(FAKE_TESTS)
    (root / "tests" / "test_broken.py").write_text("import not_a_module_anywhere\n")
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    scenario: a scenario\n")
    shutil.copytree(REPO / "tools", root / "tools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("tests,status,caught_by", [
    (["test_passes"], "missed", ()),
    (["test_raises_another_exception", "test_set_up_fails"], "error", ()),
    (["test_asserts"], "caught", ("test_asserts",)),
    (["test_numpy_asserts"], "caught", ("test_numpy_asserts",)),
    (["test_did_not_raise"], "caught", ("test_did_not_raise",)),
    # make test's tests run first, and the first assertion failure ends the run.
    (["test_scenario_asserts", "test_raises_another_exception", "test_asserts",
      "test_numpy_asserts"], "caught", ("test_asserts",)),
    (["test_scenario_asserts", "test_passes"], "scenarios", ("test_scenario_asserts",)),
], ids=["missed", "errors", "assert", "numpy", "did-not-raise", "make-test-first",
        "scenarios-only"])
def test_a_fake_repository_is_judged_by_how_its_tests_fail(fake_repo, tests, status, caught_by):
    ids = [f"tests/test_fake.py::{t}" for t in tests]
    code, records, output, _ = mutants_run.run_pytest(fake_repo, ids, timeout=120)
    assert mutants_plugin.verdict(code, records) == (
        status, tuple(f"tests/test_fake.py::{t}" for t in caught_by)), output
    if status == "error":
        assert {(r["when"], r["exception"]) for r in records if r["outcome"] == "failed"} == {
            ("call", "ValueError"), ("setup", "OSError")}


def test_a_collection_error_is_an_error(fake_repo):
    code, records, output, _ = mutants_run.run_pytest(
        fake_repo, ["tests/test_broken.py", "tests/test_fake.py::test_asserts"], timeout=120)
    assert mutants_plugin.verdict(code, records) == ("error", ()), output
    assert [r["when"] for r in records] == ["collect"]
