"""The pytest side of the mutation check (tools/mutants.py loads it with `-p`): what each test did.

A mutation counts as caught only when a test fails on an assertion: an AssertionError (numpy's
assert_* raise it too) or pytest's own failure (pytest.fail, `pytest.raises` "DID NOT RAISE"),
in the test's call. Anything else (a collection error, a fixture or set-up error, another
exception) says the tests could not judge the mutation. This plugin appends one JSON line per
test phase that ran (and per failed collection) to the file named by $CVRL_TF_MUTANTS_REPORT:
{'nodeid', 'when', 'outcome', 'exception' (type name or ''), 'assertion', 'scenario'}. It runs
the tests `make test` runs before the scenarios (tests marked scenario, `make test-scenarios`
only) and stops at the first assertion failure: the catching test is then a `make test` one
whenever any of those catches it.
"""
import json
import os

import pytest

REPORT_ENV = "CVRL_TF_MUTANTS_REPORT"


def _write(record: dict) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def is_assertion(excinfo) -> bool:
    """True for the failures a test asserts: AssertionError, pytest.fail and "DID NOT RAISE"."""
    return excinfo is not None and bool(
        excinfo.errisinstance(AssertionError) or excinfo.errisinstance(pytest.fail.Exception))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """The tests `make test` runs first, then the scenarios (each group in its order)."""
    items.sort(key=lambda item: item.get_closest_marker("scenario") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" and not report.failed:
        return
    excinfo = call.excinfo if report.failed else None
    assertion = report.when == "call" and is_assertion(excinfo)
    _write({"nodeid": item.nodeid, "when": report.when, "outcome": report.outcome,
            "exception": excinfo.typename if excinfo is not None else "",
            "assertion": assertion,
            "scenario": item.get_closest_marker("scenario") is not None})
    if assertion:  # Caught: nothing later can change the verdict (make test's tests ran first).
        item.session.shouldstop = "a test caught the mutation"


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed",
                "exception": "collection error", "assertion": False, "scenario": False})


def read_report(path: str) -> list:
    """The records the plugin wrote to path ([] when none)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def verdict(code, records: list) -> tuple:
    """(status, the ids of the tests that caught it) of one pytest run of a mutation's tests
    (exit code None: timed out). 'caught': a `make test` test failed on an assertion;
    'scenarios': only tests marked scenario did; 'missed': every test passed; 'error': none
    failed on an assertion but something failed otherwise (collection, set-up, another
    exception) or pytest could not run them; 'timeout'."""
    if code is None:
        return "timeout", ()
    caught = [r for r in records if r["assertion"]]
    if caught:
        status = "scenarios" if all(r["scenario"] for r in caught) else "caught"
        return status, tuple(r["nodeid"] for r in caught)
    if code == 0 and not any(r["outcome"] == "failed" for r in records):
        return "missed", ()
    return "error", ()
