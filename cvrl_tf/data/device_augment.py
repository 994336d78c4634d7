"""CVRL's augmentation after the crop, batched per clip: flip, colour jitter, grayscale, blur,
solarize (the paper's steps 2 and 4-6; docs/DESIGN.md, the recipe), for tf.data or for the
accelerator.

The host draws every random parameter of a clip (`draw_params`: a few scalars from one
stateless seed) and ships them with the uint8 clip as one float32 row, 'aug_params'.
`apply_params` turns clips [N, T, S, S, 3] and their rows into float32 clips in [0, 1], each
clip with its own parameters and no randomness of its own, so the same rows give the same
clips wherever it runs: inside the replicated train step under XLA (build_dataset's
augment_on='device', through `augment_batch`), or in tf.data on the two clips of one video
(augment_on='host'). The settings (AUGMENT_KWARGS) are read once, by the host, so the device
needs none. Parameters drawn per frame ([N, T, width], `consistent=False`) apply per frame.
"""
from typing import Dict, Optional, Sequence

import tensorflow as tf

# The paper's view-dependent probabilities: view 1 always blurred, only view 2 solarized.
VIEW_BLUR_PROB = {1: 1.0, 2: 0.1}
VIEW_SOLARIZE_PROB = {1: 0.0, 2: 0.2}
# Names of the augmentation strengths and probabilities (keyword arguments of draw_params).
AUGMENT_KWARGS = ("flip_prob", "color_jitter_prob", "color_strength", "brightness", "contrast",
                  "saturation", "hue", "grayscale_prob", "blur_prob", "blur_sigma_range",
                  "blur_kernel_fraction", "solarize_prob", "solarize_threshold")
# Batch key of the parameter rows (build_dataset(augment_on='device') emits it).
PARAMS_KEY = "aug_params"

# Layout of a parameter row: flags are 0/1; ORDER..ORDER+3 hold the jitter ops (JITTER_OPS
# indices) in the order they run; the row ends with the normalized 1-D blur kernel.
FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4, 5
ORDER = 6
GRAYSCALE, BLUR, SOLARIZE, SOLARIZE_THRESHOLD = 10, 11, 12, 13
NUM_SCALARS = 14
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's
# Which uniform of draw_params decides what (each flag and factor has its own).
(_U_FLIP, _U_JITTER, _U_BRIGHTNESS, _U_CONTRAST, _U_SATURATION, _U_HUE, _U_GRAYSCALE, _U_SIGMA,
 _U_BLUR, _U_SOLARIZE) = range(10)
_NUM_UNIFORMS = 10


def blur_kernel_size(crop_size: int, blur_kernel_fraction: float = 0.1) -> int:
    """Taps of the blur kernel: 2 * (round(crop_size * fraction) // 2) + 1, at least 3."""
    return 2 * max(int(round(crop_size * blur_kernel_fraction)) // 2, 1) + 1


def params_width(crop_size: int, blur_kernel_fraction: float = 0.1) -> int:
    """Length of one parameter row for clips of crop_size."""
    return NUM_SCALARS + blur_kernel_size(crop_size, blur_kernel_fraction)


def _gaussian_taps(sigma: tf.Tensor, num_taps: int) -> tf.Tensor:
    """Normalized Gaussian kernels [..., num_taps] for sigmas [...]."""
    radius = num_taps // 2
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-tf.square(t) / (2.0 * tf.square(sigma[..., tf.newaxis])))
    return taps / tf.reduce_sum(taps, axis=-1, keepdims=True)


