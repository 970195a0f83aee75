"""Retention (``num_to_keep``, best by a metric): amber.CheckpointManager and ``.checkpointing()``."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import amber
from amber.atomic import is_temporary
from amber.checkpoint import read_checkpoint
from amber.checkpoint_manager import MANAGED_KEY, SCORE_KEY
from amber.utils.checkpoints import get_checkpoint_info, verify

TINY = {"model": {"fcnet_hiddens": [8]}, "train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1}


def _config():
    from amber.algorithms.ppo import PPOConfig

    return PPOConfig().environment("CartPole-v1").training(**TINY).checkpointing(format="msgpack")


@pytest.fixture(scope="module")
def algo():
    a = _config().build()
    yield a
    a.stop()


def _iters(manager: amber.CheckpointManager) -> list[int]:
    return [c.iteration for c in manager.checkpoints()]


def _save_scores(manager, algo, scores):
    for i, score in enumerate(scores, start=1):
        algo.iteration = i
        manager.save(algo, metrics={"episode_return_mean": score})


def test_keeps_the_newest_without_a_score(algo, tmp_path):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=2)
    for i in range(1, 6):
        algo.iteration = i
        result = manager.save(algo)
        assert result.checkpoint.path == str(tmp_path / f"checkpoint_{i:06d}")
    assert _iters(manager) == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000004", "checkpoint_000005"]
    assert manager.latest().iteration == 5
    assert manager.best() is None  # no scores
    info = get_checkpoint_info(tmp_path / "checkpoint_000005")
    assert info["metadata"][MANAGED_KEY] == "1" and info["metadata"]["amber.iteration"] == "5"


@pytest.mark.parametrize(("order", "kept", "best"), [("max", [1, 3, 5], 3), ("min", [2, 5], 2)])
def test_keeps_the_best_and_always_the_newest(algo, tmp_path, order, kept, best):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=2, score_attribute="episode_return_mean",
                                      score_order=order)
    _save_scores(manager, algo, [5.0, 1.0, 9.0, 3.0, 2.0])
    assert _iters(manager) == kept
    assert manager.best().iteration == best
    assert manager.latest().iteration == 5
    assert manager.checkpoints()[0].score == {1: 5.0, 2: 1.0}[kept[0]]


def test_num_to_keep_one_keeps_the_best_and_the_newest(algo, tmp_path):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=1, score_attribute="episode_return_mean")
    _save_scores(manager, algo, [9.0, 1.0, 2.0])
    assert _iters(manager) == [1, 3]
    assert manager.best().iteration == 1


def test_a_missing_or_nan_score_ranks_last(algo, tmp_path):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=1, score_attribute="nested/score")
    for i, metrics in enumerate([{"nested": {"score": 1.0}}, {}, {"nested": {"score": float("nan")}}], 1):
        algo.iteration = i
        manager.save(algo, metrics=metrics)
    assert [(c.iteration, c.score) for c in manager.checkpoints()] == [(1, 1.0), (3, None)]
    assert SCORE_KEY not in get_checkpoint_info(tmp_path / "checkpoint_000003")["metadata"]


def test_numpy_scores_count_and_bools_do_not(algo, tmp_path):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=1, score_attribute="score")
    for i, score in enumerate([np.float32(9.0), np.float32(1.0), np.int64(2), np.bool_(True)], 1):
        algo.iteration = i
        manager.save(algo, metrics={"score": score})
    assert [(c.iteration, c.score) for c in manager.checkpoints()] == [(1, 9.0), (4, None)]
    assert manager.best().iteration == 1  # np.float32(9.0): the best, kept


def test_the_checkpoint_just_saved_is_kept_among_higher_iterations(algo, tmp_path):
    earlier = amber.CheckpointManager(tmp_path, num_to_keep=2)  # an earlier run left 4 and 5
    for i in (4, 5):
        algo.iteration = i
        earlier.save(algo)
    manager = amber.CheckpointManager(tmp_path, num_to_keep=2)
    for i in (2, 3):  # a new run, or one restored from an older checkpoint, goes on
        algo.iteration = i
        path = manager.save(algo).checkpoint.path
        assert verify(path).ok
        assert _iters(manager) == [i, 4, 5]  # the best two (the highest iterations) and the one just saved


def test_algo_save_with_retention_keeps_the_checkpoint_it_just_saved(algo, tmp_path):
    """The same through ``algo.save()`` with ``.checkpointing(num_to_keep=...)``."""
    algo.logdir = tmp_path / "run"
    algo.config.checkpointing(num_to_keep=1)
    for i in (5, 2):  # a later iteration is there already (an earlier run, or a restore from the past)
        algo.iteration = i
        path = algo.save().checkpoint.path
        assert verify(path).ok
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == [
        "checkpoint_000002", "checkpoint_000005"]


def test_the_score_defaults_to_the_last_train_result(tmp_path):
    a = _config().build()
    try:
        result = a.train()
        manager = amber.CheckpointManager(tmp_path, score_attribute="episode_return_mean")
        manager.save(a)
        assert manager.best().score == pytest.approx(result["episode_return_mean"])
    finally:
        a.stop()


def test_never_touches_what_it_did_not_write(algo, tmp_path):
    foreign = tmp_path / "checkpoint_000009"
    foreign.mkdir()
    (foreign / "model.bin").write_bytes(b"not amber")
    unmarked = tmp_path / "checkpoint_000000"
    algo.save(unmarked)  # an amber checkpoint, not a managed one
    state = amber.save({"x": np.arange(3)}, tmp_path / "checkpoint_000008", format="msgpack")
    (tmp_path / "checkpoint_000007").write_text("a plain file")
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink(unmarked, tmp_path / "checkpoint_000006")
    manager = amber.CheckpointManager(tmp_path, num_to_keep=1)
    algo.iteration = 1
    manager.save(algo)
    (tmp_path / "checkpoint_000001" / "my_notes.txt").write_text("user file in a managed checkpoint")
    for i in range(2, 5):
        algo.iteration = i
        manager.save(algo)
    assert _iters(manager) == [1, 4]  # 1 holds a file it does not list: left alone
    assert (foreign / "model.bin").read_bytes() == b"not amber"
    assert verify(unmarked).ok and verify(state).ok
    assert (tmp_path / "checkpoint_000007").read_text() == "a plain file"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "checkpoint_000006").is_symlink()
    assert not (tmp_path / "checkpoint_000002").exists() and not (tmp_path / "checkpoint_000003").exists()


def test_leftovers_of_an_interrupted_delete_are_ignored_then_removed(algo, tmp_path):
    manager = amber.CheckpointManager(tmp_path, num_to_keep=1)
    algo.iteration = 1
    manager.save(algo)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    doomed = tmp_path / f".checkpoint_000001.amber-del-{dead}-0123abcd"
    os.rename(tmp_path / "checkpoint_000001", doomed)
    assert is_temporary(doomed.name)
    assert manager.checkpoints() == [] and manager.latest() is None
    algo.iteration = 2
    manager.save(algo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002"]


def test_an_empty_or_missing_root(tmp_path):
    manager = amber.CheckpointManager(tmp_path / "nothing", num_to_keep=3)
    assert manager.checkpoints() == [] and manager.latest() is None and manager.best() is None
    assert manager.prune() == []


@pytest.mark.parametrize("kwargs", [{"num_to_keep": 0}, {"num_to_keep": -1}, {"num_to_keep": 1.5},
                                    {"num_to_keep": True}, {"num_to_keep": "3"},
                                    {"checkpoint_score_order": "up"}, {"checkpoint_score_attribute": 3}])
def test_config_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).removeprefix("checkpoint_")):
        _config().checkpointing(**kwargs)


def test_manager_validation(tmp_path):
    with pytest.raises(ValueError, match="num_to_keep"):
        amber.CheckpointManager(tmp_path, num_to_keep=0)
    with pytest.raises(ValueError, match="order"):
        amber.CheckpointManager(tmp_path, score_order="best")
    with pytest.raises(ValueError, match="score_attribute must be a metric's name"):  # (a raw
        amber.CheckpointManager(tmp_path, score_attribute=5)  # AttributeError at the first save)
    config = _config().checkpointing(num_to_keep=2, checkpoint_score_attribute="a", checkpoint_score_order="min")
    assert (config.num_to_keep, config.checkpoint_score_attribute, config.checkpoint_score_order) == (2, "a", "min")
    assert "CheckpointManager" in amber.__all__


def test_algo_save_applies_the_configured_retention(tmp_path):
    a = _config().checkpointing(num_to_keep=2).build()
    try:
        paths = []
        for _ in range(3):
            a.train()
            paths.append(a.save().checkpoint.path)
        a.train()
        paths.append(a.save(block=False).result().checkpoint.path)  # pruned in the writer thread
        logdir = Path(a.logdir)
        assert sorted(p.name for p in logdir.iterdir()) == ["checkpoint_000003", "checkpoint_000004",
                                                            "progress.csv", "result.json"]
        assert paths[-1] == str(logdir / "checkpoint_000004")
        a.save(tmp_path / "elsewhere")  # an explicit directory: no retention, no marker
        assert MANAGED_KEY not in get_checkpoint_info(tmp_path / "elsewhere")["metadata"]
    finally:
        a.stop()


SAVER = """
import sys, amber
from amber.algorithms.ppo import PPOConfig
config = (PPOConfig().environment("CartPole-v1").checkpointing(format="msgpack")
          .training(model={"fcnet_hiddens": [8]}, train_batch_size=64, minibatch_size=32, num_epochs=1))
