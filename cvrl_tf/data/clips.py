"""The clips of one video, per mode: what build_dataset makes of each parsed example.

`pretrain_clips`: two clips at interval-sampled starts (temporal.py), views 1 and 2 with one
augmentation draw per clip (spatial.py / device_augment.py). `train_clip`: one uniformly placed
clip, random resized crop and flip. `eval_views`: the temporal x spatial views of evaluation,
each distinct frame decoded once. Clips come out as float32 augmented here, or (for the
device) as uint8 with their parameter rows (`augmented`).
"""
import tensorflow as tf

from cvrl_tf.data import device_augment, spatial, temporal


def augmented(clips: tf.Tensor, params: tf.Tensor, on_device: bool) -> dict:
    """uint8 clips [n, T, S, S, 3] and their parameter rows -> the element's clip keys: both
    for the device, or the float32 clips augmented here (the same function the device runs)."""
    if on_device:
        return {"video": clips, device_augment.PARAMS_KEY: params}
    return {"video": device_augment.apply_params(clips, params, batched=False)}


def pretrain_clips(frames, seed, num_frames, stride, crop_size, distribution, power,
                    consistent, aug, on_device):
    """Two clips of one video, video [2, T, S, S, 3]: interval-sampled starts, views 1 and 2."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    length = tf.size(frames)
    starts = temporal.sample_clip_starts(length, num_frames, stride, distribution, power,
                                         seed=seeds[0])
    clips, params = [], []
    for view in (1, 2):
        indices = temporal.clip_frame_indices(starts[view - 1], length, num_frames, stride)
        clip, row = spatial.clip_and_params(tf.gather(frames, indices), crop_size, view,
                                            consistent, seeds[view], **aug)
        clips.append(clip)
        params.append(row)
    return augmented(tf.stack(clips), tf.stack(params), on_device)


def train_clip(frames, seed, num_frames, stride, crop_size, consistent, aug, on_device):
    """One uniformly placed clip, video [T, S, S, 3], random resized crop + flip (+ color if
    asked)."""
    start_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    length = tf.size(frames)
    start = temporal.sample_clip_start(length, num_frames, stride, seed=start_seed)
    indices = temporal.clip_frame_indices(start, length, num_frames, stride)
    clip, row = spatial.clip_and_params(tf.gather(frames, indices), crop_size, 1, consistent,
                                        aug_seed, **aug)
    return {k: v[0] for k, v in augmented(clip[tf.newaxis], row[tf.newaxis],
                                            on_device).items()}


def eval_views(frames, num_frames, stride, crop_size, num_temporal, num_spatial):
    """All eval views, [Vt * Vs, T, S, S, 3]: each distinct frame decoded once, only the
    union of the square crops decoded."""
    length = tf.size(frames)
    starts = temporal.eval_clip_starts(length, num_frames, stride, num_temporal)
    indices = tf.reshape(temporal.clip_frame_indices(starts, length, num_frames, stride), [-1])
    unique, position = tf.unique(indices)
    jpegs = tf.gather(frames, unique)
    shape = tf.io.extract_jpeg_shape(jpegs[0])
    windows = spatial.eval_crop_windows(shape[0], shape[1], num_spatial)
    top_left = tf.reduce_min(windows[:, :2], axis=0)
    bottom_right = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
    union = tf.concat([top_left, bottom_right - top_left], 0)
    decoded = spatial.decode_windows(jpegs, union)
    views = []
    for v in range(num_spatial):
        win = tf.concat([windows[v, :2] - top_left, windows[v, 2:]], 0)
        crops = spatial.crop_and_resize(decoded, win[tf.newaxis], crop_size, same_window=True)
        views.append(tf.reshape(tf.gather(crops, position),
                                [num_temporal, num_frames, crop_size, crop_size, 3]))
    video = tf.reshape(tf.stack(views, axis=1),
                       [num_temporal * num_spatial, num_frames, crop_size, crop_size, 3])
    return video
