"""Env errors say what is wrong. An env creator's own error reaches the user (an AttributeError raised while the env was built
inside a property was swallowed by Python's fallback to __getattr__: "'PPO' object has no attribute
'_multi_agent_env'", the creator's error and the env's name lost)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from amber.algorithms.ppo import PPOConfig
from amber.envs import MultiAgentEnv, register_env


def _typo(ctx):
    return gym.make(ctx.env_name)  # EnvContext has no such attribute


def test_an_attribute_error_in_a_creator_is_named_with_the_env():
    register_env("amber-test-creator-typo", _typo)
    config = PPOConfig().environment("amber-test-creator-typo").training(model={"fcnet_hiddens": [8]})
    with pytest.raises(RuntimeError, match=r"'amber-test-creator-typo' failed: AttributeError: .*'env_name'") as e:
        config.build()
    assert isinstance(e.value.__cause__, AttributeError)


class _Pair(MultiAgentEnv):
    """Two agents; ``mode`` "list" returns observations as a list, "no_all" never sets "__all__"."""

    def __init__(self, config=None):
        self.mode = (config or {}).get("mode")
        self.possible_agents = self.agents = ["a", "b"]
        box = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.observation_spaces = {"a": box, "b": box}
        self.action_spaces = {"a": gym.spaces.Discrete(2), "b": gym.spaces.Discrete(2)}
        super().__init__()

    def reset(self, *, seed=None, options=None):
        return {k: np.zeros(2, np.float32) for k in self.agents}, {}

    def step(self, actions):
        obs = {k: np.zeros(2, np.float32) for k in self.agents}
        if self.mode == "list":
            return list(obs.values()), {k: 1.0 for k in obs}, {"__all__": False}, {"__all__": False}, {}
        done = {k: True for k in self.agents}  # every agent done, "__all__" missing
        return obs, {k: 1.0 for k in obs}, done, {k: False for k in self.agents}, {}


@pytest.mark.parametrize(("mode", "error", "match"), [
    ("list", TypeError, r"_Pair.step must return dicts by agent id, not \['list'"),
    ("no_all", RuntimeError, r'no agent acts, yet no terminateds\["__all__"\]'),
])
def test_a_multi_agent_step_of_the_wrong_form_says_what_is_wrong(mode, error, match):
    algo = (PPOConfig().environment(_Pair, env_config={"mode": mode})
            .training(train_batch_size=16, minibatch_size=8, num_epochs=1, model={"fcnet_hiddens": [8]})
            .multi_agent(policies={"p"}, policy_mapping_fn=lambda aid, *a, **k: "p")
            .reporting(log_results=False).build())
    with pytest.raises(error, match=match):
        algo.train()
    algo.stop()


def test_a_checkpoint_naming_an_env_not_registered_here_is_an_unregistered_name(tmp_path, monkeypatch):
    """(It was an InvalidStateError, "its state does not fit what loads it", which reads as damage.)"""
    from amber.algorithms.algorithm import Algorithm
    from amber.envs import registry
    from amber.errors import UnregisteredNameError

    register_env("amber-test-elsewhere", lambda ctx: gym.make("CartPole-v1"))
    algo = PPOConfig().environment("amber-test-elsewhere").training(model={"fcnet_hiddens": [8]}).build()
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.stop()
    monkeypatch.delitem(registry._CREATORS, "amber-test-elsewhere")  # as in a new process
    with pytest.raises(UnregisteredNameError, match="'amber-test-elsewhere'.*register_env") as e:
        Algorithm.from_checkpoint(path)
    assert e.value.path is not None
    with pytest.raises(ValueError, match="unknown environment"):  # a config naming it: as before
        PPOConfig().environment("amber-test-elsewhere").build()
