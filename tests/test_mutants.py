"""tools.mutants stays runnable: each active mutation applies once and names existing tests.

(Running the mutations takes minutes and is not part of the suite: `python -m tools.mutants`.)
"""
import pathlib

import pytest

from tools import mutants

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
        text = (REPO / path).read_text()
        assert not function or f"def {function}(" in text, f"{target} does not exist"


def test_names_are_unique_and_the_copy_holds_the_repository():
    names = [m.name for m in mutants.MUTATIONS]
    assert len(names) == len(set(names))
    files = mutants.repository_files(REPO)
    assert "cvrl_tf/losses.py" in files and "tools/mutants.py" in files
    assert not any(name.startswith((".git/", ".venv/")) for name in files)
