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
from amber.algorithms.rllib_algorithm import RESULT_KEYS
from amber.algorithms.rllib_api import KEYWORDS, NOT_IMPLEMENTED
from amber.envs import MultiAgentEnv
from amber.utils.checkpoints import get_checkpoint_info

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


# -- a built algorithm's config is frozen (RLlib 2.10 freezes it at build) ---------------------------

def test_a_built_algorithms_config_is_frozen_and_its_checkpoint_records_what_it_uses(tmp_path):
    """algo.config.training(lr=..., train_batch_size=...) half applied (sampling took the new batch
    size, the optimizer kept the old lr) and the checkpoint recorded the lr never used."""
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.algorithm_config import FrozenConfigError

    algo = small_config().build()
    with pytest.raises(FrozenConfigError) as info:
        algo.config.training(lr=1e-6, train_batch_size=32)
    message = str(info.value)
    assert isinstance(info.value, AttributeError)  # as RLlib's
    assert "training() would change lr, train_batch_size" in message and "algo.config.copy()" in message
    with pytest.raises(FrozenConfigError, match=r"PPOConfig\.seed cannot be set"):
        algo.config.seed = 1
    with pytest.raises(FrozenConfigError, match="export_native_model_files"):  # nothing of the call applied
        algo.config.checkpointing(num_to_keep=2, export_native_model_files=True)
    assert (algo.config.lr, algo.config.train_batch_size, algo.config.num_to_keep) == (small_config().lr, 64, None)
    # what the algorithm reads each time it uses it may change; so may a call that changes nothing
    algo.config.checkpointing(num_to_keep=3, format="msgpack").reporting(log_results=False).training(lr=algo.config.lr)
    algo.config.policies_to_train = ["default_policy"]
    assert algo.config.num_to_keep == 3
    assert algo.train()["num_env_steps_sampled_lifetime"] == 64
    saved = algo.save(tmp_path / "ck").checkpoint  # in the format set after build
    assert get_checkpoint_info(saved.path)["format"] == "msgpack"
    restored = Algorithm.from_checkpoint(saved)
    policy = restored.get_policy()
    assert policy.config["lr"] == policy.optimizer.param_groups[0]["lr"] == algo.config.lr
    with pytest.raises(FrozenConfigError):  # a restored algorithm's too
        restored.config.training(lr=1e-6)
    copied = restored.config.copy().training(lr=1e-3, train_batch_size=32)  # a copy is not frozen
    other = copied.build()
    assert other.get_policy().config["lr"] == 1e-3 and restored.config.lr == algo.config.lr
    for a in (algo, restored, other):
        a.stop()


def test_the_algorithm_still_updates_its_frozen_config_as_its_policies_change(tmp_path):
    from amber.algorithms.algorithm_config import FrozenConfigError
    from amber.envs import MultiAgentCartPole

    def fn(agent_id, *args, **kwargs):
        return f"p{agent_id}"

    algo = (small_config().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=fn).build())
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.add_policy("p2", policy_mapping_fn=lambda aid, *a, **k: "p2", policies_to_train=["p0", "p2"])
    assert set(algo.config.policies) == {"p0", "p1", "p2"} and algo.config.policies_to_train == ["p0", "p2"]
    algo.remove_policy("p2", policy_mapping_fn=fn)
    assert algo.config.policy_mapping_fn is fn and algo.config.policies_to_train == ["p0"]
    with pytest.raises(FrozenConfigError, match="policy_mapping_fn"):
        algo.config.policy_mapping_fn = lambda aid, *a, **k: "p0"
    algo.restore(path)
    assert algo.config.policies_to_train is None and set(algo.policies) == {"p0", "p1"}
    algo.train()
    algo.stop()


# -- Algorithm(config=<dict>), RLlib's form -----------------------------------------------------------

def test_an_algorithm_takes_a_config_dict_and_env_as_rllibs_does():
    from amber.algorithms.ppo import PPO

    small = {"train_batch_size": 64, "minibatch_size": 32, "model": {"fcnet_hiddens": [8]}, "log_results": False}
    algo = PPO(config=small_config().training(lr=1e-4).to_dict())
    assert isinstance(algo.config, PPOConfig) and algo.config.lr == 1e-4 and algo.config.env == "CartPole-v1"
    algo.stop()
    algo = PPO(env="CartPole-v1", config={**small, "lr": 2e-4, "num_gpus": 0})
    assert (algo.config.env, algo.config.lr, algo.config.algo_class) == ("CartPole-v1", 2e-4, PPO)
    assert algo.config.model["fcnet_activation"] == "tanh"  # merged into the defaults
    assert algo.train()["num_env_steps_sampled_lifetime"] == 64
    algo.stop()
    with pytest.raises(ValueError, match="'lrr'.*did you mean lr"):
        PPO(env="CartPole-v1", config={"lrr": 1e-4})
    with pytest.raises(TypeError, match="an AlgorithmConfig or a dict"):
        PPO(config="CartPole-v1")


# -- RLlib's keyword arguments of config methods amber has -------------------------------------------

def test_rllib_keywords_of_config_methods_amber_has_are_ignored_in_their_off_form():
    config = small_config()
    before = config.to_dict()
    config.environment("CartPole-v1", clip_actions=False, normalize_actions=False, render_env=False,
                       observation_space=None, action_space=None, clip_rewards=None, env_task_fn=None)
    config.environment(clip_actions=True)
    config.framework("torch", eager_tracing=False, eager_max_retraces=20)
    config.reporting(min_time_s_per_iteration=0, min_train_timesteps_per_iteration=0,
                     keep_per_episode_custom_metrics=False)
    config.multi_agent(count_steps_by="env_steps", policy_map_capacity=100, observation_fn=None)
    config.checkpointing(checkpoint_trainable_policies_only=False)
    assert config.to_dict() == before
    assert config.framework("tf2", eager_tracing=True).framework_str == "tf2"


