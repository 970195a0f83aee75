"""Restoring an algorithm builds no environment until it samples: its policies' spaces are saved.

A restore that restarts the running episodes (a subset of the policies, or another mapping)
builds no env until sampling, so it does not pay for building one; a restore that continues the
episodes builds the envs to put their state back.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.envs import MultiAgentEnv, register_env
from amber.envs.env_runner import EnvRunner

BUILT: list[str] = []  # one entry per env built
CLOSED: list[str] = []


class CountingEnv(gym.Env):
    """Ten steps of random observations; records each construction and close."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config: Any = None) -> None:
        BUILT.append("single")
        self._t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), 1.0, self._t >= 10, False, {}

    def close(self) -> None:
        CLOSED.append("single")


class CountingPair(MultiAgentEnv):
    """Two agents, each a :class:`CountingEnv`."""

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        BUILT.append("pair")
        self.envs = {0: CountingEnv(), 1: CountingEnv()}
        self.possible_agents = self.agents = [0, 1]
        self.observation_spaces = {a: CountingEnv.observation_space for a in self.agents}
        self.action_spaces = {a: CountingEnv.action_space for a in self.agents}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        obs = {a: env.reset(seed=None if seed is None else seed + a)[0] for a, env in self.envs.items()}
        return obs, {}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        out = {a: self.envs[a].step(act) for a, act in actions.items()}
        done = all(o[2] for o in out.values())
        return ({a: o[0] for a, o in out.items()}, {a: o[1] for a, o in out.items()},
                {**{a: o[2] for a, o in out.items()}, "__all__": done},
                {a: False for a in out} | {"__all__": False}, {})

    def close(self) -> None:
        CLOSED.append("pair")
        for env in self.envs.values():
            env.close()


gym.register("AmberTestCounting-v0", entry_point=CountingEnv)


def by_agent(agent_id: Any, episode: Any = None, worker: Any = None, **kw: Any) -> str:
    return f"p{agent_id}"


def _config(env: Any) -> PPOConfig:
    config = (PPOConfig().environment(env)
              .training(train_batch_size=40, minibatch_size=20, num_epochs=1, model={"fcnet_hiddens": [8]})
              .debugging(seed=0))
    if env is CountingPair:
        config.multi_agent(policies={"p0", "p1"}, policy_mapping_fn=by_agent)
    return config


@pytest.fixture(autouse=True)
def _counts():
    BUILT.clear()
    CLOSED.clear()


@pytest.mark.parametrize("env", ["AmberTestCounting-v0", CountingPair], ids=["gym-id", "multi-agent-class"])
def test_a_restore_that_restarts_episodes_builds_no_env_until_the_algorithm_samples(env, tmp_path):
    algo = _config(env).build()
    algo.train()
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.stop()
    BUILT.clear()
    CLOSED.clear()
    # policies chosen (or another mapping given): the running episodes restart, so no env state is restored
    swapped = lambda a, *x, **k: f"p{1 - int(a)}"  # noqa: E731
    kw = {"policy_mapping_fn": swapped} if env is CountingPair else {"policy_ids": ["default_policy"]}
    restored = Algorithm.from_checkpoint(path, **kw)
    assert BUILT == []
    pid = "p1" if env is CountingPair else "default_policy"
    action, _, _ = restored.get_policy(pid).compute_single_action(np.zeros(3, np.float32), explore=False)
    assert action in (0, 1)
    result = restored.train()
    assert BUILT and np.isfinite(result["episode_return_mean"])
    restored.stop()
    assert len(CLOSED) == len(BUILT)


def test_a_subset_restore_builds_no_env_and_then_trains_its_policies(tmp_path):
    algo = _config(CountingPair).build()
    path = algo.save(tmp_path / "ck").checkpoint.path
    want = algo.get_policy("p0").get_weights()
    algo.stop()
    BUILT.clear()
    restored = Algorithm.from_checkpoint(path, policy_ids=["p0"], policy_mapping_fn=lambda a, *x, **k: "p0")
    assert BUILT == [] and list(restored.policies) == ["p0"]
    got = restored.get_policy("p0").get_weights()
    assert all(np.array_equal(want[k], got[k]) for k in want)
    restored.train()
    assert BUILT[0] == "pair"
    restored.stop()


def test_an_env_known_only_by_a_registered_name_is_built_once_to_learn_its_kind(tmp_path):
    register_env("amber-test-counting-pair", CountingPair)
    config = _config(CountingPair).environment("amber-test-counting-pair")
    algo = config.build()
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.stop()
    BUILT.clear()
    CLOSED.clear()
    restored = Algorithm.from_checkpoint(path, policy_mapping_fn=by_agent)
    assert BUILT.count("pair") == 1  # built to learn it is multi-agent, then kept as the first copy
    restored.train()
    assert BUILT.count("pair") == 1
    restored.stop()
    assert CLOSED.count("pair") == 1


def test_an_env_runner_builds_its_copies_on_first_use_and_closes_what_it_built():
    runner = EnvRunner(CountingEnv, None, 3, {})
    runner.stop()
    assert BUILT == [] and CLOSED == []
    first = CountingEnv()
    runner = EnvRunner(CountingEnv, None, 3, {}, first_env=first)
    runner.stop()
    assert BUILT == ["single"] and CLOSED == ["single"]  # the given copy is closed, none other built
    BUILT.clear()
    CLOSED.clear()
    runner = EnvRunner(CountingEnv, None, 3, {})
    assert len(runner.envs) == 3 and not runner.is_multi_agent
    runner.stop()
    assert len(BUILT) == len(CLOSED) == 3


def test_a_restore_that_continues_the_episodes_builds_the_envs_to_restore_them(tmp_path):
    algo = _config("CartPole-v1").build()
    algo.train()
    path = algo.save(tmp_path / "ck").checkpoint.path
    live = [env.unwrapped.state.copy() for env in algo.env_runner.envs]
    algo.stop()
    restored = Algorithm.from_checkpoint(path)
    assert [s.env.unwrapped.state.tolist() for s in restored.env_runner._built] == [s.tolist() for s in live]
    restored.stop()


def test_saving_a_restored_algorithm_that_never_sampled_builds_no_env(tmp_path):
    algo = _config(CountingPair).build()
    algo.train()
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.stop()
    restored = Algorithm.from_checkpoint(path, policy_ids=["p0", "p1"], policy_mapping_fn=by_agent)
    BUILT.clear()
    again = restored.save(tmp_path / "again").checkpoint.path
    assert BUILT == []
    # its episodes are those of fresh env copies, as a built runner that never sampled saves them
    fresh = _config(CountingPair).build()
    assert len(fresh.env_runner.envs) == 1  # built, never sampled
    unbuilt = restored.get_state()["algorithm"]["components"]["env_runner"]
    assert unbuilt == fresh.get_state()["algorithm"]["components"]["env_runner"]
    fresh.stop()
    resumed = Algorithm.from_checkpoint(again, policy_mapping_fn=by_agent)
    assert np.isfinite(resumed.train()["episode_return_mean"])
    resumed.stop()
    restored.stop()
