"""A run's life from start to end, as the README promises it: its seed (drawn at the first start
and kept, so a restart continues the same stream), a stop notice in every phase ending the run
cleanly with what was saved said, and the bad-record verdict at the end of every run."""
import json
import os
import shutil
import signal

import pytest
import tensorflow as tf

from cvrl_tf import train
from cvrl_tf.training import books
from cvrl_tf.training import checkpoints
from cvrl_tf.training import job
from cvrl_tf.training import seeds
from cvrl_tf.training import trainer as trainer_lib
from tests.test_bad_records import data_dir as bad_data_dir  # noqa: F401  (a fixture)
from tests.test_train import (EVALUATE, SMALL_MODEL, data_dir,  # noqa: F401
                              evaluate_params, overrides)

pytestmark = pytest.mark.slow


def _pretrain(data_dir, model_dir, on_loop=None, **macros):  # noqa: F811
    return train.run_with_gin(["experiments/demo_pretrain.gin"],
                              overrides(data_dir, **SMALL_MODEL, **macros),
                              model_dir=str(model_dir), on_loop=on_loop)


def _log(model_dir) -> str:
    with open(os.path.join(model_dir, "log.txt")) as f:
        return f.read()


def _sigterm(*_):
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def two_steps(data_dir, tmp_path_factory):  # noqa: F811
    """A finished 2-step pretraining started without a seed (its model_dir and results), which
    the tests restart or evaluate: a test that changes it works on a copy (`_copy`)."""
    model_dir = tmp_path_factory.mktemp("two_steps") / "run"
    return model_dir, _pretrain(data_dir, model_dir, **{"run.train_length": 2, "run.seed": None})


def _copy(two_steps, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(two_steps[0], model_dir)
    return model_dir


def test_a_run_without_a_seed_draws_one_keeps_it_and_resumes_with_it(
        data_dir, two_steps, tmp_path):  # noqa: F811
    model_dir, first = _copy(two_steps, tmp_path), two_steps[1]
    seed = seeds.stored_seed(str(model_dir))
    assert isinstance(seed, int) and first["seed"] == seed
    with open(model_dir / "results.json") as f:
        assert json.load(f)["seed"] == seed
    again = _pretrain(data_dir, model_dir, **{"run.train_length": 4, "run.seed": None})
    assert again["seed"] == seed and again["start_step"] == 2
    assert "resumes its data stream exactly" in _log(model_dir)


@pytest.mark.parametrize("restoring", [False, True])
def test_a_notice_while_building_or_restoring_stops_before_training(
        data_dir, two_steps, tmp_path, monkeypatch, capsys, restoring):  # noqa: F811
    model_dir = _copy(two_steps, tmp_path) if restoring else tmp_path / "run"
    saved = checkpoints.list_checkpoints(str(model_dir)) if restoring else []
    built = job.build_restored
    monkeypatch.setattr(job, "build_restored", lambda *a: (built(*a), _sigterm())[0])
    results = _pretrain(data_dir, model_dir, **{"run.train_length": 4})
    assert results["preempted"] and "while building the model" in results.get("stopped", "")
    assert checkpoints.list_checkpoints(str(model_dir)) == saved
    out = capsys.readouterr().out
    assert ("Stopped (SIGTERM) while building the model and restoring its state: nothing was "
            "trained in this run") in out and "Run the same command again to resume." in out


def test_a_notice_while_training_saves_the_step_reached(data_dir, tmp_path, capsys):  # noqa: F811
    model_dir = tmp_path / "run"
    results = _pretrain(data_dir, model_dir, on_loop=_sigterm,
                        **{"run.train_length": 8, "run.steps_per_loop": 1,
                           "run.checkpoint_every": 4})
    assert results["preempted"] and results["global_step"] == 2  # The step after the notice.
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert "Preempted: saved the checkpoint of step 2" in capsys.readouterr().out


def test_a_notice_while_evaluating_saves_the_step_and_writes_no_results(
        data_dir, tmp_path, capsys):  # noqa: F811
    model_dir = tmp_path / "run"

    def at_the_last_loop(loop):
        if loop.step == loop.total:
            _sigterm()

    results = _pretrain(data_dir, model_dir, on_loop=at_the_last_loop,
                        **{"run.checkpoint_every": 0})
    assert results["preempted"] and "while evaluating at step 4" in results.get("stopped", "")
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")
    assert not os.path.exists(model_dir / "results.json")
    assert ("the checkpoint of step 4 is saved; that evaluation's results were not written"
            in capsys.readouterr().out)


def test_a_notice_during_the_final_save_lets_the_run_finish(data_dir, tmp_path, monkeypatch,
                                                           capsys):  # noqa: F811
    model_dir = tmp_path / "run"
    save = checkpoints.Saver.maybe_save

    def signalled(self, force=False):
        if force:
            _sigterm()
        return save(self, force=force)

    monkeypatch.setattr(checkpoints.Saver, "maybe_save", signalled)
    results = _pretrain(data_dir, model_dir, **{"EVAL_DATA": "''", "run.checkpoint_every": 0})
    assert not results["preempted"] and results["global_step"] == 4
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")
    assert ("A stop notice (SIGTERM) came after the last step; the run finished and saved "
            "step 4.") in capsys.readouterr().out


def test_a_notice_in_mode_evaluate_stops_without_results(data_dir, two_steps, tmp_path,
                                                        monkeypatch, capsys):  # noqa: F811
    checkpoint = two_steps[0]
    reduce = trainer_lib.Evaluator.eval_reduce

    def signalled(self, state=None, step_outputs=None):
        _sigterm()
        return reduce(self, state, step_outputs)

    monkeypatch.setattr(trainer_lib.Evaluator, "eval_reduce", signalled)
    model_dir = tmp_path / "evaluate"
    results = train.run_with_gin(EVALUATE, evaluate_params(data_dir, str(checkpoint), **SMALL_MODEL,
                                                           **{"run.classifier": "'probe'"}),
                                 model_dir=str(model_dir))
    assert results.get("preempted") and "while evaluating" in results.get("stopped", "")
    assert not os.path.exists(model_dir / "results.json")
    assert "no results were written for it" in capsys.readouterr().out


def test_a_run_whose_records_were_mostly_bad_never_ends_as_a_success(bad_data_dir, tmp_path):  # noqa: F811
    """14 records read per epoch, 6 of them bad (43%): far fewer than the 1000 reads the
    per-loop verdict waits for, so only the end of the run can judge it."""
    params = [f"TRAIN_DATA={os.path.join(bad_data_dir, 'train-*')!r}", "EVAL_DATA=''",
              "run.train_length=4", "run.steps_per_loop=2", "run.global_batch_size=4",
              "run.min_video_frames=16", "run.image_summaries=False", "run.seed=0",
              "run.max_bad_fraction=0.3", "build_dataset.shuffle_buffer=1",
              "build_dataset.short_videos='skip'"] + [f"{k}={v}" for k, v in SMALL_MODEL.items()]
    with pytest.raises(books.BadInputError, match=r"12 of the 28 training records read so far "
                                                  r"were bad \(42.9%, more than "
                                                  r"run.max_bad_fraction=0.3\)"):
        train.run_with_gin(["experiments/demo_pretrain.gin"], params,
                           model_dir=str(tmp_path / "run"))
