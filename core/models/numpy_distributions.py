"""Action distributions over ``action_dist_inputs`` in numpy (torch: :mod:`amber.models.torch_distributions`).

What serving (:mod:`amber.serve`) acts with: the greedy action, a sample
drawn from a :class:`numpy.random.Generator`, and the log-likelihood of an
action, with the maths of the torch policies' numpy fast path (so the
results agree with theirs within float rounding). Samples are not the torch
policies' draws: those come from a torch generator. Importing this module
imports numpy only.

Each class is named by what ``model.json`` calls it (``action_distribution``):
``categorical`` (logits over a Discrete space), ``diag_gaussian`` (mean and
log_std of a Box action) and ``squashed_gaussian`` (SAC: a Gaussian over
``u``, the action in ``[-1, 1]`` being ``tanh(u)``). DQN's ``q_values`` are
acted on by argmax (:func:`epsilon_greedy` when exploring).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

__all__ = [
    "DISTRIBUTIONS",
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "NumpyCategorical",
    "NumpyDiagGaussian",
    "NumpyDistribution",
    "NumpySquashedGaussian",
    "epsilon_greedy",
]

#: SAC's log_std bounds (RLlib's SquashedGaussian), as in :mod:`amber.algorithms.sac.sac_torch_policy`.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = np.float32(0.5 * math.log(2.0 * math.pi))
_LOG_2 = np.float32(math.log(2.0))


class NumpyDistribution:
    """A batch of action distributions built from ``action_dist_inputs`` ``[batch, k]`` (float32)."""

    #: The name ``model.json`` gives it (``action_distribution``).
    name: ClassVar[str] = ""

    def __init__(self, inputs: np.ndarray) -> None:
        self.inputs = np.asarray(inputs, dtype=np.float32)

    def deterministic_sample(self) -> np.ndarray:
        """The most likely action per row (argmax, or the Gaussian's mean)."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One action per row, drawn with ``rng``."""
        raise NotImplementedError

    def logp(self, actions: np.ndarray) -> np.ndarray:
        """Log-likelihood of ``actions`` (as :meth:`sample` returns them), float32 ``[batch]``."""
        raise NotImplementedError


class NumpyCategorical(NumpyDistribution):
    """Categorical over logits ``[batch, n]``; actions are indices from 0, int64 ``[batch]``."""

    name = "categorical"

    def __init__(self, inputs: np.ndarray) -> None:
        super().__init__(inputs)
        z = self.inputs - self.inputs.max(-1, keepdims=True)
        e = np.exp(z)
        total = e.sum(-1, keepdims=True)
        self.log_probs = z - np.log(total)
        self.probs = e / total

    def deterministic_sample(self) -> np.ndarray:
        """The argmax of the logits."""
        return self.inputs.argmax(-1).astype(np.int64)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Indices drawn by inverting the CDF at one uniform number per row."""
        cdf = np.cumsum(self.probs, -1)
        u = rng.random((cdf.shape[0], 1), dtype=np.float32)
        # rows whose cdf ends a rounding error below u fall back to the last category
        return np.minimum((cdf < u).sum(-1), cdf.shape[-1] - 1).astype(np.int64)

    def logp(self, actions: np.ndarray) -> np.ndarray:
        """Log-probability of integer actions (indices from 0)."""
        idx = np.asarray(actions, dtype=np.int64)
        return self.log_probs[np.arange(len(idx)), idx].astype(np.float32, copy=False)


class NumpyDiagGaussian(NumpyDistribution):
    """Diagonal Gaussian over ``[batch, 2 * d]`` = mean and log_std; actions are float32 ``[batch, d]``."""

    name = "diag_gaussian"

    def __init__(self, inputs: np.ndarray) -> None:
        super().__init__(inputs)
        self.mean, self.log_std = np.split(self.inputs, 2, axis=-1)
        self.std = np.exp(self.log_std)

    def deterministic_sample(self) -> np.ndarray:
        """The mean."""
        return self.mean.copy()

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """``mean + std * N(0, 1)``."""
        return self.mean + self.std * rng.standard_normal(self.mean.shape, dtype=np.float32)

    def logp(self, actions: np.ndarray) -> np.ndarray:
        """Sum over action dimensions of the Gaussian log-density."""
        z = (np.asarray(actions, np.float32).reshape(self.mean.shape) - self.mean) / self.std
        return (np.float32(-0.5) * np.square(z) - self.log_std - _HALF_LOG_2PI).sum(-1).astype(np.float32)


class NumpySquashedGaussian(NumpyDiagGaussian):
    """SAC's distribution: ``u ~ N(mean, exp(log_std))`` (log_std clipped to ``[LOG_STD_MIN,
    LOG_STD_MAX]``), the action in ``[-1, 1]`` being ``tanh(u)``.

    :meth:`sample` and :meth:`deterministic_sample` return ``u``; :meth:`squash` maps it into
    ``[-1, 1]``, and :meth:`logp` is the log-density of ``tanh(u)``.
    """

    name = "squashed_gaussian"

    def __init__(self, inputs: np.ndarray) -> None:
        super().__init__(inputs)
        self.log_std = np.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX)
        self.std = np.exp(self.log_std)

    @staticmethod
    def squash(u: np.ndarray) -> np.ndarray:
        """``tanh(u)``, the action in ``[-1, 1]``."""
        return np.tanh(u)

    def logp(self, actions: np.ndarray) -> np.ndarray:
        """Log-density of ``tanh(u)`` for ``u = actions``, summed over action dimensions.

        Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, finite where tanh saturates.
        """
        u = np.asarray(actions, np.float32).reshape(self.mean.shape)
        z = (u - self.mean) * np.exp(-self.log_std)
        log_det = np.float32(2.0) * (_LOG_2 - u - np.logaddexp(np.float32(0.0), np.float32(-2.0) * u))
        gauss = np.float32(-0.5) * np.square(z) - self.log_std - _HALF_LOG_2PI
        return (gauss - log_det).sum(-1).astype(np.float32)


#: The distributions by ``model.json``'s name.
DISTRIBUTIONS: dict[str, type[NumpyDistribution]] = {
    cls.name: cls for cls in (NumpyCategorical, NumpyDiagGaussian, NumpySquashedGaussian)
}


def epsilon_greedy(q_values: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """DQN's exploring actions (indices from 0, int64): per row, with probability ``epsilon``
    a uniformly random action, else the argmax of ``q_values`` ``[batch, n]``."""
    greedy = np.asarray(q_values).argmax(-1).astype(np.int64)
    n = int(q_values.shape[-1])
    u = rng.random((len(greedy), 2))
    random_actions = np.minimum((u[:, 1] * n).astype(np.int64), n - 1)
    return np.where(u[:, 0] < float(epsilon), random_actions, greedy)
