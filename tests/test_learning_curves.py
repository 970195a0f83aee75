"""Learning curves: callbacks, ``progress.csv`` / ``result.json`` in the log dir, TensorBoard
event files, and ``amber plot``. Every run is tiny (64 env steps an iteration)."""

from __future__ import annotations

import csv
import json
import struct
import threading
import warnings
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.callbacks import DefaultCallbacks, TensorBoardLogger, make_multi_callbacks
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.result_log import CHECKPOINT_FIELD, PROGRESS_FIELDS, ResultLogger
from amber.cli import cli
from amber.examples.envs.classes.multi_agent import MultiAgentCartPole

TINY = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


class Recorder(DefaultCallbacks):
    """Records what it is called with (class-level, so tests see every instance's calls)."""

    calls: list[tuple] = []

    def on_algorithm_init(self, *, algorithm, **kwargs):
        Recorder.calls.append(("init", algorithm.iteration))

    def on_train_result(self, *, algorithm, result, **kwargs):
        result["custom_metric"] = 7
        Recorder.calls.append(("train", result["training_iteration"]))

    def on_checkpoint(self, *, algorithm, checkpoint_path, **kwargs):
        Recorder.calls.append(("checkpoint", checkpoint_path))


amber.register_class(Recorder, name="tests.curves.Recorder")


class Unregistered(DefaultCallbacks):
    pass


def _config(callbacks=None, seed=0):
    config = PPOConfig().environment("CartPole-v1").training(**TINY).debugging(seed=seed)
    if callbacks is not None:
        config.callbacks_class = callbacks  # config.callbacks(cls) once AlgorithmConfig has it
    return config


def _rows(run):
    with open(run / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _fresh_recorder():
    Recorder.calls = []


def test_callbacks_are_called_after_train_and_after_each_committed_save(tmp_path):
    algo = _config(Recorder).build()
    try:
        assert algo.train()["custom_metric"] == 7
        path = algo.save(tmp_path / "a").checkpoint.path
        algo.save(tmp_path / "b", block=False).result()  # in the writer thread, after the commit
    finally:
        algo.stop()
    assert Recorder.calls == [("init", 0), ("train", 1), ("checkpoint", path), ("checkpoint", str(tmp_path / "b"))]


def test_the_callbacks_class_is_stored_by_name_and_restored(tmp_path):
    algo = _config(Recorder).build()
    try:
        algo.save(tmp_path / "ckpt", format="msgpack")
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(tmp_path / "ckpt")
    try:
        assert type(restored.callbacks) is Recorder
        restored.train()
    finally:
        restored.stop()
    assert ("train", 1) in Recorder.calls


def test_an_unregistered_callbacks_class_becomes_a_placeholder_and_restores_as_default(tmp_path):
    algo = _config(Unregistered).build()
    try:
        with pytest.warns(UserWarning, match="no registered name") as saving:
            algo.save(tmp_path / "ckpt", format="msgpack")
    finally:
        algo.stop()
    with pytest.warns(UserWarning, match="using DefaultCallbacks") as loading:
        restored = Algorithm.from_checkpoint(tmp_path / "ckpt")
    restored.stop()
    # each warning names the line of the user's call, not one inside amber
    assert {w.filename for w in [*saving, *loading]} == {__file__}
    assert type(restored.callbacks) is DefaultCallbacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = Algorithm.from_checkpoint(tmp_path / "ckpt", callbacks=Recorder)
    given.stop()
    assert type(given.callbacks) is Recorder


def test_a_callbacks_class_must_subclass_default_callbacks():
    with pytest.raises(ValueError, match="DefaultCallbacks"):
        _config(object).build()
    with pytest.raises(ValueError, match="DefaultCallbacks"):
        make_multi_callbacks([Recorder, int])


def test_train_writes_progress_csv_and_result_json_in_the_logdir_with_the_checkpoint(tmp_path):
    algo = _config(make_multi_callbacks([Recorder, DefaultCallbacks])).build()
    try:
        algo.train()
        ckpt = algo.save().checkpoint.path  # a default checkpoint: in the log dir
        algo.train()
        logdir = algo.logdir
    finally:
        algo.stop()
    rows = _rows(Path(logdir))
    assert list(rows[0]) == [*PROGRESS_FIELDS, CHECKPOINT_FIELD]
    assert [r["training_iteration"] for r in rows] == ["1", "2"]
    assert [r[CHECKPOINT_FIELD] for r in rows] == [ckpt, ""]
    assert int(rows[1]["num_env_steps_sampled_lifetime"]) == 128
    lines = [json.loads(line) for line in (Path(logdir) / "result.json").read_text().splitlines()]
    assert [d["training_iteration"] for d in lines] == [1, 2] and lines[0]["custom_metric"] == 7
    assert [c[0] for c in Recorder.calls] == ["init", "train", "checkpoint", "train"]


class HeldStorage(MemoryFileSystem):
    """fsspec's in-memory file system whose uploads wait until :attr:`gate` is set: a slow storage."""

    protocol = "heldmem"
    store: dict = {}
    pseudo_dirs = [""]
    gate = threading.Event()

    def put_file(self, lpath, rpath, *args, **kwargs):
        assert HeldStorage.gate.wait(timeout=120), "the test never let the upload go on"
        return super().put_file(lpath, rpath, *args, **kwargs)


def test_a_background_save_committing_after_the_next_train_fills_in_its_row(tmp_path):
    fsspec.register_implementation("heldmem", HeldStorage, clobber=True)
    HeldStorage.gate.clear()
    algo = _config().checkpointing(storage_path="heldmem://runs", format="msgpack").build()
    algo.logdir = tmp_path / "run"
    try:
        algo.train()
        handle = algo.save(block=False)  # its upload waits for the gate
        algo.train()
        assert not handle.done()  # so the next iteration's row is written before it commits
        HeldStorage.gate.set()
        ckpt = handle.result().checkpoint.path
        algo.train()
    finally:
        HeldStorage.gate.set()
        algo.stop()
    assert ckpt == "heldmem://runs/run/checkpoint_000001"
    assert [(r["training_iteration"], r[CHECKPOINT_FIELD]) for r in _rows(tmp_path / "run")] == [
        ("1", ckpt), ("2", ""), ("3", "")]
    with fsspec.open("heldmem://runs/run/progress.csv", "rt", newline="") as f:  # the copy beside it
        copied = list(csv.DictReader(f))
    assert [(r["training_iteration"], r[CHECKPOINT_FIELD]) for r in copied] == [("1", ckpt), ("2", "")]


def test_checkpoints_committing_in_any_order_fill_in_their_own_rows(tmp_path):
    logger = ResultLogger(lambda: tmp_path)
    for i in range(1, 5):
        logger.log({"training_iteration": i, "episode_return_mean": i / 3})
    for i in (3, 1, 4):
        logger.checkpoint_written(tmp_path / f"checkpoint_00000{i}", i)
    logger.log({"training_iteration": 5})
    logger.checkpoint_written(tmp_path / "checkpoint_000002", 2)
    rows = _rows(tmp_path)
    assert [r[CHECKPOINT_FIELD] for r in rows] == [
        str(tmp_path / f"checkpoint_00000{i}") if i != 5 else "" for i in range(1, 6)]
    assert [float(r["episode_return_mean"]) for r in rows[:4]] == [i / 3 for i in range(1, 5)]
    assert [r["training_iteration"] for r in rows] == ["1", "2", "3", "4", "5"]


def test_multi_agent_progress_has_a_return_column_per_policy(tmp_path):
    config = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).training(**TINY)
              .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda aid, *a, **k: f"p{aid}"))
    algo = config.build()
    try:
        algo.logdir = tmp_path / "run"
        algo.train()
    finally:
        algo.stop()
    assert {"policy_return_mean/p0", "policy_return_mean/p1"} <= set(_rows(tmp_path / "run")[0])


