"""An algorithm's policies: add_policy and remove_policy, the mapping probed at build time as
sampling calls it, and restore() giving the algorithm the checkpoint's policies, mapping and
training list (and taking them back when it fails)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.policy_map import PolicyNotFoundError
from amber.algorithms.ppo import PPOConfig
from amber.envs import MultiAgentEnv
from amber.errors import CheckpointError, CorruptCheckpointError
from amber.examples.envs.classes.multi_agent import MultiAgentCartPole
from tests.treeutil import assert_same_weights

FORMATS = ["pickle", "msgpack"]
TINY = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def pol_a_b(agent_id, episode, worker, **kw):
    """Agent 0 → pol_a, the others → pol_b."""
    return "pol_a" if agent_id == 0 else "pol_b"


def to_c(agent_id, episode, worker, **kw):
    """Agent 1 → pol_c (the added policy), agent 0 → pol_a."""
    return "pol_c" if agent_id == 1 else "pol_a"


amber.register_class(pol_a_b, name="tests.policy_map.pol_a_b")
amber.register_class(to_c, name="tests.policy_map.to_c")


def multi(seed=0, model=(8,), **kw):
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .training(**{**TINY, "model": {"fcnet_hiddens": list(model)}}).debugging(seed=seed)
            .reporting(log_results=False)
            .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b, **kw))


class Hetero(MultiAgentEnv):
    """Agent "a": Box(2) observations, 2 actions; agent "b": Box(5) observations, 3 actions."""

    def __init__(self, config=None):
        self.possible_agents = ["a", "b"]
        self.agents = list(self.possible_agents)
        self.observation_spaces = {"a": gym.spaces.Box(-1, 1, (2,), np.float32),
                                   "b": gym.spaces.Box(-1, 1, (5,), np.float32)}
        self.action_spaces = {"a": gym.spaces.Discrete(2), "b": gym.spaces.Discrete(3)}
        super().__init__()
        self.t = 0

    def _obs(self):
        return {k: np.zeros(s.shape, np.float32) for k, s in self.observation_spaces.items()}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, actions):
        self.t += 1
        return self._obs(), {k: 1.0 for k in actions}, {"__all__": self.t >= 10}, {"__all__": False}, {}


def hetero(fn):
    return (PPOConfig().environment(Hetero).training(**{**TINY, "train_batch_size": 40, "minibatch_size": 20})
            .reporting(log_results=False).debugging(seed=0)
            .multi_agent(policies={"pa", "pb"}, policy_mapping_fn=fn))


def weights(algo):
    return {pid: {k: np.array(v) for k, v in p.get_weights().items()} for pid, p in algo.policies.items()}


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path / "results"))


def with_added_policy(fmt, tmp_path, mapping=to_c):
    """A trained PPO with pol_c added (a new mapping, a new training list), its checkpoint path."""
    algo = multi().build()
    algo.train()
    algo.add_policy("pol_c", policy_mapping_fn=mapping, policies_to_train=["pol_a", "pol_c"])
    algo.train()
    return algo, algo.save(tmp_path / "ck", format=fmt).checkpoint.path


# -- restore() gives the algorithm the checkpoint's policies ---------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_restore_adds_the_saved_policies_and_trains_exactly_like_the_original(tmp_path, fmt):
    """The documented pattern: build with the same config, then restore. The policy added before the
    save is built again, the saved mapping and training list are used, and training goes on bit-exactly."""
    original, path = with_added_policy(fmt, tmp_path)
    restored = multi().build()
    restored.restore(path)
    assert sorted(restored.policies) == ["pol_a", "pol_b", "pol_c"]
    assert restored.config.policy_mapping_fn is to_c
    assert restored.policies_to_train == ["pol_a", "pol_c"]
    assert_same_weights(weights(original), weights(restored))
    original.train()
    restored.train()
    assert_same_weights(weights(original), weights(restored))


def test_restore_into_an_algorithm_that_added_the_policy_but_never_trained_it(tmp_path):
    """pol_c's saved adaptive KL coefficient is restored although the live PPO has none for it yet."""
    original, path = with_added_policy("msgpack", tmp_path)
    live = multi().build()
    live.add_policy("pol_c", policy_mapping_fn=to_c, policies_to_train=["pol_a", "pol_c"])
    live.restore(path)
    assert live.kl_coeffs == original.kl_coeffs
    original.train()
    live.train()
    assert_same_weights(weights(original), weights(live))


