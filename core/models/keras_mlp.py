"""Keras 3 MLPs with the torch models' shapes, and their weights in torch's names and layout.

The tf2 policies build the networks of :mod:`amber.models.torch_mlp` as Keras
models: the same model config (``fcnet_hiddens``, ``fcnet_activation``), the
same observation preprocessing (flattened Box, one-hot Discrete), orthogonal
initialisation with zero biases. Their weights leave and enter a policy under
the torch policy's names (``pi.0.weight``, ``pi.0.bias``, ``pi.2.weight``...)
and layout (a Dense kernel ``[in, out]`` is stored transposed, ``[out, in]``),
so a tf2 policy's checkpoint reads like a torch policy's and either framework
restores the other's weights.

Importing this module imports numpy only; :func:`tf_runtime` imports
tensorflow and keras (the ``keras`` extra) when a tf2 policy is built.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amber.policy.spaces import action_dist_dim, obs_input_dim

__all__ = [
    "DEFAULT_MODEL_CONFIG",
    "KerasTower",
    "MissingFrameworkError",
    "PPOKerasModel",
    "action_dist_dim",
    "build_tower",
    "obs_input_dim",
    "orthogonal",
    "tf_runtime",
]

#: RLlib's defaults for the keys read here (as :data:`amber.models.torch_mlp.DEFAULT_MODEL_CONFIG`).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}
_ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "linear": None, None: None}


class MissingFrameworkError(ImportError):
    """tensorflow or keras 3 is missing (or keras runs on another backend) for a tf2 policy."""


def tf_runtime() -> tuple[Any, Any]:
    """``(tensorflow, keras)``, imported with Keras's TensorFlow backend.

    :raises MissingFrameworkError: either is not installed (naming ``amber-rl[keras]``), keras is
        older than 3, or keras was already imported with another backend.
    """
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        raise MissingFrameworkError(f"the tf2 framework needs tensorflow and keras 3 ({e}); "
                                    "install them with: pip install 'amber-rl[keras]'") from e
    version = str(getattr(keras, "__version__", "0"))
    if int(version.split(".")[0]) < 3:
        raise MissingFrameworkError(f"the tf2 framework needs keras 3, found keras {version}; "
                                    "install it with: pip install 'amber-rl[keras]'")
    if keras.backend.backend() != "tensorflow":
        raise MissingFrameworkError(f"the tf2 framework needs Keras's tensorflow backend, but keras runs on "
                                    f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow")
    return tf, keras


def activation_of(name: str | None) -> str | None:
    """The Keras activation for an RLlib activation name (None: linear).

    :raises ValueError: an unknown name.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _ACTIVATIONS:
        raise ValueError(f"unknown fcnet_activation {name!r} (known: 'tanh', 'relu', 'linear', None)")
    return _ACTIVATIONS[key]


def orthogonal(rng: np.random.Generator, out_dim: int, in_dim: int, gain: float) -> np.ndarray:
    """An orthogonal ``[out, in]`` float32 matrix times ``gain`` (torch's layout), drawn from ``rng``."""
    flat = rng.standard_normal((out_dim, in_dim) if out_dim >= in_dim else (in_dim, out_dim))
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if out_dim < in_dim:
        q = q.T
    return (gain * q).astype(np.float32)


class KerasTower:
    """One MLP as a ``keras.Sequential`` of Dense layers, with the torch ``nn.Sequential`` indices
    of its Linear layers (``0, 2, 4`` with an activation between them, ``0, 1, 2`` without).

    :param model: the Keras model.
    :param prefix: its name in the weights (``pi``, ``vf``...).
    :param activations: each Dense layer's activation (None: linear).
    """

    def __init__(self, model: Any, prefix: str, activations: Sequence[str | None]) -> None:
        self.model = model
        self.prefix = prefix
        self.activations = list(activations)
        hidden_act = activations[0] if len(activations) > 1 else None
        step = 2 if hidden_act is not None else 1
        self.indices = [i * step for i in range(len(activations))]

    @property
    def dense_layers(self) -> list[Any]:
        """The Dense layers, in order."""
        return list(self.model.layers)

    def variables(self) -> list[tuple[str, Any]]:
        """``(torch name, variable)`` per kernel and bias, in torch's parameter order."""
        out = []
        for index, layer in zip(self.indices, self.dense_layers, strict=True):
            name = f"{self.prefix}.{index}"
            out += [(f"{name}.weight", layer.kernel), (f"{name}.bias", layer.bias)]
        return out

    def __call__(self, x: Any) -> Any:
        """The tower's output for features ``x``."""
        return self.model(x)


