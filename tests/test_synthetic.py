"""The embedded motion data set: files, determinism, and that only motion carries the label."""
import os

import numpy as np
import tensorflow as tf

from cvrl_tf.data import schema, synthetic

NUM_CLASSES = len(synthetic.CLASS_NAMES)


def test_write_dataset_files_counts_and_cli(tmp_path):
    info = synthetic.write_dataset(str(tmp_path / "a"), num_train=7, num_eval=3, num_frames=6,
                                   size=16, num_shards=2, seed=3)
    train = sorted(tf.io.gfile.glob(info["train_pattern"]))
    assert [os.path.basename(f) for f in train] == ["train-00000-of-00002.tfrecord",
                                                    "train-00001-of-00002.tfrecord"]
    assert len(tf.io.gfile.glob(info["eval_pattern"])) == 2
    assert schema.read_label_map(info["label_map"]) == list(synthetic.CLASS_NAMES)
    assert (info["num_train"], info["num_eval"], info["num_classes"]) == (7, 3, NUM_CLASSES)
    records = [schema.parse_sequence_example(r) for r in tf.data.TFRecordDataset(train)]
    assert len(records) == 7
    assert all(r["frames"].shape == (6,) and r["label"].shape == (1,) for r in records)
    assert tf.io.decode_jpeg(records[0]["frames"][0]).shape == (16, 16, 3)
    counts = {os.path.basename(f): sum(1 for _ in tf.data.TFRecordDataset(f)) for f in train}
    assert counts == {"train-00000-of-00002.tfrecord": 4, "train-00001-of-00002.tfrecord": 3}
    assert schema.read_example_count(info["train_pattern"]) == 7
    assert schema.read_example_count(info["eval_pattern"]) == 3
    assert schema.read_example_count(os.path.join(str(tmp_path / "a"), "train-00001-*")) == 3
    ids = {r["id"].numpy() for r in records}
    assert len(ids) == 7 and b"synthetic-train-00000" in ids
    # Deterministic from the seed (the CLI writes the same bytes), different for another seed.
    synthetic.main(["--output_dir", str(tmp_path / "b"), "--num_train", "7", "--num_eval", "3",
                    "--num_frames", "6", "--size", "16", "--num_shards", "2", "--seed", "3"])
    synthetic.write_dataset(str(tmp_path / "c"), num_train=7, num_eval=3, num_frames=6,
                            size=16, num_shards=2, seed=4)
    name = "train-00000-of-00002.tfrecord"
    read = lambda d: (tmp_path / d / name).read_bytes()  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c")



def test_records_hold_each_rendered_video_in_order(tmp_path):
    """The threaded writer stores video i of a split (rendered from rng [seed, split key, i])
    in shard i % num_shards, JPEG bytes as schema.encode_frames makes them."""
    info = synthetic.write_dataset(str(tmp_path), num_train=9, num_eval=2, num_frames=5,
                                   size=16, num_shards=2, seed=5)
    for shard in range(2):
        path = info["train_pattern"].replace("*", f"0000{shard}-of-00002")
        for k, raw in enumerate(tf.data.TFRecordDataset(path)):
            record = schema.parse_sequence_example(raw)
            i, label = 2 * k + shard, int(record["label"][0])
            assert record["id"].numpy() == f"synthetic-train-{i:05d}".encode()
            rng = np.random.default_rng([5, sum(b"train"), i])
            expected = schema.encode_frames(synthetic.render_video(rng, label, 5, 16))
            assert list(record["frames"].numpy()) == expected

def _videos(num, seed, num_frames=24, size=48):
    labels = np.arange(num) % NUM_CLASSES
    videos = [synthetic.render_video(np.random.default_rng([seed, i]), int(label), num_frames,
                                     size).astype(np.float64) for i, label in enumerate(labels)]
    return videos, labels


