"""Random resized crop of a clip, decoding only the crop window.

`crop_clip` samples the crop window (one per clip; one per frame with consistent=False),
JPEG-decodes only that window (at a reduced DCT scale when the window is at least twice the
crop size on both sides), resizes it bilinearly to the crop size and rounds to uint8: the host's
share in both of build_dataset's augment_on modes. `clip_and_params` adds the draw of the rest
of the chain (device_augment: flip, colour jitter, grayscale, blur, solarize) and
`augment_clip` applies it, so one clip gets the same result on the host as on the device.
Eval crops (`crop_and_resize`) stay float32. All randomness is stateless, seeded by a [2] int
tensor (None draws a fresh seed).
"""
from typing import Optional, Sequence

import tensorflow as tf

from cvrl_tf.data import device_augment
from cvrl_tf.data.device_augment import AUGMENT_KWARGS, VIEW_BLUR_PROB, VIEW_SOLARIZE_PROB
from cvrl_tf.data.temporal import SeedLike, resolve_seed

__all__ = ["AUGMENT_KWARGS", "VIEW_BLUR_PROB", "VIEW_SOLARIZE_PROB", "sample_crop_window",
           "sample_crop_windows", "eval_crop_windows", "crop_and_resize", "decode_window",
           "decode_windows", "decode_crop_and_resize", "resize_frames", "crop_clip",
           "clip_and_params",
           "augment_frames", "augment_clip"]
# Reduced DCT scales libjpeg decodes at (TF's `ratio`); see decode_crop_and_resize.
DCT_RATIOS = (1, 2, 4, 8)


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


def _resize(image: tf.Tensor, size, quantize: bool = False) -> tf.Tensor:
    """Bilinear resize of a uint8 crop to [..., S, S, 3] (size S) or [..., H, W, 3] (size
    (H, W)), the one resize every path uses: float32 in [0, 1], or with quantize uint8 rounded
    to the nearest level."""
    size = [size, size] if isinstance(size, int) else list(size)
    if quantize:  # The resize of uint8 pixels stays within [0, 255]: + 0.5 and truncate.
        return tf.cast(tf.image.resize(image, size, "bilinear") + 0.5, tf.uint8)
    resized = tf.image.resize(tf.cast(image, tf.float32), size, "bilinear")
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def resize_frames(jpegs: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Whole JPEG frames decoded and resized to [T, height, width, 3], float32 in [0, 1] (the
    aspect ratio is not kept: normalized box coordinates stay valid)."""
    decoded = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), jpegs,
                        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return tf.ensure_shape(_resize(decoded, (height, width)),
                           [jpegs.shape[0], height, width, 3])


def crop_and_resize(frames: tf.Tensor, windows: tf.Tensor, crop_size: int,
                    same_window: bool = False, quantize: bool = False) -> tf.Tensor:
    """Crops decoded uint8 frames [T, H, W, 3] with windows [T, 4] and resizes to crop_size:
    float32 in [0, 1], or uint8 with quantize.

    same_window=True promises all rows of windows are equal (a consistent clip): one slice and
    one batched resize instead of one per frame; the result is the same.
    """
    if same_window:
        win = windows[0]
        return _resize(frames[:, win[0]:win[0] + win[2], win[1]:win[1] + win[3]], crop_size,
                       quantize)

    def one(args):
        frame, win = args
        return _resize(frame[win[0]:win[0] + win[2], win[1]:win[1] + win[3]], crop_size,
                       quantize)
    dtype = tf.uint8 if quantize else tf.float32
    return tf.map_fn(one, (frames, windows),
                     fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], dtype))


# libjpeg's partial decode differs from a full decode at the crop border (the chroma upsampling
# treats the border as the image edge). Eval crops decode a margin around the window and slice
# it off, so they equal crops of a full decode: 1 px was already exact over 2520 random windows
# of 4:2:0, 4:2:2, 4:1:1, 4:4:4 and grayscale JPEGs; 2 px covers one chroma sample of 4:2:0.
# Random training crops decode exactly the window (the margin and slice cost host time:
# docs/BENCHMARKS.md, "Tried, kept").
_DECODE_MARGIN = 2


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


def _dct_ratio_index(window: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Index into DCT_RATIOS of the coarsest scale at which the window keeps >= crop_size px
    on its short side (0, full scale, unless the window is at least twice the crop size)."""
    if crop_size < 2:
        return tf.constant(0)
    short = tf.minimum(window[2], window[3])
    return tf.reduce_sum(tf.cast(short >= crop_size * tf.constant(DCT_RATIOS[1:]), tf.int32))


def _decode_scaled_resized(jpegs: tf.Tensor, window: tf.Tensor, image_size: tf.Tensor,
                           crop_size: int, ratio: int) -> tf.Tensor:
    """Window (full-scale pixels) of every JPEG decoded at 1/ratio scale (its corners rounded
    to the scaled pixel grid, at most half a scaled pixel off), resized, uint8 [T, S, S, 3]."""
    scaled_size = (image_size + ratio - 1) // ratio  # libjpeg's scaled size rounds up.
    corners = tf.cast(tf.concat([window[:2], window[:2] + window[2:]], 0), tf.float32)
    corners = tf.cast(tf.round(corners / ratio), tf.int32)
    end = tf.minimum(corners[2:], scaled_size)
    region = tf.concat([corners[:2], end - corners[:2]], 0)
    return tf.map_fn(
        lambda j: _resize(tf.io.decode_and_crop_jpeg(j, region, channels=3, ratio=ratio),
                          crop_size, True),
        jpegs, fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.uint8))


