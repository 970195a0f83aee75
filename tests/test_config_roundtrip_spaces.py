"""A PolicySpec's observation and action spaces survive every way a config is copied or rebuilt
from its dict: ``from_dict(to_dict())`` (strict and as a checkpoint reads it), ``copy()``, a Tune
param_space, and a checkpoint's saved config; the rebuilt config builds the same policies."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.algorithm_config import AlgorithmConfig
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint
from amber.envs import MultiAgentEnv
from amber.policy.policy import PolicySpec
from tests.treeutil import assert_same_weights

#: What the env gives agent "a"; the spec's spaces differ (wider bounds, a start), so a config that
#: lost them would build its policy from the env's instead.
ENV_OBS, ENV_ACT = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2)
SPEC_OBS, SPEC_ACT = gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Discrete(2, start=0)
PIXELS = gym.spaces.Box(0, 255, (2, 2), np.uint8)


class OneAgent(MultiAgentEnv):
    """One agent "a" for ten steps."""

    def __init__(self, config=None):
        self.possible_agents = ["a"]
        self.agents = ["a"]
        self.observation_spaces = {"a": ENV_OBS}
        self.action_spaces = {"a": ENV_ACT}
        super().__init__()

    def reset(self, *, seed=None, options=None):
        return {"a": np.zeros(3, np.float32)}, {}

    def step(self, actions):
        return {"a": np.zeros(3, np.float32)}, {"a": 1.0}, {"__all__": True}, {"__all__": False}, {}


def to_p(agent_id, episode, worker, **kw):
    return "p"


amber.register_class(OneAgent, name="tests.config_roundtrip_spaces.OneAgent")
amber.register_class(to_p, name="tests.config_roundtrip_spaces.to_p")


def config():
    return (PPOConfig().environment(OneAgent).debugging(seed=3).reporting(log_results=False)
            .training(train_batch_size=20, minibatch_size=10, num_epochs=1, model={"fcnet_hiddens": [8]})
            .multi_agent(policies={"p": PolicySpec(observation_space=SPEC_OBS, action_space=SPEC_ACT,
                                                   config={"lr": 1e-3})},
                         policy_mapping_fn=to_p))


def assert_spec_spaces(cfg, obs=SPEC_OBS, act=SPEC_ACT):
    spec = cfg.policies["p"]
    assert isinstance(spec, PolicySpec)
    assert spec.observation_space == obs and spec.action_space == act
    assert spec.config == {"lr": 1e-3}


@pytest.mark.parametrize("strict", [True, False])
def test_from_dict_of_to_dict_keeps_the_policy_spaces(strict):
    assert_spec_spaces(AlgorithmConfig.from_dict(config().to_dict(), strict=strict))


def test_a_checkpoint_config_read_without_its_stale_overrides_keeps_the_policy_spaces():
    saved = config().to_dict()
    saved["policies"]["p"]["config"]["retired_setting"] = 1  # an older amber's, skipped on reading
    with pytest.warns(UserWarning, match="retired_setting"):
        assert_spec_spaces(AlgorithmConfig.from_dict(saved, strict=False))


def test_a_space_amber_cannot_describe_is_kept_as_itself():
    cfg = config().multi_agent(policies={"p": PolicySpec(observation_space=gym.spaces.Dict({"x": PIXELS}),
                                                         action_space=SPEC_ACT, config={"lr": 1e-3})})
    assert_spec_spaces(AlgorithmConfig.from_dict(cfg.to_dict()), obs=gym.spaces.Dict({"x": PIXELS}))


def test_copy_keeps_the_policy_spaces():
    assert_spec_spaces(config().copy())


def test_a_tune_param_space_keeps_the_policy_spaces():
    from amber.tune import algorithm_config

    assert_spec_spaces(algorithm_config("PPO", config().to_dict()))


def test_the_rebuilt_config_builds_the_same_policies():
    original = config().build()
    rebuilt = AlgorithmConfig.from_dict(config().to_dict()).build()
    try:
        for algo in (original, rebuilt):
            assert algo.get_policy("p").observation_space == SPEC_OBS
            assert algo.get_policy("p").action_space == SPEC_ACT
        assert_same_weights(original.get_weights(), rebuilt.get_weights())
    finally:
        original.stop()
        rebuilt.stop()


@pytest.mark.parametrize("fmt", ["pickle", "msgpack"])
def test_a_checkpoint_restores_policies_on_their_spec_spaces_in_the_form_every_reader_knows(tmp_path, fmt):
    """The policies come back on the spec's spaces (each policy's state holds them); the saved config's
    specs keep the form amber has always written (no space keys: an older amber would read a spec with
    more keys as per-policy overrides, and a space of another type would not fit msgpack)."""
    algo = config().build()
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    algo.stop()
    saved = read_checkpoint(path, allow_pickle=True).state["config"]["policies"]["p"]
    assert set(saved) == {"policy_class", "config"}
    restored = Algorithm.from_checkpoint(path)
    try:
        assert restored.get_policy("p").observation_space == SPEC_OBS
        assert restored.get_policy("p").action_space == SPEC_ACT
    finally:
        restored.stop()
