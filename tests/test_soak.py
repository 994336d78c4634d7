"""tools.soak, the long-run check (docs/BENCHMARKS.md, "Reliability: the soak run"): its
judgement of the recorded steps and of memory on made-up records, and the whole tool at a tiny
size (two interruptions) as a scenario."""
import os
import re
import subprocess
import sys

import pytest

from tools import runs
from tools import soak

STEPS = 10


def _ids(step):
    return (100 + step, 200 + step)


def _sequence():
    """A run of 10 steps stopped twice: SIGTERM at step 4 (saved), SIGKILL after step 7 with
    its last checkpoint at 6 (steps 6 and 7 done again), then to the end."""
    records = [(s, _ids(s)) for s in [0, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9]]
    ended = [soak.Interrupted("SIGTERM", 0, 4, stopped_at=4), soak.Interrupted("SIGKILL", 4, 8),
             soak.Interrupted(None, 6, 12)]
    return records, ended


def _check(records, ended, checkpoint_every=2):
    reference = [(s, _ids(s)) for s in range(STEPS)]
    return soak.check_steps(reference, records, ended, STEPS, checkpoint_every)


def test_check_steps_accepts_exact_resumes_and_counts_the_steps_a_kill_made_redo():
    assert _check(*_sequence()) == ([], 2)


def _other_videos(records, ended):  # The replayed step 7 read other videos.
    records[9] = (7, (0, 0))
    return records, ended


def _twice_after_sigterm(records, ended):  # The run after the SIGTERM restored step 3.
    return records[:4] + [(3, _ids(3))] + records[4:], [
        soak.Interrupted("SIGTERM", 0, 4, stopped_at=4), soak.Interrupted("SIGKILL", 3, 9),
        soak.Interrupted(None, 6, 13)]


def _skipped_on_restart(records, ended):  # The last run restored step 9: none did step 8.
    return records[:8] + [(9, _ids(9))], ended[:2] + [soak.Interrupted(None, 9, 9)]


def _skipped_in_a_run(records, ended):  # The second run did 4, 5, 7.
    return records[:6] + records[7:], ended[:1] + [soak.Interrupted("SIGKILL", 4, 7),
                                                   soak.Interrupted(None, 6, 11)]


def _unchanged(records, ended):
    return records, ended


def _short(records, ended):  # The last run stopped before step 9.
    return records[:-1], ended[:2] + [soak.Interrupted(None, 6, 11)]


@pytest.mark.parametrize("damage, checkpoint_every, failure", [
    (_other_videos, 2, "1 recorded steps read other videos than the reference's, first step 7"),
    (_twice_after_sigterm, 2, "run 2 restored step 3 after the run before it (SIGTERM) had "
                              "reached step 4"),
    (_skipped_on_restart, 2, "run 3 restored step 9 after the run before it (SIGKILL) had "
                             "reached step 8"),
    (_skipped_in_a_run, 2, "run 2 did not record consecutive steps from step 4"),
    # A kill that lost more than run.checkpoint_every steps (WORKSPACE.md promises at most).
    (_unchanged, 1, "run 3 restored step 6 after the run before it (SIGKILL) had reached "
                    "step 8"),
    (_short, 2, "the last run ended at step 9, not 10"),
])
def test_check_steps_names_a_step_read_wrong_done_twice_or_skipped(damage, checkpoint_every,
                                                                   failure):
    failures, _ = _check(*damage(*_sequence()), checkpoint_every=checkpoint_every)
    assert any(f.startswith(failure) for f in failures), failures


def _process(rss_kb):
    return soak.Process(proc=None, log="", loops=[(i, 0.0, kb) for i, kb in enumerate(rss_kb)])


def test_rss_growth_compares_the_medians_of_the_first_and_last_tenth_of_loops():
    # A spike in the last tenth is not growth; a level raised over the last tenth is.
    assert soak.rss_growth(_process([1000] * 95 + [5000] + [1000] * 4)) == 0.0
    assert soak.rss_growth(_process([1000] * 90 + [1060] * 10)) == pytest.approx(0.06)
    assert soak.rss_growth(_process([1000, 1030])) == pytest.approx(0.03)  # Fewer than 20.


@pytest.mark.slow
@pytest.mark.scenario
def test_soak_survives_two_interruptions_and_says_so(tmp_path):
    """The tool end to end at a tiny size (60 steps, 16 videos): a SIGTERM, then a SIGKILL,
    one line each, the RESULT line with exact weights, status 0, its directory removed. About
    a minute on 2 cores lightly loaded (four TensorFlow start-ups, two at a time); limit 5
    minutes."""
    output_dir = tmp_path / "soak"
    done = subprocess.run(
        [sys.executable, "-m", "tools.soak", "--steps", "60", "--interruptions", "2",
         "--videos", "16", "--checkpoint_every", "20", "--seed", "1",
         "--output_dir", str(output_dir)],
        cwd=runs.REPO, env=dict(os.environ, PYTHONPATH=runs.REPO), capture_output=True,
        text=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    lines = out.splitlines()
    assert [line.split(":")[:2] for line in lines if line.startswith("interruption")] == [
        ["interruption 1/2", " SIGTERM"], ["interruption 2/2", " SIGKILL"]], out
    result = [line for line in lines if line.startswith("RESULT ")]
    assert len(result) == 1 and re.fullmatch(
        r"RESULT interruptions=2 max_weight_diff=0 rss_growth=-?\d+\.\d% steps=60 "
        r"redone=\d+", result[0]), out
    assert not output_dir.exists()
