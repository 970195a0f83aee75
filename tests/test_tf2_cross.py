"""Across frameworks: a torch checkpoint rebuilt as tf2 policies (and the reverse) acts the same,
``amber convert --framework``, and torch users never import tensorflow."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from amber.algorithms.ppo import PPO, PPOConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 2, "model": {"fcnet_hiddens": [16, 16]}}


def _config(framework: str) -> PPOConfig:
    config = PPOConfig().environment("CartPole-v1").framework(framework).training(**SMALL).debugging(seed=11)
    return config.reporting(log_results=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained torch and a trained tf2 PPO checkpoint (msgpack), with their policies' states."""
    out = {}
    for fw in ("torch", "tf2"):
        algo = _config(fw).build()
        algo.train()
        path = algo.save(tmp_path_factory.mktemp(fw) / "ckpt", format="msgpack").checkpoint.path
        out[fw] = (path, algo.get_policy().get_state())
        algo.stop()
    return out


OBS = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)


def _same_policy(a, b) -> None:
    acts_a, _, extra_a = a.compute_actions(OBS, explore=False)
    acts_b, _, extra_b = b.compute_actions(OBS, explore=False)
    np.testing.assert_array_equal(acts_a, acts_b)
    np.testing.assert_allclose(extra_a["action_dist_inputs"], extra_b["action_dist_inputs"], atol=1e-5)
    np.testing.assert_allclose(extra_a["vf_preds"], extra_b["vf_preds"], atol=1e-5)
    for o in OBS[:4]:  # one observation at a time (the numpy paths)
        assert a.compute_single_action(o, explore=False)[0] == b.compute_single_action(o, explore=False)[0]


@pytest.mark.parametrize(("source", "target"), [("torch", "tf2"), ("tf2", "torch")])
def test_from_checkpoint_in_the_other_framework(checkpoints, source, target):
    from amber.policy.policy import Policy

    path, saved = checkpoints[source]
    with pytest.warns(UserWarning, match="generator is reseeded"):
        algo = PPO.from_checkpoint(path, framework=target)
    try:
        policy = algo.get_policy()
        assert getattr(policy, "framework", "torch") == target and algo.config.framework_str == target
        original = Policy.from_checkpoint(path)["default_policy"]
        assert getattr(original, "framework", "torch") == source
        _same_policy(policy, original)
        state = policy.get_state()
        for i, entry in saved["optimizer"]["state"].items():  # Adam's moments carried over
            np.testing.assert_array_equal(state["optimizer"]["state"][int(i)]["exp_avg"], entry["exp_avg"])
        assert state["num_grad_updates"] == saved["num_grad_updates"]
        result = algo.train()  # and it trains on, with the moments it got
        assert result["training_iteration"] == 2
    finally:
        algo.stop()


@pytest.mark.parametrize(("source", "target"), [("torch", "tf2"), ("tf2", "torch")])
def test_restore_and_set_state_from_the_other_framework(checkpoints, source, target):
    """algo.restore of the other framework's checkpoint works both ways: its weights are taken, its
    generator state (another framework's) is left with a warning, not a raw torch error."""
    path, saved = checkpoints[source]
    algo = _config(target).build()
    try:
        with pytest.warns(UserWarning, match="generator state is another framework's"):
            algo.restore(path)
        assert algo.iteration == 1
        for name, value in algo.get_policy().get_weights().items():
            np.testing.assert_allclose(value, saved["weights"][name], atol=1e-6)
        policy = _config(target).build().get_policy()
        with pytest.warns(UserWarning, match="generator state is another framework's"):
            policy.set_state(saved)
        assert policy.num_grad_updates == saved["num_grad_updates"]
    finally:
        algo.stop()


def test_a_bad_generator_state_changes_nothing_in_a_torch_policy(checkpoints):
    """A generator state of torch's size that torch refuses fails before the weights change."""
    _, saved = checkpoints["torch"]
    policy = _config("torch").build().get_policy()
    before, generator = policy.get_weights(), policy.generator.get_state().clone()
    bad = {**saved, "generator": np.zeros_like(saved["generator"])}
    with pytest.raises(ValueError, match="not a valid torch generator state"):
        policy.set_state(bad)
    assert all(np.array_equal(v, before[k]) for k, v in policy.get_weights().items())
    assert bool((policy.generator.get_state() == generator).all())


