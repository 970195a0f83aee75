"""PPO's loss, as pure functions of the networks' outputs (CleanRL's ``ppo.py``, RLlib's terms).

RLlib's (old API stack) PPO loss on one minibatch::

    ratio       = exp(logp_new(a) - logp_old(a))
    policy_loss = -mean(min(A * ratio, A * clip(ratio, 1 - clip_param, 1 + clip_param)))
    vf_loss     = mean(clip((V(s) - value_target)^2, 0, vf_clip_param))
    total       = policy_loss - entropy_coeff * entropy + kl_coeff * KL(old || new) + vf_loss_coeff * vf_loss

with the advantages ``A`` standardized over the whole batch. The policy and
value parts touch disjoint networks: :func:`ppo_loss` adds them, and the
overlapped step (:mod:`amber.algorithms.ppo.ppo_steps`) runs each part's backward
pass on its own thread; the gradients are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from amber.models.torch_distributions import TorchDistribution

__all__ = ["Minibatch", "PPOCoefficients", "PPOLoss", "ppo_loss", "ppo_policy_loss", "ppo_value_loss"]


@dataclass(frozen=True)
class PPOCoefficients:
    """The PPO loss's settings (RLlib's names)."""

    clip_param: float
    """The surrogate's clip range: probability ratios count within ``[1 - clip_param, 1 + clip_param]``."""
    vf_clip_param: float
    """The squared value error of each sample is clipped to ``[0, vf_clip_param]``."""
    vf_loss_coeff: float
    """The value loss's weight in the total."""
    entropy_coeff: float
    """The entropy bonus's weight (0: the entropy is only reported, it gets no gradient)."""
    kl_coeff: float
    """The KL penalty's weight, adapted between updates (0: the KL is only reported)."""


class Minibatch(NamedTuple):
    """One minibatch's columns as tensors."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_logp: torch.Tensor
    old_dist_inputs: torch.Tensor
    advantages: torch.Tensor
    value_targets: torch.Tensor


class PPOLoss(NamedTuple):
    """The loss to minimise (``total``) and its terms."""

    total: torch.Tensor
    policy_loss: torch.Tensor
    vf_loss: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor


def ppo_policy_loss(dist_class: type[TorchDistribution], dist_inputs: torch.Tensor, mb: Minibatch,
                    c: PPOCoefficients) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy network's part of the loss.

    :param dist_inputs: the policy network's outputs on ``mb.obs``.
    :return: ``(loss, policy_loss, entropy, kl)``: ``loss`` is the clipped surrogate's
        ``policy_loss``, minus the entropy bonus, plus the KL penalty.
    """
    dist = dist_class(dist_inputs)
    ratio = torch.exp(dist.logp(mb.actions) - mb.old_logp)
    clipped = ratio.clamp(1.0 - c.clip_param, 1.0 + c.clip_param)
    policy_loss = -torch.min(mb.advantages * ratio, mb.advantages * clipped).mean()
    with torch.set_grad_enabled(c.entropy_coeff != 0.0):  # a coefficient of 0: only a stat
        entropy = dist.entropy().mean()
    with torch.set_grad_enabled(c.kl_coeff > 0.0):
        kl = dist_class(mb.old_dist_inputs).kl(dist).mean()
    loss = policy_loss
    if c.entropy_coeff != 0.0:
        loss = loss - c.entropy_coeff * entropy
    if c.kl_coeff > 0.0:
        loss = loss + c.kl_coeff * kl
    return loss, policy_loss, entropy, kl


def ppo_value_loss(vf_preds: torch.Tensor, value_targets: torch.Tensor, vf_clip_param: float) -> torch.Tensor:
    """The value network's loss: ``mean(clip((V(s) - value_target)^2, 0, vf_clip_param))``."""
    return (vf_preds - value_targets).square().clamp(0.0, vf_clip_param).mean()


def ppo_loss(dist_class: type[TorchDistribution], dist_inputs: torch.Tensor, vf_preds: torch.Tensor,
             mb: Minibatch, c: PPOCoefficients) -> PPOLoss:
    """PPO's loss on one minibatch, from the networks' outputs on ``mb.obs``.

    ``total = policy_loss - entropy_coeff * entropy + kl_coeff * kl + vf_loss_coeff * vf_loss``;
    a term whose coefficient is 0 is left out of ``total`` (and only reported).

    :param dist_inputs: the policy network's outputs.
    :param vf_preds: the value network's, ``[batch]``.
    """
    pi_loss, policy_loss, entropy, kl = ppo_policy_loss(dist_class, dist_inputs, mb, c)
    vf_loss = ppo_value_loss(vf_preds, mb.value_targets, c.vf_clip_param)
    return PPOLoss(pi_loss + c.vf_loss_coeff * vf_loss, policy_loss, vf_loss, kl, entropy)
