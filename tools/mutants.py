"""Mutation check: break one of the project's ideas at a time and see the tests named for it fail.

Each mutation replaces one exact piece of text (it must occur exactly once) in a scratch copy of
the repository (the files `git ls-files` lists, plus untracked files that are not ignored), runs
pytest on the tests named for it, and counts as caught when they fail. First the named tests
run once on the unmutated copy: a mutation can only be caught by tests that pass without it.
Not part of `make test` (it takes minutes); docs/DESIGN.md says when to run it.

    python -m tools.mutants                  # every active mutation
    python -m tools.mutants --list           # names, files, tests, what each one breaks
    python -m tools.mutants --only NAME ...  # some of them
    python -m tools.mutants --pending        # also run the pending ones

Exit status 0 when every mutation run is caught; 1 when one is missed, cannot be applied (its
text no longer occurs exactly once: update MUTATIONS), times out, or its pytest run errs (a
usage or collection error, e.g. a test id that no longer exists); 1 too when the named tests
fail unmutated. Pending mutations name tests still to be written: reported, not run.
"""
import argparse
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence, Tuple

REPO = pathlib.Path(__file__).resolve().parent.parent

PIPELINE = "cvrl_tf/data/pipeline.py"
DEVICE_AUGMENT = "cvrl_tf/data/device_augment.py"
TEMPORAL = "cvrl_tf/data/temporal.py"
LOSSES = "cvrl_tf/losses.py"
JOB = "cvrl_tf/training/job.py"
CONFIG = "cvrl_tf/training/config.py"
EVALUATION = "cvrl_tf/training/evaluation.py"
SOURCE = "cvrl_tf/data/source.py"
SUBSET = "cvrl_tf/data/subset.py"
SUBSET_TESTS = "tests/test_subset.py"
STEPS = "cvrl_tf/steps.py"
SERVICE = "cvrl_tf/data/service.py"
SERVICE_TESTS = "tests/test_service.py"
PACKAGE = "cvrl_tf/__init__.py"
MALLOC_TESTS = "tests/test_malloc.py"
PRETRAIN_TESTS = "tests/test_pipeline_pretrain.py"
CONSISTENCY = (f"{PRETRAIN_TESTS}::"
               "test_identical_frames_give_identical_clip_frames_unless_inconsistent")
INTERVALS = f"{PRETRAIN_TESTS}::test_clip_start_gaps_follow_interval_pmf"
VIEWS = (f"{PRETRAIN_TESTS}::"
         "test_view_1_always_blurred_view_2_blur_and_solarize_probabilities")
TRAIN_CROP = (f"{PRETRAIN_TESTS}::"
              "test_train_mode_is_exactly_crop_resize_and_flip_of_the_decoded_frames")
TRAIN_TESTS = "tests/test_train.py"
RESUME = f"{TRAIN_TESTS}::test_resume_trains_only_the_remaining_steps"
LINEAR_FROZEN = f"{TRAIN_TESTS}::test_linear_eval_freezes_the_warm_started_backbone"
FINETUNE = f"{TRAIN_TESTS}::test_finetune_from_a_warm_start_trains_the_backbone"
EVALUATE = f"{TRAIN_TESTS}::test_evaluate_reproduces_the_linear_eval_runs_final_top1"
EVALUATE_COUNTS = (f"{TRAIN_TESTS}::"
                   "test_evaluate_counts_exactly_on_a_discriminating_checkpoint")
CONTINUOUS = (f"{TRAIN_TESTS}::"
              "test_continuous_evaluation_picks_up_a_checkpoint_written_after_it_started")
PROBE_TOP1 = f"{TRAIN_TESTS}::test_pretrain_writes_checkpoints_config_results"
BUILD_MODEL = ("tests/test_train_config.py::"
               "test_build_model_linear_heads_classify_the_l2_normalized_frozen_feature")

