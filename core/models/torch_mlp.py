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

from amber.models.build_budget import (
    ModelSizeError,
    charge,
    restoring,
    state_size,
    weights_will_be_loaded,
)
from amber.policy.spaces import action_dist_dim, obs_input_dim

__all__ = [
    "DEFAULT_MODEL_CONFIG",
    "ModelSizeError",
    "ObsPreprocessor",
    "PPOTorchModel",
    "action_dist_dim",
    "build_mlp",
    "charge",
    "graph_preprocess",
    "sequential_to_dense",
    "get_activation",
    "linear_layers",
    "train_forward",
    "obs_input_dim",
    "state_size",
    "weights_will_be_loaded",
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
        linear = _linear(prev, int(size))
        _init_linear(linear, _hidden_gain(act), generator)
        layers.append(linear)
        if act is not None:
            layers.append(act())
        prev = int(size)
    out = _linear(prev, int(out_dim))
    _init_linear(out, out_gain, generator)
    layers.append(out)
    return nn.Sequential(*layers)


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"a linear layer needs positive sizes, not {in_dim} x {out_dim}")
    if restoring():
        charge(in_dim * out_dim + out_dim, f"{in_dim} x {out_dim} layer")
        return _uninitialized_linear(in_dim, out_dim)
    return nn.Linear(in_dim, out_dim)


class _UninitializedLinear(nn.Linear):
    """An ``nn.Linear`` whose weights are left as allocated (a saved state replaces them).

    Not ``torch.nn.utils.skip_init``: it goes through the meta device, whose first use imports
    sympy and torch's symbolic shapes (a quarter of a second a cold process would pay to serve).
    """

    def reset_parameters(self) -> None:
        """Leave the weights uninitialised."""


def _uninitialized_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = _UninitializedLinear(in_dim, out_dim)
    layer.__class__ = nn.Linear  # a plain Linear from here on (type checks, export, fast paths)
    return layer


def _init_linear(layer: nn.Linear, gain: float, generator: torch.Generator | None) -> None:
    if restoring():
        return
    with torch.no_grad():
        nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
        layer.bias.zero_()


