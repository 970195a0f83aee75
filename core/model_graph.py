"""A framework-neutral description of a policy's network, for the model exporters.

A policy describes its inference network as a :class:`ModelGraph`: an
observation preprocessing step, a few named MLP *towers* over the
preprocessed observation, and the named outputs computed from them
(``action_dist_inputs``, then ``vf_preds`` where there is a value function).
Exporter plugins rebuild the network from this graph alone, so none of them
needs to know amber's policy classes, and :meth:`ModelGraph.forward_numpy`
is the reference they are tested against. :func:`action_rule` and
:func:`greedy_action` say how to act from the outputs, and :func:`strict_json` how
``model.json`` writes a number JSON has no literal for.

This module imports numpy only; :mod:`amber.export` writes exports from a
graph and re-exports every name here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "OUTPUT_KINDS",
    "Dense",
    "ModelGraph",
    "Output",
    "Preprocess",
    "action_rule",
    "greedy_action",
    "strict_json",
    "weights_digest",
]


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
    :param framework: the framework of the policy it describes (``"torch"``), or
        None; ``export_model(dir)`` writes the files of the exporter native to it.
        Not part of :meth:`describe` nor of :func:`weights_digest`.
    """

    obs_shape: tuple[int, ...]
    preprocess: Preprocess
    towers: Mapping[str, Sequence[Dense]]
    outputs: Sequence[Output]
    info: Mapping[str, Any] = field(default_factory=dict)
    framework: str | None = None

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
        return obs.reshape(obs.shape[0], math.prod(self.obs_shape)).astype(np.float32)  # (0 rows too)

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


# --------------------------------------------------------------------------
# acting from the outputs
# --------------------------------------------------------------------------


def action_rule(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """How to pick the greedy action from the outputs, as data (``model.json``'s ``"act"``).

    - ``{"op": "argmax", "output": "action_dist_inputs", "offset": start}``: Discrete actions
      (logits or Q-values): ``argmax(out, axis=-1) + offset``.
    - ``{"op": "clip", "output", "size", "low", "high", "shape"}``: Box actions (Gaussian):
      ``clip(out[:, :size], low, high)`` reshaped to ``[batch, *shape]``.
    - ``{"op": "tanh_squash", ...}`` (same keys): squashed Gaussian (SAC):
      ``low + (tanh(out[:, :size]) + 1) / 2 * (high - low)``.

    ``low`` and ``high`` are flat lists of ``size`` numbers.

    :param info: a :class:`ModelGraph`'s ``info`` (``action_space`` and ``action_distribution``).
    :return: the rule, or None when ``info`` does not say.
    """
    space = info.get("action_space")
    dist = info.get("action_distribution")
    if not isinstance(space, Mapping) or dist is None:
        return None
    if space.get("type") == "Discrete":
        return {"op": "argmax", "output": "action_dist_inputs", "offset": int(space.get("start", 0))}
    if space.get("type") == "Box":
        shape = [int(d) for d in space["shape"]]
        size = int(np.prod(shape, dtype=np.int64))
        low = np.broadcast_to(np.asarray(space["low"], dtype=np.float64), shape).reshape(-1)
        high = np.broadcast_to(np.asarray(space["high"], dtype=np.float64), shape).reshape(-1)
        return {"op": "tanh_squash" if dist == "squashed_gaussian" else "clip",
                "output": "action_dist_inputs", "size": size, "shape": shape,
                "low": low.tolist(), "high": high.tolist()}
    return None


def greedy_action(rule: Mapping[str, Any], outputs: Mapping[str, Any]) -> np.ndarray:
    """The greedy actions for a batch, from an exported model's outputs and ``model.json``'s ``"act"``.

    A reference in numpy: serving code needs only these few lines (see docs/export.md).

    :param rule: ``model.json["act"]`` (see :func:`action_rule`).
    :param outputs: the model's outputs by name (arrays ``[batch, ...]``).
    :return: int64 ``[batch]`` (Discrete) or float32 ``[batch, *shape]`` (Box).
    """
    out = np.asarray(outputs[rule["output"]])
    if rule["op"] == "argmax":
        return out.argmax(axis=-1).astype(np.int64) + int(rule["offset"])
    mean = out[:, : int(rule["size"])].astype(np.float64)
    low, high = np.asarray(rule["low"], np.float64), np.asarray(rule["high"], np.float64)
    if rule["op"] == "tanh_squash":
        act = low + (np.tanh(mean) + 1.0) / 2.0 * (high - low)
    elif rule["op"] == "clip":
        act = np.clip(mean, low, high)
    else:
        raise ValueError(f"unknown action rule {rule['op']!r}")
    return act.astype(np.float32).reshape((out.shape[0], *rule["shape"]))


#: How model.json writes a number JSON has no literal for (a space's infinite bound): as a string
#: that Python's ``float``, numpy and JavaScript's ``Number`` all read back.
_NON_FINITE = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def strict_json(value: Any) -> Any:
    """``value`` (JSON data) with each infinite or NaN float replaced by the string ``"Infinity"``,
    ``"-Infinity"`` or ``"NaN"``: plain JSON, which every parser reads (``json.dump`` would
    write the non-standard ``Infinity``, which strict parsers refuse)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def weights_digest(graph: ModelGraph) -> str:
    """A digest of the graph's architecture and weights (``model.json``'s ``weights_digest``)."""
    h = hashlib.sha256(json.dumps(graph.describe(), sort_keys=True, default=str).encode())
    for name in graph.towers:
        for layer in graph.towers[name]:
            for arr in (layer.weight, layer.bias):
                a = np.ascontiguousarray(arr, dtype=np.float32)
                h.update(str(a.shape).encode())
                h.update(a.tobytes())
    return "sha256:" + h.hexdigest()
