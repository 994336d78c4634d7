"""Temporally consistent spatial augmentation (SPEC.md): one random draw per clip.

The pieces are separate so the pipeline can sample the crop window first, JPEG-decode only that
window (`decode_crop_and_resize`), then run the same remaining chain (`augment_frames`) that
`augment_clip` runs on already decoded frames. `consistent=False` (the paper's ablation) draws
every random parameter per frame by running the same one-draw chain on each frame separately.
All randomness is stateless, seeded by a [2] int tensor (None draws a fresh seed).
"""
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf.data.temporal import SeedLike, resolve_seed

# The paper's view-dependent probabilities: view 1 always blurred, only view 2 solarized.
VIEW_BLUR_PROB = {1: 1.0, 2: 0.1}
VIEW_SOLARIZE_PROB = {1: 0.0, 2: 0.2}
# Names of the augmentation strengths and probabilities (keyword arguments of augment_frames).
AUGMENT_KWARGS = ("flip_prob", "color_jitter_prob", "color_strength", "brightness", "contrast",
                  "saturation", "hue", "grayscale_prob", "blur_prob", "blur_sigma_range",
                  "blur_kernel_fraction", "solarize_prob", "solarize_threshold")


def sample_crop_window(seed: SeedLike, image_height, image_width,
                       area_range: Sequence[float] = (0.3, 1.0),
                       aspect_ratio_range: Sequence[float] = (0.5, 2.0),
                       max_attempts: int = 100) -> tf.Tensor:
    """A random resized crop window, int32 [4] = (y, x, h, w); the full frame if all
    max_attempts fail (the bounding-box sampler's fallback)."""
    image_size = tf.stack([tf.cast(image_height, tf.int32), tf.cast(image_width, tf.int32), 3])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_size, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=resolve_seed(seed), min_object_covered=0.0,
        aspect_ratio_range=list(aspect_ratio_range), area_range=list(area_range),
        max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def sample_crop_windows(seed: SeedLike, image_height, image_width, num_frames: int,
                        consistent: bool = True, **window_kwargs) -> tf.Tensor:
    """Crop windows for a clip, int32 [T, 4]: one window repeated (consistent) or one per frame."""
    seed = resolve_seed(seed)
    if consistent:
        window = sample_crop_window(seed, image_height, image_width, **window_kwargs)
        return tf.tile(window[tf.newaxis], [num_frames, 1])
    seeds = tf.random.experimental.stateless_split(seed, num_frames)
    return tf.map_fn(lambda s: sample_crop_window(s, image_height, image_width, **window_kwargs),
                     seeds, fn_output_signature=tf.TensorSpec([4], tf.int32))


def eval_crop_windows(image_height, image_width, num_views: int) -> tf.Tensor:
    """Square crops of the short side, int32 [V, 4]: V=1 center, V=3 left/center/right
    (top/center/bottom for portrait frames), larger V evenly spaced along the long side."""
    h = tf.cast(image_height, tf.int32)
    w = tf.cast(image_width, tf.int32)
    side = tf.minimum(h, w)
    if num_views == 1:
        frac = tf.constant([0.5])
    else:
        frac = tf.linspace(0.0, 1.0, num_views)
    y = tf.cast(tf.round(frac * tf.cast(h - side, tf.float32)), tf.int32)
    x = tf.cast(tf.round(frac * tf.cast(w - side, tf.float32)), tf.int32)
    sides = tf.fill([num_views], side)
    return tf.stack([y, x, sides, sides], axis=1)


def _resize(image: tf.Tensor, crop_size: int) -> tf.Tensor:
    """uint8 crop -> float32 [..., S, S, 3] in [0, 1], bilinear (the one resize every path uses)."""
    resized = tf.image.resize(tf.cast(image, tf.float32), [crop_size, crop_size], "bilinear")
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def crop_and_resize(frames: tf.Tensor, windows: tf.Tensor, crop_size: int,
                    same_window: bool = False) -> tf.Tensor:
    """Crops decoded uint8 frames [T, H, W, 3] with windows [T, 4] and resizes to crop_size.

    same_window=True promises all rows of windows are equal (a consistent clip): one slice and
    one batched resize instead of one per frame; the result is the same.
    """
    if same_window:
        win = windows[0]
        return _resize(frames[:, win[0]:win[0] + win[2], win[1]:win[1] + win[3]], crop_size)

    def one(args):
        frame, win = args
        return _resize(frame[win[0]:win[0] + win[2], win[1]:win[1] + win[3]], crop_size)
    return tf.map_fn(one, (frames, windows),
                     fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.float32))