algo = config.build()
manager = amber.CheckpointManager(sys.argv[1], num_to_keep=2)
last = manager.latest()
if last is not None:
    algo.restore(last.path)
algo.train()  # the first iteration is slow (warm-up): the kill lands in the loop's steady state
manager.save(algo)
print("ready", flush=True)
while True:
    algo.train()
    manager.save(algo)
"""


def test_kill_9_while_saving_and_pruning(tmp_path):
    from amber.algorithms.algorithm import Algorithm

    trials = int(os.environ.get("AMBER_RETENTION_KILL_TRIALS", "8"))
    rng = random.Random(7)
    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    manager = amber.CheckpointManager(root, num_to_keep=2)
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(root)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = manager.checkpoints()
        assert len(found) <= 3, [c.path.name for c in found]  # killed between commit and prune: N + 1
        for c in found:
            assert verify(c.path).ok, verify(c.path).problems
        if found:
            ckpt = read_checkpoint(found[-1].path)
            assert ckpt.type == "Algorithm"
    newest = manager.latest()
    assert newest is not None and newest.iteration > 1, "no trial ever committed a checkpoint"
    algo = Algorithm.from_checkpoint(newest.path)
    try:
        assert algo.iteration == newest.iteration
        algo.train()
        manager.save(algo)
    finally:
        algo.stop()
    assert len(manager.checkpoints()) <= 2
    assert not [p.name for p in root.iterdir() if is_temporary(p.name)]
    assert all(p.name.startswith("checkpoint_") for p in root.iterdir())


def test_a_score_attribute_missing_from_the_results_is_named_once(tmp_path):
    """A typo, or RLlib's old name, made "keep the best" keep the newest, in silence."""
    algo = _config().build()
    try:
        algo.train()
        manager = amber.CheckpointManager(tmp_path, num_to_keep=1, score_attribute="episode_return_maen")
        with pytest.warns(UserWarning, match="'episode_return_maen' is not in the train\\(\\) result.*did you "
                                             "mean 'episode_return_mean'"):
            manager.save(algo)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            manager.save(algo)  # said once
            amber.CheckpointManager(tmp_path, score_attribute="episode_return_mean").save(algo)
    finally:
        algo.stop()
