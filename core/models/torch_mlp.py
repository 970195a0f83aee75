"""Fully connected torch models built from RLlib's model config.

The model config is RLlib's: ``{"fcnet_hiddens": [256, 256],
"fcnet_activation": "tanh" | "relu" | "linear" | None}``. Observation
preprocessing (flattening Box observations, one-hot encoding Discrete ones)
happens inside the model, so an exported model keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_MODEL_CONFIG",
    "ObsPreprocessor",
    "PPOTorchModel",
    "action_dist_dim",
    "build_mlp",
    "get_activation",
    "obs_input_dim",
]

#: RLlib's defaults for the keys this module reads.
DEFAULT_MODEL_CONFIG: dict[str, Any] = {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}

_ACTIVATIONS: dict[str | None, type[nn.Module] | None] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "linear": None,
    None: None,
}


def get_activation(name: str | None) -> type[nn.Module] | None:
    """The activation class for an RLlib activation name (None for "linear"/None).

    :raises ValueError: an unknown name.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown fcnet_activation {name!r} (known: 'tanh', 'relu', 'linear', None)")
    return _ACTIVATIONS[key]


def _hidden_gain(activation: type[nn.Module] | None) -> float:
    return math.sqrt(2.0) if activation is not None else 1.0


def build_mlp(
    in_dim: int,
    hiddens: Sequence[int],
    activation: str | None,
    out_dim: int,
    *,
    out_gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """An MLP ``in_dim → hiddens… → out_dim`` with orthogonal init and zero biases.

    :param activation: RLlib's activation name, applied after each hidden layer.
    :param out_gain: the orthogonal gain of the output layer (0.01 for policy heads).
    :param generator: the RNG for initialization (the global one when None).
    """
    act = get_activation(activation)
    layers: list[nn.Module] = []
    prev = int(in_dim)
    for size in hiddens:
        linear = nn.Linear(prev, int(size))
        _init_linear(linear, _hidden_gain(act), generator)
        layers.append(linear)
        if act is not None:
            layers.append(act())
        prev = int(size)
    out = nn.Linear(prev, int(out_dim))
    _init_linear(out, out_gain, generator)
    layers.append(out)
    return nn.Sequential(*layers)


def _init_linear(layer: nn.Linear, gain: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
        layer.bias.zero_()


def obs_input_dim(observation_space: Any) -> int:
    """The model's input width for an observation space (one-hot width for Discrete).

    :raises ValueError: spaces other than Box and Discrete.
    """
    import gymnasium as gym

    if isinstance(observation_space, gym.spaces.Discrete):
        return int(observation_space.n)
    if isinstance(observation_space, gym.spaces.Box):
        return int(np.prod(observation_space.shape, dtype=np.int64))
    raise ValueError(f"observation spaces of type {type(observation_space).__name__} are not supported")


def action_dist_dim(action_space: Any) -> int:
    """Width of ``action_dist_inputs``: n logits (Discrete) or mean and log_std (Box).

    :raises ValueError: spaces other than Box and Discrete.
    """
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box):
        return 2 * int(np.prod(action_space.shape, dtype=np.int64))
    raise ValueError(f"action spaces of type {type(action_space).__name__} are not supported")


class ObsPreprocessor(nn.Module):
    """Observations → float32 ``[batch, features]``: flattens Box, one-hot encodes Discrete."""

    categories: torch.Tensor

    def __init__(self, observation_space: Any) -> None:
        import gymnasium as gym

        super().__init__()
        self.discrete = isinstance(observation_space, gym.spaces.Discrete)
        self.out_dim = obs_input_dim(observation_space)
        start = int(observation_space.start) if self.discrete else 0
        # Not persistent: not a weight, and rebuilt from the space.
        self.register_buffer("categories", torch.arange(start, start + self.out_dim), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch of observations."""
        if self.discrete:
            idx = obs.reshape(obs.shape[0], 1).to(torch.int64)
            return (idx == self.categories).to(torch.float32)
        return obs.reshape(obs.shape[0], -1).to(torch.float32)


class PPOTorchModel(nn.Module):
    """Separate policy and value MLPs (RLlib's ``vf_share_layers=False``).

    ``forward(obs)`` returns ``(action_dist_inputs, vf_preds)``: logits for a
    Discrete action space; mean and log_std concatenated for a Box one (the
    log_std is a network output, RLlib's default). ``vf_preds`` is ``[batch]``.
    """

    def __init__(
        self,
        observation_space: Any,
        action_space: Any,
        model_config: Mapping[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        """Build the model.

        :param model_config: RLlib's model config (missing keys take RLlib's defaults).
        :param generator: the RNG for initialization (the global one when None).
        """
        super().__init__()
        cfg = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
        hiddens = list(cfg["fcnet_hiddens"] or [])
        activation = cfg["fcnet_activation"]
        self.preprocessor = ObsPreprocessor(observation_space)
        in_dim = self.preprocessor.out_dim
        self.pi = build_mlp(in_dim, hiddens, activation, action_dist_dim(action_space),
                            out_gain=0.01, generator=generator)
        self.vf = build_mlp(in_dim, hiddens, activation, 1, out_gain=1.0, generator=generator)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action_dist_inputs, vf_preds)`` for a batch of observations."""
        x = self.preprocessor(obs)
        return self.pi(x), self.vf(x).squeeze(-1)

    def action_dist_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy head alone."""
        return self.pi(self.preprocessor(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The value head alone, ``[batch]``."""
        return self.vf(self.preprocessor(obs)).squeeze(-1)
