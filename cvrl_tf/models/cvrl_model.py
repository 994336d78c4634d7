"""Backbone + head models with float32 outputs under mixed_bfloat16, and the kernel selector.

`CVRLModel` is the pretraining network (feature, unnormalized embedding, optional online
probe); `ClassifierModel` serves linear evaluation (frozen backbone, BN in inference mode)
and fine-tuning. Both expose `.backbone` for export and warm start.
"""
from typing import Optional

import keras
from keras import ops

from cvrl_tf.models.heads import linear_classifier

# Layers whose `kernel` is a weight matrix/filter: the variables that get weight decay.
_KERNEL_LAYERS = (
    keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
)


def _pooled(outputs):
    """The pooled feature of a backbone output (a tensor, or the 'pooled' endpoint of a dict)."""
    return outputs["pooled"] if isinstance(outputs, dict) else outputs


def _feature_dim(backbone: keras.Model) -> int:
    """The pooled feature width of a built functional backbone."""
    return int(_pooled(backbone.output).shape[-1])


def _build_head(head: keras.Layer, dim: int) -> None:
    """Creates a head's variables now, so optimizers and checkpoints see them before a call."""
    if not head.built:
        head.build((None, dim))


def _walk_layers(layer: keras.Layer, seen: set):
    """Yields layer and every nested layer once, following the public `.layers` of models."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _walk_layers(sub, seen)


def kernel_variables(model: keras.Layer) -> list:
    """The conv/dense kernels of a model (no BN gammas/betas, no biases), chosen by layer type.

    This is how weight decay picks its variables: by what a variable is, not by its name.
    """
    kernels, seen_vars = [], set()
    for layer in _walk_layers(model, set()):
        if isinstance(layer, _KERNEL_LAYERS) and layer.built:
            kernel = layer.kernel
            if id(kernel) not in seen_vars:
                seen_vars.add(id(kernel))
                kernels.append(kernel)
    return kernels


@keras.saving.register_keras_serializable(package="cvrl_tf")
class CVRLModel(keras.Model):
    """Backbone -> projection head; returns {'feature', 'embedding'[, 'probe_logits']} in float32.

    The embedding is NOT normalized (the loss normalizes). With `probe_classes`, an online
    linear probe reads tf.stop_gradient(feature), so its loss never trains the backbone.
    """

    def __init__(self, backbone: keras.Model, head: keras.Layer,
                 probe_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if probe_classes is not None and (not isinstance(probe_classes, int)
                                          or probe_classes < 1):
            raise ValueError(
                f"probe_classes={probe_classes!r} must be None (no probe) or a positive int.")
        self.backbone = backbone
        self.head = head
        self.probe_classes = probe_classes
        self.probe = (linear_classifier(probe_classes, name="probe")
                      if probe_classes else None)
        dim = _feature_dim(backbone)
        _build_head(head, dim)
        if self.probe is not None:
            _build_head(self.probe, dim)
        self.built = True  # Every variable exists now (backbone is functional, heads built).

    def call(self, video, training=None) -> dict:
        """Maps clips [N, T, H, W, 3] to float32 feature [N, F] and embedding [N, D]."""
        feature = ops.cast(_pooled(self.backbone(video, training=training)), "float32")
        embedding = ops.cast(self.head(feature, training=training), "float32")
        outputs = {"feature": feature, "embedding": embedding}
        if self.probe is not None:
            probe_logits = self.probe(ops.stop_gradient(feature), training=training)
            outputs["probe_logits"] = ops.cast(probe_logits, "float32")
        return outputs

    def get_config(self) -> dict:
        """Serialized backbone and head plus the probe size."""
        return dict(super().get_config(),
                    backbone=keras.saving.serialize_keras_object(self.backbone),
                    head=keras.saving.serialize_keras_object(self.head),
                    probe_classes=self.probe_classes)

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "CVRLModel":
        """Rebuilds the model (fresh weights) from `get_config()`."""
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="cvrl_tf")
class ClassifierModel(keras.Model):
    """Backbone -> (optional L2 normalization) -> classifier; returns {'feature', 'logits'}.

    `freeze_backbone=True` (linear evaluation) makes the backbone's variables non-trainable
    and always runs it with training=False, so BN uses and keeps its moving statistics.
    Note that freezing sets `backbone.trainable = False` on the backbone object itself.
    """

    def __init__(self, backbone: keras.Model, classifier: keras.Layer,
                 freeze_backbone: bool = False, l2_normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.classifier = classifier
        self.freeze_backbone = bool(freeze_backbone)
        self.l2_normalize = bool(l2_normalize)
        if self.freeze_backbone:
            backbone.trainable = False
        _build_head(classifier, _feature_dim(backbone))
        self.built = True

    def call(self, video, training=None) -> dict:
        """Maps clips [N, T, H, W, 3] to float32 feature [N, F] and logits [N, C]."""
        backbone_training = False if self.freeze_backbone else training
        feature = ops.cast(_pooled(self.backbone(video, training=backbone_training)), "float32")
        x = feature
        if self.l2_normalize:
            x = x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
        logits = ops.cast(self.classifier(x, training=training), "float32")
        return {"feature": feature, "logits": logits}

    def get_config(self) -> dict:
        """Serialized backbone and classifier plus the two switches."""
        return dict(super().get_config(),
                    backbone=keras.saving.serialize_keras_object(self.backbone),
                    classifier=keras.saving.serialize_keras_object(self.classifier),
                    freeze_backbone=self.freeze_backbone, l2_normalize=self.l2_normalize)

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "ClassifierModel":
        """Rebuilds the model (fresh weights) from `get_config()`."""
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)
