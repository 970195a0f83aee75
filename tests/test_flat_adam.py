"""FlatAdam: torch's Adam update on flat buffers, with torch's optimizer state."""

from __future__ import annotations

import copy

import pytest
import torch

from amber.models.flat_adam import FlatAdam, flat_adam
from amber.models.torch_mlp import build_mlp


def _net(seed: int = 0) -> torch.nn.Module:
    return build_mlp(4, [32, 32], "tanh", 3, generator=torch.Generator().manual_seed(seed))


def _loss(net: torch.nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 4, generator=g)
    y = torch.randn(16, 3, generator=g)
    return (net(x) - y).square().mean()


def _train_torch(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, clip: float | None) -> None:
    for step in steps:
        opt.zero_grad()
        _loss(net, step).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
        opt.step()


def _train_flat(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, clip: float | None) -> None:
    flat = FlatAdam(opt)
    for step in steps:
        flat.zero_grad()
        _loss(net, step).backward()
        if clip is not None:
            flat.clip_grad_norm_(clip)
        flat.step()


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("fused", [False, True])
def test_flat_adam_follows_torch_adam(clip, fused):
    a, b = _net(), _net()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, fused=fused)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, fused=fused)
    _train_torch(a, opt_a, range(25), clip)
    _train_flat(b, opt_b, range(25), clip)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        assert float(sb["state"][k]["step"]) == float(sa["state"][k]["step"]) == 25
        torch.testing.assert_close(sb["state"][k]["exp_avg"], sa["state"][k]["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sb["state"][k]["exp_avg_sq"], sa["state"][k]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-9)


def test_state_moves_between_torch_and_flat_steps():
    """A checkpointed optimizer state goes on the same whichever of the two steps it next."""
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    _train_torch(net, opt, range(5), None)
    saved_net, saved_opt = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    _train_flat(net, opt, range(5, 15), None)  # picks up torch's moments and step count
    flat_result = [p.detach().clone() for p in net.parameters()]
    flat_state = copy.deepcopy(opt.state_dict())

    again = _net(seed=1)
    again.load_state_dict(saved_net)
    opt2 = torch.optim.Adam(again.parameters(), lr=1e-2)
    opt2.load_state_dict(saved_opt)
    _train_torch(again, opt2, range(5, 15), None)
    for p, q in zip(flat_result, again.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # and FlatAdam's state loads into a plain Adam
    opt3 = torch.optim.Adam(_net().parameters(), lr=1e-2)
    opt3.load_state_dict(flat_state)
    assert float(opt3.state_dict()["state"][0]["step"]) == 15


def test_flat_adam_is_deterministic():
    results = []
    for _ in range(2):
        net = _net()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        _train_flat(net, opt, range(10), 0.1)
        results.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    assert torch.equal(results[0], results[1])


def test_gradients_held_elsewhere_are_still_used():
    """When something keeps a reference to a gradient, autograd replaces it; the step still sees it."""
    a, b = _net(), _net()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    _train_torch(a, opt_a, range(3), None)
    flat = FlatAdam(opt_b)
    for step in range(3):
        flat.zero_grad()
        held = [p.grad for p in b.parameters()]  # keeps the views alive: autograd won't add in place
        _loss(b, step).backward()
        flat.step()
        del held
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.1),
    lambda ps: torch.optim.SGD(ps, lr=1e-3),
    lambda ps: torch.optim.AdamW(ps, lr=1e-3),
])
def test_other_optimizers_are_left_to_torch(make):
    opt = make(_net().parameters())
    assert flat_adam(opt) is None
    with pytest.raises(ValueError, match="FlatAdam"):
        FlatAdam(opt)