def draw_params(seed: tf.Tensor, view: int, crop_size: int, num_frames: Optional[int] = None,
                flip_prob: float = 0.5, color_jitter_prob: float = 0.8,
                color_strength: float = 1.0, brightness: float = 0.8, contrast: float = 0.8,
                saturation: float = 0.8, hue: float = 0.2, grayscale_prob: float = 0.2,
                blur_prob: Optional[float] = None,
                blur_sigma_range: Sequence[float] = (0.1, 2.0),
                blur_kernel_fraction: float = 0.1, solarize_prob: Optional[float] = None,
                solarize_threshold: float = 0.5) -> tf.Tensor:
    """One clip's random parameters, float32 [width] (or [num_frames, width]: one draw per
    frame, the `consistent=False` ablation), from a [2] int stateless seed.

    Each op is applied with its probability; jitter factors are U[1 - a*strength,
    1 + a*strength] (a = brightness, contrast, saturation; clipped at 0), the hue delta
    U[-hue*strength, hue*strength], the four jitter ops in a random order, the blur sigma
    U[blur_sigma_range]. blur_prob / solarize_prob default to the view's (VIEW_BLUR_PROB,
    VIEW_SOLARIZE_PROB).
    """
    if view not in VIEW_BLUR_PROB:
        raise ValueError(f"view must be 1 or 2, got {view!r}.")
    blur_prob = VIEW_BLUR_PROB[view] if blur_prob is None else blur_prob
    solarize_prob = VIEW_SOLARIZE_PROB[view] if solarize_prob is None else solarize_prob
    shape = [] if num_frames is None else [num_frames]
    # One op draws every uniform: one per flag and factor (_U_*), then 4 sorted into the order.
    u = tf.unstack(tf.random.stateless_uniform(shape + [_NUM_UNIFORMS + 4],
                                               tf.cast(seed, tf.int64)), axis=-1)

    def flag(i, prob):
        return tf.cast(u[i] < prob, tf.float32)

    def factor(i, amount):
        a = amount * color_strength
        low = max(0.0, 1.0 - a)
        return low + u[i] * (1.0 + a - low)

    hue_delta = (2.0 * u[_U_HUE] - 1.0) * hue * color_strength
    order = tf.argsort(tf.stack(u[_NUM_UNIFORMS:], axis=-1), axis=-1)
    sigma = blur_sigma_range[0] + u[_U_SIGMA] * (blur_sigma_range[1] - blur_sigma_range[0])
    scalars = tf.stack([
        flag(_U_FLIP, flip_prob), flag(_U_JITTER, color_jitter_prob),
        factor(_U_BRIGHTNESS, brightness), factor(_U_CONTRAST, contrast),
        factor(_U_SATURATION, saturation), hue_delta], axis=-1)
    flags = tf.stack([flag(_U_GRAYSCALE, grayscale_prob), flag(_U_BLUR, blur_prob),
                      flag(_U_SOLARIZE, solarize_prob),
                      tf.fill(tf.shape(sigma), float(solarize_threshold))], axis=-1)
    taps = _gaussian_taps(sigma, blur_kernel_size(crop_size, blur_kernel_fraction))
    return tf.concat([scalars, tf.cast(order, tf.float32), flags, taps], axis=-1)


def _column(params: tf.Tensor, index: int) -> tf.Tensor:
    """One parameter of every clip, shaped [G, 1, 1, 1, 1] to broadcast over its clip."""
    return tf.reshape(params[:, index], [-1, 1, 1, 1, 1])


