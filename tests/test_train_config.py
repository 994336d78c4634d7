"""The start-up config check (refusals and warnings, one sentence naming the fix) and the model
each mode builds."""
import dataclasses

import gin
import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.training import config
from cvrl_tf import models
from cvrl_tf import train
from cvrl_tf.training.config import ConfigError

BASE = config.JobConfig(mode="pretrain", model_dir="/unused", train_data="x-*",
                        train_length=10, global_batch_size=8, optimizer="adam",
                        base_lr=1e-3, lr_scaling="none")


def check(strategy=None, **changes):
    return config.check(dataclasses.replace(BASE, **changes),
                        strategy or tf.distribute.get_strategy())


def test_a_good_config_passes_quietly(capsys):
    check()
    assert "Warning:" not in capsys.readouterr().out


def test_batch_not_divisible_by_replicas_is_refused(two_replica_strategy):
    with pytest.raises(ConfigError, match=r"global_batch_size=7 is not a positive multiple of "
                                          r"the 2 replicas; set it to a multiple of 2"):
        check(two_replica_strategy, global_batch_size=7)
    with pytest.raises(ConfigError, match="eval_batch_size=5"):
        check(two_replica_strategy, eval_batch_size=5)


def test_unscaled_sgd_learning_rate_warns(capsys):
    check(optimizer="sgd", lr_scaling="none", lr_reference_batch=1024)
    out = capsys.readouterr().out
    assert "Warning:" in out and "run.lr_scaling='linear'" in out
    check(optimizer="sgd", lr_scaling="linear")
    assert "Warning:" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="lr_scaling='sqrt' is unknown"):
        check(lr_scaling="sqrt")


def test_clip_longer_than_the_shortest_video_warns(capsys):
    check(num_frames=16, stride=2, min_video_frames=30)
    out = capsys.readouterr().out
    assert "spans 31 frames, more than the shortest video" in out and "lower num_frames" in out
    check(num_frames=16, stride=2, min_video_frames=31)
    assert "Warning:" not in capsys.readouterr().out


@pytest.mark.parametrize("changes,match", [
    (dict(mode="pretraining"), "run.mode='pretraining' is unknown"),
    (dict(train_data=""), "needs training data: set run.train_data"),
    (dict(mode="linear_eval", num_classes=0), "set run.num_classes"),
    (dict(train_length=0), "The run length is unset: set run.train_length"),
    (dict(warmup=20), "warmup .20 steps. is longer than the run"),
    (dict(steps_per_loop=0), "steps_per_loop=0 must be >= 1"),
    (dict(classifier="knn"), "run.classifier='knn' is unknown"),
    (dict(train_length="10 weeks"), "train_length='10 weeks' is not a duration"),
    (dict(train_length="2 epochs"), "counts epochs, but the number of training examples is "
                                    "unknown: set run.num_train_examples"),
    (dict(warmup=2.5), "must be a whole number of steps"),
    (dict(base_lr=0.0), r"run.base_lr=0.0 must be > 0"),
    (dict(probe_loss_weight=-1.0), "run.probe_loss_weight=-1.0 must be >= 0"),
    (dict(label_smoothing=1.0), r"run.label_smoothing=1.0 must be in \[0, 1\)"),
])
def test_bad_settings_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        check(**changes)


def test_one_rule_turns_every_duration_into_steps():
    """Steps or epochs, for training, warmup, loops, checkpoints and evaluation alike."""
    steps = check(train_length="2 epochs", num_train_examples=100, warmup="0.5 epochs",
                  steps_per_loop=5, checkpoint_every="1 epoch", eval_every="10 steps")
    assert steps == config.Schedule(total=25, warmup=7, steps_per_loop=5, checkpoint_every=13,
                                    eval_every=10)
    assert config.to_steps("3", "x", None) == 3 and config.to_steps(4, "x", None) == 4
    assert config.to_steps("1.5 ep", "x", 10.0) == 15


def test_epochs_follow_the_count_the_converter_recorded(tmp_path, capsys):
    """No run.num_train_examples: epochs count the videos example_counts.json records next to
    the training shards (and the log says so); without a record, one sentence names the fix."""
    from cvrl_tf.data import schema  # pylint: disable=import-outside-toplevel
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"):
        (tmp_path / name).write_bytes(b"")
    schema.write_example_counts(str(tmp_path), "train", {
        "train-00000-of-00002.tfrecord": 60, "train-00001-of-00002.tfrecord": 40})
    cfg = dataclasses.replace(BASE, train_data=str(tmp_path / "train-*"),
                              train_length="3 epochs", warmup="1 epoch")
    steps = config.schedule(cfg)
    assert (steps.total, steps.warmup) == (38, 13)  # 100 videos / batch 8 = 12.5 steps
    assert "Epochs count 100 training examples" in capsys.readouterr().out
    explicit = config.schedule(dataclasses.replace(cfg, num_train_examples=16))
    assert (explicit.total, explicit.warmup) == (6, 2)
    with pytest.raises(ConfigError, match="number of training examples is unknown"):
        config.schedule(dataclasses.replace(cfg, train_data=str(tmp_path / "other-*")))


