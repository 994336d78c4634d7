"""3D ResNet backbones (slow-only R3D with the CVRL stem): clips [B, T, H, W, C] -> features.

The network follows the paper (docs/DESIGN.md, the recipe): a 5x7x7 stride-2 stem, four
residual stages res2..res5 with temporal kernels only on the first conv of each block in
res4/res5, global average pool.
Depths 18/34 use basic blocks, 50/101/152/200 bottleneck blocks; `width_multiplier` scales
every filter count (stem included), as in SimCLR's wide ResNets.
"""
import inspect
from typing import Any, Optional, Sequence, Union

import keras

# Blocks per stage res2..res5 and block type for each supported depth.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
# Stem: (temporal kernel, temporal stride) of the first conv. 'cvrl' is the paper's 5x7x7
# stride 2x2x2; 'resnet' is the inflated 2D stem (1x7x7, stride 1x2x2), no temporal downsampling.
STEMS = {"cvrl": (5, 2), "resnet": (1, 1)}
# Slow-only default: temporal kernel of the first conv of every block, per stage res2..res5.
SLOW_ONLY_TEMPORAL_KERNELS = (1, 1, 3, 3)
STAGE_NAMES = ("res2", "res3", "res4", "res5")
# The Model Garden ResNet3D's (and SimCLR's) initializer: VarianceScaling(1.0, fan_in, truncated
# normal). Every conv is followed by BN, so the kernel scale sets the effective step (lr/|w|^2);
# he_normal (scale 2) would halve it against the official code (docs/DESIGN.md).
def kernel_initializer() -> keras.initializers.Initializer:
    """A fresh VarianceScaling(scale=1.0, mode='fan_in', truncated normal) for one conv."""
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_in",
                                              distribution="truncated_normal")


def _conv(filters: int, kernel: Sequence[int], strides: Sequence[int], name: str,
          dilation: int = 1):
    """A bias-free channels-last Conv3D with 'same' padding (BN follows every conv); `dilation`
    spaces the spatial taps only (its variables are the undilated conv's)."""
    return keras.layers.Conv3D(
        filters, tuple(kernel), strides=tuple(strides), padding="same", use_bias=False,
        dilation_rate=(1, dilation, dilation), kernel_initializer=kernel_initializer(),
        name=name)


def _bn(cfg: dict, name: str):
    """BatchNormalization with the backbone's momentum, epsilon and synchronization."""
    return keras.layers.BatchNormalization(
        axis=-1, momentum=cfg["bn_momentum"], epsilon=cfg["bn_epsilon"],
        synchronized=cfg["sync_bn"], name=name)


def _shortcut(x, out_filters: int, stride: int, cfg: dict, name: str):
    """Identity, or a 1x1x1 conv (stride 1,s,s) + BN where the shape changes."""
    if x.shape[-1] == out_filters and stride == 1:
        return x
    x = _conv(out_filters, (1, 1, 1), (1, stride, stride), name + "_shortcut_conv")(x)
    return _bn(cfg, name + "_shortcut_bn")(x)


def _bottleneck_block(x, filters: int, temporal_kernel: int, stride: int, dilation: int,
                      cfg: dict, name: str):
    """[t,1,1] conv -> [1,3,3] conv stride (1,s,s), dilation (1,d,d) -> [1,1,1] conv to 4f,
    each with BN."""
    shortcut = _shortcut(x, 4 * filters, stride, cfg, name)
    x = _conv(filters, (temporal_kernel, 1, 1), (1, 1, 1), name + "_conv_a")(x)
    x = _bn(cfg, name + "_bn_a")(x)
    x = keras.layers.ReLU(name=name + "_relu_a")(x)
    x = _conv(filters, (1, 3, 3), (1, stride, stride), name + "_conv_b", dilation)(x)
    x = _bn(cfg, name + "_bn_b")(x)
    x = keras.layers.ReLU(name=name + "_relu_b")(x)
    x = _conv(4 * filters, (1, 1, 1), (1, 1, 1), name + "_conv_c")(x)
    x = _bn(cfg, name + "_bn_c")(x)
    x = keras.layers.Add(name=name + "_add")([x, shortcut])
    return keras.layers.ReLU(name=name + "_out")(x)


def _basic_block(x, filters: int, temporal_kernel: int, stride: int, dilation: int, cfg: dict,
                 name: str):
    """[t,3,3] conv stride (1,s,s) -> [1,3,3] conv, each with BN and spatial dilation d
    (depths 18/34)."""
    shortcut = _shortcut(x, filters, stride, cfg, name)
    x = _conv(filters, (temporal_kernel, 3, 3), (1, stride, stride), name + "_conv_a",
              dilation)(x)
    x = _bn(cfg, name + "_bn_a")(x)
    x = keras.layers.ReLU(name=name + "_relu_a")(x)
    x = _conv(filters, (1, 3, 3), (1, 1, 1), name + "_conv_b", dilation)(x)
    x = _bn(cfg, name + "_bn_b")(x)
    x = keras.layers.Add(name=name + "_add")([x, shortcut])
    return keras.layers.ReLU(name=name + "_out")(x)


