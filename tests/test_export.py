"""Tests for cvrl_tf.export: checkpoint (trainer layout) -> SavedModel loadable without cvrl_tf."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf import export
from cvrl_tf.models import build_backbone

TINY = {"depth": 50, "base_filters": 4, "blocks_per_stage": [1, 1, 1, 1]}


def make_checkpoint(model_dir, kwargs=TINY, seed=0):
    """Writes a checkpoint with the trainer's layout (backbone, model, optimizer, step) plus
    backbone.json; returns the backbone, whose weights and BN statistics are not the init ones."""
    keras.utils.set_random_seed(seed)
    backbone = build_backbone(**kwargs)
    inputs = keras.Input((None, None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs)))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    for v in backbone.variables:  # Move every weight and BN statistic away from its init.
        v.assign(v.numpy() + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
                 if "variance" not in v.path else rng.uniform(0.5, 2.0, v.shape))
    ckpt = tf.train.Checkpoint(backbone=backbone, model=model, optimizer=optimizer,
                               step=tf.Variable(3, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, str(model_dir), max_to_keep=2).save(checkpoint_number=3)
    with open(os.path.join(model_dir, "backbone.json"), "w") as f:
        json.dump(backbone.get_config(), f)  # What the trainer writes.
    return backbone


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    backbone = make_checkpoint(model_dir)
    out = str(tmp_path_factory.mktemp("export") / "saved_model")
    export.main(["--checkpoint", str(model_dir), "--output", out])
    return model_dir, backbone, out


def _clips(seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(2, 4, 32, 32, 3), dtype=np.uint8)


def test_saved_model_matches_keras_backbone(exported):
    _, backbone, out = exported
    clips_u8 = _clips()
    clips = clips_u8.astype(np.float32) / 255.0
    expected = backbone(clips, training=False).numpy()
    loaded = tf.saved_model.load(out)
    assert {"serving_default", "serving_float32", "serving_uint8"} <= set(loaded.signatures)
    got = loaded.signatures["serving_default"](video=tf.constant(clips))["features"]
    assert got.dtype == tf.float32 and got.shape == (2, 128)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    got_u8 = loaded.signatures["serving_uint8"](video=tf.constant(clips_u8))["features"]
    np.testing.assert_allclose(got_u8.numpy(), expected, rtol=1e-4, atol=1e-5)
    with open(os.path.join(out, export.METADATA_JSON)) as f:
        meta = json.load(f)
    assert meta["feature_dim"] == 128 and meta["backbone_config"]["base_filters"] == 4
    assert meta["checkpoint"].endswith("ckpt-3")


def test_restores_trained_weights_not_init(exported):
    model_dir, backbone, _ = exported
    restored = export.load_backbone(str(model_dir))
    fresh = build_backbone(**TINY)
    clips = _clips(2).astype(np.float32) / 255.0
    want = backbone(clips, training=False).numpy()
    np.testing.assert_allclose(restored(clips, training=False).numpy(), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fresh(clips, training=False).numpy(), want, atol=1e-3)
    prefix = os.path.join(str(model_dir), "ckpt-3")  # A prefix works as well as the dir.
    np.testing.assert_allclose(export.load_backbone(prefix)(clips, training=False).numpy(), want,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.scenario  # make test-scenarios: a process without cvrl_tf is the point.
def test_loads_in_a_process_without_cvrl_tf(exported, tmp_path):
    _, backbone, out = exported
    clips = _clips(3)
    np.save(tmp_path / "clips.npy", clips)
    expected = backbone(clips.astype(np.float32) / 255.0, training=False).numpy()
    code = textwrap.dedent(f"""
        import os, sys
        # Drop the repo and any directory holding a cvrl_tf package from the import path.
        sys.path = [p for p in sys.path
                    if p and not os.path.isdir(os.path.join(p, "cvrl_tf"))]
        sys.modules["cvrl_tf"] = None  # Any `import cvrl_tf` now fails, even if pip-installed.
        import numpy as np, tensorflow as tf
        try:
            import cvrl_tf
            raise SystemExit("cvrl_tf is importable")
        except ImportError:
            pass
        model = tf.saved_model.load({out!r})
        clips = np.load("clips.npy")
        out = model.signatures["serving_uint8"](video=tf.constant(clips))["features"]
        np.save("features.npy", out.numpy())
        """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), expected, rtol=1e-4,
                               atol=1e-5)


def test_fixed_training_input_shape_is_freed(tmp_path):
    backbone = make_checkpoint(tmp_path, dict(TINY, input_shape=[4, 32, 32, 3]), seed=5)
    restored = export.load_backbone(str(tmp_path))
    clips = np.random.default_rng(0).random((1, 6, 40, 40, 3)).astype(np.float32)
    assert restored(clips, training=False).shape == (1, 128)  # another T and size
    np.testing.assert_allclose(restored(clips[:, :4, :32, :32], training=False).numpy(),
                               backbone(clips[:, :4, :32, :32], training=False).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_uint8_default_signature(exported, tmp_path):
    model_dir, backbone, _ = exported
    out = str(tmp_path / "sm_u8")
    info = export.export(str(model_dir), out, default_signature="uint8")
    assert info["default_signature"] == "uint8"
    clips = _clips(4)
    loaded = tf.saved_model.load(out)
    got = loaded.signatures["serving_default"](video=tf.constant(clips))["features"].numpy()
    want = backbone(clips.astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_clear_errors(exported, tmp_path, capsys):
    model_dir, _, _ = exported
    with pytest.raises(ValueError, match="holds no readable checkpoint; train first"):
        export.load_backbone(str(tmp_path))
    with pytest.raises(ValueError, match=r"ckpt-99' is neither a directory nor a checkpoint "
                                         r"prefix \(.*ckpt-99.index is missing\)"):
        export.load_backbone(str(tmp_path / "ckpt-99"))
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        export.load_backbone(str(model_dir), str(tmp_path / "nope.json"))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(dict(TINY, base_filters=8)))
    with pytest.raises(ValueError, match="holds no backbone matching this one .*; check the "
                                         "config in .*wrong.json"):
        export.load_backbone(str(model_dir), str(wrong))
    wrong.write_text(json.dumps(dict(TINY, filters=8)))
    with pytest.raises(ValueError, match=r"keys \['filters'\] that build_backbone does not take"):
        export.load_backbone(str(model_dir), str(wrong))
    other = tf.train.Checkpoint(model=tf.Variable(1.0)).save(str(tmp_path / "other" / "ckpt"))
    with pytest.raises(ValueError, match="holds no backbone matching"):
        export.load_backbone(other, os.path.join(str(model_dir), "backbone.json"))
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert "missing' is neither a directory nor a checkpoint prefix" in capsys.readouterr().err


def test_training_clip_is_copied_into_the_export_metadata(exported, tmp_path, capsys):
    model_dir, _, first = exported
    with open(os.path.join(first, export.METADATA_JSON)) as f:
        assert "clip" not in json.load(f)  # The module fixture's model_dir has no clip.json.
    run = tmp_path / "run"
    run.mkdir()
    make_checkpoint(run)
    (run / checkpoints.CLIP_JSON).write_text(json.dumps(
        {"num_frames": 8, "stride": 2, "crop_size": 32}))
    out = str(tmp_path / "sm")
    info = export.main(["--checkpoint", str(run), "--output", out])
    assert info["clip"] == {"num_frames": 8, "stride": 2, "crop_size": 32}
    assert "Training clip: 8 frames, stride 2, crop 32" in capsys.readouterr().out
    assert export.read_export_clip(out) == info["clip"]
    with open(os.path.join(out, export.METADATA_JSON)) as f:
        assert json.load(f)["clip"] == info["clip"]


@pytest.mark.parametrize("content,match", [
    ("{8, 2}", "is not valid JSON"),
    ('{"num_frames": 8, "stride": 2}', "positive ints"),
    ('{"num_frames": 8, "stride": 0, "crop_size": 32}', "positive ints"),
    ('{"num_frames": 8.0, "stride": 2, "crop_size": 32}', "positive ints"),
])
def test_malformed_training_clip_is_one_clear_error(tmp_path, content, match):
    (tmp_path / checkpoints.CLIP_JSON).write_text(content)
    with pytest.raises(ValueError, match=f"clip.*{match}"):
        checkpoints.read_clip_json(str(tmp_path))
    assert checkpoints.read_clip_json(str(tmp_path / "elsewhere")) is None
