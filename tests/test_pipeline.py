"""build_dataset: modes and shapes, determinism, sharding, bad input, the TFDS dispatch."""
import os

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.data import checks, device_augment, schema, spatial, synthetic
from cvrl_tf.data.pipeline import build_dataset

T, STRIDE, CROP = 4, 2, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic set: 3 train shards of 12 videos, 1 eval shard of 4; 10 frames of 24x32."""
    out = str(tmp_path_factory.mktemp("synthetic"))
    info = synthetic.write_dataset(out, num_train=12, num_eval=4, num_frames=10, size=24,
                                   num_shards=3, seed=0)
    return info


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return str(path)


def _jpegs(num=10, height=24, width=32, channels=3, seed=0):
    frames = np.random.default_rng(seed).integers(0, 256, (num, height, width, channels),
                                                  dtype=np.uint8)
    return schema.encode_frames(frames)


def _ids(ds):
    return [i.decode() for batch in ds for i in batch["id"].numpy()]


def test_pretrain_batches_pair_rows_of_one_video(data):
    ds = build_dataset(data["train_pattern"], "pretrain", 4, T, STRIDE, CROP, seed=0,
                       num_classes=6, augment_on="host")
    assert ds.element_spec["video"].shape == (8, T, CROP, CROP, 3)
    batch = next(iter(ds))
    video, ids, labels = batch["video"].numpy(), batch["id"].numpy(), batch["label"].numpy()
    assert video.shape == (8, T, CROP, CROP, 3) and video.dtype == np.float32
    assert 0.0 <= video.min() and video.max() <= 1.0
    np.testing.assert_array_equal(ids[:4], ids[4:])
    np.testing.assert_array_equal(labels[:4], labels[4:])
    assert len(set(ids[:4])) == 4 and batch["label"].dtype == tf.int32
    for i in range(4):  # The two views of one video are augmented differently.
        assert np.abs(video[i] - video[i + 4]).mean() > 1e-3
    ablation = build_dataset(data["train_pattern"], "pretrain", 2, T, STRIDE, CROP, seed=0,
                             consistent=False, distribution="uniform", augment_on="host")
    assert next(iter(ablation))["video"].shape == (4, T, CROP, CROP, 3)


def test_pretrain_default_leaves_the_chain_after_the_crop_to_the_device(data):
    ds = build_dataset(data["train_pattern"], "pretrain", 4, T, STRIDE, CROP, seed=0)
    width = device_augment.params_width(CROP)
    spec = ds.element_spec  # Per video: the device makes the [2B] rows (augment_batch).
    assert spec["video"].dtype == tf.uint8 and spec["video"].shape == (4, 2, T, CROP, CROP, 3)
    assert spec[device_augment.PARAMS_KEY].shape == (4, 2, width)
    assert spec["label"].shape == (4,) and spec["id"].shape == (4,)
    params = next(iter(ds))[device_augment.PARAMS_KEY].numpy()
    # View 1 (index 0) is always blurred and never solarized.
    assert params[:, 0, device_augment.BLUR].min() == 1.0
    assert params[:, 0, device_augment.SOLARIZE].max() == 0.0
    frames = build_dataset(data["train_pattern"], "pretrain", 2, T, STRIDE, CROP, seed=0,
                           consistent=False)
    assert frames.element_spec[device_augment.PARAMS_KEY].shape == (2, 2, T, width)


@pytest.mark.parametrize("mode,kwargs", [
    ("pretrain", {}), ("pretrain", {"consistent": False}),
    ("train", {"color_augment": True}), ("train", {})])
def test_host_and_device_paths_give_the_same_clips(data, mode, kwargs):
    def batches(augment_on):
        ds = build_dataset(data["train_pattern"], mode, 3, T, STRIDE, CROP, seed=5,
                           augment_on=augment_on, **kwargs)
        it = iter(ds)
        return [next(it) for _ in range(2)]

    for host, device in zip(batches("host"), batches("device")):
        assert device["video"].dtype == tf.uint8
        augmented = device_augment.augment_batch(device)
        assert set(augmented) == set(host)
        np.testing.assert_allclose(augmented["video"].numpy(), host["video"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(augmented["id"].numpy(), host["id"].numpy())


def test_augment_on_is_checked(data):
    with pytest.raises(ValueError, match="augment_on must be one of"):
        build_dataset(data["train_pattern"], "pretrain", 2, T, STRIDE, CROP, augment_on="tpu")
    # Eval clips have nothing to augment: 'device' (one gin binding for a run's training and
    # eval data) gives exactly the host's float clips.
    host, device = (next(iter(build_dataset(data["eval_pattern"], "eval", 2, T, STRIDE, CROP,
                                            augment_on=where))) for where in ("host", "device"))
    assert device["video"].dtype == tf.float32 and set(device) == set(host)
    np.testing.assert_array_equal(device["video"].numpy(), host["video"].numpy())


def test_train_mode_shapes_and_flip_only_by_default(data):
    ds = build_dataset(data["train_pattern"], "train", 3, T, STRIDE, CROP, seed=1)
    batch = next(iter(ds))
    assert batch["video"].shape == (3, T, CROP, CROP, 3)
    assert batch["label"].shape == (3,) and batch["id"].shape == (3,)
    colored = build_dataset(data["train_pattern"], "train", 3, T, STRIDE, CROP, seed=1,
                            color_augment=True, color_jitter_prob=1.0)
    assert np.abs(next(iter(colored))["video"].numpy() - batch["video"].numpy()).mean() > 1e-3


def test_eval_mode_30_views_and_single_view(data):
    ds = build_dataset(data["eval_pattern"], "eval", 2, T, STRIDE, CROP)
    assert ds.element_spec["video"].shape == (2, 30, T, CROP, CROP, 3)
    batches = list(ds)
    assert len(batches) == 2  # 4 videos, no repeat, in a fixed (interleaved) order.
    assert [i for b in batches for i in b["id"].numpy().tolist()] == [
        f"synthetic-eval-{i:05d}".encode() for i in range(4)]
    single = build_dataset(data["eval_pattern"], "eval", 2, T, STRIDE, CROP,
                           num_temporal_views=1, num_spatial_views=1)
    assert next(iter(single))["video"].shape == (2, 1, T, CROP, CROP, 3)
    # drop_remainder=False keeps the partial last batch (shapes then not fully static).
    partial = build_dataset(data["eval_pattern"], "eval", 3, T, STRIDE, CROP,
                            drop_remainder=False)
    assert [b["video"].shape[0] for b in partial] == [3, 1]


def test_eval_views_equal_crops_of_the_full_decode(tmp_path):
    jpegs = _jpegs(num=10, height=24, width=32)
    path = _write(tmp_path / "wide.tfrecord", [schema.make_sequence_example(jpegs, 1, "wide")])
    ds = build_dataset(path, "eval", 1, T, STRIDE, CROP, num_temporal_views=2,
                       num_spatial_views=3)
    video = next(iter(ds))["video"].numpy()[0]
    frames = tf.stack([tf.io.decode_jpeg(f, channels=3) for f in jpegs])
    # L=10, T*s=8: starts linspace(0, 2, 2) = [0, 2]; crops left / center / right of 24x32.
    for t_view, start in enumerate([0, 2]):
        clip = tf.gather(frames, start + np.arange(T) * STRIDE)
        for s_view, x in enumerate([0, 4, 8]):
            windows = tf.tile(tf.constant([[0, x, 24, 24]]), [T, 1])
            expected = spatial.crop_and_resize(clip, windows, CROP).numpy()
            np.testing.assert_array_equal(video[t_view * 3 + s_view], expected)


def test_only_the_frames_a_clip_uses_are_decoded(tmp_path):
    # Odd frames carry the JPEG magic but are undecodable; the center clip (L=20, T=4, s=2:
    # start (20 - 8) // 2 = 6) uses frames 6, 8, 10, 12 only, so it never touches them.
    jpegs = _jpegs(num=20)
    broken = [j if i % 2 == 0 else b"\xff\xd8 broken" for i, j in enumerate(jpegs)]
    path = _write(tmp_path / "holes.tfrecord", [schema.make_sequence_example(broken, 0, "h")])
    ds = build_dataset(path, "eval", 1, T, STRIDE, CROP, num_temporal_views=1,
                       num_spatial_views=1)
    assert next(iter(ds))["video"].shape == (1, 1, T, CROP, CROP, 3)
    with pytest.raises(tf.errors.InvalidArgumentError):  # A clip over odd frames must fail.
        list(build_dataset(path, "eval", 1, T, 1, CROP, num_temporal_views=1,
                           num_spatial_views=1))


def test_same_seed_same_batches_different_seed_differs(data):
    def first_two(seed):
        ds = build_dataset(data["train_pattern"], "pretrain", 2, T, STRIDE, CROP, seed=seed,
                           shuffle_buffer=4)
        it = iter(ds)
        return [next(it) for _ in range(2)]
    a, b, c = first_two(7), first_two(7), first_two(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["video"].numpy(), y["video"].numpy())
        np.testing.assert_array_equal(x["id"].numpy(), y["id"].numpy())
    assert not np.array_equal(a[0]["video"].numpy(), c[0]["video"].numpy())
    assert build_dataset(data["train_pattern"], "pretrain", 4, T, STRIDE, CROP,
                         seed=7).options().deterministic


@pytest.mark.parametrize("by", ["files", "records"])
def test_sharding_by_input_context_is_disjoint_and_complete(data, by):
    files = sorted(tf.io.gfile.glob(data["train_pattern"]))
    pattern = files if by == "files" else files[:1]  # 3 files >= 2 pipelines, or 1 file < 2.
    expected = set(_ids(build_dataset(pattern, "eval", 1, T, STRIDE, CROP,
                                      num_temporal_views=1, num_spatial_views=1)))
    shards = []
    for pipeline_id in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        ds = build_dataset(pattern, "eval", 2, T, STRIDE, CROP, context, drop_remainder=False,
                           num_temporal_views=1, num_spatial_views=1)
        assert ds.element_spec["video"].shape[0] in (None, 1)  # Per-replica batch: 2 / 2.
        shards.append(set(_ids(ds)))
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == expected
    assert len(expected) == (12 if by == "files" else 4)


def test_file_patterns(data, tmp_path):
    files = sorted(tf.io.gfile.glob(data["train_pattern"]))
    joined = ",".join(files[:2])
    ids = _ids(build_dataset(joined, "eval", 1, T, STRIDE, CROP, num_temporal_views=1,
                             num_spatial_views=1))
    assert len(ids) == 8
    for bad in ("", str(tmp_path / "nothing-*.tfrecord")):
        with pytest.raises(ValueError, match="matches no files|Empty file pattern"):
            build_dataset(bad, "pretrain", 2, T, STRIDE, CROP)
    with pytest.raises(ValueError, match="nothing-"):
        build_dataset([files[0], str(tmp_path / "nothing-*")], "pretrain", 2, T, STRIDE, CROP)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_dataset(files, "finetune", 2, T, STRIDE, CROP)
    with pytest.raises(ValueError, match="Unknown build_dataset arguments"):
        build_dataset(files, "pretrain", 2, T, STRIDE, CROP, blur_strength=1.0)


def test_default_id_label_and_grayscale_and_short_video(tmp_path):
    path = _write(tmp_path / "plain.tfrecord", [
        schema.make_sequence_example(_jpegs(channels=1), None, None),   # grayscale, unlabelled
        schema.make_sequence_example(_jpegs(num=3), 2, "short"),        # shorter than a clip
    ])
    batch = device_augment.augment_batch(next(iter(build_dataset(
        path, "pretrain", 2, T, STRIDE, CROP, seed=0, shuffle_buffer=1))))
    assert batch["video"].shape == (4, T, CROP, CROP, 3)  # The short video wraps (README).
    assert sorted(batch["id"].numpy()[:2].tolist()) == [b"plain.tfrecord:0", b"short"]
    assert sorted(batch["label"].numpy()[:2].tolist()) == [-1, 2]
    assert next(iter(build_dataset(path, "eval", 2, T, STRIDE, CROP)))["video"].shape == (
        2, 30, T, CROP, CROP, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="short: it has 3 frames"):
        list(build_dataset(path, "eval", 1, T, STRIDE, CROP, short_videos="error"))
    kept = _ids(build_dataset(path, "eval", 1, T, STRIDE, CROP, short_videos="skip"))
    assert kept == ["plain.tfrecord:0"]


@pytest.mark.parametrize("mode", ["pretrain", "train", "eval"])
def test_short_videos_error_stops_at_the_first_short_video_in_every_mode(tmp_path, mode):
    """Training modes skip other bad records, but 'error' refuses a short video, naming it."""
    path = _write(tmp_path / "short.tfrecord", [
        schema.make_sequence_example(_jpegs(), 1, "long"),
        schema.make_sequence_example(_jpegs(num=3), 2, "short")])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="bad record short: it has 3 frames, fewer than one clip spans"):
        list(build_dataset(path, mode, 1, T, STRIDE, CROP, short_videos="error", repeat=False,
                           shuffle_buffer=1, seed=0))


BAD_RECORDS = {
    "no-frames": ("has no image/encoded frames", lambda: schema.make_sequence_example([], 1, "x")),
    "not-jpeg": ("frame 1 is not a JPEG", lambda: schema.make_sequence_example(
        _jpegs(num=1) + [b"GIF89a-not-a-jpeg"] + _jpegs(num=8), 1, "x")),
    "bad-label": ("label 9 is outside", lambda: schema.make_sequence_example(_jpegs(), 9, "x")),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_bad_record_errors_name_the_record_and_cause(tmp_path, kind):
    cause, make = BAD_RECORDS[kind]
    bad = make()
    bad.context.feature[schema.MEDIA_ID_KEY].bytes_list.value[:] = [f"bad-{kind}".encode()]
    path = _write(tmp_path / "mixed.tfrecord",
                  [schema.make_sequence_example(_jpegs(), 0, "good"), bad])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"bad record bad-{kind}: .*{cause}"):
        list(build_dataset(path, "eval", 1, T, STRIDE, CROP, num_classes=6))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"bad record bad-{kind}: .*{cause}"):
        list(build_dataset(path, "pretrain", 1, T, STRIDE, CROP, num_classes=6, repeat=False,
                           skip_bad_records=False))


def test_training_skips_bad_records_by_default_and_logs_each(tmp_path, capfd):
    examples = [schema.make_sequence_example(_jpegs(seed=i), 0, f"good-{i}") for i in range(3)]
    for kind, (_, make) in sorted(BAD_RECORDS.items()):
        bad = make()
        bad.context.feature[schema.MEDIA_ID_KEY].bytes_list.value[:] = [f"bad-{kind}".encode()]
        examples.append(bad)
    # Passes the cheap checks (JPEG magic bytes) but fails to decode: dropped as well.
    examples.append(schema.make_sequence_example([b"\xff\xd8 broken"] * 10, 0, "undecodable"))
    path = _write(tmp_path / "mixed.tfrecord", examples)
    ds = build_dataset(path, "pretrain", 1, T, STRIDE, CROP, num_classes=6, repeat=False)
    assert sorted(set(_ids(ds))) == ["good-0", "good-1", "good-2"]
    log = capfd.readouterr().err
    assert "skipped bad record bad-not-jpeg: frame 1 is not a JPEG" in log
    assert "skipped bad record undecodable: a frame fails to decode" in log


def test_training_that_refuses_bad_records_still_carries_the_skip_bookkeeping(tmp_path):
    """skip_bad_records=False in a training mode (the demo's setting): no per-record error
    catching, and every video says none was skipped, as the trainer reads from each batch."""
    path = _write(tmp_path / "good.tfrecord",
                  [schema.make_sequence_example(_jpegs(seed=i), 0, f"good-{i}") for i in range(2)])
    for mode in ("pretrain", "train"):
        batch = next(iter(build_dataset(path, mode, 2, T, STRIDE, CROP, repeat=False,
                                        skip_bad_records=False)))
        assert batch["skipped"].numpy().tolist() == [[0] * len(checks.CAUSES)] * 2, mode
        assert batch["last_bad"].shape == (2, len(checks.CAUSES), 3)
        assert (batch["last_bad"].numpy() == -1).all(), mode


def test_tfds_dispatch(monkeypatch):
    calls = {}

    def tfds_examples(name, split, input_context=None, data_dir=None):
        calls.update(name=name, split=split, data_dir=data_dir)
        example = {"frames": tf.constant(_jpegs()), "label": tf.constant([3], tf.int32),
                   "id": tf.constant("tfds-video")}
        return tf.data.Dataset.from_tensors(example).repeat(2)

    from cvrl_tf.data import tfds_source
    monkeypatch.setattr(tfds_source, "tfds_examples", tfds_examples)
    ds = build_dataset("tfds:ucf101/ucf101_1_256/train", "train", 2, T, STRIDE, CROP,
                       tfds_data_dir="/data/tfds", repeat=False)
    batch = next(iter(ds))
    assert calls == {"name": "ucf101/ucf101_1_256", "split": "train", "data_dir": "/data/tfds"}
    assert batch["video"].shape == (2, T, CROP, CROP, 3) and list(batch["label"]) == [3, 3]
    with pytest.raises(ValueError, match="tfds:<name>"):
        build_dataset("tfds:ucf101", "train", 2, T, STRIDE, CROP)


def test_works_under_mirrored_strategy(data, two_replica_strategy):
    strategy = two_replica_strategy
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(data["train_pattern"], "pretrain", 4, T, STRIDE, CROP, ctx,
                                  seed=0))
    batch = next(iter(dist))
    shapes = [v.shape for v in strategy.experimental_local_results(batch["video"])]
    assert shapes == [(2, 2, T, CROP, CROP, 3)] * strategy.num_replicas_in_sync  # 2 videos
    assert os.path.basename(data["label_map"]) == "label_map.txt"


def test_eval_view_v_is_temporal_clip_v_div_spatial_at_crop_v_mod_spatial(tmp_path):
    """[B, V, T, S, S, 3] is temporal-major: view v = t * num_spatial_views + s is the t-th
    clip at the s-th crop. The frames say where they come from: red = 10 + 20 * frame index,
    green = 40 / 130 / 220 on the left / centre / right 16x16 square of a 16x48 frame (the
    three crops exactly). L = 12, T = 2, s = 2: starts linspace(0, 12 - 4, 3) = 0, 4, 8."""
    frames = np.zeros((12, 16, 48, 3), np.uint8)
    frames[..., 0] = (10 + 20 * np.arange(12))[:, None, None]
    for region in range(3):
        frames[:, :, 16 * region:16 * (region + 1), 1] = 40 + 90 * region
    frames[..., 2] = 128
    path = _write(tmp_path / "where.tfrecord",
                  [schema.make_sequence_example(schema.encode_frames(frames), 0, "where")])
    video = next(iter(build_dataset(path, "eval", 1, 2, 2, 8, num_temporal_views=3,
                                    num_spatial_views=3)))["video"].numpy()[0]
    assert video.shape == (9, 2, 8, 8, 3)
    levels = video.mean(axis=(2, 3)) * 255  # [V, T, 3]: each clip frame's mean colour.
    frame_index = np.round((levels[..., 0] - 10) / 20).astype(int)
    region = np.round((levels[..., 1] - 40) / 90).astype(int)
    for v in range(9):
        t, s = divmod(v, 3)
        assert frame_index[v].tolist() == [4 * t, 4 * t + 2], f"view {v}"
        assert region[v].tolist() == [s, s], f"view {v}"
