"""A user's mistakes end a command with one sentence and exit status 2, no traceback; a bug
keeps its traceback (cvrl_tf/runtime/cli.py). The mistakes a new user made, each checked."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cvrl_tf import retrieval
from cvrl_tf import train
from cvrl_tf.runtime import cli
from cvrl_tf.training import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job(gin_files, params=(), model_dir="/tmp/unused"):
    return train.job_from_gin(gin_files, list(params), model_dir)


def test_a_gin_file_that_does_not_exist_is_named():
    with pytest.raises(config.ConfigError, match=r"Bad gin config: Unable to open file: "
                                                 r"nope.gin.*give an existing file"):
        _job(["nope.gin"])


def test_a_typo_in_a_binding_is_named_with_the_fix():
    with pytest.raises(config.ConfigError, match=r"Configurable 'run' doesn't have a parameter "
                                                 r"named 'trian_length' at `run.trian_length=3`"):
        _job(["experiments/demo_pretrain.gin"], ["run.trian_length=3"])


def test_no_model_dir_asks_for_the_flag():
    train.parse_gin(["experiments/demo_pretrain.gin"])
    with pytest.raises(config.ConfigError, match=r"^run.model_dir is not set: pass --model_dir "):
        train.job_config(None)


@pytest.mark.parametrize("experiment", ["experiments/demo_pretrain.gin",
                                        "experiments/r3d50_k400_pretrain_200ep.gin"])
def test_training_data_that_matches_nothing_is_named_before_epochs_are_counted(experiment):
    cfg, _ = _job([experiment], ["TRAIN_DATA='/nonexistent/train-*'"])
    with pytest.raises(config.ConfigError, match=r"run.train_data='/nonexistent/train-\*': "
                                                 r"File pattern .* matches no files\. Check"):
        config.check_data(cfg)


def test_retrieval_with_a_gallery_smaller_than_k_says_so(tmp_path, capsys):
    paths = []
    for name in ("train", "test"):
        path = str(tmp_path / f"{name}.npz")
        np.savez(path, ids=np.array(["a", "b"]), labels=np.array([0, 1]),
                 features=np.eye(2, dtype=np.float32))
        paths.append(path)
    with pytest.raises(SystemExit) as stop:
        retrieval.main(["--train", paths[0], "--test", paths[1]])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"Error: --knn_k=20 and --recall_k=1,5,10,20 must lie between 1 and the 2 clips of "
        f"--train {paths[0]}; lower them.")


def test_a_check_is_a_users_mistake_a_library_error_is_a_bug():
    try:
        config.to_steps("10 weeks", "train_length", None)  # A check of cvrl_tf's.
    except ValueError as e:
        assert cli.user_error(e).startswith("run.train_length='10 weeks' is not a duration")
    try:
        int("not a number")  # Raised by Python, not by a check of ours.
    except ValueError as e:
        assert cli.user_error(e) is None


@pytest.mark.slow
@pytest.mark.scenario  # make test-scenarios: the whole process, as a user starts it, is the point.
def test_the_command_prints_one_sentence_and_exits_2():
    """The whole chain, as a user meets it: no traceback, TensorFlow's start-up lines hidden."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    run = subprocess.run([sys.executable, "-m", "cvrl_tf.train",
                          "--gin_file=experiments/demo_pretrain.gin", "--model_dir=/tmp/x",
                          "--gin_param=TRAIN_DATA='/nonexistent/train-*'"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "Error: run.train_data='/nonexistent/train-*': File pattern '/nonexistent/train-*' "
        "matches no files. Check the path (TRAIN_DATA / EVAL_DATA in the gin file or "
        "--gin_param)."]
