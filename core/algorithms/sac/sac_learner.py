"""SAC's learner: one gradient update of critics, actor and temperature, then the Polyak step.

The losses are RLlib's (old API stack) SAC losses, all from one replayed
batch and the networks as they are before the update:

* critics: ``0.5 * mean((Q_i(s, a) - y)^2)`` for each critic, with
  ``y = r + gamma * (1 - terminated) * (min_i Q_i_target(s', a') - alpha * logp(a'|s'))``
  and ``a'`` sampled from the actor at ``s'`` (truncation bootstraps: only
  termination cuts the return);
* actor: ``mean(alpha * logp(a~|s) - min_i Q_i(s, a~))`` with ``a~`` sampled
  from the actor by reparameterization (the critics' weights get no gradient from it);
* temperature: ``-mean(log_alpha * (logp(a~|s) + target_entropy))``.

The three losses touch disjoint parameters, so one backward pass over their
sum gives each its own gradients; then each of the three Adam optimizers
steps, and every target critic moves toward its critic:
``target = (1 - tau) * target + tau * critic``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from amber.algorithms.sac.sac_common import LOG_STD_MAX, LOG_STD_MIN, STAT_NAMES
from amber.algorithms.sac.sac_torch_policy import squashed_logp
from amber.models.torch_mlp import linear_layers, train_forward
from amber.policy import sample_batch as sb
from amber.policy.torch_utils import intra_op_threads
from amber.snapshots import wait_for_snapshot

if TYPE_CHECKING:
    from amber.algorithms.sac.sac_torch_policy import SACTorchPolicy

__all__ = ["STAT_NAMES", "polyak_update", "sac_update"]

_Layers = list[tuple[torch.Tensor, torch.Tensor, "str | None"]]


def _frozen_forward(layers: _Layers, x: torch.Tensor) -> torch.Tensor:
    """An MLP with its weights detached: gradients reach ``x`` only, never the weights."""
    h = x
    for weight, bias, activation in layers:
        h = nn.functional.linear(h, weight.detach(), bias.detach())
        if activation == "relu":
            h = h.relu()
        elif activation == "tanh":
            h = h.tanh()
    return h


def _layers(net: nn.Module) -> _Layers | None:
    """``[(weight, bias, activation after it)]`` of a plain Linear/ReLU/Tanh Sequential, else None."""
    found = linear_layers(net)
    return None if found is None else [(linear.weight, linear.bias, act) for linear, act in found]


def _sample(net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterized actions in ``[-1, 1]`` and their log-densities from the actor at features ``x``."""
    mean, log_std = train_forward(net, x).chunk(2, dim=-1)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    u = mean + log_std.exp() * noise
    return torch.tanh(u), squashed_logp(u, mean, log_std)


def polyak_update(targets: list[nn.Module], sources: list[nn.Module], tau: float) -> None:
    """``target = (1 - tau) * target + tau * source`` for every parameter, in place."""
    t: list[torch.Tensor] = [p for m in targets for p in m.parameters()]
    s: list[torch.Tensor] = [p for m in sources for p in m.parameters()]
    wait_for_snapshot()
    with torch.no_grad():
        torch._foreach_lerp_(t, s, float(tau))


class _Parts:
    """What an update needs from a policy's model, gathered once (the modules never change)."""

    def __init__(self, policy: SACTorchPolicy) -> None:
        model = policy.model
        self.model = model
        self.critics, self.targets = model.critics, model.target_critics
        self.critic_params: list[torch.Tensor] = [p for q in self.critics for p in q.parameters()]
        self.target_params: list[torch.Tensor] = [p for q in self.targets for p in q.parameters()]
        self.actor_params: list[torch.Tensor] = list(model.pi.parameters())
        self.all_params = [*self.actor_params, *self.critic_params, model.log_alpha]
        frozen = [_layers(q) for q in self.critics]
        self.frozen: list[_Layers] | None = [f for f in frozen if f is not None]
        if len(self.frozen) != len(frozen):
            self.frozen = None


def _parts(policy: SACTorchPolicy) -> _Parts:
    parts = policy.learner_parts
    if not isinstance(parts, _Parts) or parts.model is not policy.model:
        parts = policy.learner_parts = _Parts(policy)
    return parts


def _frozen_q(parts: _Parts, i: int, xa: torch.Tensor) -> torch.Tensor:
    if parts.frozen is not None:
        return _frozen_forward(parts.frozen[i], xa)
    critic = parts.critics[i]
    critic.requires_grad_(False)
    try:
        return critic(xa)
    finally:
        critic.requires_grad_(True)


