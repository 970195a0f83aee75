"""Single-agent envs since a policy mapping function is used for them (agent ``"agent0"``):
checkpoints of older amber, which ignored it, keep working, and a policy added to a single-agent
algorithm leaves the agent on the policy it played."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.cli import cli

_SMALL = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def leftover(agent_id, episode, worker, **kw):
    """A multi-agent template left in a single-agent config (old amber ignored it)."""
    return f"p{agent_id}"


def to_main(agent_id, episode, worker, **kw):
    return "main"


amber.register_class(leftover, name="tests.single_agent_compat.leftover")
amber.register_class(to_main, name="tests.single_agent_compat.to_main")


def _config(**multi_agent):
    cfg = PPOConfig().environment("CartPole-v1").training(**_SMALL).reporting(log_results=False)
    return cfg.multi_agent(**multi_agent).debugging(seed=0)


def _mapping_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "policy_mapping_fn" in str(w.message)]


def test_leftover_mapping_of_a_single_agent_checkpoint_trains_default_policy_and_warns_once(tmp_path):
    algo = _config(policy_mapping_fn=leftover).build()
    algo.save(tmp_path / "ck", format="msgpack")  # as old amber saved it: the mapping kept
    algo.stop()
    algo = Algorithm.from_checkpoint(tmp_path / "ck")
    before = algo.get_policy().get_weights()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        algo.train()
        algo.train()
    after = algo.get_policy().get_weights()
    algo.stop()
    assert not all(np.array_equal(before[k], after[k]) for k in before)  # default_policy trained
    (message,) = _mapping_warnings(caught)
    assert "'pagent0'" in message and "'default_policy'" in message
    assert "single-agent env is now used" in message and "fix it" in message and "remove it" in message


def test_evaluate_plays_a_leftover_mapping_checkpoints_default_policy(tmp_path):
    algo = _config(policy_mapping_fn=leftover).build()
    algo.save(tmp_path / "ck", format="msgpack")
    algo.stop()
    result = CliRunner().invoke(cli, ["evaluate", "--episodes", "2", str(tmp_path / "ck")])
    assert result.exit_code == 0 and "return mean" in result.output, result.output
    assert "'pagent0'" in result.stderr and "playing policy 'default_policy'" in result.stderr


def test_a_mapping_naming_an_existing_policy_is_used_without_warning():
    algo = _config(policies={"main", "other"}, policy_mapping_fn=to_main).build()
    before = algo.get_policy("other").get_weights()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        algo.train()
    after = algo.get_policy("other").get_weights()
    algo.stop()
    assert not _mapping_warnings(caught)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # no sample for it


def test_a_mapping_naming_a_missing_policy_falls_back_to_the_first_policy_with_a_warning():
    algo = _config(policies={"a", "b"}, policy_mapping_fn=leftover).build()
    with pytest.warns(UserWarning, match="'pagent0', which does not exist: playing policy 'a'"):
        algo.train()
    assert list(algo.env_runner.sample(8)[0]) == ["a"]
    algo.stop()


def test_after_add_policy_the_policy_that_was_playing_keeps_playing(tmp_path):
    algo = _config(policies={"main"}).build()
    algo.train()
    algo.add_policy("snapshot", policy_state=algo.get_policy("main").get_state())
    snap = algo.get_policy("snapshot").get_weights()
    algo.train()
    batches, _ = algo.env_runner.sample(8)
    assert list(batches) == ["main"]
    after = algo.get_policy("snapshot").get_weights()
    assert all(np.array_equal(snap[k], after[k]) for k in snap)  # the added one gets no samples
    algo.save(tmp_path / "ck", format="msgpack")
    algo.stop()
    restored = Algorithm.from_checkpoint(tmp_path / "ck")  # its running episodes say who played
    restored.train()
    assert list(restored.env_runner.sample(8)[0]) == ["main"]
    restored.stop()
    result = CliRunner().invoke(cli, ["evaluate", "--episodes", "1", str(tmp_path / "ck")])
    assert result.exit_code == 0 and "return mean" in result.output, result.output


def test_a_mapping_given_to_add_policy_decides():
    algo = _config(policies={"main"}).build()
    algo.train()
    algo.add_policy("snapshot", policy_state=algo.get_policy("main").get_state(),
                    policy_mapping_fn=lambda aid, *a, **k: "snapshot")
    batches, _ = algo.env_runner.sample(300)  # the running episode ends; new ones play "snapshot"
    algo.stop()
    assert "snapshot" in batches


# -- messages and keywords of the policies' acting methods -----------------------------------

_CFG = {"model": {"fcnet_hiddens": [4]}, "lr": 1e-3, "gamma": 0.99, "seed": 0}


def _torch_policy(obs_space, act_space):
    from amber.policy.torch_policy import TorchPolicy

    return TorchPolicy(obs_space, act_space, _CFG)


def test_the_shape_error_of_compute_single_action_names_a_scalar_and_fitting_advice():
    import gymnasium as gym

    policy = _torch_policy(gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2))
    with pytest.raises(ValueError) as e:
        policy.compute_single_action(0.5)
    message = str(e.value)
    assert "compute_single_action takes one observation of shape (1,)" in message
    assert "shape () (a scalar)" in message and "reshape it to (1,)" in message
    assert "use compute_single_action" not in message  # the call that was made
    assert policy.compute_single_action(np.array([0.5]))[0] in (0, 1)
    with pytest.raises(ValueError, match=r"shape \(1,\) each, not an array of shape \(2,\).*reshape it to \(2, 1\)"):
        policy.compute_actions([0.1, 0.2])


def test_compute_methods_refuse_an_unknown_keyword_and_take_rllibs():
    import gymnasium as gym

    policy = _torch_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-0.01, 0.01, (2,)))
    obs = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="'clip_acitons'; did you mean 'clip_actions'"):
        policy.compute_single_action(obs, clip_acitons=True)
    with pytest.raises(TypeError, match="'episode'; did you mean 'episodes'"):
        policy.compute_actions(obs[None], episode=None)
    action = policy.compute_single_action(obs, clip_action=True, prev_action=None, episode=None, timestep=1)[0]
    assert np.all(np.abs(action) <= 0.01)  # RLlib's Algorithm.compute_single_action name clips too
    policy.compute_actions(obs[None], prev_action_batch=None, episodes=None, info_batch=None, timestep=2)


def test_the_served_policy_refuses_an_unknown_keyword_and_clips_with_clip_action(tmp_path):
    import gymnasium as gym

    from amber.serve import load_policy

    policy = _torch_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-0.01, 0.01, (2,)))
    served = load_policy(policy.export_checkpoint(tmp_path / "ck", format="msgpack"))
    obs = np.zeros(3, np.float32)
    for _ in range(5):
        assert np.all(np.abs(served.compute_single_action(obs, explore=True, clip_action=True)[0]) <= 0.01)
    with pytest.raises(TypeError, match="'clip_acitons'; did you mean 'clip_actions'"):
        served.compute_single_action(obs, clip_acitons=True)
    with pytest.raises(TypeError, match="'foo'"):
        served.compute_actions(obs[None], foo=1)
    with pytest.raises(ValueError, match=r"one observation of shape \(3,\), not one of shape \(\) \(a scalar\)"):
        served.compute_single_action(0.5)
    assert served.compute_single_action(input_dict={"obs": obs})[0].shape == (2,)


def test_a_policy_spec_with_an_unreadable_space_names_the_policy_and_key():
    from amber.algorithms.config_values import _spec_from_dict

    rllib = {"policy_class": None, "observation_space": {"space": "box", "shape": [4]}, "config": {}}
    with pytest.raises(ValueError) as e:
        _spec_from_dict(rllib, "p0")
    message = str(e.value)
    assert "policy 'p0': observation_space" in message and "RLlib's serialized space" in message
    assert "'type': 'Box'" in message and "'type': 'Discrete'" in message


def test_from_dict_names_the_policy_of_an_unreadable_space():
    from amber.algorithms.ppo import PPOConfig

    data = PPOConfig().to_dict()
    data["policies"] = {"p0": {"policy_class": None, "observation_space": {"space": "box"}, "config": {}}}
    with pytest.raises(ValueError, match=r"policy 'p0': observation_space"):
        PPOConfig.from_dict(data)


@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_the_first_policy_keeps_playing_after_a_restore_that_holds_no_running_episode(tmp_path, fmt):
    """MountainCar's state is not captured, so no saved episode says who played: the choice depends on
    the policies alone (the first one built; "z_main" sorts after the one added later)."""
    config = (PPOConfig().environment("MountainCar-v0").training(**_SMALL).reporting(log_results=False)
              .multi_agent(policies={"z_main"}).debugging(seed=0))
    algo = config.build()
    algo.add_policy("a_snapshot", policy_state=algo.get_policy("z_main").get_state())
    algo.train()
    algo.save(tmp_path / "ck", format=fmt)
    algo.stop()
    restored = Algorithm.from_checkpoint(tmp_path / "ck")
    restored.train()
    assert list(restored.env_runner.sample(8)[0]) == ["z_main"]
    restored.stop()


def test_clip_actions_and_clip_action_together_are_one_request():
    policy = (PPOConfig().environment("Pendulum-v1").training(**_SMALL).build()).get_policy()
    action, _, _ = policy.compute_single_action(np.full(3, 50.0, np.float32), clip_actions=True, clip_action=True)
    assert np.all(np.abs(action) <= 2.0)