def build_tower(prefix: str, in_dim: int, hiddens: Sequence[int], activation: str | None, out_dim: int, *,
                out_gain: float, rng: np.random.Generator | None, final_activation: str | None = None
                ) -> KerasTower:
    """An MLP ``in_dim → hiddens… → out_dim`` as a :class:`KerasTower`, orthogonally initialised from
    ``rng`` (hidden gain sqrt(2) with an activation, else 1; ``out_gain`` for the last layer),
    biases zero; ``rng=None`` leaves Keras's initial values (a saved state replaces them).
    ``final_activation`` follows the last layer too (a trunk's: DQN's).

    :raises ModelSizeError: inside :func:`~amber.models.build_budget.weights_will_be_loaded`, the
        layers hold more values than the saved weights (checked before anything is allocated).
    """
    tf, keras = tf_runtime()
    act = activation_of(activation)
    sizes = [int(in_dim), *(int(h) for h in hiddens), int(out_dim)]
    if min(sizes) < 1:
        raise ValueError(f"an MLP needs positive sizes, not {sizes}")
    from amber.models.build_budget import charge

    for a, b in zip(sizes[:-1], sizes[1:], strict=True):  # a restore is bounded by the saved weights
        charge(a * b + b, f"{a} x {b} layer")
    acts = [act] * (len(sizes) - 2) + [activation_of(final_activation)]
    model = keras.Sequential([keras.Input(shape=(sizes[0],), dtype="float32")]
                             + [keras.layers.Dense(s, activation=a, dtype="float32", name=f"{prefix}_{i}")
                                for i, (s, a) in enumerate(zip(sizes[1:], acts, strict=True))],
                             name=prefix)
    if rng is not None:
        gain = float(np.sqrt(2.0)) if act is not None else 1.0
        for i, layer in enumerate(model.layers):
            g = out_gain if i == len(model.layers) - 1 else gain
            layer.kernel.assign(orthogonal(rng, sizes[i + 1], sizes[i], g).T)
            layer.bias.assign(np.zeros(sizes[i + 1], np.float32))
    return KerasTower(model, prefix, acts)


class PPOKerasModel:
    """PPO's networks in Keras: separate policy (``pi``) and value (``vf``) towers over the
    preprocessed observation, as :class:`amber.models.torch_mlp.PPOTorchModel`.

    :param model_config: RLlib's model config (missing keys take RLlib's defaults).
    :param rng: the initialisation RNG (None: left for a saved state to replace).
    """

    def __init__(self, observation_space: Any, action_space: Any, model_config: Mapping[str, Any] | None,
                 rng: np.random.Generator | None) -> None:
        import gymnasium as gym

        cfg = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
        hiddens, activation = list(cfg["fcnet_hiddens"] or []), cfg["fcnet_activation"]
        self.discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self.obs_start = int(observation_space.start) if self.discrete_obs else 0
        self.in_dim = obs_input_dim(observation_space)
        self.pi = build_tower("pi", self.in_dim, hiddens, activation, action_dist_dim(action_space),
                              out_gain=0.01, rng=rng)
        self.vf = build_tower("vf", self.in_dim, hiddens, activation, 1, out_gain=1.0, rng=rng)
        self.towers = (self.pi, self.vf)

    def features(self, obs: Any) -> Any:
        """Observations (a tensor) → float32 ``[batch, features]``: one-hot or flattened."""
        tf, _ = tf_runtime()
        if self.discrete_obs:
            idx = tf.reshape(tf.cast(obs, tf.int64), [-1]) - self.obs_start
            return tf.one_hot(idx, self.in_dim, dtype=tf.float32)
        return tf.reshape(tf.cast(obs, tf.float32), [-1, self.in_dim])

    def __call__(self, obs: Any) -> tuple[Any, Any]:
        """``(action_dist_inputs, vf_preds [batch])``."""
        x = self.features(obs)
        return self.pi(x), self.vf(x)[:, 0]

    def variables(self) -> list[tuple[str, Any]]:
        """``(torch name, variable)`` of every weight, in torch's parameter order."""
        return [pair for tower in self.towers for pair in tower.variables()]
