"""Per-policy settings as RLlib code gives them: ``PolicySpec(config={...})`` overrides train that
policy with its own values (PPO), unknown or out-of-range overrides are refused at build, RLlib's
``(cls, obs_space, act_space, config)`` tuple is a spec, and ``AlgorithmConfig.from_dict`` reads
RLlib's names, refuses unknown keys and merges ``model``, while old checkpoints keep loading."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.envs import MultiAgentCartPole
from amber.policy.policy import PolicySpec


def _by_id(agent_id, episode, worker, **kw):
    return f"p{agent_id}"


def _two_policies(policies, **training):
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies=policies, policy_mapping_fn=_by_id)
            .training(train_batch_size=200, num_epochs=2, minibatch_size=64, model={"fcnet_hiddens": [8]})
            .training(**training).debugging(seed=0).reporting(log_results=False))


def _weights_after_one_iteration(config):
    algo = config.build()
    algo.train()
    weights = {pid: algo.get_policy(pid).get_weights() for pid in ("p0", "p1")}
    algo.stop()
    return weights


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


OVERRIDES = [{"gamma": 0.0}, {"lambda_": 0.0}, {"entropy_coeff": 10.0}, {"clip_param": 1e-6},
             {"vf_clip_param": 1e-3}, {"grad_clip": 1e-9}, {"num_epochs": 1}, {"minibatch_size": 200},
             {"kl_coeff": 5.0, "kl_target": 1e-6}]


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda o: ",".join(o))
def test_a_policys_own_settings_train_it_as_the_algorithms_would(override):
    base = _weights_after_one_iteration(_two_policies({"p0": PolicySpec(), "p1": PolicySpec()}))
    algo_wide = _weights_after_one_iteration(_two_policies({"p0": PolicySpec(), "p1": PolicySpec()},
                                                           **override))
    per_policy = _weights_after_one_iteration(
        _two_policies({"p0": PolicySpec(config=override), "p1": PolicySpec(config=override)}))
    assert not _same(base["p0"], algo_wide["p0"])  # the setting matters
    for pid in ("p0", "p1"):  # given per policy, it does what the algorithm's setting does
        assert _same(per_policy[pid], algo_wide[pid])


def test_one_policys_override_leaves_the_other_on_the_algorithms_settings():
    base = _weights_after_one_iteration(_two_policies({"p0": PolicySpec(), "p1": PolicySpec()}))
    one = _weights_after_one_iteration(
        _two_policies({"p0": PolicySpec(config={"entropy_coeff": 10.0}), "p1": PolicySpec()}))
    assert not _same(base["p0"], one["p0"])
    assert _same(base["p1"], one["p1"])


def test_rllib_names_in_overrides_and_the_policy_config_shows_what_it_trains_with():
    algo = _two_policies({"p0": {"lambda": 0.5, "num_sgd_iter": 3, "kl_coeff": 0.7}, "p1": None}).build()
    p0, p1 = algo.get_policy("p0").config, algo.get_policy("p1").config
    assert (p0["lambda_"], p0["num_epochs"], p0["kl_coeff"]) == (0.5, 3, 0.7)
    assert (p1["lambda_"], p1["num_epochs"], p1["clip_param"]) == (0.95, 2, 0.2)
    assert algo.kl_coeffs["p0"] == 0.7 and algo.kl_coeffs["p1"] == 0.2  # each starts at its own
    algo.stop()


@pytest.mark.parametrize("spec, match", [
    (PolicySpec(config={"entropy_coef": 0.1}), r"policies\['p0'\].*'entropy_coef'.*did you mean entropy_coeff"),
    ({"typo_key": 1}, r"policies\['p0'\].*'typo_key'"),
    (PolicySpec(config={"clip_param": -1.0}), r"policies\['p0'\].*clip_param must be a positive number"),
    (PolicySpec(config={"gamma": 2.0}), r"policies\['p0'\].*gamma must be in \[0, 1\]"),
    (PolicySpec(config={"num_epochs": 0}), r"policies\['p0'\].*num_epochs"),
    (PolicySpec(config={"lr": "fast"}), r"policies\['p0'\].*'lr' must be float"),
    (PolicySpec(config={"train_batch_size": 100}), r"policies\['p0'\].*train_batch_size: a setting of the whole"),
])
def test_a_bad_policy_override_is_refused_at_build(spec, match):
    config = _two_policies({"p0": spec, "p1": PolicySpec()})
    with pytest.raises(ValueError, match=match):
        config.build()


def test_add_policy_checks_its_config_as_the_build_does():
    """add_policy(config=...) on a live algorithm took a typo or an out-of-range value silently."""
    algo = _two_policies({"p0": PolicySpec(), "p1": PolicySpec()}).build()
    try:
        for config, match in (({"entropy_coef": 0.1}, "'entropy_coef'.*did you mean entropy_coeff"),
                              ({"gamma": 2.0}, r"gamma must be in \[0, 1\]")):
            with pytest.raises(ValueError, match=r"policies\['p2'\].*" + match):
                algo.add_policy("p2", config=config)
            assert sorted(algo.policies) == ["p0", "p1"], "refused before anything changed"
        assert algo.add_policy("p2", config={"gamma": 0.5}).config["gamma"] == 0.5
    finally:
        algo.stop()


@pytest.mark.parametrize("override, match", [({"n_step": 0}, "n_step"),
                                             ({"target_network_update_freq": 10}, "a setting of the whole")])
def test_dqn_policy_overrides_are_checked_by_dqns_rules(override, match):
    config = (DQNConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .multi_agent(policies={"p0": PolicySpec(config=override), "p1": PolicySpec()},
                           policy_mapping_fn=_by_id))
    with pytest.raises(ValueError, match=rf"policies\['p0'\].*{match}"):
        config.build()


SPACES = (gym.spaces.Box(-1.0, 1.0, (4,)), gym.spaces.Discrete(2))


def test_rllib_tuple_policy_spec_is_read_whole():
    config = _two_policies({"p0": (None, *SPACES, {"lr": 1e-4}), "p1": (None, *SPACES, None)})
    assert isinstance(config.policies["p0"], PolicySpec)
    algo = config.build()
    p0 = algo.get_policy("p0")
    assert p0.observation_space == SPACES[0] and p0.config["lr"] == 1e-4
    assert algo.get_policy("p1").config["lr"] == config.lr
    algo.train()
    algo.stop()


@pytest.mark.parametrize("spec", [(None, *SPACES, {}, "extra"), (None, *SPACES, 0.1), [1, 2]])
def test_a_malformed_policy_tuple_is_refused(spec):
    with pytest.raises(ValueError, match="policy spec tuple"):
        PPOConfig().multi_agent(policies={"p0": spec})


@pytest.mark.parametrize("spec", [3, "p0", [1, 2]])
def test_a_policy_spec_of_another_type_is_refused_at_build(spec):
    config = _two_policies({"p0": PolicySpec(), "p1": PolicySpec()})
    config.policies["p1"] = spec
    with pytest.raises(ValueError, match=r"policies\['p1'\] must be None, a PolicySpec"):
        config.build()


def test_from_dict_reads_rllibs_names():
    config = PPOConfig.from_dict({
        "env": "CartPole-v1", "lambda": 0.5, "framework": "tf2", "num_workers": 2, "sgd_minibatch_size": 64,
        "num_sgd_iter": 3, "num_envs_per_worker": 2,
        "multiagent": {"policies": {"a": (None, *SPACES, {"lr": 1e-4}), "b": None},
                       "policy_mapping_fn": _by_id, "policies_to_train": ["a"]}})
    assert (config.lambda_, config.framework_str, config.num_env_runners) == (0.5, "tf2", 2)
    assert (config.minibatch_size, config.num_epochs, config.num_envs_per_env_runner) == (64, 3, 2)
    assert config.policies["a"].config == {"lr": 1e-4} and config.policies_to_train == ["a"]
    assert config.policy_mapping_fn is _by_id and config.to_dict()["multi_agent"] is True
    assert PPOConfig.from_dict({"num_rollout_workers": 1}).num_env_runners == 1


@pytest.mark.parametrize("data, match", [
    ({"entropy_coef": 0.5}, r"'entropy_coef'.*did you mean entropy_coeff"),
    ({"use_gae": True}, "'use_gae'"),
    ({"framework": "tf"}, "framework 'tf' is not supported"),
    ({"lr": "fast"}, "'lr' must be float"),
    ({"num_workers": 2, "num_env_runners": 3}, "'num_workers' and 'num_env_runners' both set"),
    ({"multiagent": {"count_steps_by": "agent_steps"}}, "count_steps_by"),
    ({"training": 1}, "'training'"),  # a method, not a setting
])
def test_from_dict_refuses_what_it_would_drop(data, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig.from_dict(data)


def test_from_dict_merges_model_into_the_algorithms_default():
    from_dict = DQNConfig.from_dict({"env": "CartPole-v1", "model": {"fcnet_hiddens": [32]}})
    fluent = DQNConfig().training(model={"fcnet_hiddens": [32]})
    assert from_dict.model == fluent.model == {"fcnet_hiddens": [32], "fcnet_activation": "relu"}


@pytest.mark.filterwarnings("ignore:.*has no registered name")
def test_a_checkpoint_with_settings_amber_no_longer_has_still_loads(tmp_path):
    algo = _two_policies({"p0": PolicySpec(config={"clip_param": 0.1}), "p1": None}).build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    ckpt = read_checkpoint(tmp_path / "src", migrate=False)
    ckpt.state["config"]["retired_setting"] = 1  # a key an older amber saved
    # keys an older amber saved and never used, and a value it took without looking (PPO read no
    # per-policy setting but lr and model): the checkpoint loaded then, so it loads now
    ckpt.state["config"]["policies"]["p0"]["config"].update(retired_override=2, train_batch_size=8)
    saved = ckpt.state["config"]["policies"]
    saved["p1"] = {**saved["p0"], "config": {"gamma": 2.0, "lr": 1e-4}}
    write_checkpoint(tmp_path / "ck", type="Algorithm", state=ckpt.state,
                     policies={pid: p.state for pid, p in ckpt.policies.items()}, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    with pytest.warns(UserWarning) as caught:
        restored = Algorithm.from_checkpoint(tmp_path / "ck", policy_mapping_fn=_by_id)
    said = " ".join(str(w.message) for w in caught)
    assert "'retired_override' (PPOConfig takes no such setting per policy)" in said
    assert "'train_batch_size' (PPOConfig takes no such setting per policy)" in said
    assert "'gamma' (" in said and "gamma must be in [0, 1]" in said
    assert restored.get_policy("p0").config["clip_param"] == 0.1
    assert "retired_override" not in restored.get_policy("p0").config
    assert restored.get_policy("p1").config["gamma"] == restored.config.gamma
    assert restored.get_policy("p1").config["lr"] == 1e-4
    restored.train()
    restored.stop()
