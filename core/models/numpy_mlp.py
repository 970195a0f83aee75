"""Fully connected networks in numpy: the single-observation fast path, and serving without torch.

Importing this module imports numpy only. A network is a list of layers
``(weight_t, bias, activation)``: ``weight_t`` is the transposed torch weight,
``[in, out]``, and ``activation`` is ``"tanh"``, ``"relu"`` or None (linear).
Built from torch modules (:meth:`NumpyMLP.from_torch`, which imports torch
only when called), the arrays are views of the parameters, so in-place
updates of the parameters (optimizer steps, ``set_weights``) are seen at once.

Example, serving a PPO policy's greedy action from its weights alone::

    weights = policy.get_weights()          # or a checkpoint's state["weights"]
    pi = NumpyMLP.from_state_dict(weights, "pi", activation="tanh")
    logits = pi(Preprocess.flatten()(obs[None]))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "Layer", "NumpyMLP", "Preprocess", "activation_name", "check_obs_range", "forward"]

#: One layer: ``(weight_t [in, out], bias [out], activation after it)``.
Layer = tuple[np.ndarray, np.ndarray, "str | None"]
#: The activation names amber's models use (RLlib's ``fcnet_activation``); "linear" and None are the same.
ACTIVATIONS: tuple[str | None, ...] = ("tanh", "relu", "linear", None)


def activation_name(name: str | None) -> str | None:
    """The canonical activation of an RLlib activation name: ``"tanh"``, ``"relu"`` or None (linear).

    :raises ValueError: an unknown name.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r} (known: 'tanh', 'relu', 'linear', None)")
    return None if key == "linear" else key


def forward(x: np.ndarray, layers: Sequence[Layer]) -> np.ndarray:
    """``x`` through ``layers``: ``act(x @ weight_t + bias)`` for each (``x`` itself is never written)."""
    for weight_t, bias, activation in layers:
        x = x @ weight_t
        x += bias
        if activation == "tanh":
            np.tanh(x, out=x)
        elif activation == "relu":
            np.maximum(x, 0.0, out=x)
    return x


class NumpyMLP:
    """An MLP in numpy: ``mlp(x)`` is :func:`forward` over :attr:`layers` (no layers: the identity)."""

    __slots__ = ("layers",)

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers: list[Layer] = list(layers)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The network's output for a batch ``[batch, in]``."""
        return forward(x, self.layers)

    @classmethod
    def from_arrays(cls, params: Sequence[tuple[Any, Any]], activation: str | None, *,
                    final: str | None = None) -> NumpyMLP:
        """An MLP from ``(weight [out, in], bias [out])`` pairs in torch's layout.

        :param activation: after every layer but the last.
        :param final: after the last layer (None: linear).
        """
        act, last = activation_name(activation), activation_name(final)
        n = len(params)
        return cls([(np.asarray(w).T, np.asarray(b), act if i < n - 1 else last)
                    for i, (w, b) in enumerate(params)])

    @classmethod
    def from_state_dict(cls, weights: Mapping[str, Any], prefix: str, activation: str | None, *,
                        final: str | None = None) -> NumpyMLP:
        """An MLP from the ``{prefix}.{i}.weight`` / ``{prefix}.{i}.bias`` entries of a torch
        ``nn.Sequential``'s state dict (a policy's ``get_weights()``), in order of ``i``.

        :raises KeyError: no layer under ``prefix``.
        """
        head, tail = f"{prefix}.", ".weight"
        index = sorted(int(k[len(head):-len(tail)]) for k in weights
                       if k.startswith(head) and k.endswith(tail) and k[len(head):-len(tail)].isdigit())
        if not index:
            raise KeyError(f"no layers {head}<i>.weight in the weights")
        return cls.from_arrays([(weights[f"{head}{i}.weight"], weights[f"{head}{i}.bias"]) for i in index],
                               activation, final=final)

    @classmethod
    def from_torch(cls, net: Any) -> NumpyMLP | None:
        """Numpy views of a torch ``nn.Sequential`` of Linear (with bias) and Tanh/ReLU layers, float32
        on the CPU, without hooks; None for anything else (imports torch)."""
        import torch

        from amber.models.torch_mlp import linear_layers

        found = linear_layers(net)
        if found is None:
            return None
        layers: list[Layer] = []
        for linear, activation in found:
            w, b = linear.weight, linear.bias
            if w.dtype != torch.float32 or b.dtype != torch.float32 or w.device.type != "cpu":
                return None
            layers.append((w.detach().numpy().T, b.detach().numpy(), activation))
        return cls(layers)


class Preprocess:
    """Observations → float32 ``[batch, features]``: one-hot (Discrete) or flattened (Box)."""

    __slots__ = ("categories",)

    def __init__(self, categories: np.ndarray | None = None) -> None:
        #: The observation values of the one-hot columns; None: flatten.
        self.categories = categories

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Preprocess a batch of observations."""
        if self.categories is not None:
            return (obs.reshape(obs.shape[0], 1) == self.categories).astype(np.float32)
        # (not -1, which an empty batch leaves undetermined)
        return obs.reshape(obs.shape[0], math.prod(obs.shape[1:])).astype(np.float32, copy=False)

    @classmethod
    def one_hot(cls, n: int, start: int = 0) -> Preprocess:
        """One-hot encoding of a ``Discrete(n, start)`` observation."""
        return cls(np.arange(int(start), int(start) + int(n), dtype=np.int64))

    @classmethod
    def flatten(cls) -> Preprocess:
        """Box observations, flattened."""
        return cls()

    @classmethod
    def for_space(cls, space: Any) -> Preprocess:
        """For a gymnasium Discrete or Box space, or its state (:func:`amber.policy.spaces.space_to_state`).

        :raises ValueError: another kind of space.
        """
        kind = space.get("type") if isinstance(space, Mapping) else type(space).__name__
        if kind == "Discrete":
            if isinstance(space, Mapping):
                return cls.one_hot(space["n"], space.get("start", 0))
            return cls.one_hot(space.n, space.start)
        if kind == "Box":
            return cls.flatten()
        raise ValueError(f"observation spaces of type {kind} are not supported (Box and Discrete are)")

    @classmethod
    def from_torch(cls, preprocessor: Any) -> Preprocess:
        """The preprocessing an :class:`amber.models.torch_mlp.ObsPreprocessor` does."""
        if preprocessor.discrete:
            return cls(preprocessor.categories.numpy().copy())
        return cls()


def check_obs_range(owner: str, arr: np.ndarray, obs_range: tuple[int, int] | None) -> None:
    """Refuse a Discrete observation outside its space, ``obs_range`` = [low, high) (None: a Box):
    one-hot encoded it would be all zeros, and a network would act on that without a word.

    :raises ValueError: naming the first value out of range and the space's values.
    """
    if obs_range is not None and arr.size and (arr.min() < obs_range[0] or arr.max() >= obs_range[1]):
        bad = arr[(arr < obs_range[0]) | (arr >= obs_range[1])].flat[0]
        raise ValueError(f"{owner}: observation {int(bad)} is not in the observation space "
                         f"(Discrete: {obs_range[0]} to {obs_range[1] - 1})")
