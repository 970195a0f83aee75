"""PPO's update: the same results whichever way it is scheduled (plain or overlapped step, threads,
Adam on flat buffers), and the loss against a hand computation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import amber.algorithms.ppo.ppo_learner as learner
import amber.algorithms.ppo.ppo_steps as steps
from amber.algorithms.ppo.ppo_loss import Minibatch, PPOCoefficients, ppo_loss
from amber.models.torch_distributions import TorchCategorical
from amber.policy.torch_policy import TorchPolicy

KW = dict(num_epochs=2, minibatch_size=64, clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=1.0,
          entropy_coeff=0.0, kl_coeff=0.2, kl_target=0.01)
CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def _setup(grad_clip=None, action_space=None):
    config = {"model": {"fcnet_hiddens": [32, 32]}, "lr": 3e-4, "seed": 0, "grad_clip": grad_clip}
    template = TorchPolicy(CARTPOLE_OBS, action_space or gym.spaces.Discrete(2), config)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(500, 4)).astype(np.float32)
    actions, _, extra = template.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra,
             "advantages": rng.normal(size=500).astype(np.float32),
             "value_targets": (5 * rng.normal(size=500)).astype(np.float32)}
    return template.get_state(), batch


def _train(state, batch, grad_clip=None, **kw):
    policy = TorchPolicy.from_state(state)
    stats = [learner.ppo_update(policy, batch, rng=np.random.default_rng(it), grad_clip=grad_clip, **{**KW, **kw})
             for it in range(2)]
    return policy, stats


def _assert_identical(a, b):
    for name, w in a.get_weights().items():
        assert np.array_equal(w, b.get_weights()[name]), name
    for (ka, va), (kb, vb) in zip(a.get_state()["optimizer"]["state"].items(),
                                  b.get_state()["optimizer"]["state"].items(), strict=True):
        assert ka == kb and all(np.array_equal(va[k], vb[k]) for k in va), ka


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_value_network_thread_or_not_gives_identical_weights(monkeypatch, grad_clip):
    """The update picks, by timing, whether the value network runs on a helper thread: the
    choice must never change the results (exact resume relies on it)."""
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # make the helper thread exist
    state, batch = _setup(grad_clip)
    results = {}
    for threaded in (True, False):
        monkeypatch.setattr(steps._ModePicker, "threaded", lambda self, t=threaded: t)
        results[threaded] = _train(state, batch, grad_clip)
    (a, stats_a), (b, stats_b) = results[True], results[False]
    _assert_identical(a, b)
    assert stats_a == stats_b
    assert a.num_grad_updates == b.num_grad_updates == 2 * 2 * 8


@pytest.mark.parametrize("grad_clip", [None, 0.5])
@pytest.mark.parametrize("entropy_coeff", [0.0, 0.01])
@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_overlapped_and_plain_steps_are_bit_identical(monkeypatch, grad_clip, entropy_coeff, threaded,
                                                      action_space):
    """``overlap=False`` (one backward pass of ppo_loss, one Adam step) turns every speedup off
    and gives the same bits: weights, Adam moments and stats."""
    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(steps._ModePicker, "threaded", lambda self: threaded)
    state, batch = _setup(grad_clip, action_space)
    fast, fast_stats = _train(state, batch, grad_clip, entropy_coeff=entropy_coeff)
    plain, plain_stats = _train(state, batch, grad_clip, entropy_coeff=entropy_coeff, overlap=False)
    _assert_identical(fast, plain)
    assert fast_stats == plain_stats


def test_the_faster_mode_is_kept():
    picker = steps._ModePicker()
    seen = []
    for _ in range(40):
        mode = picker.threaded()
        seen.append(mode)
        picker.record(mode, 0.001 if mode else 0.002)
    assert True in seen[:12] and False in seen[:12]
    assert all(seen[12:])  # threaded was faster: kept
    picker = steps._ModePicker()
    for _ in range(40):
        mode = picker.threaded()
        picker.record(mode, 0.003 if mode else 0.002)
    assert picker.threaded() is False


@pytest.mark.parametrize("overlap", [True, False])
def test_flat_adam_and_torch_adam_train_alike(monkeypatch, overlap):
    """PPO's Adam on flat buffers follows torch's Adam (to float rounding)."""
    state, batch = _setup()
    flat, _ = _train(state, batch, overlap=overlap)
    monkeypatch.setattr(steps, "flat_adam", lambda optimizer: None)
    plain, _ = _train(state, batch, overlap=overlap)
    for name, w in flat.get_weights().items():
        np.testing.assert_allclose(w, plain.get_weights()[name], rtol=1e-4, atol=1e-6)
    torch_state = plain.get_state()["optimizer"]["state"]
    flat_state = flat.get_state()["optimizer"]["state"]
    assert torch_state.keys() == flat_state.keys()
    for k in torch_state:
        assert float(flat_state[k]["step"]) == float(torch_state[k]["step"]) == 32


def test_ppo_loss_against_hand_computation():
    """CleanRL's formulas, written out for a Categorical policy (RLlib's clipped value loss)."""
    g = torch.Generator().manual_seed(0)
    logits, old_logits = torch.randn(6, 3, generator=g).requires_grad_(), torch.randn(6, 3, generator=g)
    vf, targets = torch.randn(6, generator=g), 3 * torch.randn(6, generator=g)
    actions, adv = torch.tensor([0, 1, 2, 2, 1, 0]), torch.randn(6, generator=g)
    old_logp = torch.log_softmax(old_logits, -1)[torch.arange(6), actions]
    mb = Minibatch(torch.zeros(6, 4), actions, old_logp, old_logits, adv, targets)
    c = PPOCoefficients(clip_param=0.2, vf_clip_param=4.0, vf_loss_coeff=0.5, entropy_coeff=0.01, kl_coeff=0.3)
    loss = ppo_loss(TorchCategorical, logits, vf, mb, c)

    p, q = torch.softmax(logits.detach(), -1), torch.softmax(old_logits, -1)
    ratio = p[torch.arange(6), actions] / q[torch.arange(6), actions]
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    v = ((vf - targets) ** 2).clamp(max=4.0).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    kl = (q * (q.log() - p.log())).sum(-1).mean()
    for got, want in [(loss.policy_loss, pg), (loss.vf_loss, v), (loss.entropy, entropy), (loss.kl, kl),
                      (loss.total, pg - 0.01 * entropy + 0.3 * kl + 0.5 * v)]:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    off = ppo_loss(TorchCategorical, logits, vf, mb, PPOCoefficients(0.2, 4.0, 0.5, 0.0, 0.0))
    torch.testing.assert_close(off.total, pg + 0.5 * v, rtol=1e-5, atol=1e-6)  # zero coefficients: stats only
    assert loss.entropy.requires_grad and loss.kl.requires_grad
    assert not off.entropy.requires_grad and not off.kl.requires_grad