def _decode_resized(jpegs: tf.Tensor, window: tf.Tensor, image_size: tf.Tensor,
                    crop_size: int, ratio: int) -> tf.Tensor:
    """Exactly the window of every JPEG decoded (at 1/ratio scale if ratio > 1), resized,
    uint8. Frame by frame, so each decoded window is resized while it is in cache."""
    if ratio > 1:
        return _decode_scaled_resized(jpegs, window, image_size, crop_size, ratio)
    return tf.map_fn(
        lambda j: _resize(tf.io.decode_and_crop_jpeg(j, window, channels=3), crop_size, True),
        jpegs, fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.uint8))


def decode_crop_and_resize(jpegs: tf.Tensor, windows: tf.Tensor, crop_size: int,
                           same_window: bool = False) -> tf.Tensor:
    """Decodes exactly each frame's window, resizes and rounds: uint8 [T, S, S, 3].

    Equal to `crop_and_resize(..., quantize=True)` of a full decode (same_window as there)
    except in the outer 1-2 pixels of the window, which libjpeg's partial decode upsamples
    chroma at as if they were the image edge (a few levels; `decode_windows` decodes a margin
    more for bit-exact eval crops). A window at least r = 2, 4 or 8 times the crop size on its
    short side is decoded at 1/r scale (libjpeg's DCT scaling: r^2 times fewer pixels to
    transform; the entropy decoding stays, so decode + resize take somewhat less at JPEG
    quality 90: docs/BENCHMARKS.md) and resized; DCT scaling low-passes, so such crops are
    closer to an antialiased resize of the full decode than a plain bilinear one is
    (tests/test_spatial.py).
    """
    windows = tf.cast(windows, tf.int32)
    image_size = tf.io.extract_jpeg_shape(jpegs[0])[:2]

    def one_window(frames, window):
        branches = [lambda r=r: _decode_resized(frames, window, image_size, crop_size, r)
                    for r in DCT_RATIOS]
        return tf.switch_case(_dct_ratio_index(window, crop_size), branches)

    if same_window:
        return one_window(jpegs, windows[0])
    return tf.map_fn(lambda a: one_window(a[0][tf.newaxis], a[1])[0], (jpegs, windows),
                     fn_output_signature=tf.TensorSpec([crop_size, crop_size, 3], tf.uint8))


def _check_frames(frames: tf.Tensor) -> bool:
    """True for JPEG strings [T], False for uint8 frames [T, H, W, 3]; ValueError otherwise."""
    if frames.dtype == tf.string and frames.shape.rank == 1:
        return True
    if frames.dtype == tf.uint8 and frames.shape.rank == 4:
        return False
    raise ValueError(f"Clips need uint8 frames [T, H, W, 3] or JPEG strings [T], got "
                     f"{frames.dtype.name} {frames.shape}.")