def _frame_features(frame):
    """What one frame shows: pooled pixels, colour statistics, object area and centroid."""
    size = frame.shape[0]
    pooled = frame.reshape(8, size // 8, 8, size // 8, 3).mean((1, 3)).ravel()
    foreground = np.abs(frame - np.median(frame.reshape(-1, 3), 0)).sum(-1) > 60
    ys, xs = np.nonzero(foreground)
    centroid = [ys.mean(), xs.mean()] if len(ys) else [size / 2, size / 2]
    return np.concatenate([pooled, frame.mean((0, 1)), frame.std((0, 1)),
                           [foreground.mean()], centroid])


def _motion_features(video):
    """What frame differences show: brightness-constancy flow along x and y, and the change
    of foreground energy (growing / shrinking), averaged over consecutive frame pairs."""
    gray = video.sum(-1)
    dt = gray[1:] - gray[:-1]
    mid = (gray[1:] + gray[:-1]) / 2
    dx = (np.roll(mid, -1, 2) - np.roll(mid, 1, 2)) / 2
    dy = (np.roll(mid, -1, 1) - np.roll(mid, 1, 1)) / 2
    energy = ((video - np.median(video.reshape(len(video), -1, 3), 1)[:, None, None]) ** 2
              ).sum((1, 2, 3))
    return np.array([((dt * dx).sum((1, 2)) / (dx ** 2).sum((1, 2))).mean(),
                     ((dt * dy).sum((1, 2)) / (dy ** 2).sum((1, 2))).mean(),
                     ((energy[1:] - energy[:-1]) / (energy[1:] + energy[:-1])).mean()])


def _nearest_class_mean_accuracy(train_x, train_y, test_x, test_y):
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centers = np.stack([train_x[train_y == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = np.argmin(((test_x[:, None] - centers[None]) ** 2).sum(-1), 1)
    return float((predicted == test_y).mean())


def test_no_single_frame_carries_the_label_but_motion_does():
    train, train_y = _videos(120, seed=1)
    test, test_y = _videos(90, seed=2)
    rng = np.random.default_rng(0)
    frames_per_video = 4  # Held-out single frames at random times.

    def frame_set(videos, labels):
        x = [_frame_features(v[t]) for v in videos
             for t in rng.integers(len(v), size=frames_per_video)]
        return np.stack(x), np.repeat(labels, frames_per_video)

    single = _nearest_class_mean_accuracy(*frame_set(train, train_y), *frame_set(test, test_y))
    motion = _nearest_class_mean_accuracy(np.stack([_motion_features(v) for v in train]),
                                          train_y,
                                          np.stack([_motion_features(v) for v in test]), test_y)
    chance = 1 / NUM_CLASSES
    assert single < chance + 0.12, single
    assert motion > 0.7, motion


def test_per_frame_position_and_size_are_class_independent():
    rng = np.random.default_rng(0)
    per_class = {c: [synthetic.sample_trajectory(rng, c, 16, 32) for _ in range(1500)]
                 for c in range(NUM_CLASSES)}
    quantiles = np.linspace(0.1, 0.9, 9)
    for key, scale in (("x", 32), ("y", 32), ("radius", 32)):
        q = np.stack([np.quantile(np.concatenate([p[key] for p in paths]), quantiles)
                      for paths in per_class.values()])
        spread = (q.max(0) - q.min(0)).max() / scale
        assert spread < 0.06, (key, q)
    # ... while the motion itself differs: x moves only in the horizontal classes.
    moved = [np.mean([np.ptp(p["x"]) > 0 for p in per_class[c]]) for c in range(NUM_CLASSES)]
    assert moved[:2] == [1.0, 1.0] and moved[2:] == [0.0] * 4


def test_videos_are_grey_with_a_visible_object():
    """No per-video colour for two clips to be matched by (only the per-pixel noise differs
    between channels); the object stands out from the background by >= 70 grey levels."""
    for label in range(NUM_CLASSES):
        video = synthetic.render_video(np.random.default_rng([7, label]), label).astype(float)
        channel_means = video.reshape(-1, 3).mean(axis=0)
        assert np.ptp(channel_means) < 1.0, (label, channel_means)
        grey = video.mean(axis=-1).reshape(len(video), -1)
        spread = np.percentile(grey, 99.5, axis=1) - np.percentile(grey, 0.5, axis=1)
        assert spread.min() >= 70, (label, spread.min())
