"""A framework-neutral description of a policy's network, for the model exporters.

A policy describes its inference network as a :class:`ModelGraph`: an
observation preprocessing step, a few named MLP *towers* over the
preprocessed observation, and the named outputs computed from them
(``action_dist_inputs``, then ``vf_preds`` where there is a value function).
Exporter plugins (torch, ONNX, Keras) rebuild the network from this graph
alone, so none of them needs to know amber's policy classes, and
:meth:`ModelGraph.forward_numpy` is the reference they are tested against.

This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "OUTPUT_KINDS", "Dense", "ModelGraph", "Output", "Preprocess"]

#: Activation names a :class:`Dense` layer may carry (None: linear).
ACTIVATIONS: tuple[str | None, ...] = ("tanh", "relu", None)

#: How an :class:`Output` is computed from tower outputs ``T``:
#:
#: - ``"identity"``: ``T[towers[0]]``.
#: - ``"squeeze"``: ``T[towers[0]][:, 0]`` (a value function's ``[batch]`` output).
#: - ``"dueling"``: ``T[v] + T[a] - mean(T[a], axis=1)`` with ``towers = (v, a)`` (dueling Q-values).
#: - ``"clip_log_std"``: ``T[towers[0]]`` split in halves ``(mean, log_std)``, with
#:   ``log_std`` clipped to ``[params["low"], params["high"]]``, concatenated again.
OUTPUT_KINDS: tuple[str, ...] = ("identity", "squeeze", "dueling", "clip_log_std")


@dataclass(frozen=True)
class Dense:
    """One fully connected layer: ``activation(x @ weight.T + bias)``.

    :param weight: float32 ``[out, in]`` (torch's layout).
    :param bias: float32 ``[out]``.
    :param activation: one of :data:`ACTIVATIONS`.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r} (known: {ACTIVATIONS})")
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"weight {self.weight.shape} and bias {self.bias.shape} do not fit")


@dataclass(frozen=True)
class Preprocess:
    """Observation → float32 ``[batch, features]``.

    :param kind: ``"flatten"`` (Box observations) or ``"one_hot"`` (Discrete: the
        input is the integer observation, given as a number ``[batch]``).
    :param size: the number of features it produces.
    :param start: for ``"one_hot"``, the space's first value.
    """

    kind: str
    size: int
    start: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("flatten", "one_hot"):
            raise ValueError(f"unknown preprocessing {self.kind!r} (known: 'flatten', 'one_hot')")


@dataclass(frozen=True)
class Output:
    """A named output of the graph (see :data:`OUTPUT_KINDS`)."""

    name: str
    kind: str
    towers: tuple[str, ...]
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {self.kind!r} (known: {OUTPUT_KINDS})")


def _activate(x: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(x)
    if activation == "relu":
        return np.maximum(x, 0.0)
    return x


@dataclass(frozen=True)
class ModelGraph:
    """A policy's inference network, described for exporters.

    :param obs_shape: one observation's shape (``()`` for Discrete observations).
    :param preprocess: how observations become features.
    :param towers: named MLPs, each applied to the features.
    :param outputs: the outputs, in order (``action_dist_inputs`` first).
    :param info: JSON-able facts for ``model.json``: the spaces, the action
        distribution and how to act from the outputs (action bounds, squashing).
    """

    obs_shape: tuple[int, ...]
    preprocess: Preprocess
    towers: Mapping[str, Sequence[Dense]]
    outputs: Sequence[Output]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for out in self.outputs:
            missing = [t for t in out.towers if t not in self.towers]
            if missing:
                raise ValueError(f"output {out.name!r} uses unknown towers {missing}")

    @property
    def output_names(self) -> list[str]:
        """The outputs' names, in order."""
        return [o.name for o in self.outputs]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The preprocessed observations, float32 ``[batch, features]``."""
        obs = np.asarray(obs)
        if self.preprocess.kind == "one_hot":
            idx = obs.reshape(obs.shape[0], 1).astype(np.int64)
            cats = np.arange(self.preprocess.start, self.preprocess.start + self.preprocess.size)
            return (idx == cats).astype(np.float32)
        return obs.reshape(obs.shape[0], -1).astype(np.float32)

    def forward_numpy(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for a batch of observations, computed in numpy (float64 inside, float32 out).

        The reference every exporter is tested against.
        """
        x = self.features(obs).astype(np.float64)
        cache: dict[str, np.ndarray] = {}
        for name, layers in self.towers.items():
            h = x
            for layer in layers:
                h = _activate(h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64),
                              layer.activation)
            cache[name] = h
        result = {}
        for out in self.outputs:
            t = cache[out.towers[0]]
            if out.kind == "squeeze":
                value = t[:, 0]
            elif out.kind == "dueling":
                adv = cache[out.towers[1]]
                value = t + adv - adv.mean(axis=1, keepdims=True)
            elif out.kind == "clip_log_std":
                mean, log_std = np.split(t, 2, axis=-1)
                value = np.concatenate(
                    [mean, np.clip(log_std, out.params["low"], out.params["high"])], axis=-1)
            else:
                value = t
            result[out.name] = value.astype(np.float32)
        return result

    def describe(self) -> dict[str, Any]:
        """The architecture as JSON-able data (no weights): what ``model.json`` records."""
        return {
            "input": {"name": "obs", "dtype": "float32", "shape": ["batch", *self.obs_shape]},
            "preprocess": {"kind": self.preprocess.kind, "size": self.preprocess.size,
                           "start": self.preprocess.start},
            "towers": {
                name: [{"in": int(layer.weight.shape[1]), "out": int(layer.weight.shape[0]),
                        "activation": layer.activation} for layer in layers]
                for name, layers in self.towers.items()
            },
            "outputs": [{"name": o.name, "kind": o.kind, "towers": list(o.towers), **dict(o.params)}
                        for o in self.outputs],
            **dict(self.info),
        }
