"""``amber train --resume``: a run that already meets its stop condition trains nothing more.

Every run is tiny (64 env steps an iteration, an 8-unit network), so each takes a second or two.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from click.testing import CliRunner

from amber.cli import cli

TINY = ["-o", "train_batch_size=64", "-o", "minibatch_size=32", "-o", "num_epochs=1",
        "-o", "model.fcnet_hiddens=[8]"]
BASE = ["train", "--algo", "PPO", "--env", "CartPole-v1", "--seed", "0", "--format", "msgpack", *TINY]


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _iterations(run: Path) -> list[str]:
    with open(run / "progress.csv", newline="") as f:
        return [row["training_iteration"] for row in csv.DictReader(f)]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint_*"))


def _last_return(run: Path) -> float:
    """The ``episode_return_mean`` of the run's last iteration, as ``train()`` returned it."""
    return json.loads((run / "result.json").read_text().splitlines()[-1])["episode_return_mean"]


def _one_run(tmp_path: Path, *stop: str) -> Path:
    run = tmp_path / "run"
    result = _invoke(*BASE, *stop, "--checkpoint-dir", str(run))
    assert result.exit_code == 0, result.output
    return run


def test_a_resumed_run_that_reached_its_stop_reward_trains_nothing(tmp_path):
    run = _one_run(tmp_path, "--stop-reward", "1")  # any finished episode reaches it: iteration 1
    assert _iterations(run) == ["1"] and _last_return(run) >= 1
    result = _invoke("train", "--resume", str(run), "--stop-reward", "1")
    assert result.exit_code == 0, result.output
    assert _iterations(run) == ["1"] and _checkpoints(run) == ["checkpoint_000001"]  # nothing new
    assert "nothing to train: the run is at iteration 1, which already meets its stop condition" in result.stderr
    assert "--stop-reward 1: a mean return of" in result.stderr and result.stdout == ""


def test_the_stop_reward_is_compared_with_the_last_results_mean_return(tmp_path):
    """Met exactly (>=) by the restored run's mean return, the one its last result reported; a
    hair above it, the run trains on."""
    run = _one_run(tmp_path, "--stop-iters", "1")
    ret = _last_return(run)
    assert math.isfinite(ret)
    result = _invoke("train", "--resume", str(run), "--stop-reward", repr(ret), "--stop-iters", "5")
    assert result.exit_code == 0 and _iterations(run) == ["1"], result.output
    above = repr(math.nextafter(ret, math.inf))
    result = _invoke("train", "--resume", str(run), "--stop-reward", above, "--stop-iters", "2")
    assert result.exit_code == 0 and _iterations(run) == ["1", "2"], result.output
    assert _checkpoints(run) == ["checkpoint_000001", "checkpoint_000002"]


def test_a_resumed_run_past_its_stop_iters_or_timesteps_trains_nothing(tmp_path):
    run = _one_run(tmp_path, "--stop-iters", "2")  # 128 env steps
    for stop, says in ((["--stop-timesteps", "128"], "--stop-timesteps 128: 128 env steps"),
                       (["--stop-iters", "2", "--stop-reward", "1e9"], "(--stop-iters 2)")):
        result = _invoke("train", "--resume", str(run), *stop, "--json")
        assert result.exit_code == 0, result.output
        assert says in result.stderr and "no checkpoint written" in result.stderr and result.stdout == ""
        assert _iterations(run) == ["1", "2"] and _checkpoints(run) == ["checkpoint_000002"]