def _select(on: tf.Tensor, fn, source: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """fn(source) in the clips where `on`, target elsewhere; fn is skipped when no clip needs it
    (a cond, which XLA compiles too)."""
    return tf.cond(tf.reduce_any(on), lambda: tf.where(on, fn(source), target), lambda: target)


def _contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Contrast around the mean colour of each clip (all its frames), as the reference does."""
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * factor + mean


def _saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_saturation with a factor per clip, without the HSV round trip: scaling
    HSV saturation s to min(s * factor, 1) at fixed hue and value moves each channel c to
    v - (v - c) * s' / s (v = max, s = (v - min) / v)."""
    v = tf.reduce_max(x, axis=-1, keepdims=True)
    s = tf.math.divide_no_nan(v - tf.reduce_min(x, axis=-1, keepdims=True), v)
    scale = tf.math.divide_no_nan(tf.minimum(s * factor, 1.0), s)
    return v - (v - x) * scale


def _hue(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_hue with a delta per clip (hue rotated by delta turns, in HSV)."""
    hsv = tf.image.rgb_to_hsv(x)
    h = hsv[..., :1] + delta
    return tf.image.hsv_to_rgb(tf.concat([h - tf.floor(h), hsv[..., 1:]], axis=-1))


def _color_jitter(x: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation and hue in each clip's own order, clipped to [0, 1]
    after each op. At each of the 4 positions every op some clip needs is computed once."""
    ops = (lambda y: y * _column(params, BRIGHTNESS),
           lambda y: _contrast(y, _column(params, CONTRAST)),
           lambda y: _saturation(y, _column(params, SATURATION)),
           lambda y: _hue(y, _column(params, HUE)))
    for position in range(len(ops)):
        which = _column(params, ORDER + position)
        out = x
        for index, op in enumerate(ops):
            out = _select(tf.equal(which, float(index)),
                          lambda y, op=op: tf.clip_by_value(op(y), 0.0, 1.0), x, out)
        x = out
    return x


def _grayscale(x: tf.Tensor) -> tf.Tensor:
    """RGB -> gray (tf.image.rgb_to_grayscale's weights), kept as 3 equal channels."""
    gray = tf.reduce_sum(x * tf.constant(_GRAY_WEIGHTS, x.dtype), axis=-1, keepdims=True)
    return tf.broadcast_to(gray, tf.shape(x))


def _blur(x: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    """Separable blur of clips x [G, F, H, W, C], clip g with its own 1-D kernel taps[g]
    ('SAME', zero padding): the clips become channels of one depthwise convolution."""
    shape = tf.shape(x)
    channels = x.shape[-1]
    num_taps = taps.shape[-1]
    y = tf.transpose(x, [1, 2, 3, 0, 4])
    y = tf.reshape(y, tf.stack([shape[1], shape[2], shape[3], -1]))
    kernel = tf.transpose(tf.reshape(tf.repeat(taps, channels, axis=0), [-1, num_taps]))
    y = tf.nn.depthwise_conv2d(y, kernel[:, tf.newaxis, :, tf.newaxis], [1, 1, 1, 1], "SAME")
    y = tf.nn.depthwise_conv2d(y, kernel[tf.newaxis, :, :, tf.newaxis], [1, 1, 1, 1], "SAME")
    y = tf.reshape(y, tf.stack([shape[1], shape[2], shape[3], shape[0], channels]))
    return tf.transpose(y, [3, 0, 1, 2, 4])


def _one_clip(x: tf.Tensor, row: tf.Tensor) -> tf.Tensor:
    """The chain on one clip [F, S, S, 3] with scalar parameters: each op behind a cond and
    the jitter ops in a switch, with TF's fused saturation / hue kernels (fast on a CPU)."""
    def maybe(index, fn, y):
        return tf.cond(row[index] > 0.5, lambda: fn(y), lambda: y)

    def jitter(y):
        ops = (lambda z: z * row[BRIGHTNESS],
               lambda z: _contrast(z[tf.newaxis], row[CONTRAST])[0],
               lambda z: tf.image.adjust_saturation(z, row[SATURATION]),
               lambda z: tf.image.adjust_hue(z, row[HUE]))
        order = tf.cast(row[ORDER:ORDER + len(ops)], tf.int32)

        def step(i, z):  # One switch in a loop traces each op once.
            branches = [lambda op=op: tf.clip_by_value(op(z), 0.0, 1.0) for op in ops]
            return i + 1, tf.ensure_shape(tf.switch_case(order[i], branches), y.shape)
        return tf.while_loop(lambda i, _: i < len(ops), step, (tf.constant(0), y))[1]

    x = maybe(FLIP, lambda y: tf.reverse(y, [2]), x)
    x = maybe(JITTER, jitter, x)
    x = maybe(GRAYSCALE, lambda y: _grayscale(y[tf.newaxis])[0], x)
    x = maybe(BLUR, lambda y: _blur(y[tf.newaxis], row[tf.newaxis, NUM_SCALARS:])[0], x)
    x = maybe(SOLARIZE, lambda y: tf.where(y >= row[SOLARIZE_THRESHOLD], 1.0 - y, y), x)
    return x


def _accelerator_present() -> bool:
    return bool(tf.config.list_logical_devices("TPU") or tf.config.list_logical_devices("GPU"))


def apply_params(video: tf.Tensor, params: tf.Tensor, batched: Optional[bool] = None
                 ) -> tf.Tensor:
    """Clips [N, T, S, S, 3] (uint8, or float in [0, 1]) and their parameter rows [N, width]
    (or [N, T, width], one per frame) -> float32 clips in [0, 1]: flip, colour jitter,
    grayscale, blur, solarize, each where the clip's (or frame's) flag says so.

    batched=True runs each op once over the whole batch with per-clip parameters (for XLA
    and accelerators: no per-clip control flow); batched=False loops over the clips and skips
    the ops a clip does not get (several times cheaper on a CPU, where every unfused op is a
    pass over memory). Both give the same clips up to float rounding. None: batched when a
    TPU or GPU is present.
    """
    video = tf.convert_to_tensor(video)
    params = tf.cast(tf.convert_to_tensor(params), tf.float32)
    if video.shape.rank != 5 or params.shape.rank not in (2, 3) or video.shape[-1] != 3:
        raise ValueError(f"apply_params needs clips [N, T, S, S, 3] and parameters [N, width] "
                         f"or [N, T, width], got {video.shape} and {params.shape}.")
    num_taps = (params.shape[-1] or 0) - NUM_SCALARS
    if num_taps < 3 or num_taps % 2 == 0:
        raise ValueError(f"Parameter rows of width {params.shape[-1]} do not end with an odd "
                         f"blur kernel of 3 or more taps after {NUM_SCALARS} scalars.")
    if batched is None:
        batched = _accelerator_present()
    if video.dtype == tf.uint8:
        x = tf.cast(video, tf.float32) / 255.0
    else:
        x = tf.cast(video, tf.float32)
    shape = tf.shape(x)
    if params.shape.rank == 3:  # One draw per frame: every frame is a group of its own.
        x = tf.reshape(x, tf.concat([[-1, 1], shape[2:]], 0))
        params = tf.reshape(params, [-1, params.shape[-1]])
    if not batched:
        x = tf.map_fn(lambda a: _one_clip(a[0], a[1]), (x, params),
                      fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
        return tf.reshape(tf.clip_by_value(x, 0.0, 1.0), shape)
    x = _select(_column(params, FLIP) > 0.5, lambda y: tf.reverse(y, [3]), x, x)
    x = _select(_column(params, JITTER) > 0.5, lambda y: _color_jitter(y, params), x, x)
    x = _select(_column(params, GRAYSCALE) > 0.5, _grayscale, x, x)
    x = _select(_column(params, BLUR) > 0.5, lambda y: _blur(y, params[:, NUM_SCALARS:]), x, x)
    solarize = tf.logical_and(_column(params, SOLARIZE) > 0.5,
                              x >= _column(params, SOLARIZE_THRESHOLD))
    x = tf.where(solarize, 1.0 - x, x)
    return tf.reshape(tf.clip_by_value(x, 0.0, 1.0), shape)


def views_to_rows(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """A pretraining batch per video (video [B, 2, ...], aug_params [B, 2, ...], any other key
    [B, ...]) -> per clip: [2B, ...] with view 1 in rows 0..B-1 and view 2 in rows B..2B-1,
    'label' and 'id' repeated; the per-video bookkeeping (id_hash, position, skipped,
    last_bad: trainer.INPUT_KEYS) stays [B, ...], one row per video read."""
    rows = {}
    for key, value in batch.items():
        if key in ("video", PARAMS_KEY):
            rows[key] = tf.concat([value[:, 0], value[:, 1]], 0)
        elif key in ("label", "id"):
            rows[key] = tf.concat([value, value], 0)
        else:
            rows[key] = value
    return rows


def augment_batch(batch: Dict[str, tf.Tensor], batched: Optional[bool] = None
                  ) -> Dict[str, tf.Tensor]:
    """The device half of augment_on='device' -> the same dict with 'video' float32 in [0, 1]
    and no 'aug_params'. A batch without 'aug_params' (augment_on='host') comes back unchanged.

    Pretraining batches come per video, {'video': uint8 [B, 2, T, S, S, 3], 'aug_params':
    [B, 2, width] (or [B, 2, T, width] per frame), 'label': [B], ...}, and leave as the [2B]
    rows of views_to_rows; classifier batches ('train' mode) come as video [B, T, S, S, 3]
    with aug_params [B, width] and keep their rows. Pure TensorFlow with static shapes: call
    it in the replica step (jit_compile works). batched: see apply_params (default: batched
    when a TPU or GPU is present).
    """
    if PARAMS_KEY not in batch:
        return batch
    if batch["video"].shape.rank == 6:  # Pretraining: two views per video.
        batch = views_to_rows(batch)
    out = {k: v for k, v in batch.items() if k != PARAMS_KEY}
    out["video"] = apply_params(batch["video"], batch[PARAMS_KEY], batched)
    return out


def flip_boxes(boxes: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Boxes [..., M, 4] (normalized ymin, xmin, ymax, xmax) of clips with parameter rows
    [..., width], mirrored (x -> 1 - x) where the row flips its clip: what a flip does to the
    boxes of a detection clip (the other ops are photometric and leave boxes alone)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    mirrored = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
    flip = params[..., FLIP, tf.newaxis, tf.newaxis] > 0.5
    return tf.where(flip, mirrored, boxes)

