"""Action distributions over ``action_dist_inputs`` (RLlib's torch action distributions).

Sampling always takes an explicit :class:`torch.Generator`, never the global
RNG, so that a policy's sampling is part of its saved state.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["TorchCategorical", "TorchDiagGaussian", "TorchDistribution", "dist_class_for"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class TorchDistribution:
    """A batch of action distributions built from ``action_dist_inputs``."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs = inputs

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample per batch row, drawn with ``generator``."""
        raise NotImplementedError

    def deterministic_sample(self) -> torch.Tensor:
        """The most likely action per batch row (argmax or mean)."""
        raise NotImplementedError

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of ``actions``, ``[batch]``."""
        raise NotImplementedError

    def entropy(self) -> torch.Tensor:
        """Entropy, ``[batch]``."""
        raise NotImplementedError

    def kl(self, other: TorchDistribution) -> torch.Tensor:
        """``KL(self || other)``, ``[batch]``."""
        raise NotImplementedError


class TorchCategorical(TorchDistribution):
    """Categorical over logits ``[batch, n]``; actions are indices ``[batch]``."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__(inputs)
        self.log_probs = torch.log_softmax(inputs, dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample indices (int64), by inverting the CDF at one uniform draw per row."""
        cdf = self.log_probs.exp().cumsum(-1)
        u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype)
        # rows whose cdf ends a rounding error below u fall back to the last category
        return (cdf < u).sum(-1).clamp_(max=cdf.shape[-1] - 1)

    def deterministic_sample(self) -> torch.Tensor:
        """The argmax of the logits (int64)."""
        return self.inputs.argmax(dim=-1)

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability of integer ``actions``."""
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        """``-sum p log p``."""
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def kl(self, other: TorchDistribution) -> torch.Tensor:
        """``sum p (log p - log q)``."""
        assert isinstance(other, TorchCategorical)
        return (self.log_probs.exp() * (self.log_probs - other.log_probs)).sum(-1)


class TorchDiagGaussian(TorchDistribution):
    """Diagonal Gaussian over ``[batch, 2 * d]`` = mean and log_std; actions are ``[batch, d]``."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__(inputs)
        self.mean, self.log_std = torch.chunk(inputs, 2, dim=-1)
        self.std = self.log_std.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * N(0, 1)`` with noise from ``generator``."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def deterministic_sample(self) -> torch.Tensor:
        """The mean."""
        return self.mean

    def logp(self, actions: torch.Tensor) -> torch.Tensor:
        """Sum over action dimensions of the Gaussian log-density."""
        actions = actions.reshape(self.mean.shape)
        z = (actions - self.mean) / self.std
        return (-0.5 * z.square() - self.log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """``sum (log_std + 0.5 log(2 pi e))``."""
        return (self.log_std + (_HALF_LOG_2PI + 0.5)).sum(-1)

    def kl(self, other: TorchDistribution) -> torch.Tensor:
        """Closed-form KL between diagonal Gaussians."""
        assert isinstance(other, TorchDiagGaussian)
        var_ratio_num = self.std.square() + (self.mean - other.mean).square()
        return (other.log_std - self.log_std + var_ratio_num / (2.0 * other.std.square()) - 0.5).sum(-1)


def dist_class_for(action_space: Any) -> type[TorchDistribution]:
    """The distribution class for a Discrete or Box action space.

    :raises ValueError: other spaces.
    """
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return TorchCategorical
    if isinstance(action_space, gym.spaces.Box):
        return TorchDiagGaussian
    raise ValueError(f"action spaces of type {type(action_space).__name__} are not supported")
