"""The recipes users launch, launched: every gin/experiments/*.gin runs three steps with only its
sizes shrunk, and the run is checked against the recipe it stands for, from what it produced.

Shrunk: the tiny backbone of gin/models/tiny.gin, 4-frame 32x32 clips, batch 8, generated
videos, three steps (the length in steps; the warmup keeps its epochs, which a small
run.num_train_examples makes one step), no evaluation, and fine-tuning's dropout off (its
random mask cannot be replayed here). Kept: the optimizer, schedule, learning-rate scaling,
momentum, weight decay, temperature, sync BN and mixed precision. Checked on each run, from
its TensorBoard events (one step per loop), checkpoints and model_dir files:
- the learning rate of each step is the recipe's warmup-cosine at its linearly scaled rate;
- the loss of step 3, recomputed here from ckpt-2 and the step's batch (the run's seed replays
  its input), is the recipe's: InfoNCE at its temperature, in its precision;
- the weight-decay term is 0.5 x wd x the sum of squared conv/dense kernels of ckpt-2;
- SGD's momentum: ckpt-3's momentum slots are momentum x ckpt-2's minus lr x the gradient
  recomputed here (Adam: its two slots);
- sync BN: backbone.json (what the run built) and the operative config.gin.
The expected values are the recipes as SPEC.md and docs/DESIGN.md state them (RECIPES), not
read from the gin files, so a recipe line dropped from a gin file fails here too. Experiments
whose shrunk configurations are identical (e.g. the 200- and 800-epoch K400 pretraining) share
one run. A new experiment of an unknown mode fails, saying what to add to RECIPES.
"""
import dataclasses
import glob
import json
import math
import os
from typing import Optional

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from cvrl_tf import optimizers
from cvrl_tf import train
from cvrl_tf.data import device_augment
from cvrl_tf.data import synthetic
from cvrl_tf.losses import info_nce
from cvrl_tf.training import config

pytestmark = pytest.mark.slow

EXPERIMENTS = sorted(os.path.relpath(p, train.GIN_DIR)
                     for p in glob.glob(os.path.join(train.GIN_DIR, "experiments", "*.gin")))