def _critic_target(policy: SACTorchPolicy, parts: _Parts, batch: dict[str, np.ndarray],
                   alpha: torch.Tensor) -> torch.Tensor:
    """``y = r + gamma * (1 - terminated) * (min_i Q_i_target(s', a') - alpha * logp(a'|s'))``,
    ``a'`` sampled from the actor at ``s'`` (one draw from the learner generator)."""
    gamma = float(policy.config.get("gamma", 0.99))
    rewards = torch.from_numpy(np.asarray(batch[sb.REWARDS], dtype=np.float32).copy())
    alive = 1.0 - torch.from_numpy(np.asarray(batch[sb.TERMINATEDS], dtype=np.float32).copy())
    with torch.no_grad():
        x_next = parts.model.preprocessor(policy.obs_to_tensor(batch[sb.NEW_OBS]))
        next_actions, next_logp = _sample(parts.model.pi, x_next, policy.learner_generator)
        xa_next = torch.cat([x_next, next_actions], dim=-1)
        q_next = train_forward(parts.targets[0], xa_next)
        for target in parts.targets[1:]:
            q_next = torch.minimum(q_next, train_forward(target, xa_next))
        return rewards + gamma * alive * (q_next.squeeze(-1) - alpha * next_logp)


def _critic_loss(parts: _Parts, xa: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``sum_i 0.5 * mean((Q_i(s, a) - y)^2)`` and the critics' ``Q_i(s, a)``."""
    qs = [train_forward(q, xa).squeeze(-1) for q in parts.critics]
    critic_loss = 0.5 * (qs[0] - y).square().mean()
    for q in qs[1:]:
        critic_loss = critic_loss + 0.5 * (q - y).square().mean()
    return critic_loss, qs


def _actor_losses(policy: SACTorchPolicy, parts: _Parts, x: torch.Tensor, alpha: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(actor_loss, alpha_loss, logp)`` from actions ``a~`` reparameterized at ``s`` (one draw)."""
    new_actions, logp = _sample(parts.model.pi, x, policy.learner_generator)
    xa_new = torch.cat([x, new_actions], dim=-1)
    q_new = _frozen_q(parts, 0, xa_new)
    for i in range(1, len(parts.critics)):
        q_new = torch.minimum(q_new, _frozen_q(parts, i, xa_new))
    actor_loss = (alpha * logp - q_new.squeeze(-1)).mean()
    alpha_loss = -(parts.model.log_alpha * (logp.detach() + policy.target_entropy)).mean()
    return actor_loss, alpha_loss, logp


def _apply_gradients(parts: _Parts, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer],
                     grad_clip: float | None, tau: float) -> None:
    """One backward pass of the summed losses, clipping per network, each Adam step, then Polyak."""
    for p in parts.all_params:
        p.grad = None
    loss.backward()
    if grad_clip is not None:
        for params in (parts.critic_params, parts.actor_params):
            torch.nn.utils.clip_grad_norm_(params, float(grad_clip), foreach=True)
    for opt in optimizers:  # each step waits for a background save's copy (a pre-step hook)
        opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(parts.target_params, parts.critic_params, tau)


def sac_update(policy: SACTorchPolicy, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """One SAC update of ``policy`` from a replayed batch (its hyperparameters from ``policy.config``).

    :param batch: columns ``obs``, ``actions`` (env actions), ``rewards``,
        ``new_obs`` and ``terminateds``, one row per transition.
    :return: learner stats (:data:`STAT_NAMES`, from this update) and ``num_grad_updates``.
    """
    parts = _parts(policy)
    model = parts.model
    optimizers = [policy.get_optimizer(n) for n in ("critic", "actor", "alpha")]
    obs = policy.obs_to_tensor(batch[sb.OBS])
    actions = policy.normalized_actions(batch[sb.ACTIONS])
    with intra_op_threads(1):
        x = model.preprocessor(obs)
        log_alpha = model.log_alpha
        alpha = log_alpha.detach().exp()
        y = _critic_target(policy, parts, batch, alpha)
        critic_loss, qs = _critic_loss(parts, torch.cat([x, actions], dim=-1), y)
        actor_loss, alpha_loss, logp = _actor_losses(policy, parts, x, alpha)
        _apply_gradients(parts, critic_loss + actor_loss + alpha_loss, optimizers,
                         policy.config.get("grad_clip"), float(policy.config.get("tau", 5e-3)))
        with torch.no_grad():
            q_all = qs[0].detach()
            stats = torch.stack([
                critic_loss.detach(), actor_loss.detach(), alpha_loss.detach(), alpha,
                log_alpha.detach(), q_all.mean(), q_all.max(), q_all.min(), -logp.detach().mean(),
            ]).tolist()
    policy.num_grad_updates += 1
    result: dict[str, Any] = dict(zip(STAT_NAMES, stats, strict=True))
    result["target_entropy"] = policy.target_entropy
    result["num_grad_updates"] = policy.num_grad_updates
    return result