@pytest.mark.parametrize(("call", "named", "instead"), [
    (lambda c: c.environment(normalize_actions=True), "environment(normalize_actions=True)", "never rescales"),
    (lambda c: c.environment(render_env=True), "render_env=True", "never renders"),
    (lambda c: c.environment(observation_space=gym.spaces.Box(-1, 1, (4,))), "observation_space=",
     "PolicySpec(observation_space=..."),
    (lambda c: c.reporting(min_time_s_per_iteration=10), "min_time_s_per_iteration=10", "call train() until"),
    (lambda c: c.reporting(keep_per_episode_custom_metrics=True), "keep_per_episode_custom_metrics=True",
     "on_train_result"),
    (lambda c: c.multi_agent(count_steps_by="agent_steps"), "count_steps_by='agent_steps'", "env steps"),
    (lambda c: c.checkpointing(checkpoint_trainable_policies_only=True), "checkpoint_trainable_policies_only",
     "policy_ids=[...]"),
])
def test_other_values_of_rllib_keywords_say_what_amber_does(call, named, instead):
    with pytest.raises(ValueError) as info:
        call(PPOConfig())
    message = str(info.value)
    assert named in message and "amber does not implement" in message and instead in message
    assert "rllib_compat.md" in message


def test_policy_export_checkpoint_takes_rllibs_checkpoint_format(algo, tmp_path):
    from amber.utils.checkpoints import get_checkpoint_info

    policy = algo.get_policy()
    assert get_checkpoint_info(policy.export_checkpoint(tmp_path / "m", checkpoint_format="msgpack"))[
        "format"] == "msgpack"
    assert get_checkpoint_info(policy.export_checkpoint(tmp_path / "p", checkpoint_format="cloudpickle"))[
        "format"] == "pickle"
    with pytest.raises(TypeError, match="give one"):
        policy.export_checkpoint(tmp_path / "x", format="pickle", checkpoint_format="msgpack")


# -- config dicts take what the fluent methods take --------------------------------------------------

def test_from_dict_ignores_rllibs_off_settings_as_the_fluent_methods_do():
    off = {"num_gpus": 0, "num_gpus_per_worker": 0, "evaluation_interval": None, "log_level": "WARN",
           "explore": True, "disable_env_checking": True, "_enable_new_api_stack": False,
           "min_time_s_per_iteration": 0, "multiagent": {"count_steps_by": "env_steps"}}
    config = PPOConfig.from_dict({"env": "CartPole-v1", "lr": 1e-4, **off})
    assert config.lr == 1e-4 and not any(hasattr(config, k) for k in off if k != "multiagent")
    with pytest.raises(ValueError) as info:
        PPOConfig.from_dict({"num_gpus": 1})
    message = str(info.value)
    assert "resources(num_gpus=1)" in message and "on the CPU" in message and "did you mean" not in message
    with pytest.raises(ValueError, match="count_steps_by='agent_steps'"):
        PPOConfig.from_dict({"multiagent": {"count_steps_by": "agent_steps"}})


# -- weights and policies ----------------------------------------------------------------------------

def test_get_weights_takes_one_policy_id_as_a_str(algo):
    weights = algo.get_weights("default_policy")
    assert list(weights) == ["default_policy"] and weights["default_policy"].keys() == \
        algo.get_policy().get_weights().keys()
    with pytest.raises(ValueError, match=r"no policy 'nope' \("):
        algo.get_weights("nope")


@pytest.mark.parametrize("framework", ["torch", "tf2"])
def test_set_weights_refuses_keys_the_model_does_not_have(framework):
    if framework == "tf2":
        pytest.importorskip("tensorflow")
    algo = small_config().framework(framework).build()
    policy = algo.get_policy()
    weights = policy.get_weights()
    zeroed = {k: np.zeros_like(v) for k, v in weights.items()}
    with pytest.raises(KeyError) as info:
        policy.set_weights({**zeroed, "pi.9.weight": np.zeros((3, 3), np.float32)})
    assert "'pi.9.weight'" in str(info.value) and "not weights of this policy's model" in str(info.value)
    assert all(np.array_equal(weights[k], v) for k, v in policy.get_weights().items())  # nothing changed
    policy.set_weights(zeroed)
    assert not any(np.any(v) for v in policy.get_weights().values())
    algo.stop()


def test_policy_from_checkpoint_takes_a_ray_checkpoint(algo, tmp_path):
    ray_train = pytest.importorskip("ray.train")
    from amber.policy.policy import Policy

    path = algo.save(tmp_path / "ck").checkpoint.path
    policies = Policy.from_checkpoint(ray_train.Checkpoint.from_directory(path))
    assert list(policies) == ["default_policy"]
    one = Policy.from_checkpoint(ray_train.Checkpoint.from_directory(
        algo.get_policy().export_checkpoint(tmp_path / "pol")))
    assert one.get_weights().keys() == algo.get_policy().get_weights().keys()


def test_policy_is_importable_from_amber_policy_at_no_import_cost():
    import subprocess
    import sys

    code = ("import sys, amber.policy, amber.policy.sample_batch\n"
            "assert 'amber.policy.policy' not in sys.modules, 'imported on import'\n"
            "from amber.policy import Policy, PolicySpec\n"
            "import amber.policy.policy as p\n"
            "assert Policy is p.Policy and PolicySpec is p.PolicySpec\n"
            "assert not {'torch', 'tensorflow', 'ray', 'onnx'} & set(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