STEPS, BATCH = 3, 8  # Step 1 in the warmup, steps 2 and 3 on the cosine after it.


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a run of the recipe must use. rate: the learning rate per video of the global
    batch with scaling 'linear' (base_lr / lr_reference_batch), else the rate itself."""
    optimizer: str
    rate: float
    scaling: str
    warmup_epochs: float
    momentum: Optional[float]  # None: an optimizer without one (Adam).
    weight_decay: float
    temperature: Optional[float] = None  # Pretraining only.
    sync_bn: Optional[bool] = None  # None: not the recipe's concern (a frozen backbone).


# The paper's recipes by mode (SPEC.md "Optimization"; pretraining's 0.64 per 1024 videos and
# weight decay 5e-7 are the paper's 0.32 and 1e-6 in cvrl_tf's loss, docs/DESIGN.md "The
# learning rate"); fine-tuning's is runs/finetune.gin's choice (SPEC.md gives none).
RECIPES = {
    "pretrain": Recipe("sgd", 0.64 / 1024, "linear", 5, 0.9, 5e-7, temperature=0.1,
                       sync_bn=True),
    "linear_eval": Recipe("sgd", 32.0 / 1024, "linear", 5, 0.9, 0.0),
    "finetune": Recipe("sgd", 0.05 / 64, "linear", 2, 0.9, 1e-4, sync_bn=True),
}
# Experiments that are not the paper's recipe: the demo's own settings (docs/DEMO.md; its
# pretraining keeps runs/pretrain.gin's sync BN).
BY_NAME = {
    "demo_pretrain": Recipe("adam", 3e-3, "none", 0, None, 0.0, temperature=0.1,
                            sync_bn=True),
    "demo_linear_eval": Recipe("adam", 0.3, "none", 0, None, 0.0),
}


# Experiments that cannot run on this machine, with why (e.g. one that needs a TPU): their
# tests are skipped with that reason. None so far: shrunk, every recipe runs on a CPU.
CANNOT_RUN = {}


def _name(experiment: str) -> str:
    return os.path.splitext(os.path.basename(experiment))[0]


def recipe_of(experiment: str, mode: str) -> Recipe:
    """The recipe an experiment stands for; fails saying what to add for an unknown one."""
    recipe = BY_NAME.get(_name(experiment)) or RECIPES.get(mode)
    if recipe is None:
        pytest.fail(f"{experiment}: mode {mode!r} has no recipe in tests/test_recipes.py; add "
                    f"RECIPES[{mode!r}] (or BY_NAME[{_name(experiment)!r}]) with the "
                    f"optimizer, rate, warmup, momentum, weight decay, temperature and sync BN "
                    f"its runs must use.")
    return recipe


def epoch_and_warmup(recipe: Recipe) -> tuple:
    """(videos in an epoch, the recipe's warmup in steps): an epoch small enough that the
    warmup takes one step (epochs round up to whole steps)."""
    examples = max(1, int(BATCH // recipe.warmup_epochs)) if recipe.warmup_epochs else BATCH
    return examples, math.ceil(recipe.warmup_epochs * examples / BATCH)


def shrunk(experiment: str, data: str, warm_start: str, recipe: Recipe) -> list:
    """Gin bindings that shrink an experiment's sizes (and its length to STEPS) and keep the
    rest; its warmup becomes one step (run.num_train_examples)."""
    examples, _ = epoch_and_warmup(recipe)
    values = {"TRAIN_DATA": repr(data), "EVAL_DATA": "''", "NUM_CLASSES": 6,
              "PRETRAIN_DIR": repr(warm_start), "run.train_length": STEPS,
              "run.num_train_examples": examples, "run.global_batch_size": BATCH,
              "run.steps_per_loop": 1, "run.checkpoint_every": 1, "run.num_frames": 4,
              "run.crop_size": 32, "run.min_video_frames": 16, "run.seed": 1,
              "run.image_summaries": False, "build_dataset.shuffle_buffer": 4,
              # Fine-tuning's dropout: its random mask cannot be replayed outside the run.
              "finetune_classifier.dropout_rate": 0.0}
    return [f"{k} = {v}" for k, v in values.items()]


def _setting(experiment: str, name: str, default=None):
    """A run setting an experiment binds (parsed with placeholder data), else default."""
    train.parse_gin([experiment], ["TRAIN_DATA = '/d/*'", "EVAL_DATA = ''", "NUM_CLASSES = 6",
                                   "PRETRAIN_DIR = ''", "CHECKPOINT = ''"])
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default
    finally:
        gin.clear_config()


@dataclasses.dataclass
class Run:
    """One shrunk run and what it produced."""
    model_dir: str
    cfg: config.JobConfig
    builders: config.Builders
    recipe: Recipe
    params: list
    files: list
    replay: Optional[dict] = None

    def scalars(self, tag: str) -> list:
        """A TensorBoard scalar's values in step order (one per loop: one per step here)."""
        values = {}
        for path in glob.glob(os.path.join(self.model_dir, "train", "events.out.tfevents.*")):
            acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
            acc.Reload()
            if tag in acc.Tags()["tensors"]:
                for event in acc.Tensors(tag):
                    values[event.step] = float(tf.make_ndarray(event.tensor_proto))
        return [values[step] for step in sorted(values)]


class Runs:
    """The shrunk runs of the experiments, one per distinct configuration, made on demand."""

    def __init__(self, root):
        self.root = str(root)
        self.data = synthetic.write_dataset(os.path.join(self.root, "data"), num_train=8,
                                            num_eval=2, num_frames=16, size=32, num_shards=2,
                                            seed=0)["train_pattern"]
        self.warm_start = os.path.join(self.root, "warm_start")
        self._runs = {}

    def get(self, experiment: str) -> Run:
        if _name(experiment) in CANNOT_RUN:
            pytest.skip(f"{experiment} cannot run here: {CANNOT_RUN[_name(experiment)]}")
        mode = _setting(experiment, "run.mode")
        recipe = recipe_of(experiment, mode)
        if mode != "pretrain" and not os.path.isdir(self.warm_start):
            self._pretrain_for_warm_start()
        files = [experiment, "models/tiny.gin"]
        params = shrunk(experiment, self.data, self.warm_start, recipe)
        train.parse_gin(files, params)
        key = (gin.config_str(), recipe)
        gin.clear_config()
        if key not in self._runs:
            model_dir = os.path.join(self.root, f"run{len(self._runs)}-{_name(experiment)}")
            train.run_with_gin(files, params, model_dir=model_dir)
            cfg, builders = train.job_from_gin(files, params, model_dir=model_dir)
            self._runs[key] = Run(model_dir, cfg, builders, recipe, params, files)
        return self._runs[key]

    def _pretrain_for_warm_start(self):
        """A one-step pretraining of the same tiny backbone: what the classifiers start from."""
        recipe = RECIPES["pretrain"]
        params = shrunk("runs/pretrain.gin", self.data, "", recipe) + ["run.train_length = 1"]
        train.run_with_gin(["runs/pretrain.gin", "models/tiny.gin"], params,
                           model_dir=self.warm_start)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("recipes"))