class ObsPreprocessor(nn.Module):
    """Observations → float32 ``[batch, features]``: flattens Box, one-hot encodes Discrete."""

    categories: torch.Tensor

    def __init__(self, observation_space: Any) -> None:
        import gymnasium as gym

        super().__init__()
        self.discrete = isinstance(observation_space, gym.spaces.Discrete)
        self.out_dim = obs_input_dim(observation_space)
        charge(self.out_dim if self.discrete else 0, "observation one-hot encoding", consume=False)
        start = int(observation_space.start) if self.discrete else 0
        # Not persistent: not a weight, and rebuilt from the space.
        self.register_buffer("categories", torch.arange(start, start + self.out_dim), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Preprocess a batch of observations."""
        if self.discrete:
            idx = obs.reshape(obs.shape[0], 1).to(torch.int64)
            return (idx == self.categories).to(torch.float32)
        return obs.reshape(obs.shape[0], self.out_dim).to(torch.float32)  # (-1 fails on an empty batch)


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


_ACTIVATION_NAMES: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}


def linear_layers(net: nn.Module) -> list[tuple[nn.Linear, str | None]] | None:
    """``[(linear, activation after it)]`` of a plain ``nn.Sequential`` of Linear (with bias) and
    Tanh/ReLU layers, or None: another module, an activation not right after a Linear, or any
    forward hook (on a module or global), which only calling the module would honour.

    What every shortcut past ``nn.Module.__call__`` runs: :func:`train_forward`, the numpy
    fast path (:meth:`amber.models.numpy_mlp.NumpyMLP.from_torch`), SAC's frozen critics.
    """
    from torch.nn.modules import module as module_mod

    if (type(net) is not nn.Sequential or net._forward_hooks or net._forward_pre_hooks
            or module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks):
        return None
    layers: list[tuple[nn.Linear, str | None]] = []
    for module in net:
        if module._forward_hooks or module._forward_pre_hooks:
            return None
        if type(module) is nn.Linear and module.bias is not None:
            layers.append((module, None))
        elif type(module) in _ACTIVATION_NAMES and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], _ACTIVATION_NAMES[type(module)])
        else:
            return None
    return layers


def _fast_tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place ``tanh(x) = 2 sigmoid(2x) - 1``: twice as fast as ``torch.tanh`` on CPU (within 2e-7)."""
    torch.sigmoid(x.mul_(2.0), out=x)
    return x.mul_(2.0).sub_(1.0)


class _MLPFunction(torch.autograd.Function):
    """A Linear/Tanh/ReLU MLP as one autograd node: fewer ops, in-place activations, hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, acts: tuple[str | None, ...],
                *params: torch.Tensor) -> torch.Tensor:
        saved = [x]
        h = x
        for i, act in enumerate(acts):
            w, b = params[2 * i], params[2 * i + 1]
            h = torch.addmm(b, h, w.t())
            if act == "tanh":
                h = _fast_tanh_(h)
            elif act == "relu":
                h = h.relu_()
            saved.append(h)
        ctx.acts = acts
        ctx.save_for_backward(*saved, *params)
        return h

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        acts = ctx.acts
        n = len(acts)
        tensors = ctx.saved_tensors
        outs, params = tensors[:n + 1], tensors[n + 1:]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        g = grad
        for i in range(n - 1, -1, -1):
            if acts[i] == "tanh":
                g = torch.ops.aten.tanh_backward(g, outs[i + 1])
            elif acts[i] == "relu":
                g = torch.ops.aten.threshold_backward(g, outs[i + 1], 0.0)
            grads[2 * i] = g.t().mm(outs[i])
            grads[2 * i + 1] = g.sum(0)
            if i > 0 or ctx.needs_input_grad[0]:
                g = g.mm(params[2 * i])
        return (g if ctx.needs_input_grad[0] else None, None, *grads)


def train_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` for training: one autograd node for a plain Linear/Tanh/ReLU Sequential
    (:func:`linear_layers`), else ``net(x)``.

    Tanh is computed as ``2 sigmoid(2x) - 1`` (within about 2e-7 of
    ``torch.tanh``), so the result differs from ``net(x)`` by float rounding.
    """
    layers = linear_layers(net)
    if not layers:
        return net(x)
    params: list[torch.Tensor] = []
    for linear, _ in layers:
        params += [linear.weight, linear.bias]
    return _MLPFunction.apply(x, tuple(act for _, act in layers), *params)


def sequential_to_dense(net: nn.Module) -> list[Any]:
    """A Sequential of Linear/Tanh/ReLU as :class:`amber.export.Dense` layers (float32 copies).

    :raises ValueError: any other module in ``net``.
    """
    from amber.export import Dense

    layers: list[Any] = []
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for module in net:
        if type(module) is nn.Linear:
            if pending is not None:
                layers.append(Dense(*pending))
            bias = (module.bias.detach().cpu().numpy() if module.bias is not None
                    else np.zeros(module.out_features, np.float32))
            pending = (module.weight.detach().cpu().numpy().astype(np.float32, copy=True),
                       bias.astype(np.float32, copy=True))
        elif type(module) in _ACTIVATION_NAMES and pending is not None:
            layers.append(Dense(*pending, activation=_ACTIVATION_NAMES[type(module)]))
            pending = None
        else:
            raise ValueError(f"cannot describe {type(module).__name__} layers for export")
    if pending is not None:
        layers.append(Dense(*pending))
    return layers


def graph_preprocess(preprocessor: ObsPreprocessor) -> Any:
    """The :class:`amber.export.Preprocess` step an :class:`ObsPreprocessor` performs."""
    from amber.export import Preprocess

    if preprocessor.discrete:
        return Preprocess("one_hot", preprocessor.out_dim, int(preprocessor.categories[0]))
    return Preprocess("flatten", preprocessor.out_dim)
