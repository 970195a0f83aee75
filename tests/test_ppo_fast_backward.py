"""PPO's fused step (hand-written gradients, no autograd) against autograd, and where it applies."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import amber.algorithms.ppo.ppo_learner as learner
from amber.algorithms.ppo.ppo_fused import FusedStep, categorical_head, gaussian_head, value_head
from amber.algorithms.ppo.ppo_loss import Minibatch, PPOCoefficients, ppo_loss
from amber.algorithms.ppo.ppo_steps import Adam
from amber.models.mlp_backward import MLPPass
from amber.models.torch_distributions import TorchCategorical, TorchDiagGaussian
from amber.models.torch_mlp import build_mlp, linear_layers, train_forward
from amber.policy.torch_policy import TorchPolicy

OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
SPACES = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
# entropy and KL terms on and off; a tight value clip so that some samples are clipped
COEFFS = [PPOCoefficients(0.2, 4.0, 1.0, 0.0, 0.2), PPOCoefficients(0.1, 1.0, 0.5, 0.01, 0.0),
          PPOCoefficients(0.3, 10.0, 1.0, 0.05, 0.5)]


def _minibatch(dist_class, out_dim, n, dtype, seed):
    """A random minibatch whose old distribution is near the network's, so ratios fall on both sides
    of the clip range."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 4, generator=g, dtype=dtype)
    old = 0.3 * torch.randn(n, out_dim, generator=g, dtype=dtype)
    if dist_class is TorchCategorical:
        actions = torch.randint(0, out_dim, (n,), generator=g)
    else:
        actions = torch.randn(n, out_dim // 2, generator=g, dtype=dtype)
    old_logp = dist_class(old).logp(actions)
    return Minibatch(obs, actions, old_logp, old, torch.randn(n, generator=g, dtype=dtype),
                     3.0 * torch.randn(n, generator=g, dtype=dtype))


def _autograd(pi, vf, dist_class, mb, c, forward):
    for p in [*pi.parameters(), *vf.parameters()]:
        p.grad = None
    v = forward(vf, mb.obs).squeeze(-1)
    loss = ppo_loss(dist_class, forward(pi, mb.obs), v, mb, c)
    loss.total.backward()
    return [p.grad.clone() for p in [*pi.parameters(), *vf.parameters()]], loss


@pytest.mark.parametrize("activation", ["tanh", "relu", None])
@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("coeffs", range(len(COEFFS)))
def test_fused_gradients_equal_autograd_in_float64(space, coeffs, activation):
    """The closed-form heads and the hand-written backward pass are autograd's gradient, exactly up
    to float64 rounding (the tanh here is 2 sigmoid(2x) - 1, as train_forward's)."""
    c = COEFFS[coeffs]
    dist_class = TorchCategorical if space == "discrete" else TorchDiagGaussian
    out_dim = 3 if space == "discrete" else 4
    gen = torch.Generator().manual_seed(coeffs)
    pi = build_mlp(4, [32, 16], activation, out_dim, out_gain=0.5, generator=gen).double()
    vf = build_mlp(4, [32, 16], activation, 1, generator=gen).double()
    mb = _minibatch(dist_class, out_dim, 57, torch.float64, seed=coeffs)
    expected, loss = _autograd(pi, vf, dist_class, mb, c, train_forward)

    grads = [torch.full_like(p, float("nan")) for p in [*pi.parameters(), *vf.parameters()]]
    split = len(list(pi.parameters()))
    passes = [MLPPass(linear_layers(net), list(zip(gs[::2], gs[1::2], strict=True)), 64)
              for net, gs in ((pi, grads[:split]), (vf, grads[split:]))]
    head = categorical_head if space == "discrete" else gaussian_head
    g_pi, (pi_loss, policy_loss, entropy, kl) = head(passes[0].forward(mb.obs), mb, c)
    passes[0].backward(g_pi)
    g_vf, vf_loss = value_head(passes[1].forward(mb.obs), mb.value_targets, c)
    passes[1].backward(g_vf)

    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in [(policy_loss, loss.policy_loss), (vf_loss, loss.vf_loss), (entropy, loss.entropy),
                      (kl, loss.kl), (pi_loss + c.vf_loss_coeff * vf_loss, loss.total)]:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _policy(space, seed=0, grad_clip=None, hiddens=(256, 256), obs_space=OBS, activation="tanh"):
    config = {"model": {"fcnet_hiddens": list(hiddens), "fcnet_activation": activation}, "lr": 3e-4,
              "seed": seed, "grad_clip": grad_clip}
    return TorchPolicy(obs_space, SPACES[space], config)


def _relative_errors(got, want):
    return [float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(got, want, strict=True)]


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("coeffs", range(len(COEFFS)))
def test_fused_step_gradients_equal_autograd_in_float32(space, coeffs):
    """On PPO's own networks ([256, 256] tanh, float32, flat Adam) the fused step's gradients are
    autograd's to about 1e-6 relative (each tensor's error norm over its norm), on random minibatches."""
    c = COEFFS[coeffs]
    for seed in range(3):
        policy = _policy(space, seed)
        ref = TorchPolicy.from_state(policy.get_state())
        out_dim = policy.model.pi[-1].out_features
        mb = _minibatch(policy.dist_class, out_dim, 128, torch.float32, seed=seed + 10 * coeffs)
        adam = Adam(policy.optimizer, None)
        with FusedStep.build(policy, adam, 128) as step:
            loss, vf = step(policy, adam, mb, c)
        got = [adam.flat.grad_view(p).clone() for p in adam.flat.params]
        names = [n for n, _ in policy.model.named_parameters()]
        assert names == [n for n, _ in ref.model.named_parameters()]
        want, ref_loss = _autograd(ref.model.pi, ref.model.vf, ref.dist_class, mb, c, train_forward)
        errors = _relative_errors(got, want)
        assert max(errors) < 1e-6, dict(zip(names, errors, strict=True))
        for a, b in zip(loss, ref_loss, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(("grad_clip", "discrete_obs", "activation"),
                         [(None, False, "tanh"), (0.5, False, "tanh"), (None, True, "relu")])
def test_fused_and_autograd_updates_train_alike(space, grad_clip, discrete_obs, activation):
    """Whole updates (several epochs, Adam steps, gradient clipping, one-hot observations) stay within
    float rounding of the autograd steps', and the stats agree."""
    obs_space = gym.spaces.Discrete(5) if discrete_obs else OBS
    policy = _policy(space, grad_clip=grad_clip, hiddens=(64, 64), obs_space=obs_space, activation=activation)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 5, size=300) if discrete_obs else rng.normal(size=(300, 4)).astype(np.float32)
    actions, _, extra = policy.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra, "advantages": rng.normal(size=300).astype(np.float32),
             "value_targets": (5 * rng.normal(size=300)).astype(np.float32)}
    kw = dict(num_epochs=3, minibatch_size=64, clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=1.0,
              entropy_coeff=0.01, kl_coeff=0.2, kl_target=0.01, grad_clip=grad_clip)
    fused, plain = TorchPolicy.from_state(policy.get_state()), TorchPolicy.from_state(policy.get_state())
    probe = TorchPolicy.from_state(policy.get_state())
    with FusedStep.build(probe, Adam(probe.optimizer, grad_clip), 64) as step:  # the fused step runs
        assert step is not None
    stats_f = learner.ppo_update(fused, batch, rng=np.random.default_rng(1), **kw)
    stats_p = learner.ppo_update(plain, batch, rng=np.random.default_rng(1), fused=False, **kw)
    for name, w in plain.get_weights().items():
        np.testing.assert_allclose(fused.get_weights()[name], w, rtol=1e-4, atol=1e-6)
    for key in ("total_loss", "policy_loss", "vf_loss", "kl", "entropy", "vf_explained_var"):
        assert stats_f[key] == pytest.approx(stats_p[key], rel=1e-3, abs=1e-5), key
    assert stats_f["num_grad_updates"] == stats_p["num_grad_updates"] == 3 * 5