def _param(experiment):
    """An experiment as a test parameter, marked bfloat16 when it computes in bfloat16."""
    mixed = _setting(experiment, "run.mixed_precision", False)
    return pytest.param(experiment, id=_name(experiment),
                        marks=[pytest.mark.bfloat16] if mixed else [])


ALL = [_param(e) for e in EXPERIMENTS]


def test_every_experiment_is_enumerated():
    assert len(EXPERIMENTS) >= 13 and "experiments/r3d50_k400_pretrain_200ep.gin" in EXPERIMENTS


def _kernels(model) -> dict:
    """{id: value} of the trainable conv/dense kernels (what weight decay acts on)."""
    return {id(k): k.numpy().astype(np.float64) for k in optimizers.decay_variables(model)}


def _batch(run: Run, index: int) -> dict:
    """The training batch of step index+1 as the replica step saw it: the run's input
    pipeline replayed from its seed, device-side augmentation applied."""
    cfg = run.cfg
    mode = "pretrain" if cfg.mode == "pretrain" else "train"
    dataset = run.builders.dataset(cfg.train_data, mode, cfg.global_batch_size, cfg.num_frames,
                                   cfg.stride, cfg.crop_size, seed=cfg.seed,
                                   num_classes=cfg.num_classes or None)
    iterator = iter(dataset)
    for _ in range(index):
        next(iterator)
    return device_augment.augment_batch(next(iterator))


def _losses(run: Run, model, batch: dict) -> tuple:
    """(the loss the recipe's step minimizes but the probe's, the variables it trains)."""
    outputs = model(batch["video"], training=True)
    if run.cfg.mode == "pretrain":
        z1, z2 = tf.split(outputs["embedding"], 2)
        probe = {id(v) for v in (model.probe.trainable_variables if model.probe else [])}
        variables = [v for v in model.trainable_variables if id(v) not in probe]
        return info_nce(z1, z2, run.recipe.temperature)[0], variables
    labels = tf.one_hot(tf.cast(batch["label"], tf.int32), run.cfg.num_classes)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, outputs["logits"]))
    return loss, list(model.trainable_variables)


def _slots(optimizer) -> list:
    """The optimizer's per-variable state, in the order of the variables it was built on."""
    if isinstance(optimizer, keras.optimizers.SGD):
        return [v.numpy() for v in optimizer.momentums]
    return [v.numpy() for v in optimizer._momentums + optimizer._velocities]  # Adam.


def replay(run: Run) -> dict:
    """Step 3 recomputed here: ckpt-2's model, in the recipe's precision, on step 3's batch.

    {'loss': the contrastive loss at the recipe's temperature (pretraining) or the
    cross-entropy, 'decay': the recipe's L2 term of ckpt-2's kernels, 'slots_2', 'slots_3':
    the optimizer state of ckpt-2 and ckpt-3, 'momentum': the m that best explains
    slot_3 = m x slot_2 - lr x gradient (SGD)}."""
    if run.replay is not None:
        return run.replay
    train.parse_gin(run.files, run.params)  # The builders are the run's gin-configured ones.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if run.cfg.mixed_precision else "float32")
    try:
        model = config.build_model(run.cfg, run.builders)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    recipe = run.recipe
    optimizer = optimizers.build_optimizer(recipe.optimizer, optimizers.WarmupCosine(1.0, STEPS),
                                           momentum=recipe.momentum or 0.0)
    optimizer.build(model.trainable_variables)
    ckpt = lambda n: os.path.join(run.model_dir, f"ckpt-{n}")  # noqa: E731
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(ckpt(2)).expect_partial()
    slots_2 = _slots(optimizer)
    batch = _batch(run, 2)
    with tf.GradientTape() as tape:
        loss, variables = _losses(run, model, batch)
    # The L2 term 0.5 wd |k|^2 and its gradient wd k, written out.
    kernels = _kernels(model)
    decay = 0.5 * recipe.weight_decay * sum(float(np.sum(k * k)) for k in kernels.values())
    grads = {id(v): g.numpy() + recipe.weight_decay * kernels.get(id(v), 0.0)
             for v, g in zip(variables, tape.gradient(loss, variables))}
    tf.train.Checkpoint(optimizer=optimizer).restore(ckpt(3)).expect_partial()
    slots_3 = _slots(optimizer)
    result = {"loss": float(loss), "decay": decay, "slots_2": slots_2,
              "slots_3": slots_3}
    if isinstance(optimizer, keras.optimizers.SGD) and recipe.momentum:
        lr = run.scalars("learning_rate")[2]
        pairs = [(m2, m3 + lr * grads[id(v)]) for v, m2, m3
                 in zip(model.trainable_variables, slots_2, slots_3) if id(v) in grads]
        norm = sum(float(np.sum(a * a)) for a, _ in pairs)  # 0: no momentum slots.
        result["momentum"] = (sum(float(np.sum(a * b)) for a, b in pairs) / norm if norm
                              else float("nan"))
    run.replay = result
    return result