def test_restore_keeps_the_live_mapping_where_the_saved_one_is_a_placeholder(tmp_path):
    """msgpack cannot store an unregistered function: the live mapping stays; the policies come back."""
    mapping = lambda agent_id, episode, worker, **kw: "pol_c" if agent_id == 1 else "pol_a"  # noqa: E731
    _, path = with_added_policy("msgpack", tmp_path, mapping=mapping)
    live = multi().build()
    live.restore(path)
    assert live.config.policy_mapping_fn is pol_a_b
    assert sorted(live.policies) == ["pol_a", "pol_b", "pol_c"]
    assert live.policies_to_train == ["pol_a", "pol_c"]
    live.train()


def test_restore_leaves_live_policies_the_checkpoint_lacks(tmp_path):
    """As RLlib's restore: a policy only the live algorithm has stays (the saved mapping decides who acts)."""
    path = multi().build().save(tmp_path / "ck", format="msgpack").checkpoint.path
    live = multi().build()
    live.add_policy("extra", policy_mapping_fn=lambda aid, ep, w, **kw: "extra")
    live.restore(path)
    assert sorted(live.policies) == ["extra", "pol_a", "pol_b"]
    assert live.config.policy_mapping_fn is pol_a_b
    live.train()


def test_a_restore_failing_midway_removes_the_policies_it_added(tmp_path):
    """Reliability rule 4: the weights do not fit (another model size) after pol_c was built: the
    algorithm is left as it was, pol_c removed, the mapping and training list put back."""
    _, path = with_added_policy("msgpack", tmp_path)
    live = multi(model=(16,)).build()
    live.train()
    before, spec_ids = weights(live), sorted(live.config.policies)
    with pytest.raises(CheckpointError):
        live.restore(path)
    assert sorted(live.policies) == ["pol_a", "pol_b"] and sorted(live.config.policies) == spec_ids
    assert live.config.policy_mapping_fn is pol_a_b and live.config.policies_to_train is None
    assert "pol_c" not in live.kl_coeffs
    assert_same_weights(before, weights(live))
    live.train()
    live.save(tmp_path / "again", format="msgpack")


def test_a_restore_of_a_corrupt_policy_file_changes_nothing(tmp_path):
    _, path = with_added_policy("msgpack", tmp_path)
    victim = tmp_path / "ck" / "policies" / "pol_c" / "policy_state.msgpck"
    victim.write_bytes(victim.read_bytes()[:-10])
    live = multi().build()
    before = weights(live)
    with pytest.raises(CorruptCheckpointError, match="pol_c"):
        live.restore(path)
    assert sorted(live.policies) == ["pol_a", "pol_b"] and live.config.policy_mapping_fn is pol_a_b
    assert_same_weights(before, weights(live))


def test_a_saved_spec_declaring_a_model_larger_than_its_weights_is_refused(tmp_path):
    """The policy built for a restore is bounded by its saved weights, as in from_checkpoint."""
    from amber.checkpoint import read_checkpoint, write_checkpoint

    algo = multi().build()
    algo.add_policy("pol_c", config={"model": {"fcnet_hiddens": [8]}}, policy_mapping_fn=to_c)
    algo.save(tmp_path / "src", format="msgpack")
    ckpt = read_checkpoint(tmp_path / "src", migrate=False)
    ckpt.state["config"]["policies"]["pol_c"]["config"]["model"]["fcnet_hiddens"] = [2000, 2000]
    write_checkpoint(tmp_path / "ck", type=ckpt.type, state=ckpt.state, format="msgpack",
                     policies={pid: p.state for pid, p in ckpt.policies.items()},
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    live = multi().build()
    with pytest.raises(CheckpointError, match="values the saved state holds") as info:
        live.restore(tmp_path / "ck")
    assert info.value.path is not None
    assert sorted(live.policies) == ["pol_a", "pol_b"] and live.config.policy_mapping_fn is pol_a_b


def test_dqn_restore_adds_the_saved_policy_with_its_replay_buffer(tmp_path):
    def dqn():
        return (DQNConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
                .training(model={"fcnet_hiddens": [8]}, replay_buffer_config={"capacity": 100},
                          num_steps_sampled_before_learning_starts=50)
                .reporting(min_sample_timesteps_per_iteration=60, log_results=False).debugging(seed=0)
                .checkpointing(store_replay_buffer=True)
                .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b))
    algo = dqn().build()
    algo.add_policy("pol_c", policy_mapping_fn=to_c)
    algo.train()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    live = dqn().build()
    live.restore(path)
    assert sorted(live.replay_buffers) == ["pol_a", "pol_b", "pol_c"]
    assert len(live.replay_buffers["pol_c"]) == len(algo.replay_buffers["pol_c"]) > 0
    algo.train()
    live.train()
    assert_same_weights(weights(algo), weights(live))


