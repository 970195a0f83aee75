"""Faults found by a tester of the tf2 framework: moving a checkpoint trained with remote env runners
to the other framework, TF's process-wide op determinism, and the tf2 Adam step against torch's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("torch")

from amber.errors import InvalidStateError  # noqa: E402

SMALL = {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def cartpole(framework, runners=2):
    from amber.algorithms.ppo import PPOConfig

    return (PPOConfig().environment("CartPole-v1").framework(framework).training(**SMALL).debugging(seed=0)
            .env_runners(num_env_runners=runners, num_cpus_per_env_runner=0.5).reporting(log_results=False))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for the tests here that need it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(__file__)}})
    yield
    ray.shutdown()


def test_remote_runners_checkpoint_moves_to_the_other_framework(ray_session, tmp_path):
    """A torch checkpoint of 2 remote runners: restored into a tf2 algorithm, read with
    framework="tf2", and converted (amber convert --framework tf2): each trains on, the runners'
    torch generator states left out with a warning."""
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.ppo import PPO
    from amber.cli.convert import convert_framework

    algo = cartpole("torch").build()
    try:
        algo.train()
        path = algo.save(str(tmp_path / "ck"), format="msgpack").checkpoint.path
    finally:
        algo.stop()
    tf2 = cartpole("tf2").build()
    try:
        with pytest.warns(UserWarning, match="env runners' saved action generators of 'default_policy' are"):
            tf2.restore(path)
        tf2.train()
    finally:
        tf2.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the action generator is reseeded"
        moved = PPO.from_checkpoint(path, framework="tf2")
    try:
        moved.train()
    finally:
        moved.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_framework(path, tmp_path / "cv", "tf2")
    converted = Algorithm.from_checkpoint(tmp_path / "cv")
    try:
        assert type(converted.get_policy()).framework == "tf2"
        converted.train()
    finally:
        converted.stop()


def test_convert_drops_the_remote_runners_generators_of_moved_policies():
    from amber.envs.runner_generators import without_runner_generators

    own = {"config": {}, "components": {"env_runner": {"remote_runners": [
        {"env_runner": {"x": 1}, "generators": {"a": {"generator": np.zeros(40, np.uint8)}, "b": {}}}]}}}
    out = without_runner_generators(own, ["a"])
    assert out["components"]["env_runner"]["remote_runners"] == [{"env_runner": {"x": 1}, "generators": {"b": {}}}]
    assert "a" in own["components"]["env_runner"]["remote_runners"][0]["generators"]  # not changed in place
    assert without_runner_generators({"config": {}}, ["a"]) == {"config": {}}


def test_a_generator_state_of_no_kind_is_a_clear_error():
    import torch

    from amber.envs.runner_generators import checked_runner_states, set_generator_state
    from amber.policy.torch_policy import TorchPolicy

    gen = torch.Generator()
    assert set_generator_state(gen, np.zeros(40, np.uint8), "here") is False  # numpy's: left out
    with pytest.raises(InvalidStateError, match="here: not a valid torch generator state"):
        set_generator_state(gen, np.full(gen.get_state().numel(), 255, np.uint8), "here")
    with pytest.raises(InvalidStateError, match="a generator state is a uint8 vector"):
        set_generator_state(np.random.default_rng(0), np.zeros(40, np.float64), "here")
    import gymnasium as gym

    policy = TorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2), {"seed": 0})
    bad = [{"env_runner": {}, "generators": {"default_policy": {"generator": np.full(5056, 255, np.uint8)}}}]
    with pytest.raises(InvalidStateError, match="env runner 1, policy default_policy, generator"):
        checked_runner_states({"default_policy": policy}, bad)
    numpy_state = [{"env_runner": {}, "generators": {"default_policy": {"generator": np.zeros(40, np.uint8)}}}]
    kept, foreign = checked_runner_states({"default_policy": policy}, numpy_state)
    assert foreign == ["default_policy"] and kept[0]["generators"] == {"default_policy": {}}


def test_a_seeded_tf2_policy_leaves_unseeded_tf_random_ops_working():
    """Op determinism is process-wide; the global seed is set with it, so the user's own TF random
    ops (and Keras fit's shuffle) still run."""
    script = textwrap.dedent("""
        import numpy as np, gymnasium as gym, tensorflow as tf, keras
        from amber.policy.tf_policy import PPOTFPolicy
        PPOTFPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2), {"seed": 0})
        tf.random.uniform((2,))
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]); m.compile("adam", "mse")
        m.fit(np.zeros((8, 3)), np.zeros((8, 1)), verbose=0)
        print("ran")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_tf2_adam_steps_are_torchs_at_the_default_lr(algo):
    """From the same weights on the same batches, 12 Adam steps at PPO's default lr (3e-4; DQN 5e-4)
    leave the tf2 and torch weights within 1e-6 (Keras's own Adam: 1.5e-4 apart)."""
    import gymnasium as gym

    from amber.policy.frameworks import convert_policy_state

    spaces = (gym.spaces.Box(-2, 2, (4,), np.float32), gym.spaces.Discrete(2))
    rng = np.random.default_rng(0)
    n = 64
    if algo == "ppo":
        from amber.algorithms.ppo.ppo_learner import ppo_update
        from amber.algorithms.ppo.ppo_tf_learner import ppo_tf_update
        from amber.policy.tf_policy import PPOTFPolicy as TF
        from amber.policy.torch_policy import TorchPolicy as Torch
    else:
        from amber.algorithms.dqn.dqn_learner import dqn_update
        from amber.algorithms.dqn.dqn_tf_learner import dqn_tf_update
        from amber.algorithms.dqn.dqn_tf_policy import DQNTFPolicy as TF
        from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy as Torch
    cfg = {"model": {"fcnet_hiddens": [16, 16]}, "seed": 1, "lr": 3e-4 if algo == "ppo" else 5e-4}
    t, f = Torch(*spaces, cfg), TF(*spaces, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the action generator is reseeded"
        f.set_state(convert_policy_state(t.get_state(), "tf2"))
    if algo == "ppo":
        obs = rng.normal(size=(n, 4)).astype(np.float32)
        actions, _, extra = t.compute_actions(obs)
        batch = {"obs": obs, "actions": actions, **extra, "advantages": rng.normal(size=n).astype(np.float32),
                 "value_targets": rng.normal(size=n).astype(np.float32)}
        kw = {"num_epochs": 3, "minibatch_size": 16, "clip_param": 0.2, "vf_clip_param": 10.0,
              "vf_loss_coeff": 1.0, "entropy_coeff": 0.01, "kl_coeff": 0.2, "kl_target": 0.01, "grad_clip": None}
        ppo_update(t, dict(batch), rng=np.random.default_rng(3), **kw)
        ppo_tf_update(f, dict(batch), rng=np.random.default_rng(3), **kw)
    else:
        for _ in range(12):
            batch = {"obs": rng.normal(size=(n, 4)).astype(np.float32), "actions": rng.integers(0, 2, n),
                     "new_obs": rng.normal(size=(n, 4)).astype(np.float32), "rewards": rng.normal(size=n),
                     "discounts": np.full(n, 0.97, np.float32), "terminateds": rng.random(n) < 0.1}
            dqn_update(t, batch, double_q=True, grad_clip=40.0)
            dqn_tf_update(f, batch, double_q=True, grad_clip=40.0)
    for name, value in t.get_weights().items():
        np.testing.assert_allclose(f.get_weights()[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert int(f.optimizer.iterations.numpy()) == 12


@pytest.mark.parametrize("name", ["actor", "critic", "alpha"])
def test_sac_tf2_optimizers_take_torchs_adam_step(name):
    """SAC's tf2 optimizers step as torch's Adam does, as PPO's and DQN's (same gradients, same lr)."""
    import gymnasium as gym
    import tensorflow as tf
    import torch

    from amber.algorithms.sac.sac_tf_policy import SACTFPolicy

    spaces = (gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-2, 2, (1,), np.float32))
    policy = SACTFPolicy(*spaces, {"model": {"fcnet_hiddens": [8]}, "seed": 0, f"{name}_lr": 3e-4})
    opt = policy.make_optimizer(name)
    start = np.linspace(-1, 1, 6).astype(np.float32)
    var, ref = tf.Variable(start), torch.nn.Parameter(torch.tensor(start))
    ref_opt = torch.optim.Adam([ref], lr=3e-4, eps=1e-8)
    grads = np.random.default_rng(0).normal(scale=1e-3, size=(12, 6)).astype(np.float32)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), var)])
        ref.grad = torch.tensor(g)
        ref_opt.step()
    np.testing.assert_allclose(var.numpy(), ref.detach().numpy(), atol=1e-7)
