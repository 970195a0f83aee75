"""RLlib 2.10 code ported to amber: lifetime episode counts in results, callbacks amber never
calls refused, ``_agent_ids`` envs, save()'s checkpoint object passed to loaders, and the
``EnvContext`` env creators read."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.callbacks import DefaultCallbacks, make_multi_callbacks
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.training_state import RECENT, TrainingProgress
from amber.envs import EnvContext, MultiAgentEnv, register_env
from amber.errors import InvalidStateError
from amber.policy.policy import Policy
from amber.utils.checkpoints import get_checkpoint_info

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
TINY = {"model": {"fcnet_hiddens": [8]}, "num_epochs": 1}


def cartpole(batch: int = 200, seed: int = 0) -> PPOConfig:
    return (PPOConfig().environment("CartPole-v1").debugging(seed=seed).reporting(log_results=False)
            .training(train_batch_size=batch, **TINY))


# -- 1. episodes_total is the lifetime count -------------------------------------------------------

def test_episodes_total_counts_every_episode_past_the_return_window(tmp_path):
    algo = cartpole(batch=1500).build()
    try:
        results = [algo.train() for _ in range(3)]
        totals = [r["episodes_total"] for r in results]
        assert totals[-1] > RECENT, "a Tune stop on episodes_total > 100 must trigger"
        assert totals == list(np.cumsum([r["episodes_this_iter"] for r in results]))
        assert all(r["episodes_this_iter"] > 0 for r in results)
        assert len(algo.progress.recent_returns) == RECENT  # the mean is still over the last 100
        ckpt = algo.save(tmp_path / "ck").checkpoint
        going_on = algo.train()
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(ckpt)
    try:
        assert restored.progress.episodes_total == totals[-1]
        resumed = restored.train()
    finally:
        restored.stop()
    for key in ("episodes_total", "episodes_this_iter", "episode_return_mean"):
        assert resumed[key] == going_on[key], key


def test_a_checkpoint_without_an_episode_count_counts_its_returns():
    """Checkpoints saved before the count existed (here the committed 2.2 fixture) report what
    they reported then, the number of returns held, and count on from there."""
    algo = Algorithm.from_checkpoint(FIXTURES / "2.2" / "ppo_msgpack")
    try:
        held = len(algo.progress.recent_returns)
        assert held > 0 and algo.progress.episodes_total == held
        result = algo.train()
        assert result["episodes_total"] == held + result["episodes_this_iter"]
    finally:
        algo.stop()
    progress = TrainingProgress()
    progress.set_state({"iteration": 2, "counters": {}, "recent_returns": [1.0, 2.0, 3.0]})
    assert progress.episodes_total == 3
    progress.set_state({"iteration": 2, "counters": {}})  # another system's: no returns
    assert progress.episodes_total == 0


@pytest.mark.parametrize("bad", [-1, 2.5, True, "7"])
def test_a_malformed_episode_count_is_refused_and_nothing_changes(bad):
    progress = TrainingProgress()
    progress.set_state({"iteration": 1, "counters": {}, "episodes_total": 5})
    with pytest.raises(InvalidStateError, match="episodes_total"):
        progress.set_state({"iteration": 9, "counters": {}, "episodes_total": bad})
    assert (progress.iteration, progress.episodes_total) == (1, 5)


# -- 2. callbacks amber never calls are refused -----------------------------------------------------

class EpisodeCallbacks(DefaultCallbacks):
    """RLlib 2.10 user code: per-episode metrics amber would never compute."""

    def on_episode_end(self, *, worker, base_env, policies, episode, env_index=None, **kwargs):
        episode.custom_metrics["len"] = episode.length

    def on_train_result(self, *, algorithm, result, **kwargs):
        result["seen"] = True


class LearnerCallbacks(DefaultCallbacks):
    def on_learn_on_batch(self, *, policy, train_batch, result, **kwargs):
        pass


class Inherited(LearnerCallbacks):
    pass


@pytest.mark.parametrize(("cls", "hook"), [(EpisodeCallbacks, "on_episode_end"),
                                           (Inherited, "on_learn_on_batch")])
def test_a_callbacks_class_with_hooks_amber_never_calls_is_refused(cls, hook):
    with pytest.raises(ValueError, match=hook) as info:
        cartpole().callbacks(cls)
    for called in ("on_algorithm_init", "on_train_result", "on_checkpoint"):
        assert called in str(info.value)
    config = cartpole()
    config.callbacks_class = cls  # set directly: refused when the algorithm is built
    with pytest.raises(ValueError, match=hook):
        config.build()
    with pytest.raises(ValueError, match=hook):
        make_multi_callbacks([DefaultCallbacks, cls])


def test_a_checkpoint_naming_a_callbacks_class_with_such_hooks_still_loads(tmp_path):
    """It loaded before amber refused hooks it never calls: a restore warns instead."""
    amber.register_class(EpisodeCallbacks, name="tests.port.EpisodeCallbacks")
    config = cartpole()
    config.callbacks_class = EpisodeCallbacks
    path = tmp_path / "ck"
    with pytest.warns(UserWarning):  # (built through the back door: as an older amber did)
        algo = _adopted_build(config)
    algo.save(path, format="msgpack")
    algo.stop()
    with pytest.warns(UserWarning, match="on_episode_end, which amber never calls"):
        restored = Algorithm.from_checkpoint(path)
    assert type(restored.callbacks) is EpisodeCallbacks
    restored.stop()


def _adopted_build(config):
    from amber.algorithms.algorithm_config import adopting_config

    with adopting_config(config):
        return config.algo_class(config=config)


def test_callbacks_given_as_a_list_are_called_in_turn():
    """.callbacks([A, B]) was accepted, then the build failed: 'list' object is not callable."""
    class A(DefaultCallbacks):
        def on_train_result(self, *, algorithm, result, **kwargs):
            result["order"] = [*result.get("order", []), "A"]

    class B(A):
        def on_train_result(self, *, algorithm, result, **kwargs):
            result["order"] = [*result.get("order", []), "B"]

    algo = cartpole().callbacks([A, B]).build()
    try:
        assert algo.train()["order"] == ["A", "B"]
    finally:
        algo.stop()


def test_callbacks_with_only_the_hooks_amber_calls_still_run():
    class Fine(DefaultCallbacks):
        def on_train_result(self, *, algorithm, result, **kwargs):
            result["seen"] = True

    algo = cartpole().callbacks(Fine).build()
    try:
        assert algo.train()["seen"] is True
    finally:
        algo.stop()


# -- 3. RLlib 2.10 multi-agent envs that name their agents in _agent_ids ----------------------------

class AgentIdsEnv(MultiAgentEnv):
    def __init__(self, config=None):
        super().__init__()
        self._agent_ids = {"b", "a"}
        self.observation_space = gym.spaces.Box(-1, 1, (3,))
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return {a: np.zeros(3, np.float32) for a in self._agent_ids}, {}

    def step(self, action_dict):
        obs = {a: np.zeros(3, np.float32) for a in action_dict}
        return obs, {a: 1.0 for a in action_dict}, {"__all__": True}, {"__all__": False}, {}


class NoAgentsEnv(AgentIdsEnv):
    def __init__(self, config=None):
        super().__init__(config)
        self._agent_ids = set()


def test_a_multi_agent_env_naming_its_agents_in_agent_ids_trains():
    algo = (PPOConfig().environment(AgentIdsEnv).reporting(log_results=False)
            .training(train_batch_size=64, minibatch_size=32, **TINY)
            .multi_agent(policies={"pa", "pb"}, policy_mapping_fn=lambda aid, episode, worker, **kw: "p" + aid)
            .build())
    try:
        result = algo.train()
        assert sorted(result["policy_return_mean"]) == ["pa", "pb"]
        assert algo.get_policy("pa").observation_space.shape == (3,)
    finally:
        algo.stop()


def test_a_multi_agent_env_naming_no_agents_is_a_clear_error():
    config = PPOConfig().environment(NoAgentsEnv).multi_agent(
        policies={"pa", "pb"}, policy_mapping_fn=lambda aid, episode, worker, **kw: "p" + aid)
    with pytest.raises(ValueError, match=r"NoAgentsEnv.*names no agents.*possible_agents"):
        config.build()


# -- 4. save()'s checkpoint object goes wherever a path does ----------------------------------------

@pytest.mark.parametrize("remote", [False, True])
def test_the_checkpoint_object_save_returns_is_accepted_by_every_loader(tmp_path, remote):
    algo = cartpole().build()
    try:
        algo.train()
        where = f"memory://amber-port-{os.getpid()}/ck" if remote else tmp_path / "ck"
        checkpoint = algo.save(where).checkpoint
        assert os.fspath(checkpoint) == checkpoint.path
        again = Algorithm.from_checkpoint(checkpoint)
        assert again.iteration == 1
        again.stop()
        algo.train()
        algo.restore(checkpoint)
        assert algo.iteration == 1
    finally:
        algo.stop()
    assert isinstance(Policy.from_checkpoint(checkpoint)["default_policy"], Policy)
    assert get_checkpoint_info(checkpoint)["type"] == "Algorithm"
    assert amber.load(checkpoint)["components"]["progress"]["iteration"] == 1


# -- 5. env creators and classes get an EnvContext --------------------------------------------------

SEEN: list[tuple] = []


def _recording_creator(env_config):
    SEEN.append((type(env_config), dict(env_config), env_config.worker_index, env_config.vector_index,
                 env_config.num_workers, env_config.remote, env_config == {"x": 1}))
    return gym.make("CartPole-v1")


class ConfigEnv(gym.Env):
    """A gymnasium class taking env_config whole, as RLlib env classes do."""

    def __init__(self, env_config):
        SEEN.append((type(env_config), env_config.worker_index, env_config.vector_index))
        self.inner = gym.make("CartPole-v1")
        self.observation_space, self.action_space = self.inner.observation_space, self.inner.action_space

    def reset(self, *, seed=None, options=None):
        return self.inner.reset(seed=seed, options=options)

    def step(self, action):
        return self.inner.step(action)


def test_env_creators_get_an_env_context_per_copy(tmp_path):
    SEEN.clear()
    register_env("amber-test-recording", _recording_creator)
    algo = (PPOConfig().environment("amber-test-recording", env_config={"x": 1}).reporting(log_results=False)
            .training(train_batch_size=64, minibatch_size=32, **TINY)
            .env_runners(num_envs_per_env_runner=3).build())
    try:
        algo.train()
        saved = algo.save(tmp_path / "ck").checkpoint
    finally:
        algo.stop()
    assert sorted(s[3] for s in SEEN) == [0, 1, 2]  # one build per copy: the probe is copy 0
    for kind, items, worker, _, workers, remote, equal in SEEN:
        assert (kind, items, worker, workers, remote, equal) == (EnvContext, {"x": 1}, 0, 0, False, True)
    assert type(algo.config.env_config) is dict  # what the config (and so a checkpoint) keeps
    assert type(Algorithm.from_checkpoint(saved).config.env_config) is dict

    SEEN.clear()
    algo = (PPOConfig().environment(ConfigEnv).reporting(log_results=False)
            .training(train_batch_size=64, minibatch_size=32, **TINY)
            .env_runners(num_envs_per_env_runner=2).build())
    try:
        algo.train()
    finally:
        algo.stop()
    assert sorted(SEEN, key=lambda s: s[2]) == [(EnvContext, 0, 0), (EnvContext, 0, 1)]


def test_an_env_context_is_a_plain_dict_for_everything_else():
    context = EnvContext({"x": 1, "y": [2]}, worker_index=2, vector_index=1, num_workers=3)
    assert context == {"x": 1, "y": [2]} and dict(context) == {"x": 1, "y": [2]}
    assert {**context} == {"x": 1, "y": [2]} and "worker_index" not in context
    back = pickle.loads(pickle.dumps(context))
    assert back == context and type(back) is EnvContext
    assert (back.worker_index, back.vector_index, back.num_workers, back.remote) == (2, 1, 3, False)
    other = context.copy_with_overrides(vector_index=4)
    assert (other.worker_index, other.vector_index, other) == (2, 4, context)
