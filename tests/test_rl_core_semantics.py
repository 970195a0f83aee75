"""RLlib 2.10 semantics a ported script relies on: which replay settings DQN and SAC take, what
``num_env_steps_trained`` counts, saving a user's RLlib-style Policy, and ``save()``'s metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.sac import SACConfig
from amber.algorithms.training_state import TrainingProgress
from amber.envs import MultiAgentCartPole
from amber.policy.policy import Policy, PolicySpec
from tests.fixtures.fixture_fns import policy_for_agent

FIXTURES = "tests/fixtures/checkpoints"


def _p(aid, *args, **kwargs):
    return f"p{aid}"


amber.register_class(_p, name="tests.rl_core_semantics.p")


# -- replay_buffer_config: one check for DQN and SAC ------------------------------------------------

REFUSED = [
    {"type": "MultiAgentPrioritizedReplayBuffer", "capacity": 1000, "prioritized_replay_alpha": 0.6,
     "prioritized_replay_beta": 0.4, "prioritized_replay_eps": 1e-6},
    {"type": "PrioritizedEpisodeReplayBuffer", "capacity": 1000, "alpha": 0.6},
    {"capacity": 1000, "prioritized_replay_alpha": 0.6},  # RLlib's default type is prioritized
    {"capacity": 1000, "prioritized_replay": True},
    {"capacity": 1000, "replay_sequence_length": 20},
    {"capacity": 1000, "storage_unit": "episodes"},
    {"capacity": 1000, "type": "NoSuchBuffer"},
    {"capacity": 1000, "replay_ratio": 0.5},
]
ACCEPTED = [
    {"capacity": 1000},
    {"type": "MultiAgentReplayBuffer", "capacity": 1000},
    {"type": "ray.rllib.utils.replay_buffers.ReplayBuffer", "capacity": 1000},
    # RLlib 2.10's DQN default with the type made uniform (RLlib ignores the priority settings then)
    {"_enable_replay_buffer_api": True, "type": "MultiAgentReplayBuffer", "capacity": 1000,
     "prioritized_replay_alpha": 0.6, "prioritized_replay_beta": 0.4, "prioritized_replay_eps": 1e-6,
     "replay_sequence_length": 1, "worker_side_prioritization": False},
    {"capacity": 1000, "storage_unit": "timesteps", "replay_mode": "independent", "prioritized_replay": False},
]


@pytest.mark.parametrize("rb", REFUSED, ids=lambda rb: "-".join(sorted(rb)))
def test_dqn_and_sac_refuse_the_same_replay_settings_alike(rb):
    messages = []
    for cls in (DQNConfig, SACConfig):
        with pytest.raises(ValueError, match="replay_buffer_config") as e:
            cls().environment("CartPole-v1").training(replay_buffer_config=rb).validate()
        messages.append(str(e.value).replace(cls.__name__, "Config"))
    assert messages[0] == messages[1]


def test_sac_refuses_prioritized_replay_at_build():
    rb = {"type": "MultiAgentPrioritizedReplayBuffer", "capacity": 1000, "prioritized_replay_alpha": 0.6}
    with pytest.raises(ValueError, match="prioritized replay is not implemented"):
        SACConfig().environment("Pendulum-v1").training(replay_buffer_config=rb).build()


@pytest.mark.parametrize("rb", ACCEPTED, ids=lambda rb: "-".join(sorted(rb)))
def test_dqn_and_sac_take_the_uniform_replay_settings_rllib_users_write(rb):
    for cls in (DQNConfig, SACConfig):
        cls().environment("CartPole-v1").training(replay_buffer_config=rb).validate()


def test_a_uniform_rllib_buffer_config_trains_sac():
    rb = {"type": "MultiAgentReplayBuffer", "capacity": 200, "storage_unit": "timesteps"}
    algo = (SACConfig().environment("Pendulum-v1")
            .training(replay_buffer_config=rb, train_batch_size=8, model={"fcnet_hiddens": [8]},
                      num_steps_sampled_before_learning_starts=20)
            .reporting(min_sample_timesteps_per_iteration=30).build())
    try:
        result = algo.train()
        assert result["num_updates_this_iter"] > 0 and algo.replay_buffers["default_policy"].capacity == 200
    finally:
        algo.stop()


# -- num_env_steps_trained counts env steps ---------------------------------------------------------


def _ma(config, **multi):
    return (config.environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=_p, **multi))


def _ppo(**multi):
    return _ma(PPOConfig().training(train_batch_size=100, minibatch_size=50, num_epochs=1,
                                    model={"fcnet_hiddens": [4]}).debugging(seed=3), **multi)


def test_multi_agent_ppo_counts_the_env_steps_trained():
    algo = _ppo().build()
    try:
        r = algo.train()
        rows = sum(s["num_agent_steps_trained"] for s in r["info"]["learner"].values())
        assert r["num_env_steps_trained"] == r["num_env_steps_trained_lifetime"] == 100
        assert r["num_agent_steps_trained"] == r["num_agent_steps_trained_lifetime"] == rows
        assert rows == r["num_agent_steps_sampled_lifetime"] > 100  # both policies trained on theirs
        r = algo.train()
        assert r["num_env_steps_trained"] == 200 and r["num_agent_steps_trained"] > 200
    finally:
        algo.stop()


def test_ppo_with_a_frozen_policy_counts_the_batch_once_and_the_rows_trained():
    algo = _ppo(policies_to_train=["p0"]).build()
    try:
        r = algo.train()
        assert list(r["info"]["learner"]) == ["p0"]
        assert r["num_env_steps_trained"] == 100
        assert r["num_agent_steps_trained"] == r["info"]["learner"]["p0"]["num_agent_steps_trained"] <= 100
    finally:
        algo.stop()


def test_multi_agent_dqn_counts_one_replayed_batch_per_update():
    algo = _ma(DQNConfig().training(train_batch_size=32, num_steps_sampled_before_learning_starts=32,
                                    model={"fcnet_hiddens": [4]}).reporting(
        min_sample_timesteps_per_iteration=100)).build()
    try:
        r = algo.train()
        updates = r["num_updates_this_iter"]
        assert updates > 0
        assert r["num_env_steps_trained"] == r["num_env_steps_trained_lifetime"] == 32 * updates
        agent_steps = r["num_agent_steps_trained"]  # 32 per policy updated (p1 may start later)
        assert 32 * updates < agent_steps <= 2 * 32 * updates and agent_steps % 32 == 0
    finally:
        algo.stop()


@pytest.mark.parametrize("fmt", ["pickle", "msgpack"])
def test_resume_continues_the_trained_counters(tmp_path, fmt):
    algo = _ppo().build()
    try:
        first = algo.train()
        path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
        second = algo.train()
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        for key in ("num_env_steps_trained_lifetime", "num_agent_steps_trained_lifetime"):
            assert restored.counters[key] == first[key]
        again = restored.train()
        assert again["num_env_steps_trained"] == second["num_env_steps_trained"] == 200
        assert again["num_agent_steps_trained"] == second["num_agent_steps_trained"]
    finally:
        restored.stop()


def test_an_older_checkpoints_counters_load_as_they_are():
    """Saved before num_agent_steps_trained existed: num_env_steps_trained_lifetime held the agent
    steps trained; it loads as saved, and the agent steps trained take its value."""
    amber.register_class(policy_for_agent)  # the fixture's mapping function
    algo = Algorithm.from_checkpoint(f"{FIXTURES}/2.2/ppo_multi_msgpack")
    try:
        assert algo.counters["num_env_steps_sampled_lifetime"] == 128
        assert algo.counters["num_env_steps_trained_lifetime"] == 223
        assert algo.counters["num_agent_steps_trained_lifetime"] == 223
    finally:
        algo.stop()
    progress = TrainingProgress()
    progress.set_state({"iteration": 1, "counters": {"num_env_steps_trained_lifetime": 7}})
    assert progress.counters["num_env_steps_trained_lifetime"] == 7
    assert progress.counters["num_agent_steps_trained_lifetime"] == 7


# -- a user's RLlib-style Policy without get_state ------------------------------------------------


class TablePolicy(Policy):
    """As RLlib users write them: compute_actions, learn_on_batch, get_weights/set_weights only."""

    def __init__(self, observation_space, action_space, config):
        self.observation_space, self.action_space, self.config = observation_space, action_space, config
        self.global_timestep = 0
        self.table = np.zeros(int(action_space.n), np.float32)

    def compute_actions(self, obs_batch, state_batches=None, **kwargs):
        self.global_timestep += len(obs_batch)
        return np.full(len(obs_batch), int(np.argmax(self.table))), [], {}

    def learn_on_batch(self, samples):
        return {}

    def get_weights(self):
        return {"table": self.table.copy()}

    def set_weights(self, weights):
        self.table = np.asarray(weights["table"], np.float32).copy()


class NoWeightsPolicy(TablePolicy):
    get_weights = Policy.get_weights
    set_weights = Policy.set_weights


amber.register_class(TablePolicy, name="tests.rl_core_semantics.TablePolicy")
amber.register_class(NoWeightsPolicy, name="tests.rl_core_semantics.NoWeightsPolicy")


def _with_user_policy(cls):
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
            .multi_agent(policies={"p0": PolicySpec(), "p1": PolicySpec(policy_class=cls)},
                         policy_mapping_fn=_p, policies_to_train=["p0"]))


@pytest.mark.parametrize("fmt", ["pickle", "msgpack"])
def test_a_user_policy_without_get_state_saves_and_restores(tmp_path, fmt):
    algo = _with_user_policy(TablePolicy).build()
    try:
        algo.train()
        algo.get_policy("p1").set_weights({"table": np.array([0.0, 2.0], np.float32)})
        timestep = algo.get_policy("p1").global_timestep
        assert timestep > 0
        path = algo.save(tmp_path / "algo", format=fmt).checkpoint.path
        exported = algo.get_policy("p1").export_checkpoint(tmp_path / "policy", format=fmt)
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        policy = restored.get_policy("p1")
        assert type(policy) is TablePolicy and policy.global_timestep == timestep
        np.testing.assert_array_equal(policy.table, [0.0, 2.0])
        restored.train()
    finally:
        restored.stop()
    for policy in (Policy.from_checkpoint(path, ["p1"])["p1"], Policy.from_checkpoint(exported)):
        assert type(policy) is TablePolicy and policy.global_timestep == timestep
        np.testing.assert_array_equal(policy.get_weights()["table"], [0.0, 2.0])
        assert policy.compute_single_action(np.zeros(4, np.float32))[0] == 1


def test_a_user_policy_without_weights_is_refused_by_name_and_nothing_is_written(tmp_path):
    algo = _with_user_policy(NoWeightsPolicy).build()
    try:
        algo.train()
        with pytest.raises(NotImplementedError, match=r"NoWeightsPolicy.*get_weights\(\) and set_weights\(\)"):
            algo.save(tmp_path / "algo")
        assert not (tmp_path / "algo").exists()
    finally:
        algo.stop()


def test_a_policy_that_saves_its_own_state_but_cannot_restore_it_is_named():
    class HalfState(TablePolicy):
        def get_state(self):
            return {"table": self.table.copy()}

    import gymnasium as gym

    policy = HalfState(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2), {})
    with pytest.raises(NotImplementedError, match=r"HalfState implements get_state\(\) but not set_state"):
        policy.set_state(policy.get_state())


# -- save()'s metrics ----------------------------------------------------------------------------


def _small_ppo():
    return (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size=32, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [4]}))


def test_save_returns_the_last_train_results_metrics(tmp_path):
    algo = _small_ppo().build()
    try:
        assert algo.save(tmp_path / "before").metrics == {"training_iteration": 0}
        last = algo.train()
        metrics = algo.save(tmp_path / "after").metrics
        assert metrics is not last and metrics.keys() == last.keys()
        assert metrics["training_iteration"] == 1
        assert metrics["num_env_steps_sampled_lifetime"] == last["num_env_steps_sampled_lifetime"] == 32
        same = metrics["episode_reward_mean"] == last["episode_reward_mean"]
        assert same or (math.isnan(metrics["episode_reward_mean"]) and math.isnan(last["episode_reward_mean"]))
        background = algo.save(tmp_path / "background", block=False)
        algo.train()  # the metrics are those of the save's moment
        assert background.result(timeout=60).metrics.keys() == metrics.keys()
        assert background.result(timeout=60).metrics["training_iteration"] == 1
    finally:
        algo.stop()
