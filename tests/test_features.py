"""Tests for cvrl_tf.features: TFRecords and raw videos -> averaged clip features (.npz)."""
import json
import os

import av
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import export, features
from cvrl_tf.data import convert, pipeline, schema, synthetic
from cvrl_tf.models import build_backbone

TINY = {"depth": 50, "base_filters": 4, "blocks_per_stage": [1, 1, 1, 1]}
CLIP = dict(num_frames=4, stride=2, crop_size=32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random backbone and its SavedModel."""
    backbone = build_backbone(**TINY)
    out = str(tmp_path_factory.mktemp("sm") / "saved_model")
    export.export_saved_model(backbone, out)
    return backbone, out


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    return synthetic.write_dataset(data_dir, num_train=2, num_eval=5, num_frames=12, size=40,
                                   num_shards=2, seed=0)


def _reference(backbone, views):
    return backbone(views, training=False).numpy().mean(axis=0)


def test_records_features_average_views_of_build_dataset(model, records, tmp_path):
    backbone, saved_model = model
    out = str(tmp_path / "sub" / "eval.npz")
    features.main(["--saved_model", saved_model, "--input", records["eval_pattern"], "--output",
                   out, "--num_frames", "4", "--stride", "2", "--crop_size", "32", "--views",
                   "2x3", "--batch_size", "4"])
    with np.load(out) as data:
        ids, labels, feats = data["ids"], data["labels"], data["features"]
    assert ids.dtype.kind == "U" and len(set(ids)) == 5  # no video dropped by batching
    assert feats.shape == (5, 128) and feats.dtype == np.float32 and labels.dtype == np.int64
    ds = pipeline.build_dataset(records["eval_pattern"], "eval", 1, **CLIP, num_temporal_views=2,
                                num_spatial_views=3, repeat=False, drop_remainder=False)
    expected = {}
    for batch in ds:
        video_id = batch["id"].numpy()[0].decode()
        assert batch["video"].shape[1] == 6
        expected[video_id] = (_reference(backbone, batch["video"][0]),
                              int(batch["label"].numpy()[0]))
    for video_id, label, feat in zip(ids, labels, feats):
        np.testing.assert_allclose(feat, expected[video_id][0], rtol=1e-4, atol=1e-5)
        assert label == expected[video_id][1] >= 0


def test_eval_views_match_the_pipeline_eval_mode(records):
    ds = tf.data.TFRecordDataset(pipeline.resolve_files(records["eval_pattern"])[:1]).take(1)
    example = schema.parse_sequence_example(next(iter(ds)))
    frames = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), example["frames"],
                       fn_output_signature=tf.uint8).numpy()
    got = features.eval_views(frames, 4, 2, 32, num_temporal_views=3, num_spatial_views=2)
    batch = next(iter(pipeline.build_dataset(
        pipeline.resolve_files(records["eval_pattern"])[:1], "eval", 1, **CLIP,
        num_temporal_views=3, num_spatial_views=2, repeat=False, drop_remainder=False)))
    assert batch["id"].numpy()[0] == example["id"].numpy()
    assert got.shape == (6, 4, 32, 32, 3)
    np.testing.assert_allclose(got.numpy(), batch["video"][0].numpy(), atol=1e-6)


def _write_video(path, frames, fps=10):
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_raw_videos_from_csv(model, tmp_path):
    backbone, saved_model = model
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(["walk", "run", "walk"]):
        frames = np.full((14, 48, 64, 3), 40 * i, np.uint8)
        color = rng.integers(0, 256, 3, dtype=np.uint8)
        for t in range(14):  # A square moving right.
            frames[t, 10:30, 3 * t:3 * t + 20] = color
        os.makedirs(tmp_path / "videos", exist_ok=True)
        _write_video(str(tmp_path / "videos" / f"v{i}.mp4"), frames)
        rows.append(f"videos/v{i}.mp4,{label}")
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "label_map.txt").write_text("run\nwalk\n")
    out = str(tmp_path / "raw.npz")
    result = features.main(["--saved_model", saved_model, "--input", str(tmp_path / "list.csv"),
                            "--output", out, "--label_map", str(tmp_path / "label_map.txt"),
                            "--num_frames", "4", "--stride", "2", "--crop_size", "32",
                            "--views", "2x2", "--fps", "10", "--short_side", "40"])
    with np.load(out) as data:
        assert list(data["ids"]) == ["v0", "v1", "v2"]
        assert list(data["labels"]) == [1, 0, 1]
        np.testing.assert_array_equal(data["features"], result["features"])
    for i in range(3):
        decoded = np.stack(list(convert.decode_video(str(tmp_path / "videos" / f"v{i}.mp4"),
                                                     10.0, 40)))
        assert decoded.shape[1:] == (40, 53, 3)
        views = features.eval_views(decoded, 4, 2, 32, 2, 2)
        np.testing.assert_allclose(result["features"][i], _reference(backbone, views),
                                   rtol=1e-4, atol=1e-5)


def test_raw_videos_from_class_folders(model, tmp_path):
    backbone, saved_model = model
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    frames[:, 8:24] = np.arange(10, dtype=np.uint8)[:, None, None, None] * 20
    for label in ("run", "walk"):
        os.makedirs(tmp_path / "videos" / label)
        _write_video(str(tmp_path / "videos" / label / f"{label}_1.mp4"), frames)
    result = features.extract(saved_model, str(tmp_path / "videos"), str(tmp_path / "f.npz"),
                              num_frames=2, stride=2, crop_size=16, views="1x1",
                              label_map=str(_label_map(tmp_path)), short_side=None)
    assert list(result["ids"]) == ["run_1", "walk_1"] and list(result["labels"]) == [0, 1]
    decoded = np.stack(list(convert.decode_video(str(tmp_path / "videos/run/run_1.mp4"),
                                                 25.0, None)))
    views = features.eval_views(decoded, 2, 2, 16, 1, 1)
    np.testing.assert_allclose(result["features"][0], _reference(backbone, views), rtol=1e-4,
                               atol=1e-5)


def test_clear_errors(model, tmp_path):
    _, saved_model = model
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        features.load_feature_fn(str(tmp_path))
    with pytest.raises(ValueError, match="--views='3y2' must be TEMPORALxSPATIAL"):
        features.parse_views("3y2")
    assert features.parse_views("10x3") == (10, 3) and features.parse_views("1") == (1, 1)
    with pytest.raises(ValueError, match="matches no files"):
        features.extract(saved_model, str(tmp_path / "none-*.tfrecord"), str(tmp_path / "o.npz"))
    (tmp_path / "bad.csv").write_text("path,label\nmissing.mp4,walk\n")
    with pytest.raises(ValueError, match="missing.mp4 .*could not be decoded"):
        features.extract(saved_model, str(tmp_path / "bad.csv"), str(tmp_path / "o.npz"),
                         num_frames=2, crop_size=16, views="1x1")
    with pytest.raises(ValueError, match=r"Labels \['jump'\] are not in the label map"):
        features._label_indices(["jump"], str(_label_map(tmp_path)))


def _label_map(tmp_path):
    path = tmp_path / "label_map.txt"
    path.write_text("run\nwalk\n")
    return path


@pytest.fixture(scope="module")
def trained_clip_model(model, tmp_path_factory):
    """The same backbone exported with a recorded training clip of 4 frames, stride 2, crop 32."""
    backbone, _ = model
    out = str(tmp_path_factory.mktemp("sm_clip") / "saved_model")
    export.export_saved_model(backbone, out, metadata={"clip": CLIP})
    return out


def test_clip_defaults_to_the_training_clip_and_flags_win(model, trained_clip_model, capsys):
    _, plain = model
    assert features.resolve_clip(trained_clip_model) == CLIP
    assert "training clip" in capsys.readouterr().out
    assert features.resolve_clip(trained_clip_model, num_frames=6, crop_size=40) == dict(
        CLIP, num_frames=6, crop_size=40)
    assert features.resolve_clip(trained_clip_model, 2, 1, 16) == dict(
        num_frames=2, stride=1, crop_size=16)
    assert features.resolve_clip(plain) == features.DEFAULT_CLIP == dict(
        num_frames=16, stride=2, crop_size=224)
    assert "records no training clip" in capsys.readouterr().out


def test_cli_without_clip_flags_uses_the_training_clip(trained_clip_model, records, tmp_path):
    common = ["--saved_model", trained_clip_model, "--input", records["eval_pattern"],
              "--views", "1x1"]
    default = features.main(common + ["--output", str(tmp_path / "a.npz")])
    explicit = features.main(common + ["--output", str(tmp_path / "b.npz"), "--num_frames", "4",
                                       "--stride", "2", "--crop_size", "32"])
    np.testing.assert_array_equal(default["features"], explicit["features"])
    other = features.main(common + ["--output", str(tmp_path / "c.npz"), "--crop_size", "24"])
    assert not np.allclose(other["features"], default["features"], atol=1e-4)


def _projector_app(logdir):
    """TensorBoard 2.20's projector plugin on logdir, as `tensorboard --logdir` serves it."""
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin
    from werkzeug import test as werkzeug_test
    plugin = projector_plugin.ProjectorPlugin(base_plugin.TBContext(logdir=logdir))
    routes = plugin.get_plugin_apps()

    def get(route, **args):
        response = werkzeug_test.Client(routes[route]).get(route, query_string=args)
        assert response.status_code == 200, (route, response.get_data(as_text=True))
        return response.get_data()
    return get


def test_projector_files_are_consistent_and_read_by_tensorboard(model, records, tmp_path,
                                                                  capsys):
    _, saved_model = model
    logdir = str(tmp_path / "projector")
    result = features.main([
        "--saved_model", saved_model, "--input", records["eval_pattern"], "--output",
        str(tmp_path / "f.npz"), "--views", "3x3", "--projector_dir", logdir,
        *(f"--{k}={v}" for k, v in CLIP.items())])
    assert "tensorboard --logdir" in capsys.readouterr().out
    with np.load(tmp_path / "f.npz") as data:
        assert "thumbnails" not in data and len(data["ids"]) == 5
    assert sorted(os.listdir(logdir)) == [
        "checkpoint", "embedding-1.data-00000-of-00001", "embedding-1.index", "metadata.tsv",
        "projector_config.pbtxt", "sprite.png"]
    get = _projector_app(logdir)
    assert json.loads(get("/runs")) == ["."]
    config = json.loads(get("/info", run="."))
    (embedding,) = config["embeddings"]
    name = embedding["tensorName"]
    assert [int(d) for d in embedding["tensorShape"]] == [5, 128]
    assert embedding["metadataPath"] == "metadata.tsv"
    assert embedding["sprite"] == {"imagePath": "sprite.png", "singleImageDim": [64, 64]}
    tensor = np.frombuffer(get("/tensor", run=".", name=name), np.float32).reshape(5, 128)
    np.testing.assert_array_equal(tensor, result["features"])
    rows = get("/metadata", run=".", name=name).decode().splitlines()
    assert rows[0] == "id\tlabel\tclass" and len(rows) == 6  # Header + N rows, in order.
    for row, video_id, label in zip(rows[1:], result["ids"], result["labels"]):
        assert row == f"{video_id}\t{label}\t{synthetic.CLASS_NAMES[label]}"
    sprite = tf.io.decode_png(get("/sprite_image", run=".", name=name)).numpy()
    assert sprite.shape == (2 * 64, 3 * 64, 3)  # 5 thumbnails, 3 per row.
    # Thumbnail i is the middle frame of video i's central view (temporal view 1 of 3,
    # centre crop), the crop the model saw.
    ds = pipeline.build_dataset(records["eval_pattern"], "eval", 1, **CLIP, num_temporal_views=3,
                                num_spatial_views=3, repeat=False, drop_remainder=False)
    by_id = {b["id"].numpy()[0].decode(): b["video"][0, 4, 2] for b in ds}
    for i, video_id in enumerate(result["ids"]):
        r, c = divmod(i, 3)
        want = tf.image.resize(by_id[video_id] * 255.0, (64, 64), "area").numpy()
        got = sprite[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64].astype(np.float32)
        assert np.abs(got - want).max() <= 1.0, video_id
    assert not sprite[64:, 2 * 64:].any()  # The unused cell stays black.


def test_sprite_fits_the_projector_limit():
    from cvrl_tf.viz import projector
    thumbs = np.full((10, 64, 64, 3), 200, np.uint8)
    sprite = projector.sprite_image(thumbs, max_side=100)  # 4 per row: 25-pixel thumbnails.
    assert sprite.shape == (3 * 25, 4 * 25, 3) and sprite[:25, :25].min() == 200
    with pytest.raises(ValueError, match="uint8"):
        projector.sprite_image(thumbs.astype(np.float32))
