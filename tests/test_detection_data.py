"""The detect modes of build_dataset (cvrl_tf/data/detection.py) on records convert_ava wrote
from the synthetic AVA set: the clip around the keyframe, boxes cropped and flipped with it,
multi-hot actions, padding and masks; evaluation's proposals, ground truth and keys; and a
detect run end to end (frame mAP in results.json equal to the official evaluator's on the
detections it writes)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import ava_eval, steps, train
from cvrl_tf.data import convert_ava, detection, pipeline, synthetic_ava
from tests.test_convert_ava import records

NUM_CLASSES = len(synthetic_ava.ACTIONS)
FRAMES, STRIDE, CROP = 4, 2, 32


@pytest.fixture(scope="module")
def ava_set(tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("detection_data"))
    info = synthetic_ava.write_dataset(out, num_train=4, num_val=2, seconds=5, fps=10)
    notes = info["annotations"]
    settings = convert_ava.Settings(fps=10, short_side=None, window_frames=8)
    for split, csv, extra in (("train", "train.csv", {}),
                              ("eval", "val.csv", dict(
                                  proposals=os.path.join(notes, "val_proposals.csv"),
                                  excluded_timestamps=os.path.join(notes, "val_excluded.csv")))):
        convert_ava.convert_ava(info["videos"], os.path.join(notes, csv), info["label_map"],
                                os.path.join(out, "records"), split, settings=settings,
                                num_shards=2, progress=False, **extra)
    return dict(info, records=os.path.join(out, "records"))


def _batches(ava_set, mode, batch=3, **kwargs):
    split = "train" if mode == "detect" else "eval"
    ds = pipeline.build_dataset(os.path.join(ava_set["records"], f"{split}-*"), mode, batch,
                                FRAMES, STRIDE, CROP, num_classes=NUM_CLASSES, repeat=False,
                                drop_remainder=False, shuffle_buffer=1, seed=0, max_boxes=4,
                                **kwargs)
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def test_the_clip_is_centred_on_the_keyframe_and_clamped_to_the_window():
    """T frames at stride s from keyframe - T * s / 2 (SlowFast's AVA sequence); indices
    outside the stored window repeat its edge frames."""
    np.testing.assert_array_equal(detection.keyframe_indices(8, 4, 4, 2).numpy(), [0, 2, 4, 6])
    np.testing.assert_array_equal(detection.keyframe_indices(8, 4, 4, 3).numpy(), [0, 1, 4, 7])
    np.testing.assert_array_equal(detection.keyframe_indices(5, 2, 3, 4).numpy(), [0, 0, 4])


def test_boxes_are_cropped_into_the_windows_frame():
    """A 100 x 200 frame cropped at rows 20-70, columns 50-150: a box at rows 30-50, columns
    100-180 lands at rows 0.2-0.6, columns 0.5-0.9 of the crop (x clipped at 1: 1.3 -> 1); a box
    left of the window keeps no crop pixel and is not visible."""
    boxes = tf.constant([[0.3, 0.5, 0.5, 0.9], [0.3, 0.0, 0.5, 0.2]])
    cropped, visible = detection.crop_boxes(boxes, tf.constant([20, 50, 50, 100]),
                                            tf.constant([100, 200]), crop_size=32)
    np.testing.assert_allclose(cropped[0].numpy(), [0.2, 0.5, 0.6, 1.0], atol=1e-6)
    assert visible.numpy().tolist() == [True, False]


def test_training_clips_hold_the_records_boxes_and_actions(ava_set):
    """The whole frame as the crop window (area 1, the frame's aspect): the boxes are the
    records' own, padded and masked, with their multi-hot actions; a flip mirrors the boxes
    with the clip, on the host as on the device."""
    full = dict(area_range=(1.0, 1.0), aspect_ratio_range=(1.5, 1.5))
    plain = _batches(ava_set, "detect", flip_prob=0.0, **full)
    truth = records(ava_set["records"], "train")
    for batch in plain:
        assert batch["video"].shape[1:] == (FRAMES, CROP, CROP, 3)
        for i, key in enumerate(batch["id"]):
            record = truth[key.decode()]
            n = len(record["gt_boxes"])
            np.testing.assert_allclose(batch["boxes"][i, :n], record["gt_boxes"], atol=1e-6)
            assert batch["box_mask"][i].tolist() == [1.0] * n + [0.0] * (4 - n)
            hot = np.zeros([4, NUM_CLASSES])
            hot[record["gt_label_box"], record["gt_label_index"]] = 1.0
            np.testing.assert_array_equal(batch["labels"][i], hot)
    flipped = _batches(ava_set, "detect", flip_prob=1.0, **full)
    mirrored = plain[0]["boxes"][..., [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1]
    mask = plain[0]["box_mask"][..., None] > 0
    np.testing.assert_allclose(np.where(mask, flipped[0]["boxes"], 0),
                               np.where(mask, mirrored, 0), atol=1e-6)
    np.testing.assert_allclose(flipped[0]["video"], plain[0]["video"][:, :, :, ::-1], atol=1e-6)
    device = _batches(ava_set, "detect", flip_prob=1.0, augment_on="device", **full)[0]
    assert device["video"].dtype == np.uint8 and "aug_params" in device
    made = steps.augment_detection_batch({k: tf.constant(v) for k, v in device.items()
                                          if k != "id"}, batched=False)
    np.testing.assert_allclose(made["boxes"].numpy(), flipped[0]["boxes"], atol=1e-6)
    np.testing.assert_allclose(made["video"].numpy(), flipped[0]["video"], atol=1e-6)


def test_evaluation_clips_hold_the_proposals_above_the_score_and_the_ground_truth(ava_set):
    truth = records(ava_set["records"], "eval")
    seen = set()
    for batch in _batches(ava_set, "detect_eval", proposal_min_score=0.5, frame_aspect=1.5):
        assert batch["video"].shape[1:] == (FRAMES, CROP, 48, 3)
        for i, key in enumerate(batch["id"]):
            key = key.decode()
            seen.add(key)
            assert detection.key_text(batch["key"][i]) == key
            record = truth[key]
            keep = record["proposal_scores"] >= 0.5
            order = np.argsort(-record["proposal_scores"][keep], kind="stable")[:4]
            n = len(order)
            np.testing.assert_allclose(batch["boxes"][i, :n], record["proposals"][keep][order])
            np.testing.assert_allclose(batch["box_scores"][i, :n],
                                       record["proposal_scores"][keep][order])
            assert batch["box_mask"][i].tolist() == [1.0] * n + [0.0] * (4 - n)
            g = len(record["gt_boxes"])
            np.testing.assert_allclose(batch["gt_boxes"][i, :g], record["gt_boxes"])
            assert batch["gt_mask"][i].sum() == g
    assert seen == set(truth)


@pytest.mark.slow
def test_a_detect_run_scores_the_frame_map_the_official_evaluator_gives(ava_set, tmp_path):
    model_dir = str(tmp_path / "detect")
    params = [f"TRAIN_DATA={os.path.join(ava_set['records'], 'train-*')!r}",
              f"EVAL_DATA={os.path.join(ava_set['records'], 'eval-*')!r}", "PRETRAIN_DIR=''",
              "run.train_length=4", "run.steps_per_loop=2", "run.global_batch_size=4",
              "run.eval_batch_size=4", f"run.num_frames={FRAMES}", f"run.crop_size={CROP}",
              f"run.eval_crop_size={CROP}", "run.image_summaries=False", "run.seed=0",
              "run.record_example_ids=True"]
    results = train.run_with_gin(["experiments/demo_detect.gin"], params, model_dir=model_dir)
    assert results["mode"] == "detect" and results["global_step"] == 4
    assert os.path.exists(os.path.join(model_dir, "ckpt-4.index"))
    with open(os.path.join(model_dir, "results.json")) as f:
        saved = json.load(f)
    assert 0.0 <= saved["eval"]["frame_map"] <= 1.0
    assert saved["input"]["read"] == 16 and saved["train"]["box_accuracy"] >= 0.0
    notes = ava_set["annotations"]
    mean_ap, _, _ = ava_eval.evaluate_files(
        os.path.join(notes, "val.csv"), os.path.join(model_dir, "detections.csv"),
        ava_set["label_map"], os.path.join(notes, "val_excluded.csv"))
    assert mean_ap == pytest.approx(saved["eval"]["frame_map"], abs=1e-9)
