"""Action detection on person boxes (AVA): RoIAlign on the last stage's map, per-box action logits.

The protocol of SlowFast's ResNetRoIHead and MMAction2's AVA heads (docs/DESIGN.md): the res5
map of a backbone kept at output stride 16 (res5 dilated, `build_backbone(spatial_strides=
(1, 2, 2, 1), spatial_dilations=(1, 1, 1, 2))`), averaged over time; RoIAlign of each box to
crop_size x crop_size; max over the crop; dropout; a Dense to one logit per action (sigmoid).
Boxes are [ymin, xmin, ymax, xmax] normalized to the clip's frame, a fixed M per clip padded
with zeros (a zero box takes no sample with adaptive sampling, so its feature is 0 and its
logits the bias: never a NaN; the loss masks it).
"""
from typing import Optional

import keras
import tensorflow as tf

from cvrl_tf.models.heads import _check_positive
from cvrl_tf.models.resnet3d import last_stage


def _dim(x: tf.Tensor, axis: int):
    """A static dimension when known (XLA needs them), else the dynamic one."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _check_sampling(crop_size: int, sampling_ratio: int) -> None:
    """Raises one clear ValueError for a bad crop size or sampling ratio."""
    _check_positive(crop_size, "crop_size", "SlowFast's AVA head uses 7")
    if not isinstance(sampling_ratio, int) or sampling_ratio < 0:
        raise ValueError(f"sampling_ratio={sampling_ratio!r} must be an int >= 0 (0: adaptive, "
                         f"as SlowFast).")


def _axis_weights(start: tf.Tensor, end: tf.Tensor, size, crop_size: int,
                  sampling_ratio: int) -> tf.Tensor:
    """[B, M, crop_size, size]: along one axis, each bin's bilinear weights on the map's
    pixels, averaged over the bin's samples. start/end [B, M]: box edges in map pixels."""
    size_f = tf.cast(size, tf.float32)
    # torchvision's roi_align, aligned=True: pixel k is centred at k + 0.5, so shift by -0.5.
    start, end = start * size_f - 0.5, end * size_f - 0.5
    bin_size = (end - start) / crop_size
    if sampling_ratio:
        grid = tf.fill(tf.shape(bin_size), float(sampling_ratio))
        max_grid = sampling_ratio
    else:  # Adaptive: ceil(bin) samples; a box inside the frame needs at most ceil(size/crop).
        max_grid = (size + crop_size - 1) // crop_size
        grid = tf.minimum(tf.math.ceil(bin_size), tf.cast(max_grid, tf.float32))
    grid = grid[..., None, None]                                   # [B, M, 1, 1]
    sample = tf.cast(tf.range(max_grid), tf.float32)               # [G]
    bins = tf.cast(tf.range(crop_size), tf.float32)[:, None]       # [crop, 1]
    bin_size = bin_size[..., None, None]
    pos = (start[..., None, None] + bins * bin_size
           + (sample + 0.5) * bin_size / tf.maximum(grid, 1.0))    # [B, M, crop, G]
    # A sample beyond one pixel outside the map reads 0; one within it reads the edge pixel.
    used = tf.cast((sample < grid) & (pos >= -1.0) & (pos <= size_f), tf.float32)
    pos = tf.clip_by_value(pos, 0.0, size_f - 1.0)
    pixels = tf.cast(tf.range(size), tf.float32)
    hat = tf.nn.relu(1.0 - tf.abs(pos[..., None] - pixels))       # Bilinear: [B, M, crop, G, size]
    return tf.reduce_sum(hat * used[..., None], axis=-2) / tf.maximum(grid, 1.0)


