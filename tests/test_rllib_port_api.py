"""Porting RLlib 2.10 code by swapping the import prefix: the RLlib calls amber does not implement
say so and name what to use instead (amber.algorithms.rllib_api, docs/rllib_compat.md), their
harmless "off" forms are accepted, RLlib's result keys are there, and RLlib's "preferred format"
multi-agent spaces get a message pointing to per-agent spaces."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from amber.algorithms.ppo import PPOConfig
from amber.algorithms.rllib_api import KEYWORDS, NOT_IMPLEMENTED, RESULT_KEYS
from amber.envs import MultiAgentEnv

ROOT = Path(__file__).resolve().parent.parent


def small_config():
    return (PPOConfig().environment("CartPole-v1").debugging(seed=0)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
            .reporting(log_results=False))


@pytest.fixture(scope="module")
def algo():
    algo = small_config().build()
    yield algo
    algo.stop()


# -- the config ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "error", "named", "instead"), [
    (lambda c: c.update_from_dict({"lr": 1e-3}), AttributeError, "update_from_dict", "config.training(**d)"),
    (lambda c: c.evaluation(evaluation_interval=1), ValueError, "evaluation(evaluation_interval=1)",
     "compute_single_action(obs, explore=False)"),
    (lambda c: c.resources(num_gpus=1), ValueError, "resources(num_gpus=1)", "on the CPU"),
    (lambda c: c.resources(num_cpus_per_worker=2), ValueError, "num_cpus_per_worker",
     "env_runners(num_cpus_per_env_runner=...)"),
    (lambda c: c.api_stack(enable_rl_module_and_learner=True), ValueError, "enable_rl_module_and_learner=True",
     "old API stack"),
    (lambda c: c.exploration(explore=False), ValueError, "exploration(explore=False)", "explore=False"),
    (lambda c: c.reporting(metrics_num_episodes_for_smoothing=5), ValueError,
     "metrics_num_episodes_for_smoothing=5", "last 100 episodes"),
    (lambda c: c.multi_agent(policies_to_train=lambda pid, batch=None: True), TypeError, "policies_to_train",
     "a list or set"),
])
def test_rllib_config_calls_amber_lacks_say_so_and_what_to_use(call, error, named, instead):
    with pytest.raises(error) as info:
        call(PPOConfig())
    message = str(info.value)
    assert named in message and "amber does not implement" in message and instead in message
    assert "rllib_compat.md" in message


def test_off_forms_of_rllib_config_calls_are_accepted_and_change_nothing():
    config = small_config()
    before = config.to_dict()
    assert config.resources(num_gpus=0, num_gpus_per_worker=0) is config
    assert config.api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False) is config
    assert config.experimental(_enable_new_api_stack=False) is config
    assert config.exploration(explore=True) is config
    assert config.evaluation(evaluation_interval=None, evaluation_num_workers=0) is config
    assert config.debugging(log_level="WARN") is config
    assert config.environment("CartPole-v1", disable_env_checking=True) is config
    assert config.reporting(metrics_num_episodes_for_smoothing=100) is config
    assert config.to_dict() == before
    assert config.seed == 0  # debugging(log_level=...) alone keeps the seed


def test_rollouts_takes_rllib_2_10_worker_names_as_aliases():
    config = PPOConfig().rollouts(num_rollout_workers=0, num_envs_per_worker=3)
    assert (config.num_env_runners, config.num_envs_per_env_runner) == (0, 3)
    with pytest.raises(TypeError, match="num_envs_per_worker"):
        PPOConfig().env_runners(num_envs_per_worker=2, num_envs_per_env_runner=2)
    with pytest.raises(ValueError, match="unknown env_runners setting"):
        PPOConfig().rollouts(num_rollout_workerz=2)


def test_policies_to_train_as_ids_still_works():
    config = PPOConfig().multi_agent(policies={"a", "b"}, policies_to_train={"a"})
    assert config.policies_to_train == ["a"]


def test_config_items_read_settings_by_their_rllib_names():
    config = small_config()
    assert config["lr"] == config.lr and config["train_batch_size"] == 64
    assert config["sgd_minibatch_size"] == 32 and config["num_rollout_workers"] == 0
    assert config["framework"] == "torch"
    with pytest.raises(KeyError, match="did you mean lr"):
        config["lrr"]
    with pytest.raises(TypeError, match="not iterable"):
        iter(config)
    # the names from_dict reads, and membership (it raised "not iterable")
    assert config["callbacks"] is config.callbacks_class
    assert "lr" in config and "sgd_minibatch_size" in config and "lrr" not in config


def test_other_missing_config_attributes_stay_plain_attribute_errors():
    config = PPOConfig()
    assert not hasattr(config, "rollout_fragment_length")  # the code probes settings this way
    assert not hasattr(config, "update_from_dict")
    assert getattr(config, "no_such_setting", "default") == "default"
    with pytest.raises(AttributeError) as info:
        _ = config.no_such_setting
    assert str(info.value) == "'PPOConfig' object has no attribute 'no_such_setting'"
    assert info.value.name == "no_such_setting" and info.value.obj is config  # "Did you mean" hints
    copied = pickle.loads(pickle.dumps(copy.deepcopy(small_config())))
    assert copied.seed == 0 and copied["train_batch_size"] == 64


# -- the algorithm ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "instead"), [
    ("compute_single_action", "algo.get_policy(policy_id).compute_single_action(obs"),
    ("compute_actions", "compute_actions(obs_batch)"),
    ("evaluate", "compute_single_action(obs, explore=False)"),
    ("workers", "algo.env_runner"),
    ("export_policy_model", "export_model(export_dir)"),
])
def test_rllib_algorithm_names_amber_lacks_say_what_to_use(algo, name, instead):
    with pytest.raises(AttributeError) as info:
        getattr(algo, name)
    message = str(info.value)
    assert f"'PPO' object has no attribute '{name}'" in message
    assert "amber does not implement" in message and instead in message
    assert not hasattr(algo, name)


def test_other_missing_algorithm_attributes_stay_plain(algo):
    with pytest.raises(AttributeError) as info:
        _ = algo.no_such_thing
    assert str(info.value) == "'PPO' object has no attribute 'no_such_thing'"


def test_get_and_set_weights_of_every_policy_by_id(algo):
    policy = algo.get_policy()
    weights = algo.get_weights()
    assert list(weights) == ["default_policy"]
    assert all(np.array_equal(weights["default_policy"][k], v) for k, v in policy.get_weights().items())
    zeroed = {pid: {k: np.zeros_like(v) for k, v in w.items()} for pid, w in weights.items()}
    algo.set_weights(zeroed)
    assert all(not np.any(v) for v in policy.get_weights().values())
    with pytest.raises(ValueError, match="no policy 'nope'"):
        algo.set_weights({"nope": {}})
    with pytest.raises(ValueError, match="no policy 'nope'"):
        algo.get_weights(["nope"])
    algo.set_weights(weights)
    assert all(np.array_equal(weights["default_policy"][k], v) for k, v in policy.get_weights().items())


def test_train_results_carry_rllib_2_10_keys():
    algo = small_config().build()
    try:
        algo.train()
        result = algo.train()
    finally:
        algo.stop()
    for old, new in RESULT_KEYS.items():
        same = result[old] == result[new] or (isinstance(result[new], float) and math.isnan(result[new]))
        assert same, old
    assert result["timesteps_total"] == result["num_env_steps_sampled"] == 128  # lifetime, as in RLlib 2.10
    assert result["num_env_steps_trained"] == result["num_env_steps_trained_lifetime"] == 128


def test_tune_stops_on_timesteps_total(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    from amber.tune import trainable

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(trainable("PPO"), param_space=small_config().to_dict(), run_config=tune.RunConfig(
            storage_path=str(tmp_path), stop={"timesteps_total": 128, "training_iteration": 3}, verbose=0))  # 3: a bound
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    assert results[0].metrics["training_iteration"] == 2


# -- multi-agent spaces ------------------------------------------------------------------------------

class DictSpacesEnv(MultiAgentEnv):
    """RLlib 2.10's "preferred format": one gymnasium Dict of every agent's space."""

    def __init__(self, config=None):
        super().__init__()
        self.possible_agents = self.agents = ["a", "b"]
        self.observation_space = gym.spaces.Dict({a: gym.spaces.Box(-1, 1, (3,)) for a in self.possible_agents})
        self.action_space = gym.spaces.Dict({a: gym.spaces.Discrete(2) for a in self.possible_agents})

    def reset(self, *, seed=None, options=None):
        return {a: np.zeros(3, np.float32) for a in self.possible_agents}, {}


def test_spaces_keyed_by_agent_id_point_to_per_agent_spaces():
    config = PPOConfig().environment(DictSpacesEnv).multi_agent(
        policies={"pa", "pb"}, policy_mapping_fn=lambda aid, episode, worker, **kw: "p" + aid)
    with pytest.raises(ValueError) as info:
        config.build()
    message = str(info.value)
    assert "DictSpacesEnv" in message and "keyed by agent id" in message
    assert "observation_spaces = {agent_id: space}" in message and "get_observation_space(agent_id)" in message


# -- the docs ----------------------------------------------------------------------------------------

def test_every_rllib_name_amber_lacks_is_documented():
    text = (ROOT / "docs" / "rllib_compat.md").read_text()
    names = [*(n for table in NOT_IMPLEMENTED.values() for n in table),
             *(k for table in KEYWORDS.values() for k in table), *RESULT_KEYS]
    missing = [n for n in names if f"{n}" not in text]
    assert not missing, f"docs/rllib_compat.md does not name {missing}"
