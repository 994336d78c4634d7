"""Mutation check: break one of the project's ideas at a time and see the tests named for it fail.

Each mutation replaces one exact piece of text (it must occur exactly once) in a scratch copy of
the repository (the files `git ls-files` lists, plus untracked files that are not ignored), runs
pytest on the tests named for it, and counts as caught only when one of them fails on an
assertion (tools/mutants_plugin.py tells that apart from a collection, set-up or other error,
which is reported as 'error'); the output names the tests that caught it. The tests `make test`
runs go first; a mutation caught only by tests marked scenario (`make test-scenarios`) is
reported 'scenarios', and the closing summary says for each claim (a mutation's `breaks`)
whether `make test` alone catches it. First the named tests run once on the unmutated copy: a
mutation can only be caught by tests that pass without it. Not part of `make test` (it takes
minutes); docs/DESIGN.md says when to run it.

    python -m tools.mutants                  # every active mutation
    python -m tools.mutants --list           # names, files, tests, what each one breaks
    python -m tools.mutants --only NAME ...  # some of them
    python -m tools.mutants --pending        # also run the pending ones

Exit status 0 when every mutation run is caught (by `make test` or by scenarios only); 1 when
one is missed, cannot be applied (its text no longer occurs exactly once: update MUTATIONS),
times out, or errs (no test failed on an assertion, but one failed otherwise, or pytest could
not run them, e.g. a test id that no longer exists); 1 too when the named tests fail unmutated.
Pending mutations name tests still to be written: reported, not run.
"""
import argparse
import pathlib
import sys
import tempfile
from typing import Optional, Sequence

from tools import mutants_run
# Re-exported: the catalogue and its mechanics (tests/test_mutants.py uses them).
from tools.mutants_run import MutationError, Result, mutate, repository_files  # noqa: F401
from tools.mutations import MUTATIONS, Mutation  # noqa: F401

REPO = mutants_run.REPO


def select(names: Optional[Sequence[str]]) -> list:
    """The mutations named (all when none); SystemExit naming any unknown name."""
    if not names:
        return list(MUTATIONS)
    unknown = sorted(set(names) - {m.name for m in MUTATIONS})
    if unknown:
        raise SystemExit(f"tools.mutants: unknown mutation(s) {unknown}; see --list.")
    return [m for m in MUTATIONS if m.name in names]


def print_list(mutations: Sequence[Mutation]) -> None:
    """Each mutation: state, claim, replacement, tests."""
    for m in mutations:
        state = f"pending: {m.pending}" if m.pending else "active"
        print(f"{m.name}  [{state}]\n  breaks: {m.breaks}\n  in {m.path}: "
              f"{m.search!r} -> {m.replace!r}\n  tests: {' '.join(m.tests)}")


# Whether `make test` alone catches a mutation, by its status.
MAKE_TEST = {"caught": "yes", "scenarios": "NO (scenarios only)", "missed": "NO (missed)",
             "error": "unknown (error)", "timeout": "unknown (timeout)",
             "unapplicable": "unknown (not applied)", "pending": "unknown (pending)"}


def print_results(results: Sequence[Result]) -> None:
    """Each mutation with its verdict and catching tests (or why not), the counts, and for
    each claim whether `make test` alone catches it."""
    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    results = sorted(results, key=lambda r: order[r.mutation.name])
    print("\nmutation                               result        time")
    for r in results:
        print(f"{r.mutation.name:38s} {r.status:12s} {r.seconds:5.0f}s")
        if r.caught_by:
            scenarios = " (scenarios only: `make test` does not catch it)"
            print(f"    caught by{scenarios if r.status == 'scenarios' else ''}: "
                  + " ".join(r.caught_by))
        if r.detail:
            print(r.detail if r.detail.startswith("    |") else f"    {r.detail}")
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print("\nDoes `make test` alone catch it? (each claim: what its mutation breaks)")
    for r in results:
        print(f"  {MAKE_TEST[r.status]:22s} {r.mutation.breaks}  [{r.mutation.name}]")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--pending", action="store_true", help="run pending mutations too")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per pytest run (default 900)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the named tests unmutated first")
    args = parser.parse_args(argv)
    mutations = select(args.only)
    if args.list:
        print_list(mutations)
        return 0

    with tempfile.TemporaryDirectory(prefix="cvrl_tf-mutants-") as tmp:
        copy = pathlib.Path(tmp) / "repo"
        mutants_run.copy_repository(REPO, copy)
        mutants_run.check_imports_copy(copy)
        to_run, results = mutants_run.prepare(copy, mutations, args.pending)
        if to_run and not args.no_baseline and not mutants_run.baseline_passes(
                copy, to_run, args.timeout):
            return 1
        for m in to_run:
            result = mutants_run.run_mutation(copy, m, args.timeout)
            results.append(result)
            print(f"{result.status:12s} {m.name:38s} {result.seconds:6.0f}s "
                  f"{' '.join(result.caught_by)}", flush=True)
    print_results(results)
    return 1 if any(r.status not in ("caught", "scenarios", "pending") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
