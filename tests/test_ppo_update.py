"""PPO's update: the same results whichever way it is scheduled (threads, Adam on flat buffers)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import amber.algorithms.ppo.ppo_learner as learner
from amber.policy.torch_policy import TorchPolicy

KW = dict(num_epochs=2, minibatch_size=64, clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=1.0,
          entropy_coeff=0.0, kl_coeff=0.2, kl_target=0.01)


def _setup(grad_clip=None):
    config = {"model": {"fcnet_hiddens": [32, 32]}, "lr": 3e-4, "seed": 0, "grad_clip": grad_clip}
    template = TorchPolicy(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), config)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(500, 4)).astype(np.float32)
    actions, _, extra = template.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra,
             "advantages": rng.normal(size=500).astype(np.float32),
             "value_targets": (5 * rng.normal(size=500)).astype(np.float32)}
    return template.get_state(), batch


def _train(state, batch, grad_clip=None):
    policy = TorchPolicy.from_state(state)
    for it in range(2):
        learner.ppo_update(policy, batch, rng=np.random.default_rng(it), grad_clip=grad_clip, **KW)
    return policy


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_value_network_thread_or_not_gives_identical_weights(monkeypatch, grad_clip):
    """The update picks, by timing, whether the value network runs on a helper thread: the
    choice must never change the results (exact resume relies on it)."""
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # make the helper thread exist
    state, batch = _setup(grad_clip)
    results = {}
    for threaded in (True, False):
        monkeypatch.setattr(learner._ModePicker, "threaded", lambda self, t=threaded: t)
        results[threaded] = _train(state, batch, grad_clip)
    a, b = results[True], results[False]
    for name, w in a.get_weights().items():
        assert np.array_equal(w, b.get_weights()[name]), name
    assert a.num_grad_updates == b.num_grad_updates == 2 * 2 * 8


def test_the_faster_mode_is_kept():
    picker = learner._ModePicker()
    seen = []
    for _ in range(40):
        mode = picker.threaded()
        seen.append(mode)
        picker.record(mode, 0.001 if mode else 0.002)
    assert True in seen[:12] and False in seen[:12]
    assert all(seen[12:])  # threaded was faster: kept
    picker = learner._ModePicker()
    for _ in range(40):
        mode = picker.threaded()
        picker.record(mode, 0.003 if mode else 0.002)
    assert picker.threaded() is False


def test_flat_adam_and_torch_adam_train_alike(monkeypatch):
    """PPO's Adam on flat buffers follows torch's Adam (to float rounding)."""
    state, batch = _setup()
    flat = _train(state, batch)
    monkeypatch.setattr(learner, "flat_adam", lambda optimizer: None)
    plain = _train(state, batch)
    for name, w in flat.get_weights().items():
        np.testing.assert_allclose(w, plain.get_weights()[name], rtol=1e-4, atol=1e-6)
    torch_state = plain.get_state()["optimizer"]["state"]
    flat_state = flat.get_state()["optimizer"]["state"]
    assert torch_state.keys() == flat_state.keys()
    for k in torch_state:
        assert float(flat_state[k]["step"]) == float(torch_state[k]["step"]) == 32