def crop_clip(frames: tf.Tensor, crop_size: int, consistent: bool = True,
              seed: SeedLike = None, area_range: Sequence[float] = (0.3, 1.0),
              aspect_ratio_range: Sequence[float] = (0.5, 2.0)) -> tf.Tensor:
    """Random resized crop of a clip -> uint8 [T, S, S, 3].

    frames: decoded uint8 [T, H, W, 3], or JPEG strings [T], in which case only the crop
    window is decoded (see decode_crop_and_resize). One window for the clip, or one per frame
    with consistent=False; bilinear resize to crop_size, rounded to uint8.
    """
    frames = tf.convert_to_tensor(frames)
    encoded = _check_frames(frames)
    if encoded:
        height_width = tf.io.extract_jpeg_shape(frames[0])[:2]
    else:
        height_width = tf.shape(frames)[1:3]
    windows = sample_crop_windows(resolve_seed(seed), height_width[0], height_width[1],
                                  tf.shape(frames)[0], consistent, area_range=area_range,
                                  aspect_ratio_range=aspect_ratio_range)
    if encoded:
        clip = decode_crop_and_resize(frames, windows, crop_size, same_window=consistent)
    else:
        clip = crop_and_resize(frames, windows, crop_size, same_window=consistent,
                               quantize=True)
    return tf.ensure_shape(clip, [frames.shape[0], crop_size, crop_size, 3])


def _check_augment_kwargs(augment_kwargs: dict) -> None:
    unknown = set(augment_kwargs) - set(AUGMENT_KWARGS)
    if unknown:
        raise ValueError(f"Unknown augmentation arguments {sorted(unknown)}; "
                         f"expected some of {AUGMENT_KWARGS}.")


def clip_and_params(frames: tf.Tensor, crop_size: int, view: int = 1, consistent: bool = True,
                    seed: SeedLike = None, area_range: Sequence[float] = (0.3, 1.0),
                    aspect_ratio_range: Sequence[float] = (0.5, 2.0), **augment_kwargs
                    ) -> tuple:
    """The host's share of one clip: (uint8 [T, S, S, 3] from `crop_clip`, float32 parameter
    row [width], or [T, width] with consistent=False, from device_augment.draw_params)."""
    _check_augment_kwargs(augment_kwargs)
    if view not in VIEW_BLUR_PROB:
        raise ValueError(f"view must be 1 or 2, got {view!r}.")
    crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(resolve_seed(seed)))
    clip = crop_clip(frames, crop_size, consistent, crop_seed, area_range, aspect_ratio_range)
    num_frames = None if consistent else (clip.shape[0] or tf.shape(clip)[0])
    params = device_augment.draw_params(aug_seed, view, crop_size, num_frames, **augment_kwargs)
    return clip, params


def augment_frames(clip: tf.Tensor, view: int = 1, consistent: bool = True,
                   seed: SeedLike = None, **augment_kwargs) -> tf.Tensor:
    """Everything after the crop (flip, colour jitter, grayscale, blur, solarize, each with its
    probability) on a clip float32 [T, S, S, 3] in [0, 1] or uint8; see draw_params."""
    _check_augment_kwargs(augment_kwargs)
    clip = tf.convert_to_tensor(clip)
    if clip.shape.rank != 4 or clip.shape[1] is None:
        raise ValueError(f"augment_frames needs a clip [T, S, S, 3] with a static S, got "
                         f"{clip.shape}.")
    num_frames = None if consistent else (clip.shape[0] or tf.shape(clip)[0])
    params = device_augment.draw_params(resolve_seed(seed), view, clip.shape[1], num_frames,
                                        **augment_kwargs)
    return device_augment.apply_params(clip[tf.newaxis], params[tf.newaxis], batched=False)[0]


def augment_clip(frames: tf.Tensor, crop_size: int, view: int = 1, consistent: bool = True,
                 seed: SeedLike = None, area_range: Sequence[float] = (0.3, 1.0),
                 aspect_ratio_range: Sequence[float] = (0.5, 2.0), **augment_kwargs
                 ) -> tf.Tensor:
    """CVRL's spatial augmentation of one clip -> float32 [T, S, S, 3] in [0, 1]:
    `clip_and_params`, then device_augment.apply_params, as augment_on='host' does.

    frames: decoded uint8 [T, H, W, 3] or JPEG strings [T]; augment_kwargs (AUGMENT_KWARGS)
    carry every strength and probability after the crop.
    """
    clip, params = clip_and_params(frames, crop_size, view, consistent, seed, area_range,
                                   aspect_ratio_range, **augment_kwargs)
    return device_augment.apply_params(clip[tf.newaxis], params[tf.newaxis], batched=False)[0]