def _stage_kernels(temporal_kernels: Any, blocks: Sequence[int]) -> list:
    """Expands per-stage temporal kernels (an int or one int per block) to per-block lists."""
    if temporal_kernels is None:
        temporal_kernels = SLOW_ONLY_TEMPORAL_KERNELS
    if len(temporal_kernels) != 4:
        raise ValueError(
            f"temporal_kernels={temporal_kernels!r} must have 4 entries (res2..res5), each an "
            "int or a list with one int per block.")
    per_block = []
    for stage, (kernels, n) in enumerate(zip(temporal_kernels, blocks)):
        kernels = [kernels] * n if isinstance(kernels, int) else list(kernels)
        if len(kernels) != n or not all(isinstance(k, int) and k >= 1 for k in kernels):
            raise ValueError(
                f"temporal_kernels[{stage}]={temporal_kernels[stage]!r} must be a positive "
                f"int or a list of {n} positive ints (one per block of {STAGE_NAMES[stage]}).")
        per_block.append(kernels)
    return per_block


# Spatial stride of the first block of res2..res5 (the paper: 2 in res3..res5).
DEFAULT_SPATIAL_STRIDES = (1, 2, 2, 2)
# Spatial dilation of the 3x3 convs of res2..res5. Detection (SlowFast's AVA configs) keeps
# res5 at stride 1 and dilates it instead: strides (1, 2, 2, 1), dilations (1, 1, 1, 2).
DEFAULT_SPATIAL_DILATIONS = (1, 1, 1, 1)


def _validate(depth: int, width_multiplier: int, stem: str, base_filters: int,
              blocks_per_stage: Optional[Sequence[int]], input_shape: Sequence,
              spatial_strides: Sequence[int] = DEFAULT_SPATIAL_STRIDES,
              spatial_dilations: Sequence[int] = DEFAULT_SPATIAL_DILATIONS) -> None:
    """Raises one clear ValueError for a bad argument."""
    if depth not in DEPTHS:
        raise ValueError(f"Unknown depth {depth!r}; use one of {sorted(DEPTHS)}.")
    if not isinstance(width_multiplier, int) or width_multiplier < 1:
        raise ValueError(
            f"width_multiplier={width_multiplier!r} must be a positive int (1, 2 or 4).")
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; use one of {sorted(STEMS)}.")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters={base_filters!r} must be a positive int (64 default).")
    if blocks_per_stage is not None and (
            len(blocks_per_stage) != 4
            or not all(isinstance(b, int) and b >= 1 for b in blocks_per_stage)):
        raise ValueError(
            f"blocks_per_stage={blocks_per_stage!r} must be 4 positive ints, e.g. (1, 1, 1, 1).")
    if len(spatial_strides) != 4 or not all(s in (1, 2) for s in spatial_strides):
        raise ValueError(f"spatial_strides={spatial_strides!r} must be 4 values of 1 or 2 "
                         f"(res2..res5), e.g. {DEFAULT_SPATIAL_STRIDES}.")
    if len(spatial_dilations) != 4 or not all(isinstance(d, int) and d >= 1
                                              for d in spatial_dilations):
        raise ValueError(f"spatial_dilations={spatial_dilations!r} must be 4 positive ints "
                         f"(res2..res5), e.g. {DEFAULT_SPATIAL_DILATIONS}.")
    for stage, (stride, dilation) in enumerate(zip(spatial_strides, spatial_dilations)):
        if stride > 1 and dilation > 1:
            raise ValueError(
                f"{STAGE_NAMES[stage]} has spatial stride {stride} and dilation {dilation}: a "
                f"strided conv cannot be dilated; dilate a stage of stride 1 (detection: "
                f"spatial_strides=(1, 2, 2, 1), spatial_dilations=(1, 1, 1, 2)).")
    if len(input_shape) != 4:
        raise ValueError(
            f"input_shape={input_shape!r} must be (T, H, W, C) without the batch dimension.")


def _json_friendly(config: dict) -> dict:
    """build_backbone arguments with tuples as lists (what backbone.json stores)."""
    def listify(value):
        return [listify(v) for v in value] if isinstance(value, (list, tuple)) else value
    return {k: listify(v) for k, v in config.items()}