# -- the mapping as sampling calls it ------------------------------------------------------------


def by_episode(agent_id, episode, worker, **kw):
    """RLlib's league pattern: the policy depends on the episode."""
    return "pol_a" if (episode.episode_id + agent_id) % 2 == 0 else "pol_b"


@pytest.mark.parametrize("mapping", [lambda agent_id, episode, **kwargs: "pol_a" if agent_id == 0 else "pol_b",
                                     by_episode], ids=["no-worker-arg", "reads-episode"])
def test_build_calls_the_mapping_as_sampling_does(mapping):
    algo = multi().multi_agent(policy_mapping_fn=mapping).build()
    algo.train()
    algo.add_policy("pol_c")  # without spaces: probed through the mapping again


def test_a_mapping_failing_at_build_in_an_env_of_differing_spaces_is_a_clear_error():
    def needs_worker(agent_id, episode, worker, **kw):
        return worker.policy_for(agent_id)

    with pytest.raises(ValueError, match=r"policy_mapping_fn .*needs_worker failed on agent 'a' while "
                                         r"building policy 'pa' \(AttributeError.*PolicySpec\(observation_space"):
        hetero(needs_worker).build()


def test_add_policy_finds_its_spaces_through_the_new_mapping():
    algo = hetero(lambda aid, *a, **k: f"p{aid}").build()
    new = algo.add_policy("new", policy_mapping_fn=lambda aid, *a, **k: "new" if aid == "b" else "pa")
    assert new.observation_space == algo.get_policy("pb").observation_space
    assert new.action_space == gym.spaces.Discrete(3)
    algo.train()


# -- bad arguments change nothing ------------------------------------------------------------------


def test_policies_to_train_naming_unknown_policies_is_refused_before_any_change(tmp_path):
    algo = multi().build()
    with pytest.raises(ValueError, match=r"unknown policies \['pol_b'\]; policies: \['pol_a'\]"):
        algo.remove_policy("pol_b", policy_mapping_fn=lambda a, *x, **k: "pol_a",
                           policies_to_train=["pol_a", "pol_b"])
    with pytest.raises(ValueError, match=r"unknown policies \['typo'\]; policies: \['pol_a', 'pol_b', 'pol_c'\]"):
        algo.add_policy("pol_c", policies_to_train=["pol_c", "typo"])
    assert sorted(algo.policies) == sorted(algo.config.policies) == ["pol_a", "pol_b"]
    assert algo.config.policy_mapping_fn is pol_a_b and algo.config.policies_to_train is None
    algo.train()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    assert sorted(Algorithm.from_checkpoint(path).policies) == ["pol_a", "pol_b"]


def test_removing_an_unknown_policy_names_the_ids_present():
    algo = multi().build()
    with pytest.raises(PolicyNotFoundError, match=r"no policy 'p9'; policies: pol_a, pol_b") as info:
        algo.remove_policy("p9")
    assert isinstance(info.value, KeyError)
    assert sorted(algo.policies) == ["pol_a", "pol_b"]


def test_add_policy_refuses_what_is_not_a_policy(tmp_path):
    algo = multi().build()
    with pytest.raises(TypeError, match="takes a Policy, not a object"):
        algo.add_policy("w", policy=object())
    assert "w" not in algo.policies and "w" not in algo.config.policies
    algo.save(tmp_path / "ck", format="msgpack")


def test_restore_warns_when_it_replaces_the_configured_training_list(tmp_path):
    """Fine-tuning with pol_a frozen: restore() takes the checkpoint's training list (RLlib's
    semantics) and says so; setting the list again after the restore keeps pol_a frozen."""
    saved = multi().build()
    path = saved.save(tmp_path / "ck").checkpoint.path
    tuned = multi(policies_to_train=["pol_b"]).build()
    with pytest.warns(UserWarning, match=r"every policy.*\['pol_b'\].*after restore"):
        tuned.restore(path)
    assert tuned.policies_to_train == ["pol_a", "pol_b"]
    tuned.config.policies_to_train = ["pol_b"]
    before = weights(tuned)
    tuned.train()
    after = weights(tuned)
    assert_same_weights({"pol_a": before["pol_a"]}, {"pol_a": after["pol_a"]})
    assert any(not np.array_equal(before["pol_b"][k], after["pol_b"][k]) for k in before["pol_b"])


def test_restore_of_the_same_training_list_does_not_warn(tmp_path):
    path = multi(policies_to_train=["pol_b"]).build().save(tmp_path / "ck").checkpoint.path
    live = multi(policies_to_train=["pol_b"]).build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        live.restore(path)
    assert live.policies_to_train == ["pol_b"]