MULTIWORKER_RUN = "tests/test_multiworker.py::test_two_workers_pretrain_together"
MULTIWORKER_IDS = ("tests/test_multiworker.py::"
                   "test_each_epoch_the_workers_read_disjoint_halves_covering_the_set")


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One deliberate bug: `search` (exactly once in `path`) becomes `replace`."""
    name: str
    path: str
    search: str
    replace: str
    tests: Tuple[str, ...]  # pytest arguments: files or test ids
    breaks: str  # the claim of the project this mutation breaks
    pending: str = ""  # why it is not run yet (its tests do not exist); "" when active


MUTATIONS: Tuple[Mutation, ...] = (
    Mutation("pretrain-per-frame-augmentation", PIPELINE,
             "consistent, seeds[view], **aug)", "False, seeds[view], **aug)",
             (CONSISTENCY,), "pretraining draws the spatial augmentation once per clip"),
    Mutation("pretrain-ignores-distribution", PIPELINE,
             "sample_clip_starts(length, num_frames, stride, distribution, power,",
             'sample_clip_starts(length, num_frames, stride, "zero", power,',
             (INTERVALS,), "the two clips' interval follows the configured distribution"),
    Mutation("sampler-ignores-pmf", TEMPORAL,
             "pmf = _interval_pmf_tf(distribution, num_starts, power)",
             'pmf = _interval_pmf_tf("uniform", num_starts, power)',
             (INTERVALS,), "intervals are drawn from interval_pmf (the paper's distributions)"),
    Mutation("clips-never-swapped", TEMPORAL,
             "swap = tf.random.stateless_uniform([], seeds[2]) < 0.5",
             "swap = tf.random.stateless_uniform([], seeds[2]) < 0.0",
             (INTERVALS,), "either view may be the earlier clip (swap with probability 0.5)"),
    Mutation("pretrain-clips-ignore-stride", PIPELINE,
             "clip_frame_indices(starts[view - 1], length, num_frames, stride)",
             "clip_frame_indices(starts[view - 1], length, num_frames, 1)",
             (INTERVALS,), "a pretraining clip is T frames at the configured stride"),
    Mutation("view-1-blur-sometimes", DEVICE_AUGMENT,
             "VIEW_BLUR_PROB = {1: 1.0, 2: 0.1}", "VIEW_BLUR_PROB = {1: 0.5, 2: 0.1}",
             (VIEWS,), "view 1 is always blurred"),
    Mutation("view-2-blur-probability", DEVICE_AUGMENT,
             "VIEW_BLUR_PROB = {1: 1.0, 2: 0.1}", "VIEW_BLUR_PROB = {1: 1.0, 2: 0.2}",
             (VIEWS,), "view 2 is blurred with probability 0.1"),
    Mutation("view-2-solarize-probability", DEVICE_AUGMENT,
             "VIEW_SOLARIZE_PROB = {1: 0.0, 2: 0.2}", "VIEW_SOLARIZE_PROB = {1: 0.0, 2: 0.1}",
             (VIEWS,), "view 2 is solarized with probability 0.2 (view 1 never)"),
    Mutation("train-mode-colour-by-default", PIPELINE,
             'if mode == "train" and not color_augment:', 'if mode == "train" and color_augment:',
             (TRAIN_CROP,), "train mode is crop + resize + flip only unless color_augment"),
    Mutation("train-mode-without-flip", PIPELINE,
             "_NO_COLOR = dict(color_jitter_prob=0.0,",
             "_NO_COLOR = dict(flip_prob=0.0, color_jitter_prob=0.0,",
             (TRAIN_CROP,), "train mode flips clips left-right with probability 0.5"),
    Mutation("loss-local-candidates", LOSSES,
             "if ctx is None or ctx.num_replicas_in_sync == 1:", "if True:",
             ("tests/test_losses.py::test_two_replicas_match_one_device_loss_and_gradients",
              "tests/test_steps.py::test_one_replica_batch_2b_equals_two_replicas_batch_b"),
             "info_nce compares each anchor with the whole global batch"),
    Mutation("num-candidates-not-gathered", LOSSES,
             '"num_candidates": tf.cast(tf.shape(candidates)[0], tf.float32)',
             '"num_candidates": tf.cast(tf.shape(anchors)[0], tf.float32)',
             ("tests/test_losses.py::test_two_replicas_match_one_device_loss_and_gradients",
              "tests/test_steps.py::test_one_replica_batch_2b_equals_two_replicas_batch_b"),
             "num_candidates reports the rows info_nce gathered (2N global), not local ones"),
    Mutation("loss-local-candidates-in-the-job", LOSSES,
             "if ctx is None or ctx.num_replicas_in_sync == 1:", "if True:",
             (MULTIWORKER_RUN,),
             "a two-worker pretraining run's num_candidates is what info_nce gathered (2N)"),
    Mutation("resume-ignores-input-positions", JOB,
             "start_positions=None if served else start_positions,", "start_positions=None,",
             ("tests/test_resume.py::test_preempted_then_killed_run_resumes_exactly",),
             "a resumed run reads the videos the uninterrupted run would have read next"),
    Mutation("bad-records-refused-in-training", PIPELINE,
             "skip = training if skip_bad_records is None else skip_bad_records",
             "skip = False if skip_bad_records is None else skip_bad_records",
             ("tests/test_bad_records.py::"
              "test_pretraining_skips_every_kind_and_counts_each_exactly",),
             "pretraining skips bad records (and counts each cause) by default"),
    Mutation("checkpoint-without-step", JOB,
             "step=global_step, input=input_state)", "input=input_state)",
             (RESUME,), "a resumed run continues from the checkpoint's step"),
    Mutation("checkpoint-without-optimizer", JOB,
             "model=model, optimizer=optimizer,\n", "model=model,\n",
             (RESUME,), "a resumed run restores the optimizer's iterations and slots"),
    Mutation("linear-eval-unnormalized-feature", CONFIG,
             "freeze_backbone=True, l2_normalize=True)",
             "freeze_backbone=True, l2_normalize=False)",
             (BUILD_MODEL,), "linear evaluation classifies the L2-normalized feature"),
    Mutation("linear-eval-trains-the-backbone", CONFIG,
             "freeze_backbone=True, l2_normalize=True)",
             "freeze_backbone=False, l2_normalize=True)",
             (LINEAR_FROZEN,), "linear evaluation keeps the warm-started backbone frozen"),
    Mutation("finetune-freezes-the-backbone", CONFIG,
             "freeze_backbone=False, l2_normalize=False)",
             "freeze_backbone=True, l2_normalize=False)",
             (FINETUNE,), "fine-tuning trains the warm-started backbone"),
    Mutation("evaluate-restores-the-backbone-only", EVALUATION,
             "tf.train.Checkpoint(backbone=model.backbone, model=model, step=step)",
             "tf.train.Checkpoint(backbone=model.backbone, step=step)",
             (EVALUATE, EVALUATE_COUNTS),
             "mode 'evaluate' on a checkpoint reproduces the run's own final top-1"),
    Mutation("continuous-eval-misses-new-checkpoints", EVALUATION,
             "yield from tf.train.checkpoints_iterator(source, timeout=cfg.eval_timeout)",
             "yield from filter(None, [tf.train.latest_checkpoint(source)])",
             (CONTINUOUS,), "continuous evaluation picks up checkpoints written after it started"),
    Mutation("eval-step-in-training-mode", STEPS,
             "logits = _logits(model(clips, training=False))",
             "logits = _logits(model(clips, training=True))",
             (PROBE_TOP1,), "evaluation runs the model in inference mode (BN moving statistics)"),
    Mutation("training-data-without-input-context", JOB,
             "cfg.crop_size, ctx, seed=None if served else cfg.seed,",
             "cfg.crop_size, None, seed=None if served else cfg.seed,",
             (MULTIWORKER_IDS,),
             "each input pipeline reads its own shard at the per-replica batch"),
    Mutation("data-service-parallel-epochs", SERVICE,
             "processing_mode=_service.ShardingPolicy.DYNAMIC",
             "processing_mode=_service.ShardingPolicy.OFF",
             (f"{SERVICE_TESTS}::test_workers_serve_every_video_once_per_epoch_fields_unchanged",),
             "tf.data service workers share one epoch (dynamic sharding), not one each"),
    Mutation("training-ignores-data-service", JOB,
             "dataset = data_service.distribute(dataset, served)", "pass",
             (f"{SERVICE_TESTS}::test_pretraining_reads_from_the_workers",),
             "run.data_service_address makes training read its batches from the service"),
    Mutation("malloc-not-tuned", PACKAGE,
             "    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)\n"
             "                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))",
             "    return True",
             (f"{MALLOC_TESTS}::test_import_reuses_freed_blocks_instead_of_faulting_fresh_pages",),
             "importing cvrl_tf stops large freed blocks from faulting fresh pages"),
    Mutation("malloc-overrides-user", PACKAGE,
             "any(k in os.environ for k in MALLOC_ENVS)", "False",
             (f"{MALLOC_TESTS}::test_import_keeps_the_users_malloc_settings",),
             "a user's own MALLOC_* setting keeps glibc's behaviour"),
    Mutation("subset-filter-ignored", SOURCE,
             "        if keep is not None:  # A record the predicate",
             "        if False:  # A record the predicate",
             ("tests/test_source.py::"
              "test_a_kept_subset_resumes_exactly_and_counts_only_kept_records",
              f"{SUBSET_TESTS}::test_one_epoch_of_a_subset_is_its_videos_once"),
             "run.train_subset trains on the subset's videos only"),
    Mutation("subset-class-left-empty", SUBSET,
             "keep = max(1, math.floor(fraction * len(ids) + 0.5))",
             "keep = max(0, math.floor(fraction * len(ids) + 0.5))",
             (f"{SUBSET_TESTS}::test_each_class_keeps_its_rounded_fraction_and_at_least_one",),
             "a subset keeps at least one video of every class"),
    Mutation("subset-epochs-count-all-videos", CONFIG,
             "    if cfg.train_subset:\n        count = len(subset_ids(cfg))",
             "    if False:\n        count = len(subset_ids(cfg))",
             (f"{SUBSET_TESTS}::test_epochs_count_the_subset_unless_num_train_examples_is_set",),
             "epochs of a subset run count the subset's videos"),
)


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
    """(pytest exit code or None on timeout, output, seconds) for the tests in the copy."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-rfE", "-p", "no:cacheprovider", *tests]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=copy, env=_environment(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the workers it started, only.
        out, _ = proc.communicate()
        code = None
    return code, out, time.time() - start


def _status(code: Optional[int]) -> str:
    """pytest's exit code as a verdict: 1 (tests failed) is the only 'caught'."""
    return {None: "timeout", 0: "missed", 1: "caught"}.get(code, "error")


def _failures(output: str) -> str:
    """pytest's short summary lines of the failed tests (what caught the mutation)."""
    lines = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join("    | " + line[:240] for line in lines)


def _tail(output: str, lines: int = 25) -> str:
    return "\n".join("    | " + line for line in output.rstrip().splitlines()[-lines:])


def select(names: Optional[Sequence[str]]) -> list:
    """The mutations named (all when none); SystemExit naming any unknown name."""
    if not names:
        return list(MUTATIONS)
    unknown = sorted(set(names) - {m.name for m in MUTATIONS})
    if unknown:
        raise SystemExit(f"tools.mutants: unknown mutation(s) {unknown}; see --list.")
    return [m for m in MUTATIONS if m.name in names]


def print_list(mutations: Sequence[Mutation]) -> None:
    for m in mutations:
        state = f"pending: {m.pending}" if m.pending else "active"
        print(f"{m.name}  [{state}]\n  breaks: {m.breaks}\n  in {m.path}: "
              f"{m.search!r} -> {m.replace!r}\n  tests: {' '.join(m.tests)}")


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

    results = []  # (mutation, status, seconds, detail)
    with tempfile.TemporaryDirectory(prefix="cvrl_tf-mutants-") as tmp:
        copy = pathlib.Path(tmp) / "repo"
        copy_repository(REPO, copy)
        check_imports_copy(copy)
        to_run = []
        for m in mutations:
            original = (copy / m.path).read_text()
            try:
                mutate(original, m)
            except MutationError as e:
                if m.pending and not args.pending:
                    results.append((m, "pending", 0.0, f"{m.pending} (and: {e})"))
                else:
                    results.append((m, "unapplicable", 0.0, str(e)))
                continue
            if m.pending and not args.pending:
                results.append((m, "pending", 0.0, m.pending))
            else:
                to_run.append(m)

        if to_run and not args.no_baseline:
            tests = list(dict.fromkeys(t for m in to_run for t in m.tests))
            print(f"baseline: {len(tests)} test targets, unmutated ...", flush=True)
            code, out, seconds = run_pytest(copy, tests, args.timeout)
            print(f"baseline: {'passed' if code == 0 else 'FAILED'} in {seconds:.0f}s",
                  flush=True)
            if code != 0:
                print(_tail(out, 40))
                print("tools.mutants: the named tests fail without any mutation; fix them "
                      "first (a mutation cannot be caught by a test that already fails).")
                return 1

        for m in to_run:
            path = copy / m.path
            original = path.read_text()
            path.write_text(mutate(original, m))
            try:
                code, out, seconds = run_pytest(copy, m.tests, args.timeout)
            finally:
                path.write_text(original)
            status = _status(code)
            detail = _failures(out) if status == "caught" else _tail(out)
            results.append((m, status, seconds, detail))
            print(f"{status:12s} {m.name:38s} {seconds:6.0f}s", flush=True)

    print("\nmutation                               result        time  tests")
    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    for m, status, seconds, detail in sorted(results, key=lambda r: order[r[0].name]):
        print(f"{m.name:38s} {status:12s} {seconds:5.0f}s  {' '.join(m.tests)}")
        if detail:
            print(detail if detail.startswith("    |") else f"    {detail}")
    counts = {}
    for _, status, _, _ in results:
        counts[status] = counts.get(status, 0) + 1
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    failed = [r for r in results if r[1] not in ("caught", "pending")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