def test_amber_convert_framework_both_ways(checkpoints, tmp_path, pm):
    from click.testing import CliRunner

    from amber.cli import cli
    from amber.cli.base import CliState
    from amber.policy.policy import Policy
    from amber.policy.tf_policy import PPOTFPolicy
    from amber.policy.torch_policy import TorchPolicy

    path, _ = checkpoints["torch"]
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = runner.invoke(cli, ["convert", str(path), str(tmp_path / "tf2"), "--framework", "tf2"],
                          obj=CliState(plugin_manager=pm))
        assert r.exit_code == 0, r.output
        r2 = runner.invoke(cli, ["convert", str(tmp_path / "tf2"), str(tmp_path / "back"), "--framework", "torch",
                                 "-f", "pickle"], obj=CliState(plugin_manager=pm))
        assert r2.exit_code == 0, r2.output
    assert "framework tf2" in r.output and "(pickle, framework torch)" in r2.output
    tf2_policy = Policy.from_checkpoint(tmp_path / "tf2")["default_policy"]
    back = Policy.from_checkpoint(tmp_path / "back")["default_policy"]
    assert isinstance(tf2_policy, PPOTFPolicy) and type(back) is TorchPolicy
    original = Policy.from_checkpoint(path)["default_policy"]
    _same_policy(tf2_policy, original)
    _same_policy(back, original)
    algo = PPO.from_checkpoint(tmp_path / "tf2")
    try:
        assert algo.config.framework_str == "tf2" and isinstance(algo.get_policy(), PPOTFPolicy)
    finally:
        algo.stop()
    original.export_checkpoint(tmp_path / "policy", format="msgpack")  # a policy checkpoint converts too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r4 = runner.invoke(cli, ["convert", str(tmp_path / "policy"), str(tmp_path / "policy_tf2"),
                                 "--framework", "tf2"], obj=CliState(plugin_manager=pm))
    assert r4.exit_code == 0, r4.output
    converted = Policy.from_checkpoint(tmp_path / "policy_tf2")
    assert isinstance(converted, PPOTFPolicy)
    _same_policy(converted, original)
    r3 = runner.invoke(cli, ["convert", str(path), str(tmp_path / "x")], obj=CliState(plugin_manager=pm))
    assert r3.exit_code != 0 and "--framework" in r3.output


def test_convert_framework_of_an_rllib_checkpoint_and_a_policy_names_what_it_writes(checkpoints, tmp_path, pm):
    """--framework without -f: an RLlib checkpoint (a format amber only reads) is written in msgpack,
    as migrate does; a policy checkpoint's warning names the policy (its directory's name)."""
    from click.testing import CliRunner

    from amber.cli import cli
    from amber.cli.base import CliState
    from amber.policy.policy import Policy
    from amber.policy.tf_policy import PPOTFPolicy
    from amber.utils.checkpoints import get_checkpoint_info

    rllib = REPO / "tests" / "fixtures" / "rllib-2.10" / "ppo_msgpack"
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = runner.invoke(cli, ["convert", str(rllib), str(tmp_path / "rl"), "--framework", "tf2"],
                          obj=CliState(plugin_manager=pm))
    assert r.exit_code == 0, r.output
    assert "(msgpack, framework tf2)" in r.output and get_checkpoint_info(tmp_path / "rl")["format"] == "msgpack"
    Policy.from_checkpoint(checkpoints["torch"][0])["default_policy"].export_checkpoint(
        tmp_path / "learner", format="msgpack")
    r2 = runner.invoke(cli, ["convert", str(tmp_path / "learner"), str(tmp_path / "learner_tf2"),
                             "--framework", "tf2"], obj=CliState(plugin_manager=pm))
    assert r2.exit_code == 0, r2.output
    assert "policy learner: torch → tf2" in r2.output
    assert isinstance(Policy.from_checkpoint(tmp_path / "learner_tf2"), PPOTFPolicy)


def test_a_tf2_checkpoint_is_served_without_tensorflow(checkpoints):
    """amber.serve reads a tf2 policy's weights as a torch policy's (one layout): same greedy actions."""
    from amber.policy.policy import Policy
    from amber.serve import load_policy

    path, _ = checkpoints["tf2"]
    served = load_policy(path)
    policy = Policy.from_checkpoint(path)["default_policy"]
    a, _, ea = served.compute_actions(OBS, explore=False)
    b, _, eb = policy.compute_actions(OBS, explore=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ea["action_dist_inputs"], eb["action_dist_inputs"], atol=1e-5)


def test_missing_tensorflow_names_the_extra(monkeypatch):
    from amber.models.keras_mlp import MissingFrameworkError

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now raises ImportError
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(MissingFrameworkError, match=r"pip install 'amber-rl\[keras\]'"):
        _config("tf2").build()