def test_fused_step_applies_only_where_it_computes_the_same_thing():
    policy = _policy("discrete", hiddens=(8,))
    with FusedStep.build(policy, Adam(policy.optimizer, None), 16) as step:
        assert step is not None
    hooked = _policy("discrete", hiddens=(8,))
    hooked.model.vf.register_forward_hook(lambda module, inputs, output: None)
    assert FusedStep.build(hooked, Adam(hooked.optimizer, None), 16) is None  # hooks: autograd runs them
    torch_adam = _policy("discrete", hiddens=(8,))
    adam = Adam(torch_adam.optimizer, None)
    adam.flat = None  # torch's own Adam: no flat gradient buffer to write into
    assert FusedStep.build(torch_adam, adam, 16) is None
    tensor_hook = _policy("discrete", hiddens=(8,))
    tensor_hook.model.pi[0].weight.register_hook(lambda grad: grad * 2.0)
    assert FusedStep.build(tensor_hook, Adam(tensor_hook.optimizer, None), 16) is None


def test_flat_adam_steps_as_torch_fused_adam_whole_or_in_parts():
    """FlatAdam runs torch's fused Adam kernel: the same bits as ``torch.optim.Adam(fused=True)``
    (what policies make), whether the whole buffer or each network's span is stepped."""
    from amber.models.flat_adam import FlatAdam

    def make():
        net = torch.nn.Sequential(torch.nn.Linear(4, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
        torch.nn.init.normal_(net[0].weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.normal_(net[2].weight, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            net[0].bias.fill_(0.1)
            net[2].bias.fill_(-0.1)
        return net, torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    (ref, ref_opt), (whole, whole_opt), (parts, parts_opt) = make(), make(), make()
    whole_flat, parts_flat = FlatAdam(whole_opt), FlatAdam(parts_opt)
    spans = parts_flat.span(list(parts[0].parameters())), parts_flat.span(list(parts[2].parameters()))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    for _ in range(7):
        ref_opt.zero_grad()
        ref(x).square().sum().backward()
        ref_opt.step()
        whole_flat.zero_grad()
        whole(x).square().sum().backward()
        whole_flat.step()
        parts_flat.zero_grad()
        parts(x).square().sum().backward()
        coefficients = parts_flat.begin_step()
        for span in reversed(spans):
            parts_flat.apply(coefficients, span)
    for a, b, c in zip(ref.parameters(), whole.parameters(), parts.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_fused_update_with_a_helper_thread_leaves_no_thread_behind(monkeypatch):
    """The fused step's helper thread (the value network's) is started only when used and stopped
    when the update ends, error or not."""
    import threading

    import amber.algorithms.ppo.ppo_steps as steps

    if torch.get_num_threads() < 2:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(steps._ModePicker, "threaded", lambda self: True)
    policy = _policy("discrete", hiddens=(16,))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(100, 4)).astype(np.float32)
    actions, _, extra = policy.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra, "advantages": rng.normal(size=100).astype(np.float32),
             "value_targets": rng.normal(size=100).astype(np.float32)}
    kw = dict(num_epochs=2, minibatch_size=32, clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=1.0,
              entropy_coeff=0.0, kl_coeff=0.2, kl_target=0.01, grad_clip=None)
    learner.ppo_update(policy, batch, rng=np.random.default_rng(0), **kw)
    assert not any(t.name == "amber-ppo-value" for t in threading.enumerate())
    with pytest.raises(TypeError):  # raised in the value network's step, on the helper thread
        learner.ppo_update(policy, batch, rng=np.random.default_rng(0), **{**kw, "vf_clip_param": "x"})
    assert not any(t.name == "amber-ppo-value" for t in threading.enumerate())


def test_the_thread_choice_is_tried_again_as_the_load_changes():
    """The value-thread choice is re-measured every RECHECK minibatches, so an update that began on a
    busy machine uses the second core once it is free (either way the results are identical)."""
    import amber.algorithms.ppo.ppo_steps as steps

    picker = steps._ModePicker()
    for _ in range(2 * picker.TRIALS):  # inline is faster at first
        mode = picker.threaded()
        picker.record(mode, 0.001 if not mode else 0.002)
    assert picker.threaded() is False
    for _ in range(picker.RECHECK):  # then the other core frees up
        mode = picker.threaded()
        picker.record(mode, 0.001 if mode else 0.002)
    seen = []
    for _ in range(3 * picker.TRIALS):
        mode = picker.threaded()
        seen.append(mode)
        picker.record(mode, 0.001 if mode else 0.002)
    assert picker.threaded() is True and False in seen