# libjpeg's partial decode differs from a full decode at the crop border (chroma upsampling
# needs the neighbouring pixels), so decode a margin of one MCU (at most 16 px) more and slice.
_DECODE_MARGIN = 16


def _decode_region(window: tf.Tensor, image_size: tf.Tensor) -> tuple:
    """The window grown by the margin and clipped to the image, and the window's offset in it."""
    window = tf.cast(window, tf.int32)
    start = tf.maximum(window[:2] - _DECODE_MARGIN, 0)
    end = tf.minimum(window[:2] + window[2:] + _DECODE_MARGIN, image_size)
    return tf.concat([start, end - start], 0), window[:2] - start


def decode_window(jpeg: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """uint8 [h, w, 3] pixels of window (y, x, h, w) of one JPEG, decoding only around it.

    Bit-identical to slicing a full `decode_jpeg`; grayscale JPEGs come out with 3 channels.
    """
    return decode_windows(jpeg[tf.newaxis], window)[0]


def decode_windows(jpegs: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """The same window of every frame of a clip, uint8 [T, h, w, 3]; see `decode_window`.

    The frames of one video share one size (read from the first frame's header).
    """
    window = tf.cast(window, tf.int32)
    region, offset = _decode_region(window, tf.io.extract_jpeg_shape(jpegs[0])[:2])
    decoded = tf.map_fn(lambda j: tf.io.decode_and_crop_jpeg(j, region, channels=3), jpegs,
                        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return decoded[:, offset[0]:offset[0] + window[2], offset[1]:offset[1] + window[3]]


def decode_crop_and_resize(jpegs: tf.Tensor, windows: tf.Tensor, crop_size: int,
                           same_window: bool = False) -> tf.Tensor:
    """Decodes only each frame's window and resizes: float32 [T, S, S, 3].

    Equal to `crop_and_resize` after a full decode (same_window as there).
    """
    if same_window:
        return _resize(decode_windows(jpegs, windows[0]), crop_size)
    image_size = tf.io.extract_jpeg_shape(jpegs[0])[:2]

    def one(args):
        jpeg, win = args
        region, offset = _decode_region(win, image_size)
        crop = tf.io.decode_and_crop_jpeg(jpeg, region, channels=3)
        return _resize(crop[offset[0]:offset[0] + win[2], offset[1]:offset[1] + win[3]],
                       crop_size)
    return tf.map_fn(one, (jpegs, windows),
                     fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.float32))


def random_flip(x: tf.Tensor, seed: SeedLike, prob: float = 0.5) -> tf.Tensor:
    """Flips all frames of x [n, H, W, C] left-right together with probability prob."""
    flip = tf.random.stateless_uniform([], resolve_seed(seed)) < prob
    return tf.cond(flip, lambda: tf.reverse(x, [2]), lambda: x)


def color_jitter(x: tf.Tensor, seed: SeedLike, strength: float = 1.0,
                 brightness: float = 0.8, contrast: float = 0.8, saturation: float = 0.8,
                 hue: float = 0.2) -> tf.Tensor:
    """Brightness, contrast, saturation, hue in a random order, one draw for all frames of x.

    Factors are U[1 - a*strength, 1 + a*strength] (brightness multiplicative, contrast around
    the clip's mean colour), hue delta U[-hue*strength, hue*strength]; values are clipped to
    [0, 1] after each op.
    """
    seeds = tf.random.experimental.stateless_split(resolve_seed(seed), 5)

    def factor(i, amount):
        a = amount * strength
        return tf.random.stateless_uniform([], seeds[i], max(0.0, 1.0 - a), 1.0 + a)

    ops = [
        lambda y: y * factor(0, brightness),
        lambda y: _clip_contrast(y, factor(1, contrast)),
        lambda y: tf.image.adjust_saturation(y, factor(2, saturation)),
        lambda y: tf.image.adjust_hue(
            y, tf.random.stateless_uniform([], seeds[3], -hue * strength, hue * strength)),
    ]
    order = tf.argsort(tf.random.stateless_uniform([len(ops)], seeds[4]))

    def step(i, y):  # One switch in a loop traces each op once (not once per position).
        branches = [lambda f=f: tf.clip_by_value(f(y), 0.0, 1.0) for f in ops]
        return i + 1, tf.ensure_shape(tf.switch_case(order[i], branches), x.shape)

    return tf.while_loop(lambda i, _: i < len(ops), step, (tf.constant(0), x))[1]


def _clip_contrast(x: tf.Tensor, factor) -> tf.Tensor:
    """Contrast around the mean colour of the whole clip (as the reference does), so a clip
    of identical frames stays identical and all frames move alike."""
    mean = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
    return (x - mean) * factor + mean


def grayscale(x: tf.Tensor) -> tf.Tensor:
    """RGB -> gray, kept as 3 equal channels."""
    return tf.tile(tf.image.rgb_to_grayscale(x), [1] * (x.shape.rank - 1) + [3])


def gaussian_blur(x: tf.Tensor, sigma, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of x [n, H, W, 3] with a (2*(kernel_size//2)+1)-tap kernel."""
    radius = max(kernel_size // 2, 1)
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(t) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = x.shape[-1] or 3
    kh = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    kw = tf.reshape(kh, [1, -1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(x, kw, [1, 1, 1, 1], "SAME")


def solarize(x: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """x -> 1 - x where x >= threshold."""
    return tf.where(x >= threshold, 1.0 - x, x)


def _maybe(seed, prob: float, fn, x: tf.Tensor) -> tf.Tensor:
    """Applies fn to x with probability prob (one draw)."""
    if prob <= 0.0:
        return x
    if prob >= 1.0:
        return fn(x)
    apply = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(apply, lambda: fn(x), lambda: x)


def _augment_group(x: tf.Tensor, seed: tf.Tensor, crop_size: int, flip_prob: float,
                   color_jitter_prob: float, color_strength: float, brightness: float,
                   contrast: float, saturation: float, hue: float, grayscale_prob: float,
                   blur_prob: float, blur_sigma_range: Sequence[float],
                   blur_kernel_fraction: float, solarize_prob: float,
                   solarize_threshold: float) -> tf.Tensor:
    """The post-crop chain with ONE draw of every parameter for all frames of x [n, S, S, 3]."""
    s = tf.random.experimental.stateless_split(seed, 7)
    x = random_flip(x, s[0], flip_prob) if flip_prob > 0 else x
    x = _maybe(s[1], color_jitter_prob, lambda y: color_jitter(
        y, s[2], color_strength, brightness, contrast, saturation, hue), x)
    x = _maybe(s[3], grayscale_prob, grayscale, x)
    sigma = tf.random.stateless_uniform([], s[4], blur_sigma_range[0], blur_sigma_range[1])
    kernel_size = max(int(round(crop_size * blur_kernel_fraction)), 1)
    x = _maybe(s[5], blur_prob, lambda y: gaussian_blur(y, sigma, kernel_size), x)
    x = _maybe(s[6], solarize_prob, lambda y: solarize(y, solarize_threshold), x)
    return tf.clip_by_value(x, 0.0, 1.0)


def augment_frames(clip: tf.Tensor, view: int = 1, consistent: bool = True,
                   seed: SeedLike = None, flip_prob: float = 0.5,
                   color_jitter_prob: float = 0.8, color_strength: float = 1.0,
                   brightness: float = 0.8, contrast: float = 0.8, saturation: float = 0.8,
                   hue: float = 0.2, grayscale_prob: float = 0.2,
                   blur_prob: Optional[float] = None,
                   blur_sigma_range: Sequence[float] = (0.1, 2.0),
                   blur_kernel_fraction: float = 0.1, solarize_prob: Optional[float] = None,
                   solarize_threshold: float = 0.5) -> tf.Tensor:
    """Everything after the crop: flip, color jitter (p), grayscale (p), blur (p), solarize (p).

    clip is float32 [T, S, S, 3] in [0, 1]; blur_prob / solarize_prob default to the view's
    values (view 1: blur 1.0, solarize 0.0; view 2: blur 0.1, solarize 0.2).
    """
    if view not in VIEW_BLUR_PROB:
        raise ValueError(f"view must be 1 or 2, got {view!r}.")
    kwargs = dict(
        crop_size=clip.shape[1], flip_prob=flip_prob, color_jitter_prob=color_jitter_prob,
        color_strength=color_strength, brightness=brightness, contrast=contrast,
        saturation=saturation, hue=hue, grayscale_prob=grayscale_prob,
        blur_prob=VIEW_BLUR_PROB[view] if blur_prob is None else blur_prob,
        blur_sigma_range=blur_sigma_range, blur_kernel_fraction=blur_kernel_fraction,
        solarize_prob=VIEW_SOLARIZE_PROB[view] if solarize_prob is None else solarize_prob,
        solarize_threshold=solarize_threshold)
    if kwargs["crop_size"] is None:
        raise ValueError("augment_frames needs a static crop size (clip.shape[1]).")
    seed = resolve_seed(seed)
    if consistent:
        return _augment_group(clip, seed, **kwargs)
    num_frames = tf.shape(clip)[0]
    seeds = tf.random.experimental.stateless_split(seed, num_frames)
    return tf.map_fn(lambda a: _augment_group(a[0][tf.newaxis], a[1], **kwargs)[0],
                     (clip, seeds), fn_output_signature=tf.TensorSpec(clip.shape[1:], tf.float32))


def augment_clip(frames: tf.Tensor, crop_size: int, view: int = 1, consistent: bool = True,
                 seed: SeedLike = None, area_range: Sequence[float] = (0.3, 1.0),
                 aspect_ratio_range: Sequence[float] = (0.5, 2.0), **augment_kwargs
                 ) -> tf.Tensor:
    """CVRL's spatial augmentation of one clip -> float32 [T, S, S, 3] in [0, 1].

    frames: decoded uint8 [T, H, W, 3], or encoded JPEG strings [T], in which case only each
    crop window is decoded; the same seed gives the same result either way. Random resized crop
    (area, aspect ratio), then `augment_frames` (its keyword arguments, listed in
    AUGMENT_KWARGS, carry every other strength and probability).
    """
    unknown = set(augment_kwargs) - set(AUGMENT_KWARGS)
    if unknown:
        raise ValueError(f"Unknown augmentation arguments {sorted(unknown)}; "
                         f"expected some of {AUGMENT_KWARGS}.")
    frames = tf.convert_to_tensor(frames)
    encoded = frames.dtype == tf.string
    if not (encoded and frames.shape.rank == 1) and not (
            frames.dtype == tf.uint8 and frames.shape.rank == 4):
        raise ValueError(f"augment_clip needs uint8 frames [T, H, W, 3] or JPEG strings [T], "
                         f"got {frames.dtype.name} {frames.shape}.")
    crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(resolve_seed(seed)))
    if encoded:
        height_width = tf.io.extract_jpeg_shape(frames[0])[:2]
    else:
        height_width = tf.shape(frames)[1:3]
    windows = sample_crop_windows(crop_seed, height_width[0], height_width[1],
                                  tf.shape(frames)[0], consistent, area_range=area_range,
                                  aspect_ratio_range=aspect_ratio_range)
    if encoded:
        clip = decode_crop_and_resize(frames, windows, crop_size, same_window=consistent)
    else:
        clip = crop_and_resize(frames, windows, crop_size, same_window=consistent)
    clip = tf.ensure_shape(clip, [frames.shape[0], crop_size, crop_size, 3])
    return augment_frames(clip, view, consistent, aug_seed, **augment_kwargs)
