"""The mutations of the mutation check (tools/mutants.py): each one deliberate bug, the exact
text it replaces (which must occur exactly once), the tests named to catch it, and the claim of
the project it breaks."""
import dataclasses
from typing import Tuple

PIPELINE = "cvrl_tf/data/pipeline.py"
DETECTION = "cvrl_tf/data/detection.py"
SEEDS = "cvrl_tf/training/seeds.py"
DISTRIBUTE = "cvrl_tf/training/distribute.py"
SOURCE = "cvrl_tf/data/source.py"
SUBSET = "cvrl_tf/data/subset.py"
SUBSET_TESTS = "tests/test_subset.py"
CONTROLLER = "cvrl_tf/training/controller.py"
LIFECYCLE = "tests/test_run_lifecycle.py"
DETECTION_TESTS = "tests/test_detection_data.py"
FRAME_MAP = "cvrl_tf/frame_map.py"
FRAME_MAP_TESTS = "tests/test_frame_map.py"
AVA = "cvrl_tf/data/ava.py"
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
             (PROBE_TOP1, MULTIWORKER_RUN),
             "a pretraining run on two replicas or two workers gathers its negatives (2N)"),
    Mutation("resume-ignores-input-positions", JOB,
             "start_positions=None if served else start_positions,", "start_positions=None,",
             ("tests/test_resume.py::test_preempted_then_killed_run_resumes_exactly",
              RESUME_REPLICAS, "tests/test_multiworker.py::"
              "test_workers_killed_mid_epoch_resume_their_streams_exactly",
              "tests/test_soak.py::test_soak_survives_two_interruptions_and_says_so"),
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
             # Two replicas (PROBE_TOP1's run) refuse it outright (sync BN in a replica step):
             # an error, not an assertion; the step's own test tells the modes apart.
             ("tests/test_steps.py::test_eval_step_runs_the_model_in_inference_mode",
              PROBE_TOP1),
             "evaluation runs the model in inference mode (BN moving statistics)"),
    Mutation("training-data-without-input-context", JOB,
             "cfg.num_frames, cfg.stride, cfg.crop_size, ctx,",
             "cfg.num_frames, cfg.stride, cfg.crop_size, None,",
             ("tests/test_subset.py::"
              "test_two_input_pipelines_read_disjoint_parts_covering_the_subset",
              MULTIWORKER_IDS),
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
    Mutation("frame-map-iou-0.4", FRAME_MAP, "IOU_THRESHOLD = 0.5", "IOU_THRESHOLD = 0.4",
             (f"{FRAME_MAP_TESTS}::test_iou_049_is_a_miss_and_051_a_hit",),
             "a detection matches a ground-truth box at IoU 0.5 or more"),
    Mutation("ava-boxes-read-xy-swapped", AVA, "    return (y1, x1, y2, x2)",
             "    return (x1, y1, x2, y2)",
             (f"{FRAME_MAP_TESTS}::test_csv_ground_truth_meets_model_arrays_in_tf_box_order",),
             "AVA's x1, y1, x2, y2 columns become TensorFlow's [ymin, xmin, ymax, xmax] boxes"),
    Mutation("frame-map-ignores-excluded-timestamps", FRAME_MAP,
             "    excluded = set(excluded)", "    excluded = set()",
             (f"{FRAME_MAP_TESTS}::test_an_excluded_timestamp_is_ignored_on_both_sides",),
             "excluded keyframes count on neither side of the frame mAP"),
    Mutation("detection-loss-counts-padded-boxes", LOSSES,
             "local_sum = tf.reduce_sum(tf.where(valid, per_box, 0.0))",
             "local_sum = tf.reduce_sum(per_box)",
             ("tests/test_losses.py::test_detection_loss_is_the_mean_over_valid_boxes_and_actions",),
             "padded boxes add nothing to the detection loss"),
    Mutation("detection-boxes-not-cropped-with-the-clip", DETECTION,
             "    cropped = tf.clip_by_value((boxes * size - start) / extent, 0.0, 1.0)",
             "    cropped = tf.clip_by_value(boxes, 0.0, 1.0)",
             (f"{DETECTION_TESTS}::test_boxes_are_cropped_into_the_windows_frame",),
             "a training clip's boxes are cropped with it"),
    Mutation("seed-not-kept", SEEDS,
             "            checkpoints.write_json(cfg.model_dir, SEED_JSON, {\"seed\": seed})",
             "            pass", (f"{LIFECYCLE}::test_a_run_without_a_seed_draws_one_keeps_it"
                                 "_and_resumes_with_it",),
             "a run without run.seed keeps the seed it drew, so a restart continues its stream"),
    Mutation("bad-share-not-judged-at-the-end", CONTROLLER,
             "            self.trainer.books.check(final=True)", "            pass",
             (f"{LIFECYCLE}::test_a_run_whose_records_were_mostly_bad_never_ends_as_a_success",),
             "a run whose records were mostly bad never ends as a success"),
    Mutation("checkpoints-off-their-interval", CONTROLLER,
             "loop_length(self.step, s.total, s.steps_per_loop, s.checkpoint_every,",
             "loop_length(self.step, s.total, s.steps_per_loop, 0,",
             ("tests/test_controller.py::test_checkpoints_fall_on_exact_multiples_and_"
              "evaluations_on_theirs",),
             "checkpoints fall on exact multiples of run.checkpoint_every"),
    Mutation("short-videos-error-skipped-in-training", PIPELINE,
             '    if s.short_videos == "error":', "    if False:",
             ("tests/test_pipeline.py::test_short_videos_error_stops_at_the_first_short_video_"
              "in_every_mode",),
             "short_videos='error' stops at the first short video in every mode"),
    Mutation("stop-notice-ignored-while-building", JOB,
             '    notice.check("while building', '    (lambda *_: None)("while building',
             (f"{LIFECYCLE}::test_a_notice_while_building_or_restoring_stops_before_training",),
             "a stop notice while building or restoring ends the run before it trains"),
    Mutation("subset-filter-ignored", SOURCE,
             "    if keep is not None:  # A record the predicate",
             "    if False:  # A record the predicate",
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
    Mutation("lost-chief-not-named", DISTRIBUTE,
             "    if _HEARTBEAT_RPC in str(error):", "    if False:",
             ("tests/test_distribute.py::"
              "test_a_chief_that_stops_answering_is_named_from_the_unanswered_heartbeat",),
             "a survivor names the lost chief even when only its heartbeat went unanswered"),
)