def roi_align(feature_map: tf.Tensor, boxes: tf.Tensor, crop_size: int = 7,
              sampling_ratio: int = 0) -> tf.Tensor:
    """RoIAlign of boxes [B, M, 4] (normalized [ymin, xmin, ymax, xmax]) on the maps
    [B, H, W, C] of their clips -> float32 crops [B, M, crop_size, crop_size, C].

    The samples are those of SlowFast's ROIAlign (detectron2 / torchvision roi_align with
    aligned=True): bin (i, j) of a box averages sampling_ratio^2 bilinear samples at its
    sub-bin centres, ceil(bin size) per axis when sampling_ratio=0 (SlowFast's setting).
    The same numbers, computed differently: bilinear sampling of an axis-aligned box is
    separable, so each axis becomes a [crop, size] weight matrix and the crop two einsums
    (static shapes, no gather; tf.image.crop_and_resize has no XLA kernel, and samples one
    point per bin on a corner-aligned grid). Two differences, neither reached by AVA's boxes
    (inside the frame): sampling_ratio=0 caps the samples at ceil(size / crop_size) per bin
    (a box larger than the frame gets fewer), and box coordinates map to the map as
    y * H' where SlowFast scales pixels by 1/16 (the same when the frame is a multiple of 16).
    """
    _check_sampling(crop_size, sampling_ratio)
    feature_map = tf.cast(feature_map, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    if (feature_map.shape.rank != 4
            or not boxes.shape.is_compatible_with(tf.TensorShape([None, None, 4]))):
        raise ValueError(f"roi_align needs maps [B, H, W, C] and boxes [B, M, 4]; got "
                         f"{feature_map.shape} and {boxes.shape}.")
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    rows = _axis_weights(ymin, ymax, _dim(feature_map, 1), crop_size, sampling_ratio)
    cols = _axis_weights(xmin, xmax, _dim(feature_map, 2), crop_size, sampling_ratio)
    crops = tf.einsum("bmiy,byxc->bmixc", rows, feature_map)
    return tf.einsum("bmjx,bmixc->bmijc", cols, crops)


@keras.saving.register_keras_serializable(package="cvrl_tf")
class RoIHead(keras.Model):
    """Last-stage map [B, T', H', W', C] and boxes [B, M, 4] -> float32 logits [B, M, classes]:
    temporal mean, RoIAlign (crop_size), spatial max, dropout, Dense (SlowFast's ResNetRoIHead).

    A keras.Model like the other heads, so its public `.layers` lead kernel_variables (weight
    decay) to its Dense kernel.
    """

    def __init__(self, num_classes: int, crop_size: int = 7, dropout_rate: float = 0.5,
                 sampling_ratio: int = 0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # RoIAlign and logits in float32 under bf16.
        super().__init__(**kwargs)
        _check_positive(num_classes, "num_classes", "AVA v2.2 has 80 actions")
        _check_sampling(crop_size, sampling_ratio)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate!r} must be in [0, 1); 0.5 is SlowFast's.")
        self.num_classes, self.crop_size = num_classes, crop_size
        self.dropout_rate, self.sampling_ratio = dropout_rate, sampling_ratio
        self.dropout = keras.layers.Dropout(dropout_rate, name="dropout", dtype="float32")
        # SlowFast initializes its projection with std 0.01 (as finetune_classifier does).
        self.logits = keras.layers.Dense(
            num_classes, name="logits", dtype="float32",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))

    def build(self, input_shape) -> None:
        """Creates the Dense kernel from the map's channel count."""
        self.logits.build((None, input_shape[-1]))
        self.built = True

    def call(self, feature_map, boxes, training=None):
        """See the class docstring; padded (zero) boxes give the bias's logits."""
        if feature_map.shape.rank != 5:
            raise ValueError(f"RoIHead needs the last stage's map [B, T', H', W', C]; got "
                             f"{feature_map.shape}.")
        frame = tf.reduce_mean(tf.cast(feature_map, tf.float32), axis=1)
        crops = roi_align(frame, boxes, self.crop_size, self.sampling_ratio)
        pooled = tf.reduce_max(crops, axis=[2, 3])                # [B, M, C]
        return self.logits(self.dropout(pooled, training=training))

    def get_config(self) -> dict:
        """The constructor's arguments."""
        return dict(super().get_config(), num_classes=self.num_classes,
                    crop_size=self.crop_size, dropout_rate=self.dropout_rate,
                    sampling_ratio=self.sampling_ratio)


def roi_head(num_classes: int, crop_size: int = 7, dropout_rate: float = 0.5,
             sampling_ratio: int = 0, name: str = "roi_head") -> RoIHead:
    """The AVA head (SlowFast's defaults): crop 7x7 with adaptive sampling, dropout 0.5."""
    return RoIHead(num_classes, crop_size=crop_size, dropout_rate=dropout_rate,
                   sampling_ratio=sampling_ratio, name=name)


@keras.saving.register_keras_serializable(package="cvrl_tf")
class DetectionModel(keras.Model):
    """Backbone's last stage -> RoIHead: model(video, boxes) -> {'logits': [B, M, classes]}.

    video [B, T, H, W, 3] (H and W need not be equal), boxes [B, M, 4]; logits in float32.
    `.backbone` is the ResNet3D (warm start, export). `freeze_backbone=True` makes it
    non-trainable and runs it with training=False (BN in inference mode), as ClassifierModel
    does; the default fine-tunes everything, as SlowFast does on AVA.
    """

    def __init__(self, backbone: keras.Model, head: keras.Layer,
                 freeze_backbone: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            backbone.trainable = False
        self.trunk = last_stage(backbone)  # The backbone's layers, read at res5.
        if not head.built:
            head.build(self.trunk.output.shape)
        self.built = True  # Every variable exists now.

    def call(self, video, boxes, training=None) -> dict:
        """Maps clips [B, T, H, W, 3] and boxes [B, M, 4] to float32 logits [B, M, classes]."""
        backbone_training = False if self.freeze_backbone else training
        feature_map = self.trunk(video, training=backbone_training)
        logits = self.head(feature_map, boxes, training=training)
        return {"logits": tf.cast(logits, tf.float32)}

    def get_config(self) -> dict:
        """Serialized backbone and head plus the freeze switch."""
        return dict(super().get_config(),
                    backbone=keras.saving.serialize_keras_object(self.backbone),
                    head=keras.saving.serialize_keras_object(self.head),
                    freeze_backbone=self.freeze_backbone)

    @classmethod
    def from_config(cls, config: dict, custom_objects: Optional[dict] = None
                    ) -> "DetectionModel":
        """Rebuilds the model (fresh weights) from `get_config()`."""
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
