"""The start-up config check: refusals and warnings, one sentence naming the fix."""
import dataclasses
import inspect

import gin
import pytest
import tensorflow as tf

from cvrl_tf import config_check
from cvrl_tf import job
from cvrl_tf import train
from cvrl_tf.config_check import ConfigError

BASE = job.JobConfig(mode="pretrain", model_dir="/unused", train_data="x-*", train_steps=10,
                     global_batch_size=8, optimizer="adam", lr_scaling="none")


def check(strategy=None, **changes):
    job.check(dataclasses.replace(BASE, **changes), strategy or tf.distribute.get_strategy())


def test_a_good_config_passes_quietly(capsys):
    check()
    assert "Config warning" not in capsys.readouterr().out


def test_batch_not_divisible_by_replicas_is_refused(two_replica_strategy):
    with pytest.raises(ConfigError, match=r"global_batch_size=7 is not a positive multiple of "
                                          r"the 2 replicas; set it to a multiple of 2"):
        check(two_replica_strategy, global_batch_size=7)
    with pytest.raises(ConfigError, match="eval_batch_size=5"):
        check(two_replica_strategy, eval_batch_size=5)


def test_unscaled_sgd_learning_rate_warns(capsys):
    check(optimizer="sgd", lr_scaling="none", lr_reference_batch=1024)
    out = capsys.readouterr().out
    assert "Config warning" in out and "run.lr_scaling='linear'" in out
    check(optimizer="sgd", lr_scaling="linear")
    assert "Config warning" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="lr_scaling='sqrt' is unknown"):
        check(lr_scaling="sqrt")


def test_clip_longer_than_the_shortest_video_warns(capsys):
    check(num_frames=16, stride=2, min_video_frames=30)
    out = capsys.readouterr().out
    assert "spans 31 frames, more than the shortest video" in out and "lower num_frames" in out
    check(num_frames=16, stride=2, min_video_frames=31)
    assert "Config warning" not in capsys.readouterr().out


@pytest.mark.parametrize("changes,match", [
    (dict(mode="pretraining"), "run.mode='pretraining' is unknown"),
    (dict(train_data=""), "needs training data: set run.train_data"),
    (dict(mode="linear_eval", num_classes=0), "set run.num_classes"),
    (dict(train_steps=0), "set run.train_steps, or run.train_epochs"),
    (dict(warmup_steps=20), "warmup .20 steps. is longer than the run"),
    (dict(steps_per_loop=0), "steps_per_loop=0 must be >= 1"),
    (dict(classifier="knn"), "run.classifier='knn' is unknown"),
])
def test_bad_settings_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        check(**changes)


def test_epochs_give_steps_and_warmup():
    cfg = dataclasses.replace(BASE, train_steps=0, train_epochs=2, num_train_examples=100,
                              warmup_epochs=0.5)
    assert job.total_train_steps(cfg) == (25, 6)


def test_unknown_gin_binding_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"Bad gin config: No configurable matching "
                                          r"'bogus' at `bogus.value = 1`; fix the name"):
        train.parse_gin(["experiments/demo_pretrain.gin"], ["bogus.value = 1"])
    with pytest.raises(ConfigError, match=r"Configurable 'run' doesn't have a parameter named "
                                          r"'learning_rate'"):
        train.parse_gin(["experiments/demo_pretrain.gin"], ["run.learning_rate = 1.0"])
    with pytest.raises(ConfigError, match="Unable to open file: experiments/nope.gin"):
        train.parse_gin(["experiments/nope.gin"])


def test_run_binds_exactly_the_job_config_fields(monkeypatch, tmp_path):
    """run's gin parameters are JobConfig's fields (same defaults), and bindings reach the job."""
    train.parse_gin(["experiments/demo_pretrain.gin"], ["run.seed = 7", "run.max_checkpoints = 2"])
    seen = {}
    monkeypatch.setattr(job, "run_job", lambda cfg, **_: seen.setdefault("cfg", cfg))
    cfg = train.run(model_dir=str(tmp_path))
    gin.clear_config()
    assert (cfg.seed, cfg.max_checkpoints, cfg.model_dir) == (7, 2, str(tmp_path))
    bindable = gin.config._REGISTRY.get_match("run").wrapped  # pylint: disable=protected-access
    params = inspect.signature(bindable).parameters
    fields = {f.name: inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
              for f in dataclasses.fields(job.JobConfig)}
    assert set(params) == set(fields) | {"strategy"}
    assert {k: p.default for k, p in params.items() if k in fields} == fields


def test_unset_required_macro_is_refused(tmp_path):
    train.parse_gin(["models/tiny.gin", "runs/pretrain.gin"], ["EPOCHS = 1",
                                                               "NUM_TRAIN_EXAMPLES = 10"])
    with pytest.raises(ConfigError, match=r"run.train_data is required but unset"):
        train.run(model_dir=str(tmp_path))
    gin.clear_config()


def test_warm_start_architecture_mismatch_is_refused(tmp_path):
    (tmp_path / "backbone.json").write_text('{"depth": 50, "base_filters": 64}')
    with pytest.raises(ConfigError, match="base_filters=64 but this run builds base_filters=16"):
        config_check.check_warm_start_architecture(str(tmp_path),
                                                   {"depth": 50, "base_filters": 16})


def test_gin_includes_resolve_next_to_a_folder_named_like_a_gin_layer(tmp_path, monkeypatch):
    # `make demo` writes ./runs/demo and `python -m` puts the working directory on sys.path,
    # where ./runs is a namespace package; gin must still find the include 'runs/pretrain.gin'.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    train.parse_gin(["experiments/demo_pretrain.gin"])
    assert gin.query_parameter("run.mode") == "pretrain"
    gin.clear_config()
