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
import dataclasses
import pathlib
import sys
import tempfile
from typing import Optional, Sequence, Tuple

from tools import mutants_run
# Re-exported: the catalogue's mechanics (tests/test_mutants.py uses them).
from tools.mutants_run import MutationError, Result, mutate, repository_files  # noqa: F401

REPO = mutants_run.REPO

PIPELINE = "cvrl_tf/data/pipeline.py"
CLIPS = "cvrl_tf/data/clips.py"
DEVICE_AUGMENT = "cvrl_tf/data/device_augment.py"
TEMPORAL = "cvrl_tf/data/temporal.py"
LOSSES = "cvrl_tf/losses.py"
JOB = "cvrl_tf/training/job.py"
CONFIG = "cvrl_tf/training/config.py"
EVALUATION = "cvrl_tf/training/evaluation.py"
STEPS = "cvrl_tf/steps.py"
SERVICE = "cvrl_tf/data/service.py"
SERVICE_TESTS = "tests/test_service.py"
PACKAGE = "cvrl_tf/runtime/process.py"
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

RESUME_REPLICAS = ("tests/test_resume_replicas.py::"
                   "test_two_replicas_stopped_mid_epoch_resume_every_replicas_stream")
EVAL_PROBABILITIES = "tests/test_steps.py::test_multi_view_eval_averages_probabilities_not_logits"
EVAL_VIEW_ORDER = ("tests/test_pipeline.py::"
                   "test_eval_view_v_is_temporal_clip_v_div_spatial_at_crop_v_mod_spatial")
BOOKS = "cvrl_tf/training/books.py"
PRETRAIN_GIN = "gin/runs/pretrain.gin"
FINETUNE_GIN = "gin/runs/finetune.gin"


def recipe_test(test: str, experiment: str = "r3d50_k400_pretrain_200ep") -> str:
    """A check of tests/test_recipes.py on one experiment's run (default: the paper's
    pretraining recipe)."""
    return f"tests/test_recipes.py::test_{test}[{experiment}]"


