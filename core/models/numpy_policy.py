"""The inference networks of amber's torch policies in numpy, built from a policy state for serving.

A network maps a batch of observations (int64 for a Discrete observation
space, float32 for a Box one) to the outputs an exported model of the policy
has (docs/export.md): ``action_dist_inputs``, then ``vf_preds`` where the
policy has a value function (PPO). It is built from a policy state's
``weights`` (the torch model's state dict by parameter name) and its
``policy_spec`` config, layer for layer as the torch models are:
:class:`~amber.models.torch_mlp.PPOTorchModel` (separate ``pi`` and ``vf``
MLPs), DQN's model (a ``trunk``, then dueling ``value`` and ``advantage``
heads or one ``q`` head, each with DQN's ``hiddens`` relu layers) and SAC's
actor ``pi`` (its log_std clipped). Layer sizes come from the weights; the
activation from the config's ``model`` (with each model's default).

Importing this module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from amber.models.numpy_distributions import LOG_STD_MAX, LOG_STD_MIN
from amber.models.numpy_mlp import NumpyMLP, Preprocess

__all__ = ["POLICY_KINDS", "Network", "action_distribution", "build_network"]

#: amber's policy classes by registered name (:mod:`amber.names`) → the kind of network they act with.
POLICY_KINDS: dict[str, str] = {
    "amber.TorchPolicy": "ppo",
    "amber.DQNTorchPolicy": "dqn",
    "amber.SACTorchPolicy": "sac",
    # tf2 policies keep their weights in the torch policies' names and layout (amber.policy.tf_policy_base)
    "amber.PPOTFPolicy": "ppo",
    "amber.DQNTFPolicy": "dqn",
    "amber.SACTFPolicy": "sac",
}
#: ``fcnet_activation`` when the config's ``model`` does not say: PPO's and DQN's models take
#: :data:`amber.models.torch_mlp.DEFAULT_MODEL_CONFIG`'s, SAC's its ``SAC_MODEL_DEFAULTS``'.
DEFAULT_ACTIVATION: dict[str, str] = {"ppo": "tanh", "dqn": "tanh", "sac": "relu"}

#: Observations ``[batch, ...]`` → the outputs by name.
Network = Callable[[np.ndarray], dict[str, np.ndarray]]


def action_distribution(kind: str, action_space: Mapping[str, Any]) -> str:
    """How a network's ``action_dist_inputs`` are acted on, as ``model.json`` names it:
    ``categorical``, ``diag_gaussian``, ``q_values`` or ``squashed_gaussian``.

    :raises ValueError: an action space the kind of policy does not act in.
    """
    discrete = action_space.get("type") == "Discrete"
    if kind == "ppo":
        return "categorical" if discrete else "diag_gaussian"
    if kind == "dqn" and discrete:
        return "q_values"
    if kind == "sac" and action_space.get("type") == "Box":
        return "squashed_gaussian"
    raise ValueError(f"a {kind} policy does not act in a {action_space.get('type')} action space")


def build_network(kind: str, weights: Mapping[str, Any], config: Mapping[str, Any],
                  observation_space: Mapping[str, Any]) -> Network:
    """The network of a policy of ``kind`` (a value of :data:`POLICY_KINDS`).

    :param weights: the policy state's ``weights``.
    :param config: the policy state's ``policy_spec["config"]``.
    :param observation_space: the observation space's description (``type``, and ``n``/``start``
        for Discrete).
    :raises KeyError: a network the weights lack.
    :raises ValueError: an unknown kind, space or activation.
    """
    model = {"fcnet_activation": DEFAULT_ACTIVATION.get(kind), **dict(config.get("model") or {})}
    activation = model["fcnet_activation"]
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    preprocess = Preprocess.for_space(observation_space)
    if kind == "ppo":
        return _ppo(arrays, activation, preprocess)
    if kind == "dqn":
        return _dqn(arrays, activation, preprocess)
    if kind == "sac":
        return _sac(arrays, activation, preprocess)
    known = ", ".join(sorted(set(POLICY_KINDS.values())))
    raise ValueError(f"unknown kind of policy network {kind!r} (known: {known})")


def _ppo(weights: Mapping[str, np.ndarray], activation: str | None, preprocess: Preprocess) -> Network:
    pi = NumpyMLP.from_state_dict(weights, "pi", activation)
    vf = NumpyMLP.from_state_dict(weights, "vf", activation)

    def forward(obs: np.ndarray) -> dict[str, np.ndarray]:
        x = preprocess(obs)
        return {"action_dist_inputs": pi(x), "vf_preds": vf(x)[:, 0]}

    return forward


def _dqn(weights: Mapping[str, np.ndarray], activation: str | None, preprocess: Preprocess) -> Network:
    # the trunk has the activation after every layer, its last too; an empty trunk is the identity
    trunk = NumpyMLP([])
    if any(k.startswith("trunk.") for k in weights):
        trunk = NumpyMLP.from_state_dict(weights, "trunk", activation, final=activation)
    if any(k.startswith("value.") for k in weights):
        value = NumpyMLP.from_state_dict(weights, "value", "relu")
        advantage = NumpyMLP.from_state_dict(weights, "advantage", "relu")

        def dueling(obs: np.ndarray) -> dict[str, np.ndarray]:
            h = trunk(preprocess(obs))
            a = advantage(h)
            return {"action_dist_inputs": (value(h) + a - a.mean(axis=1, keepdims=True)).astype(np.float32)}

        return dueling
    q = NumpyMLP.from_state_dict(weights, "q", "relu")

    def plain(obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"action_dist_inputs": q(trunk(preprocess(obs)))}

    return plain


def _sac(weights: Mapping[str, np.ndarray], activation: str | None, preprocess: Preprocess) -> Network:
    pi = NumpyMLP.from_state_dict(weights, "pi", activation)

    def forward(obs: np.ndarray) -> dict[str, np.ndarray]:
        mean, log_std = np.split(pi(preprocess(obs)), 2, axis=-1)
        clipped = np.clip(log_std, np.float32(LOG_STD_MIN), np.float32(LOG_STD_MAX))
        return {"action_dist_inputs": np.concatenate([mean, clipped], axis=-1)}

    return forward
