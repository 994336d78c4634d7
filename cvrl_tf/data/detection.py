"""The detection clip of one keyframe (build_dataset's modes 'detect' and 'detect_eval', AVA):
the clip around the keyframe, its person boxes in the clip's frame with their multi-hot
actions, padded to a fixed number of boxes with a mask, so every batch has static shapes.

Training ('detect'): the ground-truth boxes (optionally plus proposals above a score, which
take the actions of the ground-truth box they overlap at IoU >= PROPOSAL_LABEL_IOU, as
SlowFast's `iou90` proposal lists do), one random resized crop and flip for the whole clip
(the boxes cropped and flipped with it), no colour unless asked. Evaluation ('detect_eval'):
the whole frame resized to a fixed size (normalized boxes stay valid), the proposals above a
score, best first, as the boxes to classify, and the ground truth beside them for the frame
mAP. Boxes are normalized [ymin, xmin, ymax, xmax] throughout.
"""
import tensorflow as tf

from cvrl_tf.data import clips, device_augment, schema, spatial, stream

PROPOSAL_LABEL_IOU = 0.9
KEY_BYTES = 64  # An evaluation element's keyframe key as bytes: numbers cross to any device.


def _parse(serialized: tf.Tensor, default_id: tf.Tensor) -> dict:
    """A detection record as a parsed example; 'label' holds its action indices, so the
    pipeline's checks refuse an action outside [0, num_classes)."""
    del default_id  # Detection records always carry their keyframe key.
    example = schema.parse_detection_example(serialized)
    return dict(example, label=example["gt_label_index"])


def _empty(default_id: tf.Tensor) -> dict:
    boxes = tf.zeros([0, 4], tf.float32)
    ints = tf.zeros([0], tf.int32)
    return {"frames": tf.zeros([0], tf.string), "id": default_id, "label": ints,
            "keyframe_index": tf.constant(0), "timestamp": tf.constant(0), "gt_boxes": boxes,
            "gt_label_index": ints, "gt_label_box": ints, "proposals": boxes,
            "proposal_scores": tf.zeros([0], tf.float32)}


PARSER = stream.Parser(parse=_parse, empty=_empty)


def keyframe_indices(length: tf.Tensor, keyframe: tf.Tensor, num_frames: int,
                     stride: int) -> tf.Tensor:
    """Frame indices [T] of the clip around the keyframe, from keyframe - T * stride / 2 as
    SlowFast's AVA loader takes them, clamped to the stored window (frames past its ends
    repeat the edge frame, as the converter's windows do)."""
    start = keyframe - (num_frames * stride) // 2
    indices = start + tf.range(num_frames) * stride
    return tf.clip_by_value(indices, 0, tf.maximum(length - 1, 0))


def multi_hot(label_index: tf.Tensor, label_box: tf.Tensor, num_boxes: tf.Tensor,
              num_classes: int) -> tf.Tensor:
    """The actions of each box, float32 [num_boxes, num_classes], from (box, action) pairs."""
    pairs = tf.stack([label_box, label_index], axis=1)
    hot = tf.scatter_nd(pairs, tf.ones_like(label_index, tf.float32),
                        tf.stack([num_boxes, num_classes]))
    return tf.ensure_shape(tf.minimum(hot, 1.0), [None, num_classes])


def key_bytes(key: tf.Tensor) -> tf.Tensor:
    """A keyframe key ('video_id,0902') as uint8 [KEY_BYTES], zero-padded (`key_text` reads
    it back): evaluation outputs carry it through the replicas, which take no strings."""
    padding = tf.strings.reduce_join(tf.fill([KEY_BYTES], "\0"))
    raw = tf.io.decode_raw(tf.strings.substr(tf.strings.join([key, padding]), 0, KEY_BYTES),
                           tf.uint8)
    return tf.ensure_shape(raw, [KEY_BYTES])


def key_text(row) -> str:
    """The key `key_bytes` encoded, from one row of uint8 (NumPy or a tensor)."""
    return bytes(bytearray(list(row))).rstrip(b"\0").decode()


def iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU [N, M] of normalized boxes a [N, 4] and b [M, 4]."""
    a, b = a[:, tf.newaxis], b[tf.newaxis]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    inter = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)
    area = lambda x: tf.reduce_prod(tf.maximum(x[..., 2:] - x[..., :2], 0.0), axis=-1)  # noqa
    return inter / tf.maximum(area(a) + area(b) - inter, 1e-12)


def scored_proposals(example: dict, min_score: float) -> tuple:
    """(proposals [P, 4], scores [P]) scoring at least min_score, best first."""
    keep = example["proposal_scores"] >= min_score
    boxes = tf.boolean_mask(example["proposals"], keep)
    scores = tf.boolean_mask(example["proposal_scores"], keep)
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    return tf.gather(boxes, order), tf.gather(scores, order)


def _train_boxes(example: dict, num_classes: int, proposal_min_score) -> tuple:
    """(boxes [N, 4], actions [N, C]) to train on: the ground truth, plus proposals above
    proposal_min_score (None: none) labelled by the ground-truth box they overlap most, when
    at IoU >= PROPOSAL_LABEL_IOU."""
    boxes = example["gt_boxes"]
    labels = multi_hot(example["gt_label_index"], example["gt_label_box"], tf.shape(boxes)[0],
                       num_classes)
    if proposal_min_score is None:
        return boxes, labels
    proposals, _ = scored_proposals(example, proposal_min_score)
    overlap = tf.concat([iou(proposals, boxes), -tf.ones([tf.shape(proposals)[0], 1])], 1)
    best = tf.argmax(overlap, axis=1, output_type=tf.int32)  # the last column: no box
    matched = tf.reduce_max(overlap, axis=1) >= PROPOSAL_LABEL_IOU
    extra = tf.gather(tf.concat([labels, tf.zeros([1, num_classes])], 0), best)
    return (tf.concat([boxes, tf.boolean_mask(proposals, matched)], 0),
            tf.concat([labels, tf.boolean_mask(extra, matched)], 0))


def crop_boxes(boxes: tf.Tensor, window: tf.Tensor, image_size: tf.Tensor,
               crop_size: int) -> tuple:
    """(boxes in the crop window's frame, clipped to [0, 1]; visible [N] bool: at least one
    crop pixel high and wide after clipping). window: int32 (y, x, h, w) in pixels."""
    size = tf.cast(tf.tile(image_size, [2]), tf.float32)  # (H, W, H, W)
    start = tf.cast(tf.tile(window[:2], [2]), tf.float32)
    extent = tf.cast(tf.tile(window[2:], [2]), tf.float32)
    cropped = tf.clip_by_value((boxes * size - start) / extent, 0.0, 1.0)
    sides = cropped[:, 2:] - cropped[:, :2]
    return cropped, tf.reduce_all(sides >= 1.0 / crop_size, axis=1)


def pad(tensor: tf.Tensor, max_boxes: int) -> tf.Tensor:
    """The first max_boxes rows of tensor [N, ...], zero-padded to exactly max_boxes."""
    tensor = tensor[:max_boxes]
    padding = [[0, max_boxes - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    return tf.ensure_shape(tf.pad(tensor, padding), [max_boxes] + tensor.shape[1:].as_list())


def _padded(boxes: tf.Tensor, labels: tf.Tensor, keep: tf.Tensor, max_boxes: int) -> dict:
    """boxes, box_mask and labels of the kept boxes, padded to max_boxes."""
    boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
    mask = tf.ones([tf.shape(boxes)[0]], tf.float32)
    return {"boxes": pad(boxes, max_boxes), "box_mask": pad(mask, max_boxes),
            "labels": pad(labels, max_boxes)}


def train_clip(example: dict, seed: tf.Tensor, num_frames: int, stride: int, crop_size: int,
               aug: dict, on_device: bool, *, max_boxes: int, num_classes: int,
               proposal_min_score=None) -> dict:
    """The training clip of a keyframe: video [T, S, S, 3] (float32, or uint8 with
    'aug_params' for the device), boxes [M, 4], box_mask [M], labels [M, C]."""
    crop_seed, aug_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    frames = example["frames"]
    indices = keyframe_indices(tf.size(frames), example["keyframe_index"], num_frames, stride)
    jpegs = tf.gather(frames, indices)
    image_size = tf.io.extract_jpeg_shape(jpegs[0])[:2]
    window_kwargs = {k: aug[k] for k in ("area_range", "aspect_ratio_range") if k in aug}
    window = spatial.sample_crop_window(crop_seed, image_size[0], image_size[1], **window_kwargs)
    clip = spatial.decode_crop_and_resize(jpegs, window[tf.newaxis], crop_size,
                                          same_window=True)
    clip = tf.ensure_shape(clip, [num_frames, crop_size, crop_size, 3])
    draw = {k: v for k, v in aug.items() if k not in ("area_range", "aspect_ratio_range")}
    params = device_augment.draw_params(aug_seed, 1, crop_size, None, **draw)
    boxes, labels = _train_boxes(example, num_classes, proposal_min_score)
    boxes, visible = crop_boxes(boxes, window, image_size, crop_size)
    out = _padded(boxes, labels, visible, max_boxes)
    made = clips.augmented(clip[tf.newaxis], params[tf.newaxis], on_device)
    if not on_device:  # The device flips the boxes with the clip (steps.py).
        out["boxes"] = device_augment.flip_boxes(out["boxes"], params)
    return dict(out, **{k: v[0] for k, v in made.items()})


def eval_clip(example: dict, num_frames: int, stride: int, frame_size: tuple, *,
              max_boxes: int, num_classes: int, proposal_min_score: float) -> dict:
    """The evaluation clip of a keyframe: the whole frames resized to frame_size (H, W), the
    proposals above proposal_min_score as 'boxes' (best first; 'box_scores' their detector
    scores), the ground truth ('gt_boxes', 'gt_mask', 'gt_labels') for the frame mAP, and
    'key', the keyframe key as bytes (key_bytes)."""
    frames = example["frames"]
    indices = keyframe_indices(tf.size(frames), example["keyframe_index"], num_frames, stride)
    video = spatial.resize_frames(tf.gather(frames, indices), *frame_size)
    proposals, scores = scored_proposals(example, proposal_min_score)
    gt = example["gt_boxes"]
    gt_labels = multi_hot(example["gt_label_index"], example["gt_label_box"], tf.shape(gt)[0],
                          num_classes)
    n = tf.shape(gt)[0]
    return {"video": tf.ensure_shape(video, [num_frames, frame_size[0], frame_size[1], 3]),
            "boxes": pad(proposals, max_boxes),
            "box_mask": pad(tf.ones_like(scores), max_boxes),
            "box_scores": pad(scores, max_boxes), "gt_boxes": pad(gt, max_boxes),
            "gt_mask": pad(tf.ones([n], tf.float32), max_boxes),
            "gt_labels": pad(gt_labels, max_boxes), "key": key_bytes(example["id"])}
