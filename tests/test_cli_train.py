"""``amber train`` as RL Zoo and ``rllib train`` users expect: settings from a file and ``-o``,
stop criteria, retention, exact ``--resume``, signals, plain and JSON output.

Every run is tiny (64 env steps an iteration, an 8-unit network), so each takes seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amber.algorithms.config_overrides import configure, merge_settings, parse_override
from amber.checkpoint import read_checkpoint
from amber.cli import cli
from amber.names import resolve

TINY = ["-o", "train_batch_size=64", "-o", "minibatch_size=32", "-o", "num_epochs=1",
        "-o", "model.fcnet_hiddens=[8]"]
BASE = ["train", "--algo", "PPO", "--env", "CartPole-v1", "--seed", "0", "--format", "msgpack", *TINY]


def _amber(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=os.environ.copy())


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def _weights(ckpt: Path) -> dict[str, np.ndarray]:
    state = read_checkpoint(ckpt, allow_pickle=False).policies["default_policy"].state
    return {k: np.asarray(v) for k, v in state["weights"].items()}


# -- settings: --config, -o, --env-kwargs --------------------------------------------------------------

def test_overrides_parse_json_values_and_reach_into_dicts():
    assert parse_override("model.fcnet_hiddens=[64,64]") == (["model", "fcnet_hiddens"], [64, 64])
    assert parse_override("lr=0.001") == (["lr"], 0.001)
    assert parse_override("env=CartPole-v1") == (["env"], "CartPole-v1")  # not JSON: the string
    base = {"model": {"fcnet_activation": "relu"}, "lambda": 0.9}
    merged = merge_settings(base, ["model.fcnet_hiddens=[8]", "lr=0.1", "lr=0.2"])
    assert merged == {"model": {"fcnet_activation": "relu", "fcnet_hiddens": [8]}, "lambda_": 0.9, "lr": 0.2}
    assert base == {"model": {"fcnet_activation": "relu"}, "lambda": 0.9}  # left as it was
    for bad in ("lr", "=1", "model..x=1"):
        with pytest.raises(ValueError, match="key=value"):
            merge_settings({}, [bad])
    with pytest.raises(ValueError, match="lr is not a mapping"):
        merge_settings({"lr": 0.1}, ["lr.x=1"])


def test_configure_merges_into_defaults_and_names_unknown_keys():
    ppo = resolve("amber.PPOConfig")
    config = configure(ppo, {"model": {"fcnet_hiddens": [8]}, "lr": 0.01, "env_config": {"a": 1}})
    assert config.model == {**ppo().model, "fcnet_hiddens": [8]}
    assert (config.lr, config.env_config, config.gamma) == (0.01, {"a": 1}, ppo().gamma)
    with pytest.raises(ValueError, match=r"'lrr'.*did you mean lr"):
        configure(ppo, {"lrr": 0.1})
    with pytest.raises(ValueError, match="'lr' must be float"):
        configure(ppo, {"lr": "fast"})


def test_rllib_names_are_read_in_settings_as_from_dict_reads_them():
    """`-o num_workers=0` and `-o lambda=0.9` were unknown settings for amber train, while
    PPOConfig.from_dict read them."""
    from amber.algorithms.ppo import PPOConfig

    config = configure(PPOConfig, {"num_workers": 0, "lambda": 0.9, "sgd_minibatch_size": 16})
    assert (config.num_env_runners, config.lambda_, config.minibatch_size) == (0, 0.9, 16)
    with pytest.raises(ValueError, match="'lamda'"):
        configure(PPOConfig, {"lamda": 0.9})


def test_config_file_then_overrides_then_env_kwargs(tmp_path):
    (tmp_path / "ppo.json").write_text(json.dumps({"env": "CartPole-v1", "lr": 0.01, "gamma": 0.9,
                                                   "model": {"fcnet_activation": "relu"}}))
    run = tmp_path / "run"
    result = _invoke("train", "--config", str(tmp_path / "ppo.json"), *TINY, "-o", "lr=0.002",
                     "--env-kwargs", '{"max_episode_steps": 10}', "--stop-iters", "2", "--json",
                     "--format", "msgpack", "--checkpoint-dir", str(run))
    assert result.exit_code == 0, result.output
    config = read_checkpoint(run / "checkpoint_000002", allow_pickle=False).state["config"]
    assert (config["env"], config["lr"], config["gamma"]) == ("CartPole-v1", 0.002, 0.9)
    assert config["model"]["fcnet_hiddens"] == [8] and config["model"]["fcnet_activation"] == "relu"
    assert config["env_config"] == {"max_episode_steps": 10}
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[-1]["episode_return_max"] <= 10  # the env got its kwargs


def test_yaml_config_or_a_clear_error_without_pyyaml(tmp_path):
    (tmp_path / "ppo.yaml").write_text("lr: 0.003\nmodel:\n  fcnet_hiddens: [8]\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--env", "CartPole-v1", "--config", str(tmp_path / "ppo.yaml"),
                                      *TINY, "--stop-iters", "1", "--format", "msgpack",
                                      "--checkpoint-dir", str(run)])
    try:
        import yaml  # noqa: F401
    except ImportError:
        assert result.exit_code == 2 and "pip install pyyaml" in result.output
        return
    assert result.exit_code == 0, result.output
    assert read_checkpoint(run / "checkpoint_000001", allow_pickle=False).state["config"]["lr"] == 0.003


@pytest.mark.parametrize("args, message", [
    (["-o", "lrr=0.1", "-o", "bogus.x=1"], "'bogus', 'lrr'"),
    (["-o", "lr=fast"], "'lr' must be float"),
    (["-o", "lr"], "not key=value"),
    (["--env-kwargs", "[1]"], "JSON object"),
    (["--env-kwargs", '{"nosuch": 1}'], "cannot build PPO on 'CartPole-v1' with env_config {'nosuch': 1}"),
    (["--stop-iters", "0"], "'--stop-iters': 0 is not in the range x>=1"),
    (["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
    (["-o", "model.fcnet_hiddenz=[8]"], "unknown model key 'fcnet_hiddenz'; did you mean fcnet_hiddens?"),
    (["-o", "model.fcnet_hiddens=64"], "model fcnet_hiddens must be a list of layer sizes"),
    (["-o", "num_epochs=0"], "num_epochs must be a positive integer, got 0"),
    (["-o", "lr=-1"], "lr must be a positive number, got -1"),
    (["--stop-reward", "nan"], "must be a finite number, not nan"),  # (a run that never ends)
    (["--stop-reward", "inf"], "must be a finite number, not inf"),
])
def test_bad_settings_are_click_errors_naming_them(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", "--env", "CartPole-v1", "--stop-iters", "1", *args,
                                      "--checkpoint-dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "progress.csv").exists()


# -- stop criteria, retention, output ------------------------------------------------------------------

def test_stop_timesteps_and_reward_and_plain_lines(tmp_path):
    run = tmp_path / "steps"
    result = _invoke(*BASE, "--stop-timesteps", "150", "--stop-iters", "100", "--checkpoint-dir", str(run))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["iter", "1"], ["iter", "2"], ["iter", "3"]]
    assert lines[-1] == str(run / "checkpoint_000003")  # 3 x 64 >= 150: the last line is the checkpoint
    result = _invoke(*BASE, "--stop-reward", "1", "--checkpoint-dir", str(tmp_path / "reward"))
    assert result.exit_code == 0 and [r["training_iteration"] for r in _rows(tmp_path / "reward")] == ["1"]


def test_checkpoint_every_with_num_to_keep_and_json_lines(tmp_path):
    run = tmp_path / "run"
    result = _invoke(*BASE, "--stop-iters", "4", "--checkpoint-every", "1", "--num-to-keep", "2", "--json",
                     "--checkpoint-dir", str(run))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [d["training_iteration"] for d in lines] == [1, 2, 3, 4]
    for d in lines:
        assert {"episode_return_mean", "num_env_steps_sampled_lifetime", "time_this_iter_s"} <= set(d)
        assert d["checkpoint"] == str(run / f"checkpoint_{d['training_iteration']:06d}")
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_000003", "checkpoint_000004"]


def test_the_configs_retention_ranks_by_its_score_attribute(tmp_path):
    run = tmp_path / "run"
    result = _invoke(*BASE, "-o", "num_to_keep=1", "-o", "checkpoint_score_attribute=episode_return_mean",
                     "--stop-iters", "4", "--checkpoint-every", "1", "--checkpoint-dir", str(run))
    assert result.exit_code == 0, result.output
    returns = {int(r["training_iteration"]): float(r["episode_return_mean"]) for r in _rows(run)}
    scored = {it: ret for it, ret in returns.items() if math.isfinite(ret)}  # (no episode ended: unscored)
    best = max(scored, key=lambda it: (scored[it], it)) if scored else 4  # ties: the newer
    assert sorted(p.name for p in run.glob("checkpoint_*")) == sorted(
        {f"checkpoint_{best:06d}", "checkpoint_000004"})


# -- --resume --------------------------------------------------------------------------------------------

def test_resume_in_a_new_process_is_exact_and_appends_progress(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    done = _amber(*BASE, "--stop-iters", "4", "--checkpoint-dir", str(whole), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _amber(*BASE, "--stop-iters", "2", "--checkpoint-dir", str(split), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _amber("train", "--resume", str(split), "--stop-iters", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(split / "checkpoint_000004")
    a, b = _weights(whole / "checkpoint_000004"), _weights(split / "checkpoint_000004")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = _rows(split)
    assert [r["training_iteration"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["num_env_steps_sampled_lifetime"] for r in rows] == [
        r["num_env_steps_sampled_lifetime"] for r in _rows(whole)]
    assert (split / "progress.csv").read_text().count("training_iteration") == 1  # one header


def test_resume_keeps_the_runs_retention(tmp_path):
    run = tmp_path / "run"
    first = _invoke(*BASE, "--stop-iters", "3", "--checkpoint-every", "1", "--num-to-keep", "2",
                    "--checkpoint-dir", str(run))
    assert first.exit_code == 0, first.output
    resumed = _invoke("train", "--resume", str(run), "--stop-iters", "5", "--checkpoint-every", "1")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_000004", "checkpoint_000005"]


def test_resume_refuses_new_settings_and_needs_a_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--stop-iters", "1"])
    assert result.exit_code == 2 and "no amber checkpoint" in result.output
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--stop-iters", "1", "-o", "lr=1.0",
                                      "--seed", "3"])
    assert result.exit_code == 2 and "-o, --seed" in result.output


def test_resume_past_the_stop_trains_nothing(tmp_path):
    run = tmp_path / "run"
    assert _invoke(*BASE, "--stop-iters", "1", "--checkpoint-dir", str(run)).exit_code == 0
    result = _invoke("train", "--resume", str(run), "--stop-iters", "1")
    assert result.exit_code == 0 and len(_rows(run)) == 1
    assert "nothing to train: the run is at iteration 1" in result.stderr


def test_a_new_run_never_mixes_with_an_earlier_ones_checkpoints(tmp_path):
    """Another run's checkpoints would mix with this one's (and its retention would delete them)."""
    run = tmp_path / "run"
    assert _invoke(*BASE, "--stop-iters", "2", "--checkpoint-every", "1", "--checkpoint-dir", str(run)).exit_code == 0
    before = sorted(p.name for p in run.iterdir()), (run / "progress.csv").read_text()
    result = CliRunner().invoke(cli, [*BASE, "--stop-iters", "1", "--num-to-keep", "1", "--checkpoint-dir", str(run)])
    assert result.exit_code == 2, result.output
    assert f"{run} already holds a run's checkpoints (checkpoint_000001, checkpoint_000002): continue " \
           f"that run with `amber train --resume {run} ...`" in result.stderr
    assert (sorted(p.name for p in run.iterdir()), (run / "progress.csv").read_text()) == before
    result = CliRunner().invoke(cli, ["train", "--resume", str(run / "checkpoint_000002"), "--stop-iters", "3"])
    assert result.exit_code == 2 and f"it is a checkpoint itself: give its run's directory, --resume {run}" \
        in result.stderr
    for inside in (run / "checkpoint_000002", run / "checkpoint_000002" / "runs"):
        result = CliRunner().invoke(cli, [*BASE, "--stop-iters", "1", "--checkpoint-dir", str(inside)])
        assert result.exit_code == 2 and "give --checkpoint-dir a directory of its own" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == before[0]


# -- signals --------------------------------------------------------------------------------------------

def _training(run: Path, *args: str) -> subprocess.Popen[str]:
    """``amber train`` of a run that does not end by itself, once its first iteration is logged
    (SIGHUP as a terminal leaves it, whatever the test runner's own is)."""
    proc = subprocess.Popen([sys.executable, "-m", "amber.cli", *BASE, "--stop-iters", "1000000",
                             "--checkpoint-dir", str(run), *args], cwd=run.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not ((run / "progress.csv").exists() and len(_rows(run)) >= 1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate())
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_saves_a_final_checkpoint(tmp_path, signum, status):
    run = tmp_path / "run"
    proc = _training(run)
    try:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    final = Path(out.splitlines()[-1])
    last = _rows(run)[-1]
    assert last["checkpoint"] == str(final) and final.name == f"checkpoint_{int(last['training_iteration']):06d}"
    state = read_checkpoint(final, allow_pickle=False).state
    assert state["components"]["progress"]["iteration"] == int(last["training_iteration"])


def test_a_closed_standard_output_stops_the_run_with_a_checkpoint(tmp_path):
    """`amber train ... | head -2`: the write to a pipe nobody reads failed, and the run exited 1
    in silence, with no final checkpoint."""
    run = tmp_path / "run"
    proc = _training(run)
    try:
        proc.stdout.close()  # the reader goes away
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 141, err
    last = _rows(run)[-1]
    final = run / f"checkpoint_{int(last['training_iteration']):06d}"
    assert f"standard output was closed: stopped with the checkpoint {final}" in err
    assert read_checkpoint(final, allow_pickle=False).state["components"]["progress"]["iteration"] == \
        int(last["training_iteration"])


def test_one_run_directory_is_trained_by_one_amber_train_at_a_time(tmp_path):
    """A second `amber train` on a run still training (a retried job, a second terminal) mixed
    the two curves, and one's retention deleted the checkpoint the other was reading."""
    run = tmp_path / "run"
    first = _training(run)
    try:
        for args in (["train", "--resume", str(run)], [*BASE, "--checkpoint-dir", str(run)]):
            second = CliRunner().invoke(cli, [*args, "--stop-iters", "1000000"])
            assert second.exit_code == 2, second.output
            assert f"{run} is being trained by another amber train (pid {first.pid})" in second.stderr
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    finally:
        first.kill()
    done = int(_rows(run)[-1]["training_iteration"])
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--stop-iters", str(done + 1)])
    assert result.exit_code == 0, result.output  # the lock went with the first process
    assert [int(r["training_iteration"]) for r in _rows(run)] == list(range(1, done + 2))


def test_a_local_storage_gets_the_curves_beside_the_checkpoints(tmp_path):
    """`--storage DIR` (or a file:// URL) is storage like any other: the curves are copied beside
    the checkpoints, so the run resumes from there with its whole curve."""
    run, store = tmp_path / "run", tmp_path / "store"
    result = _invoke(*BASE, "--stop-iters", "2", "--checkpoint-every", "1", "--checkpoint-dir", str(run),
                     "--storage", store.as_uri())
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == str(store / "run" / "checkpoint_000002")
    assert (store / "run" / "progress.csv").read_text() == (run / "progress.csv").read_text()
    assert [r["training_iteration"] for r in _rows(store / "run")] == ["1", "2"]
    result = _invoke("train", "--resume", str(store / "run"), "--stop-iters", "3")
    assert result.exit_code == 0, result.output
    assert [r["training_iteration"] for r in _rows(store / "run")] == ["1", "2", "3"]