RECIPE_LR = recipe_test("learning_rate_is_the_recipes_warmup_cosine_at_the_scaled_rate")
RECIPE_LOSS = recipe_test("loss_is_the_recipes_at_its_temperature_and_precision")
RECIPE_DECAY = recipe_test("weight_decay_term_is_the_recipes")
RECIPE_MOMENTUM = recipe_test("optimizer_state_is_the_recipes_momentum")

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
    Mutation("pretrain-per-frame-augmentation", CLIPS,
             "consistent, seeds[view], **aug)", "False, seeds[view], **aug)",
             (CONSISTENCY,), "pretraining draws the spatial augmentation once per clip"),
    Mutation("pretrain-ignores-distribution", CLIPS,
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
    Mutation("pretrain-clips-ignore-stride", CLIPS,
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
             'if mode in ("train", "detect") and not color_augment:',
             'if mode in ("train", "detect") and color_augment:',
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
             "start_positions=None if served else start_positions)", "start_positions=None)",
             ("tests/test_resume.py::test_preempted_then_killed_run_resumes_exactly",
              RESUME_REPLICAS),
             "a resumed run reads the videos the uninterrupted run would have read next"),
    Mutation("bad-records-refused-in-training", PIPELINE,
             "skip=training if skip_bad_records is None else skip_bad_records,",
             "skip=False if skip_bad_records is None else skip_bad_records,",
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
             "cfg.num_frames, cfg.stride, cfg.crop_size, ctx,",
             "cfg.num_frames, cfg.stride, cfg.crop_size, None,",
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
             (f"{MALLOC_TESTS}::test_tune_process_reuses_freed_blocks_instead_of_faulting_fresh_pages",),
             "tune_process stops large freed blocks from faulting fresh pages"),
    Mutation("malloc-overrides-user", PACKAGE,
             "any(k in os.environ for k in MALLOC_ENVS)", "False",
             (f"{MALLOC_TESTS}::test_tune_process_keeps_the_users_malloc_settings",),
             "a user's own MALLOC_* setting keeps glibc's behaviour"),
    Mutation("eval-averages-logits", STEPS,
             "probs = tf.nn.softmax(logits, axis=-1)", "probs = logits",
             (EVAL_PROBABILITIES,),
             "10x3 evaluation averages the views' softmax probabilities, not their logits"),
    Mutation("eval-views-transposed", CLIPS,
             "tf.stack(views, axis=1)", "tf.stack(views, axis=0)", (EVAL_VIEW_ORDER,),
             "eval view v is the (v // spatial)-th clip at the (v % spatial)-th crop"),
    Mutation("input-state-one-replica", BOOKS,
             'strategy.gather(outputs["input_position"], axis=0)',
             'strategy.experimental_local_results(outputs["input_position"])[0]',
             (RESUME_REPLICAS,),
             "a checkpoint keeps every replica's stream position: two replicas resume exactly"),
    Mutation("recipe-temperature-constant", JOB,
             "parts.optimizer, cfg.temperature,", "parts.optimizer, 1.0,", (RECIPE_LOSS,),
             "pretraining's InfoNCE uses the recipe's temperature"),
    Mutation("recipe-temperature-default", CONFIG,
             "temperature: float = 0.1", "temperature: float = 0.2", (RECIPE_LOSS,),
             "the recipes' temperature is the paper's 0.1 (JobConfig's default)"),
    Mutation("recipe-precision-ignored", JOB,
             "_precision(cfg.mixed_precision)", "_precision(False)", (RECIPE_LOSS,),
             "a recipe with run.mixed_precision computes in bfloat16"),
    Mutation("recipe-warmup-dropped", JOB,
             "WarmupCosine(lr, schedule.total, schedule.warmup)",
             "WarmupCosine(lr, schedule.total, 0)", (RECIPE_LR,),
             "the learning rate warms up linearly over the recipe's warmup"),
    Mutation("recipe-warmup-dropped-in-gin", PRETRAIN_GIN,
             "run.warmup = '5 epochs'\n", "", (RECIPE_LR,),
             "pretraining warms up for 5 epochs (gin/runs/pretrain.gin)"),
    Mutation("recipe-lr-not-scaled", JOB,
             'if cfg.lr_scaling == "linear" else', "if False else", (RECIPE_LR,),
             "the learning rate is base_lr x global batch / lr_reference_batch"),
    Mutation("recipe-lr-reference-dropped-in-gin", FINETUNE_GIN,
             "run.lr_reference_batch = 64\n", "",
             (recipe_test("learning_rate_is_the_recipes_warmup_cosine_at_the_scaled_rate",
                          "hmdb51_finetune"),),
             "fine-tuning's rate is 0.05 per 64 videos (gin/runs/finetune.gin)"),
    Mutation("recipe-momentum-constant", JOB,
             "momentum=cfg.momentum,", "momentum=0.5,", (RECIPE_MOMENTUM,),
             "SGD runs with the recipe's momentum"),
    Mutation("recipe-momentum-default", CONFIG,
             "momentum: float = 0.9", "momentum: float = 0.0", (RECIPE_MOMENTUM,),
             "the recipes' momentum is the paper's 0.9 (JobConfig's default)"),
    Mutation("recipe-weight-decay-dropped", JOB,
             "split_weight_decay(cfg.optimizer, cfg.weight_decay)",
             "split_weight_decay(cfg.optimizer, 0.0)", (RECIPE_DECAY,),
             "the run adds the recipe's weight decay (0.5 x wd x squared kernels)"),
    Mutation("recipe-weight-decay-dropped-in-gin", PRETRAIN_GIN,
             "run.weight_decay = 5e-7\n", "", (RECIPE_DECAY,),
             "pretraining's weight decay is 5e-7 (gin/runs/pretrain.gin)"),
    Mutation("recipe-sync-bn-dropped-in-gin", PRETRAIN_GIN,
             "build_backbone.sync_bn = True\n", "",
             (recipe_test("sync_bn_is_the_recipes"),),
             "pretraining synchronizes BN across replicas (gin/runs/pretrain.gin)"),
)


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
