"""Hostile or odd input found by the testers, one section each: env state that sets configuration,
`amber evaluate` on episodes that never end, registered names of the wrong kind, `amber plot` on a
huge CSV field, `convert_to_msgpack_checkpoint(storage_options=)`, the hint of an unknown
setting, and a policy replaced inside an algorithm checkpoint."""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import fsspec
import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.cli import CliState, cli
from amber.errors import CheckpointError, CorruptCheckpointError, InvalidStateError
from amber.names import resolve
from amber.plugins.env_state import capture_env, restore_env
from amber.state import Ref
from amber.utils.checkpoints import convert_to_msgpack_checkpoint, verify


def rewritten(src: Path, dst: Path, edit: Any) -> Path:
    """``src`` decoded, its algorithm state edited and written again with valid digests."""
    ckpt = read_checkpoint(src, migrate=False)
    edit(ckpt.state)
    policies = {pid: p.state for pid, p in ckpt.policies.items()}
    write_checkpoint(dst, type=ckpt.type, state=ckpt.state, policies=policies or None, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    return dst


def _ppo(env: str = "CartPole-v1", env_config: dict | None = None) -> Any:
    return (PPOConfig().environment(env, env_config=env_config or {})
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
            .debugging(seed=0).build())


@pytest.fixture(scope="module")
def pendulum_ck(tmp_path_factory) -> Path:
    """A msgpack PPO checkpoint of Pendulum-v1 (200-step episodes), saved in mid-episode."""
    algo = _ppo("Pendulum-v1")
    algo.train()
    path = Path(algo.save(tmp_path_factory.mktemp("pend") / "ck", format="msgpack").checkpoint.path)
    algo.stop()
    return path


# -- 1. env state never sets configuration ---------------------------------------------------------


def _played(name: str = "CartPole-v1", steps: int = 3) -> Any:
    env = gym.make(name)
    env.reset(seed=0)
    for _ in range(steps):
        env.step(env.action_space.sample())
    return env


def test_saved_env_state_holds_only_the_wrappers_running_state():
    state = capture_env(_played())
    assert [(w["type"], set(w["attrs"])) for w in state["wrappers"]] == [
        ("TimeLimit", {"_elapsed_steps"}), ("OrderEnforcing", {"_has_reset"}),
        ("PassiveEnvChecker", {"checked_reset", "checked_step", "checked_render", "close_called",
                               "checked_data_reuse", "_previous_data"})]


def test_wrapper_configuration_in_a_saved_state_is_checked_never_applied():
    """An earlier amber saved TimeLimit._max_episode_steps with the state: a checkpoint setting it to
    2**62 made the restored env never truncate. It is configuration: the live env's stays."""
    state = copy.deepcopy(capture_env(_played()))
    state["wrappers"][0]["attrs"]["_max_episode_steps"] = 2**62
    state["wrappers"][1]["attrs"]["_disable_render_order_enforcing"] = True
    env = _played(steps=1)
    assert restore_env(env, state) is True
    assert env._max_episode_steps == 500 and env.env._disable_render_order_enforcing is False
    assert env._elapsed_steps == 3  # the running state is restored
    state["wrappers"][0]["attrs"]["_max_episode_steps"] = "many"  # still refused when malformed
    with pytest.raises(CheckpointError, match=r"_max_episode_steps"):
        restore_env(_played(steps=1), state)


def test_a_checkpoint_cannot_lift_the_time_limit(pendulum_ck, tmp_path):
    def edit(state: dict) -> None:
        attrs = state["components"]["env_runner"]["envs"]["0"]["wrappers"][0]["attrs"]
        assert "_max_episode_steps" not in attrs  # new checkpoints do not hold it
        attrs["_max_episode_steps"] = 2**62

    algo = Algorithm.from_checkpoint(rewritten(pendulum_ck, tmp_path / "forged", edit))
    try:
        env = algo.env_runner.envs[0]
        assert env._max_episode_steps == 200
        for _ in range(4):  # 256 steps: Pendulum's episodes (200 steps) still end
            result = algo.train()
        assert result["episodes_total"] >= 1
    finally:
        algo.stop()


class Scaled(gym.Wrapper):
    """A wrapper with a setting of its own: amber cannot tell its state from its configuration."""

    def __init__(self, env: Any, scale: float) -> None:
        super().__init__(env)
        self.scale = scale


def test_a_wrapper_amber_does_not_know_is_not_captured_nor_restored():
    assert capture_env(Scaled(_played(), 2.0)) is None
    bare = capture_env(gym.Wrapper(_played()))  # holds nothing of its own: captured with the env
    assert bare is not None and bare["wrappers"][0] == {"type": "Wrapper", "attrs": {}}
    old = capture_env(gym.Wrapper(_played()))  # an earlier amber saved any plain attribute
    old["wrappers"][0] = {"type": "Scaled", "attrs": {"scale": 100.0}}
    env = Scaled(_played(steps=1), 2.0)
    with pytest.warns(UserWarning, match="attributes of Scaled are not restored"):
        assert restore_env(env, old) is True
    assert env.scale == 2.0 and env.env._elapsed_steps == 3


# -- 2. amber evaluate ends every episode ----------------------------------------------------------


def test_evaluate_cuts_an_episode_that_never_ends(tmp_path):
    algo = _ppo("Pendulum-v1", {"max_episode_steps": 10**15})  # what a checkpoint's env_config can say
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.stop()
    result = CliRunner().invoke(cli, ["evaluate", path, "--episodes", "2", "--max-steps", "30"])
    assert result.exit_code == 0, result.output
    assert "episodes: 2 (2 cut at --max-steps 30)  return mean:" in result.output
    result = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert "--max-steps" in result.output and "100000" in result.output


def test_evaluate_reports_no_cut_when_the_env_ends_its_episodes(tmp_path):
    algo = _ppo()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.stop()
    result = CliRunner().invoke(cli, ["evaluate", path, "--episodes", "2", "--max-steps", "600"])
    assert result.exit_code == 0 and "episodes: 2  return mean:" in result.output, result.output


# -- 3. a registered name of the wrong kind ----------------------------------------------------------


@pytest.mark.parametrize(("what", "name"), [
    ("config.policy_mapping_fn", "amber.PPOConfig"),
    ("config.policy_mapping_fn", "gymnasium:Reacher-v2"),
    ("config.policy_mapping_fn", "gymnasium:CartPole-v1"),
    ("algorithm_class", "amber.Algorithm"),
    ("algorithm_class", "amber.DefaultCallbacks"),
    ("algorithm_class", "gymnasium:CartPole-v1"),
])
def test_a_name_of_the_wrong_kind_is_refused_at_load(pendulum_ck, tmp_path, what, name):
    def edit(state: dict) -> None:
        (state["config"] if what.startswith("config.") else state)[what.removeprefix("config.")] = Ref(name)

    path = rewritten(pendulum_ck, tmp_path / "forged", edit)
    with pytest.raises(InvalidStateError) as info:
        Algorithm.from_checkpoint(path)
    assert str(path) in str(info.value) and f"{what} names {name!r}" in str(info.value)


def test_names_of_the_right_kind_still_resolve():
    assert resolve("amber.PPO", what="algorithm_class").__name__ == "PPO"
    assert resolve("amber.PPOConfig", what="config").__name__ == "PPOConfig"  # elsewhere: unchecked
    assert callable(resolve("gymnasium:CartPole-v1", what="config.env"))


# -- 4. amber plot on a CSV amber did not write ------------------------------------------------------


def test_plot_names_a_csv_with_a_field_over_the_csv_limit(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text("training_iteration,num_env_steps_sampled_lifetime,episode_return_mean\n"
                                      "1,10," + "x" * 200_000 + "\n")
    result = CliRunner().invoke(cli, ["plot", str(run), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 2, result.output
    assert "amber: error:" in result.output and str(run / "progress.csv") in result.output
    assert "field larger than field limit" in result.output and not (tmp_path / "p.png").exists()


# -- 5. convert_to_msgpack_checkpoint(storage_options=) ----------------------------------------------


class KeyedMemory(MemoryFileSystem):
    """fsspec's in-memory file system, usable only with the storage option ``token="ok"``."""

    protocol = ("amberkeyed",)

    def __init__(self, token: str | None = None, **kwargs: Any) -> None:
        if token != "ok":
            raise PermissionError("amberkeyed:// needs storage_options={'token': 'ok'}")
        super().__init__(**kwargs)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.removeprefix("amberkeyed://"))


def test_convert_to_msgpack_takes_storage_options(tmp_path):
    fsspec.register_implementation("amberkeyed", KeyedMemory, clobber=True)
    src = write_checkpoint(tmp_path / "src", type="Algorithm", state={"iteration": 3},
                           policies={"pol": {"w": np.arange(4.0)}}, format="msgpack")
    url = f"amberkeyed://amber-tests/{os.getpid()}-{id(tmp_path)}/ck"
    try:
        assert convert_to_msgpack_checkpoint(src, url, storage_options={"token": "ok"}) == url
        back = convert_to_msgpack_checkpoint(url, tmp_path / "back", storage_options={"token": "ok"})
        assert verify(back).ok and read_checkpoint(back).state == {"iteration": 3}
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("amberkeyed:/"), recursive=True)


# -- 6. the hint of an unknown setting -----------------------------------------------------------------


def test_an_algorithms_setting_given_to_the_base_config_is_named_as_given():
    from amber.algorithms.algorithm_config import AlgorithmConfig

    with pytest.raises(ValueError) as info:
        AlgorithmConfig.from_dict({"env": "CartPole-v1", "sgd_minibatch_size": 50})
    message = str(info.value)
    assert message.startswith("unknown setting(s) 'sgd_minibatch_size' for AlgorithmConfig")
    assert "is a setting of PPOConfig" in message and "did you mean sgd_minibatch_size" not in message
    assert "'minibatch_size'" not in message  # amber's own name of it: not what the user wrote


# -- 7. a policy replaced inside an algorithm checkpoint -----------------------------------------------


@pytest.fixture
def mixed(tmp_path, bare_pm) -> Path:
    """A msgpack algorithm checkpoint whose policy folder was replaced by another user's pickle one."""
    algo = write_checkpoint(tmp_path / "algo", type="Algorithm", state={"iteration": 3},
                            policies={"pol": {"w": np.arange(4.0)}}, format="msgpack", pm=bare_pm)
    old = os.environ["AMBER_KEY_FILE"]
    os.environ["AMBER_KEY_FILE"] = str(tmp_path / "stranger.key")
    try:
        theirs = write_checkpoint(tmp_path / "theirs", type="Algorithm", state={"iteration": 1},
                                  policies={"pol": {"w": np.zeros(9)}}, format="pickle", pm=bare_pm)
    finally:
        os.environ["AMBER_KEY_FILE"] = old
    shutil.rmtree(algo / "policies" / "pol")
    shutil.copytree(theirs / "policies" / "pol", algo / "policies" / "pol")
    return algo


def test_a_replaced_policy_is_refused_as_damage_not_as_untrusted(mixed, bare_pm):
    with pytest.raises(CorruptCheckpointError) as info:
        read_checkpoint(mixed / "policies" / "pol", pm=bare_pm)
    message = str(info.value)
    assert f"does not match the record of its algorithm checkpoint {mixed}" in message
    assert "replaced" in message and "run `amber trust" not in message


def test_amber_trust_of_a_replaced_policy_or_its_algorithm_says_it_does_not_match(mixed, bare_pm):
    for target in (mixed / "policies" / "pol", mixed):
        result = CliRunner().invoke(cli, ["trust", "--yes", str(target)], obj=CliState(plugin_manager=bare_pm))
        assert result.exit_code == 2, result.output
        assert "does not match the record of its algorithm checkpoint" in result.output
        assert "nothing changed" not in result.output and "through its algorithm" not in result.output


def test_a_replaced_policy_under_a_signed_algorithm_is_damage_too(tmp_path, bare_pm):
    algo = write_checkpoint(tmp_path / "algo", type="Algorithm", state={"iteration": 3},
                            policies={"pol": {"w": np.arange(4.0)}}, format="pickle", pm=bare_pm)
    other = write_checkpoint(tmp_path / "other", type="Algorithm", state={"iteration": 3},
                             policies={"pol": {"w": np.ones(4)}}, format="pickle", pm=bare_pm)
    for name in ("policy_state.pkl", "checkpoint.json"):
        shutil.copyfile(other / "policies" / "pol" / name, algo / "policies" / "pol" / name)
    with warnings.catch_warnings(), pytest.raises(CorruptCheckpointError, match="does not match the record"):
        read_checkpoint(algo / "policies" / "pol", pm=bare_pm)


@pytest.mark.parametrize("elapsed", [-(2**62), -1, 501, 2**62, True, "3"])
def test_a_step_count_the_time_limit_never_reaches_is_refused(elapsed):
    """A saved TimeLimit._elapsed_steps of -2**62 was taken (any int64): no episode ended again."""
    state = copy.deepcopy(capture_env(_played()))
    state["wrappers"][0]["attrs"]["_elapsed_steps"] = elapsed
    env = _played(steps=1)
    with pytest.raises(CheckpointError, match=r"_elapsed_steps"):
        restore_env(env, state)
    assert env._elapsed_steps == 1  # nothing applied


def test_an_unreset_env_takes_only_a_step_count_too():
    """A live TimeLimit not yet reset holds None: the saved count is still an int in its range."""
    state = copy.deepcopy(capture_env(_played()))
    fresh = gym.make("CartPole-v1")
    assert restore_env(fresh, state) is True and fresh._elapsed_steps == 3
    for bad_count in ("3", 3.0, -5):
        state["wrappers"][0]["attrs"]["_elapsed_steps"] = bad_count
        with pytest.raises(CheckpointError, match=r"_elapsed_steps"):
            restore_env(gym.make("CartPole-v1"), state)


@pytest.mark.parametrize("edge", [0, 500, None])
def test_step_counts_at_the_limits_restore(edge):
    state = copy.deepcopy(capture_env(_played()))
    state["wrappers"][0]["attrs"]["_elapsed_steps"] = edge
    env = _played(steps=1)
    assert restore_env(env, state) is True and env._elapsed_steps == edge


def test_a_negative_steps_beyond_terminated_is_refused():
    state = copy.deepcopy(capture_env(_played()))
    state["steps_beyond_terminated"] = -(2**40)
    with pytest.raises(CheckpointError, match=r"steps_beyond_terminated"):
        restore_env(_played(steps=1), state)


def test_a_forged_step_count_is_refused_at_load(pendulum_ck, tmp_path):
    def edit(state: dict) -> None:
        state["components"]["env_runner"]["envs"]["0"]["wrappers"][0]["attrs"]["_elapsed_steps"] = -(2**62)

    with pytest.raises(CheckpointError, match=r"_elapsed_steps.*\[0, 200\]"):
        Algorithm.from_checkpoint(rewritten(pendulum_ck, tmp_path / "forged", edit))