@keras.saving.register_keras_serializable(package="cvrl_tf")
class ResNet3D(keras.Model):
    """A functional 3D ResNet whose config is its `build_backbone` keyword arguments.

    The arguments and their defaults are build_backbone's (the one signature): construct it
    with `build_backbone(...)` or `ResNet3D(**build_backbone_kwargs)`.
    """

    def __init__(self, **config):
        try:
            bound = inspect.signature(build_backbone).bind(**config)
        except TypeError as e:
            raise ValueError(f"ResNet3D takes build_backbone's keyword arguments: {e}.") from e
        bound.apply_defaults()
        c = dict(bound.arguments)
        spatial_strides = tuple(c["spatial_strides"])
        dilations = tuple(c["spatial_dilations"])
        _validate(c["depth"], c["width_multiplier"], c["stem"], c["base_filters"],
                  c["blocks_per_stage"], c["input_shape"], spatial_strides, dilations)
        block_type, default_blocks = DEPTHS[c["depth"]]
        blocks = (tuple(c["blocks_per_stage"]) if c["blocks_per_stage"] is not None
                  else default_blocks)
        kernels = _stage_kernels(c["temporal_kernels"], blocks)
        block_fn = _bottleneck_block if block_type == "bottleneck" else _basic_block

        inputs = keras.Input(shape=tuple(c["input_shape"]), name="video")
        filters = c["base_filters"] * c["width_multiplier"]
        stem_t, stem_stride = STEMS[c["stem"]]
        x = _conv(filters, (stem_t, 7, 7), (stem_stride, 2, 2), "stem_conv")(inputs)
        x = _bn(c, "stem_bn")(x)
        x = keras.layers.ReLU(name="stem_relu")(x)
        x = keras.layers.MaxPooling3D((1, 3, 3), (1, 2, 2), padding="same", name="stem_pool")(x)
        endpoints = {}
        for stage, stage_name in enumerate(STAGE_NAMES):
            for b in range(blocks[stage]):
                stride = spatial_strides[stage] if b == 0 else 1
                x = block_fn(x, filters * 2 ** stage, kernels[stage][b], stride,
                             dilations[stage], c, f"{stage_name}_block{b + 1}")
            endpoints[stage_name] = x
        # Pool in float32: the feature leaves the backbone in float32 under mixed_bfloat16.
        pooled = keras.layers.GlobalAveragePooling3D(name="pooled", dtype="float32")(x)
        outputs = dict(endpoints, pooled=pooled) if c["return_endpoints"] else pooled
        name = c.pop("name") or f"r3d{c['depth']}_{c['width_multiplier']}x"
        super().__init__(inputs=inputs, outputs=outputs, name=name)
        self._build_kwargs = _json_friendly(c)
        self.feature_dim = int(pooled.shape[-1])

    def get_config(self) -> dict:
        """The `build_backbone` keyword arguments (JSON-friendly; model_dir/backbone.json)."""
        return dict(self._build_kwargs, name=self.name)

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "ResNet3D":
        """Rebuilds the backbone from `get_config()` (fresh weights)."""
        return cls(**config)


def build_backbone(depth: int = 50, width_multiplier: int = 1,
                   input_shape: Sequence[Optional[int]] = (None, None, None, 3),
                   stem: str = "cvrl",
                   temporal_kernels: Optional[Sequence[Union[int, Sequence[int]]]] = None,
                   bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, sync_bn: bool = False,
                   return_endpoints: bool = False, base_filters: int = 64,
                   blocks_per_stage: Optional[Sequence[int]] = None,
                   spatial_strides: Sequence[int] = DEFAULT_SPATIAL_STRIDES,
                   spatial_dilations: Sequence[int] = DEFAULT_SPATIAL_DILATIONS,
                   name: Optional[str] = None) -> ResNet3D:
    """Builds a 3D ResNet mapping [B, T, H, W, C] to the pooled float32 feature.

    The feature has 2048 * width_multiplier channels for bottleneck depths (512 * width for
    18/34) with base_filters=64. `return_endpoints=True` returns a dict with 'res2'..'res5'
    and 'pooled'. `base_filters` and `blocks_per_stage` override the depth's defaults for tiny
    variants; `temporal_kernels` holds 4 entries (res2..res5), each an int or one int per block.
    `spatial_strides` are the strides of res2..res5; (1, 1, 1, 1) keeps small inputs (e.g. the
    demo's 32x32 clips) at 8x8 to the end, so pooling stays translation invariant.
    `spatial_dilations` dilate the 3x3 convs of each stage (a stage of stride 1 only); they
    change no variable, so an undilated checkpoint warm-starts a dilated backbone.
    """
    return ResNet3D(**locals())


def last_stage(backbone: keras.Model) -> keras.Model:
    """The backbone up to its last stage: clips [B, T, H, W, 3] -> the res5 map [B, T', H', W', C].

    A functional model over the backbone's own layers (no variable of its own), whatever the
    backbone's `return_endpoints`: the detection head reads this map, not the pooled feature.
    """
    try:
        pooled = backbone.get_layer("pooled")
    except ValueError as e:
        raise ValueError(f"Backbone {backbone.name!r} has no 'pooled' layer whose input is its "
                         f"last stage; build it with build_backbone.") from e
    return keras.Model(backbone.input, pooled.input, name=f"{backbone.name}_last_stage")