def test_tensorboard_logger_writes_event_files_with_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    algo = _config(TensorBoardLogger).build()
    try:
        algo.logdir = tmp_path / "run"
        algo.train()
        algo.train()
    finally:
        algo.stop()
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    scalars = events.Scalars("episode_return_mean")
    assert [s.step for s in scalars] == [64, 128]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_draws_one_line_per_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    runs = []
    for seed in (0, 1):
        algo = _config(seed=seed).build()
        try:
            algo.logdir = tmp_path / f"seed{seed}"
            algo.train()
            algo.train()
        finally:
            algo.stop()
        runs.append(str(tmp_path / f"seed{seed}"))
    out = tmp_path / "figs" / "curves.png"
    result = CliRunner().invoke(cli, ["plot", *runs, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out) and _png_size(out) == (800, 500)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["plot", runs[0], "--x", "training_iteration", "--metric", "time_total_s"])
    assert result.exit_code == 0 and (tmp_path / "plot.png").stat().st_size > 0
    result = CliRunner().invoke(cli, ["plot", runs[0], "--metric", "nope"])
    assert result.exit_code == 2 and "no column 'nope'" in result.output
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "figs")])
    assert result.exit_code == 2 and "no progress.csv" in result.output


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "progress.csv").write_text("training_iteration,num_env_steps_sampled_lifetime,"
                                           "episode_return_mean\n1,64,10.0\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "pip install 'amber-rl[plot]'" in result.output


def test_log_results_off_writes_nothing_in_the_logdir(tmp_path):
    algo = _config().reporting(log_results=False).build()
    algo.logdir = str(tmp_path / "run")  # the log dir exists only if something is written there
    try:
        algo.train()
        algo.train()
    finally:
        algo.stop()
    assert not (tmp_path / "run" / "progress.csv").exists()
    assert not (tmp_path / "run" / "result.json").exists()


def test_plot_refuses_an_unknown_image_suffix_and_a_csv_that_is_not_text(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "progress.csv").write_text("training_iteration,num_env_steps_sampled_lifetime,"
                                           "episode_return_mean\n1,64,10.0\n")
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "-o", str(tmp_path / "curve.txt")])
    assert result.exit_code == 2 and result.stderr.startswith("amber: error: cannot write")
    assert ".png" in result.stderr and not (tmp_path / "curve.txt").exists()
    (tmp_path / "progress.csv").write_bytes(b"\xff\xfe\x00training_iteration")
    result = CliRunner().invoke(cli, ["plot", str(tmp_path), "-o", str(tmp_path / "curve.png")])
    assert result.exit_code == 2 and "is not a progress.csv amber wrote (not UTF-8 text" in result.stderr