def expected_learning_rate(peak: float, warmup: int, total: int, step: int) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from peak to 0 at `total`
    (0-based step)."""
    if step < warmup:
        return peak * step / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("experiment", ALL)
def test_learning_rate_is_the_recipes_warmup_cosine_at_the_scaled_rate(runs, experiment):
    run = runs.get(experiment)
    recipe = run.recipe
    peak = recipe.rate * BATCH if recipe.scaling == "linear" else recipe.rate
    _, warmup = epoch_and_warmup(recipe)
    want = [expected_learning_rate(peak, warmup, STEPS, step) for step in range(STEPS)]
    np.testing.assert_allclose(run.scalars("learning_rate"), want, rtol=1e-5, atol=1e-12,
                               err_msg=f"{experiment}: peak {peak}, warmup {warmup} step(s)")


@pytest.mark.parametrize("experiment", ALL)
def test_loss_is_the_recipes_at_its_temperature_and_precision(runs, experiment):
    """Pretraining: InfoNCE at the recipe's temperature; classifiers: the cross-entropy; both
    computed here in the recipe's precision (bfloat16 and float32 differ by about 1%)."""
    run = runs.get(experiment)
    metric = "contrastive_loss" if run.cfg.mode == "pretrain" else "classification_loss"
    np.testing.assert_allclose(run.scalars(metric)[2], replay(run)["loss"], rtol=1e-5,
                               err_msg=f"{experiment}: {metric} of step 3")


@pytest.mark.parametrize("experiment", ALL)
def test_weight_decay_term_is_the_recipes(runs, experiment):
    run = runs.get(experiment)
    want = replay(run)["decay"]
    assert (want > 0) == (run.recipe.weight_decay > 0)
    np.testing.assert_allclose(run.scalars("weight_decay_loss")[2], want, rtol=1e-5, atol=0,
                               err_msg=f"{experiment}: 0.5 x {run.recipe.weight_decay} x "
                                       f"sum of squared kernels of ckpt-2")


@pytest.mark.parametrize("experiment", ALL)
def test_optimizer_state_is_the_recipes_momentum(runs, experiment):
    """SGD: ckpt-3's momentum slots are momentum x ckpt-2's - lr x the gradient at ckpt-2 on
    step 3's batch (Keras SGD: m <- momentum m - lr g; w <- w + m). Adam: both moments."""
    run = runs.get(experiment)
    result = replay(run)
    assert any(np.any(s != 0) for s in result["slots_2"]), (
        f"{experiment}: ckpt-2 holds no {run.recipe.optimizer} state (momentum slots)")
    if run.recipe.momentum is not None:
        # (bfloat16 gradients recomputed here put the estimate about 0.003 off.)
        assert result["momentum"] == pytest.approx(run.recipe.momentum, abs=0.02), experiment


@pytest.mark.parametrize("experiment", ALL)
def test_sync_bn_is_the_recipes(runs, experiment):
    run = runs.get(experiment)
    if run.recipe.sync_bn is None:
        pytest.skip("a frozen backbone: its BN runs in inference mode, synchronized or not")
    backbone = config_json(run.model_dir, "backbone.json")
    assert backbone["sync_bn"] is run.recipe.sync_bn, experiment
    if run.cfg.mode == "pretrain":
        with open(os.path.join(run.model_dir, "config.gin")) as f:
            operative = f.read()
        assert f"projection_head.sync_bn = {run.recipe.sync_bn}" in operative, experiment


def config_json(model_dir: str, name: str) -> dict:
    with open(os.path.join(model_dir, name)) as f:
        return json.load(f)
