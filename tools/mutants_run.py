"""Running one mutation of tools/mutants.py: a scratch copy of the repository, the text
replaced, the named tests run with tools/mutants_plugin.py, the text restored, the verdict.
"""
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence, Tuple

from tools import mutants_plugin

REPO = pathlib.Path(__file__).resolve().parent.parent
Mutation = Any  # tools.mutants.Mutation: name, path, search, replace, tests, breaks, pending.


class MutationError(ValueError):
    """A mutation whose search text does not occur exactly once."""


def mutate(text: str, mutation: Mutation) -> str:
    """text with the mutation applied; MutationError unless its search text occurs once."""
    count = text.count(mutation.search)
    if count != 1:
        raise MutationError(f"{mutation.path}: the search text {mutation.search!r} occurs "
                            f"{count} times (needs exactly 1); update tools/mutants.py.")
    return text.replace(mutation.search, mutation.replace)


def repository_files(repo: pathlib.Path) -> list:
    """Tracked files and untracked, not ignored ones (what a commit of the tree would hold)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, check=True, capture_output=True).stdout
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if (repo / n).is_file()]  # Deleted, not yet committed: skip.


def copy_repository(repo: pathlib.Path, dest: pathlib.Path) -> None:
    for name in repository_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target, follow_symlinks=False)


def _environment(copy: pathlib.Path) -> dict:
    # COLUMNS: pytest's short summary keeps the failure message on a wide "terminal".
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", COLUMNS="250")
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def check_imports_copy(copy: pathlib.Path) -> None:
    """Refuses to run when `cvrl_tf` would be imported from anywhere but the copy."""
    code = "import os, cvrl_tf; print(os.path.realpath(cvrl_tf.__file__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=_environment(copy),
                         check=True, capture_output=True, text=True).stdout.strip()
    if not out.startswith(str(copy.resolve())):
        raise SystemExit(f"tools.mutants: the scratch copy imports cvrl_tf from {out}, not "
                         f"from the copy; a mutation there would test nothing.")


def run_pytest(copy: pathlib.Path, tests: Sequence[str], timeout: float) -> tuple:
    """(pytest exit code or None on timeout, the plugin's records, output, seconds) for the
    tests in the copy (tools/mutants_plugin.py: `make test`'s tests first, stop when one fails
    on an assertion)."""
    cmd = [sys.executable, "-m", "pytest", "-rfE", "-p", "no:cacheprovider",
           "-p", "tools.mutants_plugin", *tests]
    with tempfile.TemporaryDirectory(prefix="cvrl_tf-mutants-report-") as tmp:
        report = os.path.join(tmp, "report.jsonl")
        env = dict(_environment(copy), **{mutants_plugin.REPORT_ENV: report})
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and the workers it started, only.
            out, _ = proc.communicate()
            code = None
        return code, mutants_plugin.read_report(report), out, time.time() - start


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one mutation: status (mutants_plugin.verdict's, or 'unapplicable',
    'pending'), the tests that caught it and what else to show."""
    mutation: Any
    status: str
    seconds: float = 0.0
    caught_by: Tuple[str, ...] = ()
    detail: str = ""


def _errors(records: Sequence[dict]) -> str:
    """The failures that were not assertions: where, in which phase, what was raised."""
    return "\n".join(f"    | {r['nodeid']} ({r['when']}): {r['exception']}" for r in records
                     if r["outcome"] == "failed" and not r["assertion"])


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("    | " + line for line in output.rstrip().splitlines()[-lines:])


def run_mutation(copy: pathlib.Path, m: Mutation, timeout: float) -> Result:
    """Applies m in the copy, runs its tests, undoes it; the verdict."""
    path = copy / m.path
    original = path.read_text()
    path.write_text(mutate(original, m))
    try:
        code, records, out, seconds = run_pytest(copy, m.tests, timeout)
    finally:
        path.write_text(original)
    status, caught_by = mutants_plugin.verdict(code, records)
    detail = "" if caught_by else "\n".join(filter(None, [_errors(records), _tail(out)]))
    return Result(m, status, seconds, caught_by, detail)


def prepare(copy: pathlib.Path, mutations: Sequence[Mutation], pending: bool) -> tuple:
    """(mutations to run, results of those that will not run: pending or unapplicable)."""
    to_run, results = [], []
    for m in mutations:
        try:
            mutate((copy / m.path).read_text(), m)
        except MutationError as e:
            if m.pending and not pending:
                results.append(Result(m, "pending", detail=f"{m.pending} (and: {e})"))
            else:
                results.append(Result(m, "unapplicable", detail=str(e)))
            continue
        if m.pending and not pending:
            results.append(Result(m, "pending", detail=m.pending))
        else:
            to_run.append(m)
    return to_run, results


def baseline_passes(copy: pathlib.Path, to_run: Sequence[Mutation], timeout: float) -> bool:
    """Runs every named test once, unmutated; says so and returns False when one fails."""
    tests = list(dict.fromkeys(t for m in to_run for t in m.tests))
    print(f"baseline: {len(tests)} test targets, unmutated ...", flush=True)
    code, records, out, seconds = run_pytest(copy, tests, timeout)
    print(f"baseline: {'passed' if code == 0 else 'FAILED'} in {seconds:.0f}s", flush=True)
    if code != 0:
        print(_errors(records) or _tail(out, 40))
        print("tools.mutants: the named tests fail without any mutation; fix them first (a "
              "mutation cannot be caught by a test that already fails).")
    return code == 0