def test_unknown_gin_binding_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"Bad gin config: No configurable matching "
                                          r"'bogus' at `bogus.value = 1`; fix the name"):
        train.parse_gin(["experiments/demo_pretrain.gin"], ["bogus.value = 1"])
    with pytest.raises(ConfigError, match=r"Configurable 'run' doesn't have a parameter named "
                                          r"'learning_rate'"):
        train.parse_gin(["experiments/demo_pretrain.gin"], ["run.learning_rate = 1.0"])
    with pytest.raises(ConfigError, match="Unable to open file: experiments/nope.gin"):
        train.parse_gin(["experiments/nope.gin"])


def test_run_binds_exactly_the_job_config_fields(tmp_path):
    """gin's `run` is JobConfig itself: bindings reach its fields, other names are refused."""
    train.parse_gin(["experiments/demo_pretrain.gin"],
                    ["run.seed = 7", "run.max_checkpoints = 2", "run.train_length = 123"])
    cfg = train.job_config(model_dir=str(tmp_path))
    gin.clear_config()
    assert isinstance(cfg, config.JobConfig)
    assert (cfg.seed, cfg.max_checkpoints, cfg.model_dir) == (7, 2, str(tmp_path))
    assert (cfg.mode, cfg.train_length, cfg.deterministic) == ("pretrain", 123, False)


def test_unset_required_value_is_refused(tmp_path):
    train.parse_gin(["models/tiny.gin", "runs/pretrain.gin"], ["run.train_length = 10"])
    with pytest.raises(ConfigError, match=r"run.train_data is required but unset"):
        train.job_config(model_dir=str(tmp_path))
    train.parse_gin(["models/tiny.gin", "runs/pretrain.gin"], ["TRAIN_DATA = 'x-*'"])
    with pytest.raises(ConfigError, match=r"run.train_length is required but unset"):
        train.job_config(model_dir=str(tmp_path))
    gin.clear_config()


def test_warm_start_architecture_mismatch_is_refused(tmp_path):
    (tmp_path / "backbone.json").write_text('{"depth": 50, "base_filters": 64}')
    with pytest.raises(ConfigError, match="base_filters=64 but this run builds base_filters=16"):
        checkpoints.check_architecture(str(tmp_path), {"depth": 50, "base_filters": 16})


def test_gin_includes_resolve_next_to_a_folder_named_like_a_gin_layer(tmp_path, monkeypatch):
    # `make demo` writes ./runs/demo and `python -m` puts the working directory on sys.path,
    # where ./runs is a namespace package; gin must still find the include 'runs/pretrain.gin'.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    train.parse_gin(["experiments/demo_pretrain.gin"])
    assert gin.query_parameter("run.mode") == "pretrain"
    gin.clear_config()


def _model(mode, classifier=""):
    """The model config.build_model returns for a mode (and run.classifier), tiny backbone."""
    tiny = dict(depth=50, base_filters=4, blocks_per_stage=(1, 1, 1, 1))
    builders = config.Builders(
        backbone=lambda: models.build_backbone(**tiny),
        projection_head=lambda: models.projection_head(num_hidden=1, hidden_dim=8,
                                                       output_dim=4),
        finetune_classifier=lambda n: models.finetune_classifier(n, dropout_rate=0.0),
        dataset=None)
    cfg = dataclasses.replace(BASE, mode=mode, num_classes=5, classifier=classifier)
    return config.build_model(cfg, builders)


def test_build_model_linear_heads_classify_the_l2_normalized_frozen_feature():
    """linear_eval (and evaluate's default head): the classifier's input is the backbone's
    feature divided by its L2 norm, the backbone frozen; finetune: the raw feature, trained."""
    clip = np.random.default_rng(0).random((3, 4, 16, 16, 3), dtype=np.float32)
    for mode in ("linear_eval", "evaluate"):
        model = _model(mode)
        assert {id(v) for v in model.trainable_variables} == {
            id(v) for v in model.classifier.trainable_variables}, mode
        out = model(clip, training=True)
        feature = out["feature"].numpy()
        np.testing.assert_allclose(feature, model.backbone(clip, training=False), atol=1e-6)
        norms = np.linalg.norm(feature, axis=-1, keepdims=True)
        assert np.all(np.abs(norms - 1.0) > 0.1), norms  # Normalizing changes the input.
        want = model.classifier(feature / norms).numpy()
        np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-6, err_msg=mode)
        assert not np.allclose(out["logits"], model.classifier(feature), atol=1e-3)
    for mode, classifier in (("finetune", ""), ("evaluate", "finetune")):
        model = _model(mode, classifier)
        assert len(model.trainable_variables) == (len(model.backbone.trainable_variables)
                                                  + len(model.classifier.trainable_variables))
        assert len(model.backbone.trainable_variables) > 10
        out = model(clip, training=False)
        np.testing.assert_allclose(out["logits"], model.classifier(out["feature"]), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{mode} {classifier}")
