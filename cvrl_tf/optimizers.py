"""Optimizers for CVRL: LARS, SGD/Adam/AdamW with kernel-only weight decay, warmup-cosine.

Where weight decay lives (one place per optimizer, never two):
- 'sgd' and 'adam': as the official recipe, an L2 term 0.5 * wd * sum(w^2) over the conv/dense
  kernels added to the loss by steps.py (`make_pretrain_step(weight_decay=...)`); its gradient
  wd * w goes through momentum. `build_optimizer` refuses a weight decay for them.
- 'lars': inside the update, wd * w added to the gradient before the trust ratio (SimCLR);
  with momentum SGD semantics this is the same as the loss-added L2.
- 'adamw': decoupled (w -= lr * wd * w), Keras' AdamW restricted to the chosen variables.
Variables are chosen by what they are (`decay_variables`: conv/dense kernels), never by name.
"""
import math
import numbers
from typing import Callable, Iterable, Optional, Sequence, Union

import keras
import tensorflow as tf

from cvrl_tf.models import kernel_variables

# Which variables a rule applies to: a list of variables, or a predicate on a variable.
VariableSelector = Union[Sequence, Callable[[keras.Variable], bool], None]


def decay_variables(model: keras.Layer) -> list:
    """The trainable conv/dense kernels of model: the variables weight decay and LARS act on."""
    trainable = {id(v) for v in model.trainable_variables}
    return [v for v in kernel_variables(model) if id(v) in trainable]


_DECAY_IN_UPDATE = ("lars", "adamw")


