"""The settings of one run (JobConfig), the rule that turns durations into steps, the models a
mode builds, and the start-up checks that refuse or warn in one sentence each.

Low in the house: data, models and optimizers below it; job.py, evaluation.py and train.py
above it. gin binds JobConfig's fields as `run.<field>` (train.py); nothing here reads gin.
"""
import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Optional, Union

import keras
import tensorflow as tf

from cvrl_tf import models
from cvrl_tf.data import schema
from cvrl_tf.data import service as data_service
from cvrl_tf.data import subset as data_subset
from cvrl_tf.training import console

MODES = ("pretrain", "linear_eval", "finetune", "detect", "evaluate")
CLASSIFIERS = ("linear", "finetune", "probe")
# A duration: an int number of steps, or a string "<number> steps" / "<number> epochs".
Duration = Union[int, float, str]


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and how to fix it."""


def warn(message: str) -> None:
    """One config warning (console.warn)."""
    console.warn(message)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """The settings of one run; gin binds them as `run.<field>`. Defaults are generic; the
    run files (gin/runs/*.gin) bind each mode's recipe values once.

    Data: `train_data`/`eval_data` are TFRecord globs (or 'tfds:<name>/<config>/<split>');
    clips are `num_frames` at `stride`, cropped to `crop_size` (eval_* default to these).
    Durations (`train_length`, `warmup`, `steps_per_loop`, `checkpoint_every`, `eval_every`)
    are steps (an int) or strings such as '200 epochs' or '500 steps'; epochs count
    `num_train_examples` videos (0: the count the converter recorded next to the shards) of
    `global_batch_size`. `steps_per_loop` steps run in one tf.function; metrics are logged and
    summarized, NaN and preemption checked at its boundaries. 0 for checkpoint_every or
    eval_every: at the end only.
    Learning rate: `base_lr` for `lr_reference_batch` videos, scaled linearly to the global
    batch when `lr_scaling='linear'`; warmup then cosine to 0. `weight_decay` acts on conv and
    dense kernels only. `probe_loss_weight` weighs the online probe's loss (pretraining; its
    gradient stops at the feature), `label_smoothing` the classifier's targets. `classifier`
    ('linear', 'finetune' or 'probe') picks the head mode 'evaluate' restores (default:
    'linear'). `jit_compile=None` means on for TPU only.
    `start_over=True` starts from `warm_start` (or scratch) when model_dir holds checkpoints
    but none can be restored (else the run stops). `seed` fixes the input order, the
    augmentation and the model's initialization; unset, the run draws one at its first start
    and keeps it in model_dir/seed.json (training/seeds.py), so a restarted run continues the
    same stream either way. `deterministic=True` also turns on TF op determinism, so a resumed
    run ends with the same weights as an uninterrupted one. `log_every_metric` prints every
    metric of every loop on the console (always in model_dir/log.txt and TensorBoard).
    Training skips bad records (counted per cause in results.json 'input') and stops when
    more than `max_bad_fraction` of the records read were bad (judged after 1000 reads).
    `train_subset`: a file of video ids (cvrl_tf.data.subset writes class-balanced ones):
    training reads only those videos, and epochs count them unless num_train_examples is set
    (cvrl_tf/training/label_subset.py checks it once and copies it into model_dir).
    `record_example_ids`: each worker appends every step's video id hashes to
    model_dir/example_ids/. `profile_steps=(START, END)`: a profiler trace of the loops that
    start in [START, END), for TensorBoard's Profile tab (model_dir/train).
    `freeze_backbone` (mode 'detect'): train the detection head only, the backbone frozen with
    BN in inference mode (the demo's comparison of representations); by default the whole
    network trains, as SlowFast's AVA recipes do.
    `eval_label_map` (mode 'detect'): the AVA action list (pbtxt) of the evaluated actions,
    e.g. the 60 of ava_action_list_v2.2_for_activitynet_2019.pbtxt; '' evaluates every action
    of the data (named by the label_map.txt beside run.eval_data when there is one).
    `data_service_address` ('grpc://HOST:PORT' or 'HOST:PORT'; '' = off): training batches
    come from the tf.data service there (cvrl_tf.data.service), computed by its workers in no
    fixed order, so run.seed does not apply to them and a resumed run reads a fresh order.
    """
    mode: str
    model_dir: str
    train_data: str = ""
    eval_data: str = ""
    num_classes: int = 0
    num_train_examples: int = 0
    global_batch_size: int = 64
    eval_batch_size: int = 0
    multiview_batch_size: int = 0
    num_frames: int = 16
    stride: int = 2
    crop_size: int = 224
    eval_num_frames: int = 0
    eval_stride: int = 0
    eval_crop_size: int = 0
    eval_temporal_views: int = 10
    eval_spatial_views: int = 3
    min_video_frames: int = 0
    train_length: Duration = 0
    warmup: Duration = 0
    steps_per_loop: Duration = 100
    checkpoint_every: Duration = 1000
    eval_every: Duration = 0
    max_checkpoints: int = 5
    eval_steps: int = -1
    optimizer: str = "sgd"
    base_lr: float = 0.0
    lr_scaling: str = "linear"
    lr_reference_batch: int = 1024
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 0.1
    online_probe: bool = True
    probe_loss_weight: float = 1.0
    label_smoothing: float = 0.0
    classifier: str = ""
    multiview_eval: bool = True
    eval_checkpoint: str = ""
    continuous_eval: bool = False
    eval_timeout: float = 3600.0
    warm_start: str = ""
    start_over: bool = False
    jit_compile: Optional[bool] = None
    mixed_precision: bool = False
    seed: Optional[int] = None
    deterministic: bool = False
    log_every_metric: bool = False
    max_bad_fraction: float = 0.01
    record_example_ids: bool = False
    profile_steps: tuple = ()
    image_summaries: bool = True
    data_service_address: str = ""
    eval_label_map: str = ""
    freeze_backbone: bool = False
    train_subset: str = ""

    @property
    def eval_clip(self) -> tuple:
        """(num_frames, stride, crop_size) of evaluation clips."""
        return (self.eval_num_frames or self.num_frames, self.eval_stride or self.stride,
                self.eval_crop_size or self.crop_size)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A run's durations in steps (the output of `schedule`)."""
    total: int
    warmup: int
    steps_per_loop: int
    checkpoint_every: int
    eval_every: int


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*(steps?|epochs?|ep)?\s*$")


def to_steps(value: Duration, name: str, steps_per_epoch: Optional[float]) -> int:
    """One duration (steps, or '<n> steps' / '<n> epochs') in steps; epochs round up."""
    if isinstance(value, bool):
        raise ConfigError(f"run.{name}={value!r} is not a duration; give steps (e.g. 500) or "
                          f"a string such as '100 epochs'.")
    if isinstance(value, (int, float)):
        amount, unit = float(value), "steps"
    else:
        match = _DURATION.match(str(value).lower())
        if not match:
            raise ConfigError(f"run.{name}={value!r} is not a duration; give steps (e.g. 500) "
                              f"or a string such as '500 steps' or '100 epochs'.")
        amount, unit = float(match.group(1)), match.group(2) or "steps"
    if amount < 0:
        raise ConfigError(f"run.{name}={value!r} must be >= 0.")
    if unit.startswith("step"):
        if amount != int(amount):
            raise ConfigError(f"run.{name}={value!r} must be a whole number of steps.")
        return int(amount)
    if not steps_per_epoch:
        raise ConfigError(f"run.{name}={value!r} counts epochs, but the number of training "
                          f"examples is unknown: set run.num_train_examples, or convert the "
                          f"data with cvrl_tf.data.convert (it records the count).")
    return int(math.ceil(amount * steps_per_epoch - 1e-9))


def examples_per_epoch(cfg: JobConfig) -> Optional[int]:
    """run.num_train_examples, else the videos of run.train_subset, else the count recorded
    next to the training shards."""
    if cfg.num_train_examples > 0:
        return cfg.num_train_examples
    if cfg.train_subset:
        count = len(subset_ids(cfg))
        print(f"Epochs count the {count} videos of run.train_subset={cfg.train_subset}.",
              flush=True)
        return count
    if not cfg.train_data:
        return None
    count = schema.read_example_count(cfg.train_data)
    if count:
        console.say(f"Epochs count {count} training examples (recorded next to "
                    f"{cfg.train_data}).")
    return count


def subset_ids(cfg: JobConfig) -> list[str]:
    """The ids of run.train_subset; ConfigError naming the file when it is missing or empty."""
    try:
        return data_subset.read_ids(cfg.train_subset)
    except ValueError as e:
        raise ConfigError(f"run.train_subset: {e}") from e


def schedule(cfg: JobConfig, num_examples: Optional[int] = None) -> Schedule:
    """Every duration of cfg in steps: one rule for training, warmup, loops, checkpoints and
    evaluation. `num_examples` defaults to `examples_per_epoch(cfg)` (read only if needed)."""
    values = {f: getattr(cfg, f) for f in ("train_length", "warmup", "steps_per_loop",
                                           "checkpoint_every", "eval_every")}
    needs_epochs = any(isinstance(v, str) and "ep" in v.lower() for v in values.values())
    if num_examples is None and needs_epochs:
        num_examples = examples_per_epoch(cfg)
    per_epoch = num_examples / cfg.global_batch_size if num_examples else None
    steps = {name: to_steps(value, name, per_epoch) for name, value in values.items()}
    if steps["train_length"] < 1 and cfg.mode != "evaluate":
        raise ConfigError("The run length is unset: set run.train_length (e.g. 1000 steps or "
                          "'200 epochs').")
    if steps["warmup"] > steps["train_length"] and cfg.mode != "evaluate":
        raise ConfigError(f"The warmup ({steps['warmup']} steps) is longer than the run "
                          f"({steps['train_length']} steps); shorten run.warmup.")
    if steps["steps_per_loop"] < 1:
        raise ConfigError(f"run.steps_per_loop={cfg.steps_per_loop!r} must be >= 1 step.")
    return Schedule(total=steps["train_length"], warmup=steps["warmup"],
                    steps_per_loop=steps["steps_per_loop"],
                    checkpoint_every=steps["checkpoint_every"], eval_every=steps["eval_every"])


def _check_batch(value: int, replicas: int, name: str) -> None:
    if value < 1 or value % replicas:
        raise ConfigError(
            f"run.{name}={value} is not a positive multiple of the {replicas} replicas; set it "
            f"to a multiple of {replicas} (e.g. {max(replicas, value // replicas * replicas)}).")


def _check_clip(num_frames: int, stride: int, min_video_frames: int, prefix: str) -> None:
    if num_frames < 1 or stride < 1:
        raise ConfigError(f"run.{prefix}num_frames={num_frames} and run.{prefix}stride={stride} "
                          f"must be >= 1.")
    span = (num_frames - 1) * stride + 1
    if min_video_frames and span > min_video_frames:
        warn(f"A clip of run.{prefix}num_frames={num_frames} at run.{prefix}stride={stride} "
             f"spans {span} frames, more than the shortest video (run.min_video_frames="
             f"{min_video_frames}), so short videos loop; lower num_frames or stride.")


def _check_mode(cfg: JobConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"run.mode={cfg.mode!r} is unknown; use one of {', '.join(MODES)}.")
    if cfg.mode != "evaluate" and not cfg.train_data:
        raise ConfigError(f"run.mode={cfg.mode!r} needs training data: set run.train_data to "
                          f"a TFRecord glob or 'tfds:<name>/<config>/<split>'.")
    if cfg.mode in ("linear_eval", "finetune", "detect", "evaluate") and cfg.num_classes < 1:
        raise ConfigError(f"run.mode={cfg.mode!r} needs labels: set run.num_classes (got "
                          f"{cfg.num_classes}) to the number of classes of the data set.")
    if cfg.mode == "evaluate" and not cfg.eval_data:
        raise ConfigError("run.mode='evaluate' needs run.eval_data (a TFRecord glob).")
    if cfg.mode == "linear_eval" and not cfg.warm_start:
        warn("run.mode='linear_eval' without run.warm_start trains a linear classifier on a "
             "randomly initialized backbone (a baseline); set run.warm_start=PRETRAIN_MODEL_DIR "
             "to evaluate a pretrained one.")
    if cfg.train_subset and cfg.train_data.startswith("tfds:"):
        raise ConfigError(f"run.train_subset needs TFRecord training data; run.train_data="
                          f"{cfg.train_data!r} is a TFDS split (convert it to TFRecords).")
    if cfg.classifier not in ("",) + CLASSIFIERS:
        raise ConfigError(f"run.classifier={cfg.classifier!r} is unknown; use 'linear', "
                          f"'finetune' or 'probe'.")


def check_data(cfg: JobConfig) -> None:
    """The data globs match files: the first check of a run, before anything counts epochs or
    builds a pipeline (`check` itself reads no file system unless epochs need counting)."""
    fields = (("eval_data",) if cfg.mode == "evaluate" else ("train_data", "eval_data"))
    for name in fields:
        pattern = getattr(cfg, name)
        if not pattern or pattern.startswith("tfds:"):
            continue
        try:
            schema.resolve_files(pattern)
        except ValueError as e:
            raise ConfigError(f"run.{name}={pattern!r}: {e} Check the path (TRAIN_DATA / "
                              f"EVAL_DATA in the gin file or --gin_param).") from None


def _check_learning_rate(cfg: JobConfig) -> None:
    if cfg.mode != "evaluate" and not cfg.base_lr > 0:
        raise ConfigError(f"run.base_lr={cfg.base_lr!r} must be > 0: set the learning rate "
                          f"(the gin/runs files set each mode's recipe value).")
    if cfg.lr_scaling not in ("linear", "none"):
        raise ConfigError(f"run.lr_scaling={cfg.lr_scaling!r} is unknown; use 'linear' "
                          f"(lr = base_lr * batch / lr_reference_batch) or 'none'.")
    if (cfg.lr_scaling == "none" and cfg.optimizer in ("sgd", "lars")
            and cfg.global_batch_size != cfg.lr_reference_batch):
        warn(f"run.base_lr is used as-is with optimizer={cfg.optimizer!r} at global batch "
             f"{cfg.global_batch_size}, but the recipe's rate is for {cfg.lr_reference_batch}; "
             f"set run.lr_scaling='linear' to scale it with the batch.")
    if cfg.probe_loss_weight < 0:
        raise ConfigError(f"run.probe_loss_weight={cfg.probe_loss_weight!r} must be >= 0.")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"run.label_smoothing={cfg.label_smoothing!r} must be in [0, 1).")


def _check_data_service(cfg: JobConfig) -> None:
    if not cfg.data_service_address:
        return
    try:
        data_service.parse_address(cfg.data_service_address)
    except ValueError as e:
        raise ConfigError(f"run.data_service_address: {e}") from e
    if cfg.deterministic:
        raise ConfigError("run.deterministic=True replays a run, but batches from the tf.data "
                          "service (run.data_service_address) arrive in no fixed order; unset "
                          "one of the two.")
    if cfg.mode == "evaluate":
        warn("run.data_service_address is not used in mode 'evaluate' (the service serves "
             "training data only); evaluation reads run.eval_data here.")


def _check_intervals(cfg: JobConfig, steps: Schedule) -> None:
    for name in ("checkpoint_every", "eval_every"):
        value = getattr(steps, name)
        if value and value % steps.steps_per_loop:
            warn(f"run.{name}={getattr(cfg, name)!r} ({value} steps) is not a multiple of "
                 f"run.steps_per_loop ({steps.steps_per_loop} steps), so it happens at the "
                 f"next loop end; make it a multiple.")


def check(cfg: JobConfig, strategy: tf.distribute.Strategy,
          num_examples: Optional[int] = None) -> Schedule:
    """All start-up checks (refuse with ConfigError, or warn); returns the run's Schedule."""
    _check_mode(cfg)
    replicas = strategy.num_replicas_in_sync
    _check_batch(cfg.global_batch_size, replicas, "global_batch_size")
    _check_batch(cfg.eval_batch_size or cfg.global_batch_size, replicas, "eval_batch_size")
    _check_batch(cfg.multiview_batch_size or cfg.eval_batch_size or cfg.global_batch_size,
                 replicas, "multiview_batch_size")
    _check_learning_rate(cfg)
    _check_clip(cfg.num_frames, cfg.stride, cfg.min_video_frames, "")
    _check_clip(cfg.eval_clip[0], cfg.eval_clip[1], cfg.min_video_frames, "eval_")
    if cfg.max_checkpoints < 1:
        raise ConfigError(f"run.max_checkpoints={cfg.max_checkpoints} must be >= 1.")
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if cfg.jit_compile and not on_tpu and replicas > 1:
        raise ConfigError("run.jit_compile=True needs one replica (or a TPU, which compiles "
                          "anyway); set run.jit_compile=False for this strategy.")
    if not 0.0 <= cfg.max_bad_fraction <= 1.0:
        raise ConfigError(f"run.max_bad_fraction={cfg.max_bad_fraction} must be in [0, 1].")
    if cfg.profile_steps and (len(cfg.profile_steps) != 2
                              or not 0 <= cfg.profile_steps[0] < cfg.profile_steps[1]):
        raise ConfigError(f"run.profile_steps={cfg.profile_steps!r} must be (START, END) with "
                          f"0 <= START < END.")
    _check_data_service(cfg)
    steps = schedule(cfg, num_examples)
    _check_intervals(cfg, steps)
    return steps


def required_unset(values: Mapping[str, Any], required_marker: Any) -> None:
    """Refuses settings still bound to gin.REQUIRED (an unset experiment macro)."""
    unset = sorted(k for k, v in values.items() if v is required_marker)
    if unset:
        raise ConfigError(f"run.{unset[0]} is required but unset (the experiment leaves it to "
                          f"you): pass --gin_param=run.{unset[0]}=... or set its macro.")


@dataclasses.dataclass(frozen=True)
class Builders:
    """The (gin-configured) constructors a job calls."""
    backbone: Callable[..., keras.Model]
    projection_head: Callable[..., keras.Layer]
    finetune_classifier: Callable[..., keras.Layer]
    dataset: Callable[..., tf.data.Dataset]
    detection_head: Optional[Callable[..., keras.Layer]] = None
    config_str: Callable[[], str] = lambda: ""


_CLASSIFIER_OF_MODE = {"linear_eval": "linear", "finetune": "finetune", "pretrain": "probe",
                       "detect": "detect"}


def classifier_kind(cfg: JobConfig) -> str:
    """The head a mode trains or evaluates: 'probe', 'linear' or 'finetune'."""
    return _CLASSIFIER_OF_MODE.get(cfg.mode) or cfg.classifier or "linear"


def build_model(cfg: JobConfig, builders: Builders) -> keras.Model:
    """The mode's Keras model: CVRLModel for pretraining (and probes), else ClassifierModel."""
    backbone = builders.backbone()
    kind = classifier_kind(cfg)
    if kind == "detect":
        return models.DetectionModel(backbone, builders.detection_head(cfg.num_classes),
                                     freeze_backbone=cfg.freeze_backbone)
    if kind == "probe":
        probe = cfg.num_classes if (cfg.online_probe and cfg.num_classes > 0) else None
        return models.CVRLModel(backbone, builders.projection_head(), probe_classes=probe)
    if kind == "linear":
        return models.ClassifierModel(backbone, models.linear_classifier(cfg.num_classes),
                                      freeze_backbone=True, l2_normalize=True)
    return models.ClassifierModel(backbone, builders.finetune_classifier(cfg.num_classes),
                                  freeze_backbone=False, l2_normalize=False)