def test_a_framework_without_a_counterpart_is_refused():
    from amber.policy.frameworks import policy_class_for

    class Custom:
        pass

    with pytest.raises(ValueError, match="no tf2 counterpart"):
        policy_class_for(Custom, "tf2")
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        policy_class_for(Custom, "jax")
    with pytest.raises(ValueError, match="choices: torch, tf2"):
        PPOConfig().framework("jax")


_TORCH_ONLY = """
import sys, tempfile
from amber.algorithms.ppo import PPO, PPOConfig
from amber.policy.policy import Policy
import amber.cli
d = tempfile.mkdtemp()
algo = (PPOConfig().environment("CartPole-v1").training(train_batch_size=128, minibatch_size=64, num_epochs=1,
        model={"fcnet_hiddens": [8]}).checkpointing(export_native_model_files=True)
        .reporting(log_results=False).build())
algo.train()
path = algo.save(d + "/ckpt", format="msgpack").checkpoint.path
algo.get_policy().export_model(d + "/model")
algo.stop()
PPO.from_checkpoint(path).stop()
Policy.from_checkpoint(path)
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
assert not heavy, heavy
print("ok")
"""


def test_a_torch_run_never_imports_tensorflow(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _TORCH_ONLY], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env={**os.environ})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def _same_start(torch_cls, tf_cls, spaces, config):
    from amber.policy.frameworks import convert_policy_state

    torch_policy = torch_cls(*spaces, config)
    tf_policy = tf_cls(*spaces, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tf_policy.set_state(convert_policy_state(torch_policy.get_state(), "tf2"))
    return torch_policy, tf_policy


def test_the_tf2_updates_compute_the_torch_updates():
    """The same batches from the same weights: the same losses and, after a few Adam steps, weights."""
    import gymnasium as gym

    from amber.algorithms.dqn.dqn_learner import dqn_update
    from amber.algorithms.dqn.dqn_tf_learner import dqn_tf_update
    from amber.algorithms.dqn.dqn_tf_policy import DQNTFPolicy
    from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy
    from amber.algorithms.ppo.ppo_learner import ppo_update
    from amber.algorithms.ppo.ppo_tf_learner import ppo_tf_update
    from amber.policy.tf_policy import PPOTFPolicy
    from amber.policy.torch_policy import TorchPolicy

    spaces = (gym.spaces.Box(-2, 2, (4,), np.float32), gym.spaces.Discrete(2))
    rng = np.random.default_rng(0)
    n = 64
    t, f = _same_start(DQNTorchPolicy, DQNTFPolicy, spaces,
                       {"model": {"fcnet_hiddens": [16, 16], "fcnet_activation": "relu"}, "seed": 1, "lr": 5e-4})
    for _ in range(3):
        batch = {"obs": rng.normal(size=(n, 4)).astype(np.float32), "actions": rng.integers(0, 2, n),
                 "new_obs": rng.normal(size=(n, 4)).astype(np.float32), "rewards": rng.normal(size=n),
                 "discounts": np.full(n, 0.97, np.float32), "terminateds": rng.random(n) < 0.1}
        a, b = (fn(p, batch, double_q=True, grad_clip=40.0) for fn, p in ((dqn_update, t), (dqn_tf_update, f)))
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_gnorm"] - b["grad_gnorm"]) < 1e-5
    for name, value in t.get_weights().items():
        np.testing.assert_allclose(f.get_weights()[name], value, atol=1e-4, err_msg=name)

    t, f = _same_start(TorchPolicy, PPOTFPolicy, spaces, {"model": {"fcnet_hiddens": [16, 16]}, "seed": 1})
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    actions, _, extra = t.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra, "advantages": rng.normal(size=n).astype(np.float32),
             "value_targets": rng.normal(size=n).astype(np.float32)}
    kw = {"num_epochs": 2, "minibatch_size": 16, "clip_param": 0.2, "vf_clip_param": 10.0, "vf_loss_coeff": 1.0,
          "entropy_coeff": 0.01, "kl_coeff": 0.2, "kl_target": 0.01, "grad_clip": None}
    a = ppo_update(t, dict(batch), rng=np.random.default_rng(3), **kw)
    b = ppo_tf_update(f, dict(batch), rng=np.random.default_rng(3), **kw)
    for key in ("total_loss", "policy_loss", "vf_loss", "kl", "entropy"):
        assert abs(a[key] - b[key]) < 1e-5, key
    assert a["num_grad_updates"] == b["num_grad_updates"] == 8
    for name, value in t.get_weights().items():
        np.testing.assert_allclose(f.get_weights()[name], value, atol=1e-4, err_msg=name)