def split_weight_decay(optimizer: str, weight_decay: float) -> tuple[float, float]:
    """The one rule of where weight decay acts: (in the optimizer's update, in the loss).

    'lars' and 'adamw' decay inside their update; 'sgd' and 'adam' get the L2 term
    0.5 * wd * sum(w^2) in the loss (steps.py), as the official recipe does. Never both.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0.")
    return (weight_decay, 0.0) if optimizer in _DECAY_IN_UPDATE else (0.0, weight_decay)


def scaled_learning_rate(base_lr: float, global_batch_size: int,
                         reference_batch: int = 256) -> float:
    """Linear scaling: base_lr is the rate for reference_batch videos; returns it for the batch."""
    if global_batch_size < 1 or reference_batch < 1:
        raise ValueError(f"global_batch_size={global_batch_size!r} and reference_batch="
                         f"{reference_batch!r} must be positive ints.")
    return base_lr * global_batch_size / reference_batch


@keras.saving.register_keras_serializable(package="cvrl_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to 0 at total_steps.

    The cosine spans the steps after warmup (SimCLR convention); steps past total_steps give 0.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0):
        if base_lr < 0:
            raise ValueError(f"base_lr={base_lr!r} must be >= 0.")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} must be a positive int.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps={warmup_steps!r} must be in [0, total_steps="
                             f"{total_steps}]; lower it or train longer.")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        """The learning rate at step (0-based: step 0 of a warmup has rate 0)."""
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warm_lr = self.base_lr * step / warmup
        progress = tf.clip_by_value(
            (step - self.warmup_steps) / float(max(self.total_steps - self.warmup_steps, 1)),
            0.0, 1.0)
        cosine_lr = 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm_lr, cosine_lr)

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def _select(optimizer: keras.optimizers.Optimizer, variables: Sequence,
            exclude: VariableSelector) -> set:
    """Keys of the variables a rule applies to: not excluded, and by default rank >= 2 only."""
    if exclude is None:  # Without a model: kernels have rank >= 2, BN parameters and biases 1.
        chosen = [v for v in variables if len(v.shape) >= 2]
    elif callable(exclude):
        chosen = [v for v in variables if not exclude(v)]
    else:
        excluded = {optimizer._var_key(v) for v in exclude}
        chosen = [v for v in variables if optimizer._var_key(v) not in excluded]
    return {optimizer._var_key(v) for v in chosen}


def _excluding_all_but(keep: Iterable) -> Callable[[keras.Variable], bool]:
    """A predicate true for every variable not in keep (compared by identity)."""
    kept = {id(v) for v in keep}
    return lambda v: id(v) not in kept


@keras.saving.register_keras_serializable(package="cvrl_tf")
class LARS(keras.optimizers.Optimizer):
    """LARS (You et al. 2017), the SimCLR / Model Garden form with classic momentum.

    Per variable: g += wd * w (if decayed); lr' = lr * eta * |w| / |g| (if adapted, and both
    norms are > 0, else lr); v = momentum * v + lr' * g; w -= v (or momentum * v + lr' * g with
    Nesterov). `exclude_from_weight_decay` / `exclude_from_adaptation` take variables or a
    predicate on a variable; by default both exclude everything that is not a kernel (rank < 2:
    BN parameters and biases), and adaptation follows the weight decay exclusion.
    """

    def __init__(self, learning_rate=0.001, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False,
                 exclude_from_weight_decay: VariableSelector = None,
                 exclude_from_adaptation: VariableSelector = None,
                 name: str = "lars", **kwargs):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1); 0.9 is usual.")
        if weight_decay < 0 or eta <= 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be >= 0 and eta={eta!r} > 0.")
        # The base class would apply decoupled decay; LARS decays inside update_step instead.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self._exclude_decay = exclude_from_weight_decay
        self._exclude_adapt = (exclude_from_adaptation if exclude_from_adaptation is not None
                               else exclude_from_weight_decay)

    def build(self, variables):
        """Creates one momentum slot per variable and resolves which ones decay and adapt."""
        if self.built:
            return
        super().build(variables)
        self._decay_keys = _select(self, variables, self._exclude_decay)
        self._adapt_keys = _select(self, variables, self._exclude_adapt)
        self._momentums = self.add_optimizer_variables(variables, "momentum")

    def _apply_weight_decay(self, variables):
        """No decoupled decay: LARS adds wd * w to the gradient in update_step."""

    def update_step(self, gradient, variable, learning_rate):
        """One LARS update of one variable."""
        key = self._var_key(variable)
        lr = tf.cast(learning_rate, variable.dtype)
        grad = tf.cast(gradient, variable.dtype)
        w = tf.convert_to_tensor(variable)
        if self.weight_decay and key in self._decay_keys:
            grad += self.weight_decay * w
        if key in self._adapt_keys:
            w_norm, g_norm = tf.norm(w), tf.norm(grad)
            trust = tf.where((w_norm > 0) & (g_norm > 0),
                             self.eta * w_norm / tf.maximum(g_norm, 1e-30), 1.0)
            lr *= trust
        velocity = self._momentums[self._get_variable_index(variable)]
        new_velocity = self.momentum * tf.convert_to_tensor(velocity) + lr * grad
        self.assign(velocity, new_velocity)
        update = self.momentum * new_velocity + lr * grad if self.nesterov else new_velocity
        self.assign_sub(variable, update)

    def get_config(self) -> dict:
        """Serializable hyperparameters (the exclusion rules are not: pass them again)."""
        return dict(super().get_config(), momentum=self.momentum, eta=self.eta,
                    nesterov=self.nesterov, weight_decay=self.weight_decay)


class _KernelAdamW(keras.optimizers.AdamW):
    """Keras AdamW whose decoupled decay applies only to the chosen variables."""

    def __init__(self, exclude_from_weight_decay: VariableSelector = None, **kwargs):
        super().__init__(**kwargs)
        self._exclude_decay = exclude_from_weight_decay

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._decay_keys = _select(self, variables, self._exclude_decay)

    def _use_weight_decay(self, variable):
        return self._var_key(variable) in self._decay_keys


def build_optimizer(name: str, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0,
                    decay_variables: Optional[Sequence] = None, eta: float = 0.001,
                    nesterov: bool = False) -> keras.optimizers.Optimizer:
    """The named optimizer: 'sgd' (momentum, no Nesterov), 'lars', 'adam' or 'adamw'.

    learning_rate is a float or a schedule (e.g. WarmupCosine). weight_decay is only taken by
    'lars' and 'adamw', applied to decay_variables (default: every variable of rank >= 2);
    for 'sgd' and 'adam' pass it to the step instead (see the module docstring). momentum and
    nesterov are for 'sgd' and 'lars', eta for 'lars'. Build the result inside
    strategy.scope() with optimizer.build(model.trainable_variables).
    """
    if isinstance(learning_rate, numbers.Real):
        learning_rate = float(learning_rate)
    exclude = None if decay_variables is None else _excluding_all_but(decay_variables)
    if name in ("sgd", "adam") and split_weight_decay(name, weight_decay)[1]:
        raise ValueError(
            f"build_optimizer('{name}', weight_decay={weight_decay}): for '{name}' weight decay "
            f"is the L2 loss term; pass weight_decay to make_pretrain_step/make_classifier_step "
            f"and 0 here.")
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, eta=eta,
                    nesterov=nesterov, exclude_from_weight_decay=exclude)
    if name == "adamw":
        return _KernelAdamW(learning_rate=learning_rate, weight_decay=weight_decay,
                            exclude_from_weight_decay=exclude)
    raise ValueError(f"optimizer name={name!r} is unknown; use 'sgd', 'lars', 'adam' or 'adamw'.")
