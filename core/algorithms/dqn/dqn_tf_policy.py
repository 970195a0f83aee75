"""DQN's tf2 policy: a Keras Q network (dueling or not), its target copy, epsilon-greedy acting.

The counterpart of :class:`~amber.algorithms.dqn.dqn_torch_policy.DQNTorchPolicy`:
the same networks (a trunk of ``fcnet_hiddens``, then value and advantage
heads or one Q head of ``hiddens`` relu layers), the same state layout
(torch's names: ``trunk.0.weight``, ``value.0.weight``...; ``target_weights``
likewise), epsilon-greedy exploration drawn from the policy's numpy generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amber.algorithms.dqn.dqn_common import (
    dqn_epsilon_schedule,
    epsilon_at,
    epsilon_greedy,
    q_actions_result,
)
from amber.models.keras_mlp import DEFAULT_MODEL_CONFIG, KerasTower, activation_of, build_tower, obs_input_dim
from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.tf_policy_base import TFPolicyBase

__all__ = ["DQNKerasModel", "DQNTFPolicy"]


class DQNKerasModel:
    """Q-values from a trunk and a dueling (``Q = V + A - mean(A)``) or plain Q head, in Keras."""

    def __init__(self, observation_space: Any, num_actions: int, model_config: Mapping[str, Any] | None, *,
                 dueling: bool, hiddens: Sequence[int], rng: np.random.Generator | None) -> None:
        import gymnasium as gym

        cfg = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
        trunk = [int(h) for h in cfg["fcnet_hiddens"] or []]
        head = [int(h) for h in hiddens or []]
        self.discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self.obs_start = int(observation_space.start) if self.discrete_obs else 0
        self.in_dim = obs_input_dim(observation_space)
        self.dueling = bool(dueling)
        act = cfg["fcnet_activation"]
        gain = 2.0 ** 0.5 if activation_of(act) is not None else 1.0
        self.trunk: KerasTower | None = None
        if trunk:
            self.trunk = build_tower("trunk", self.in_dim, trunk[:-1], act, trunk[-1], out_gain=gain, rng=rng,
                                     final_activation=act)
        width = trunk[-1] if trunk else self.in_dim
        if self.dueling:
            self.heads = [build_tower("value", width, head, "relu", 1, out_gain=1.0, rng=rng),
                          build_tower("advantage", width, head, "relu", int(num_actions), out_gain=1.0,
                                      rng=rng)]
        else:
            self.heads = [build_tower("q", width, head, "relu", int(num_actions), out_gain=1.0, rng=rng)]
        self.towers = [t for t in (self.trunk, *self.heads) if t is not None]

    def features(self, obs: Any) -> Any:
        """Observations (a tensor) → trunk features."""
        from amber.models.keras_mlp import tf_runtime

        tf, _ = tf_runtime()
        if self.discrete_obs:
            idx = tf.reshape(tf.cast(obs, tf.int64), [-1]) - self.obs_start
            x = tf.one_hot(idx, self.in_dim, dtype=tf.float32)
        else:
            x = tf.reshape(tf.cast(obs, tf.float32), [-1, self.in_dim])
        return self.trunk(x) if self.trunk is not None else x

    def __call__(self, obs: Any) -> Any:
        """Q-values ``[batch, num_actions]``."""
        h = self.features(obs)
        if self.dueling:
            adv = self.heads[1](h)
            return self.heads[0](h) + adv - _mean(adv)
        return self.heads[0](h)

    def variables(self) -> list[tuple[str, Any]]:
        """``(torch name, variable)`` of every weight, in torch's parameter order."""
        return [pair for tower in self.towers for pair in tower.variables()]


def _mean(adv: Any) -> Any:
    from amber.models.keras_mlp import tf_runtime

    tf, _ = tf_runtime()
    return tf.reduce_mean(adv, axis=1, keepdims=True)


class DQNTFPolicy(TFPolicyBase):
    """DQN's tf2 policy over Discrete actions (Box or Discrete observations); its config is
    :class:`~amber.algorithms.dqn.dqn_torch_policy.DQNTorchPolicy`'s.

    :raises ValueError: an action space that is not Discrete.
    """

    model: DQNKerasModel

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        self.epsilon_schedule = dqn_epsilon_schedule(action_space, config)
        super().__init__(observation_space, action_space, config)
        self.target_model = self.make_model(None)
        self.update_target()
        tf = self.tf
        dtype = tf.int64 if self._discrete_obs else tf.float32
        spec = tf.TensorSpec([None, *(observation_space.shape or ())], dtype)
        self._q = tf.function(self.model.__call__, input_signature=[spec], autograph=False)
        #: The compiled TD steps (:mod:`amber.algorithms.dqn.dqn_tf_learner`).
        self.train_functions: dict[Any, Any] = {}

    def make_model(self, rng: np.random.Generator | None) -> DQNKerasModel:
        """:class:`DQNKerasModel` from the config's ``model``, ``dueling`` and ``hiddens``."""
        return DQNKerasModel(self.observation_space, int(self.action_space.n), self.config.get("model") or {},
                             dueling=bool(self.config.get("dueling", True)),
                             hiddens=[int(h) for h in self.config.get("hiddens") or []], rng=rng)

    @property
    def cur_epsilon(self) -> float:
        """The exploration rate for the next explored timestep."""
        return epsilon_at(self.epsilon_schedule, self.global_timestep)

    def _numpy_net(self) -> tuple[Preprocess, NumpyMLP | None, list[NumpyMLP]]:
        cache = self._np_cache
        if cache is not None and cache[0] == self._weights_version:
            return cache[1]
        w = self.get_weights()

        def mlp(tower: KerasTower) -> NumpyMLP:
            hidden = tower.activations[0] if len(tower.activations) > 1 else None
            return NumpyMLP.from_state_dict(w, tower.prefix, hidden, final=tower.activations[-1])

        m = self.model
        net = (Preprocess.for_space(self.observation_space), None if m.trunk is None else mlp(m.trunk),
               [mlp(h) for h in m.heads])
        self._np_cache = (self._weights_version, net)
        return net

    def compute_q_values(self, obs_batch: Any) -> np.ndarray:
        """The Q network's outputs, float32 ``[batch, num_actions]``."""
        arr = self.obs_array(obs_batch)
        if arr.shape[:1] != (1,) or not self.fast_inference:
            return self._q(self.tf.constant(arr)).numpy()
        preprocess, trunk, heads = self._numpy_net()
        h = preprocess(arr)
        h = trunk(h) if trunk is not None else h
        if self.model.dueling:
            v, a = heads[0](h), heads[1](h)
            return (v + a - a.mean(axis=1, keepdims=True)).astype(np.float32, copy=False)
        return heads[0](h).astype(np.float32, copy=False)

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Epsilon-greedy actions (explore True or None) or greedy ones: ``(actions, [], extra)``,
        as the torch policy's (the draws come from the numpy :attr:`generator`)."""
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        q = self.compute_q_values(obs_batch)
        actions = q.argmax(axis=-1).astype(np.int64)
        if explore is None or explore:
            actions = epsilon_greedy(self, actions, self.generator.random((len(actions), 2)))
        return q_actions_result(self, actions, q)

    def compute_values(self, obs_batch: Any) -> np.ndarray:
        """DQN policies have no separate value function.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError("a DQN policy has no value function; use compute_q_values")

    # -- target network ----------------------------------------------------------------

    def update_target(self) -> None:
        """Copy the Q network's weights into the target network."""
        pairs = zip(self.target_model.variables(), self.model.variables(), strict=True)
        for (_, target), (_, source) in pairs:
            target.assign(source.numpy())

    def get_target_weights(self) -> dict[str, np.ndarray]:
        """The target network's weights in torch's names and layout."""
        return {n: (np.ascontiguousarray(v.numpy().T) if len(v.shape) == 2 else v.numpy().copy())
                for n, v in self.target_model.variables()}

    def set_target_weights(self, weights: Mapping[str, Any]) -> None:
        """Load the target network's weights (torch's names and layout).

        :raises KeyError: weights missing.
        :raises ValueError: a weight's shape differs (nothing is changed then).
        """
        for var, value in self._checked(self.target_model.variables(), weights, "target weights"):
            var.assign(value)

    @staticmethod
    def _checked(own: list[tuple[str, Any]], weights: Mapping[str, Any], what: str) -> list[tuple[Any, Any]]:
        missing = sorted(n for n, _ in own if n not in weights)
        if missing:
            raise KeyError(f"{what} are missing {missing}")
        out, wrong = [], {}
        for name, var in own:
            value = np.asarray(weights[name], np.float32)
            expected = tuple(var.shape)[::-1] if len(var.shape) == 2 else tuple(var.shape)
            if value.shape != expected:
                wrong[name] = (value.shape, expected)
            out.append((var, value.T if value.ndim == 2 else value))
        if wrong:
            raise ValueError(f"{what}: shapes differ (given, expected): {wrong}")
        return out

    # -- export and state ----------------------------------------------------------------

    def export_graph(self) -> Any:
        """The Q network as an :class:`amber.export.ModelGraph` (as the torch policy's; framework ``tf2``)."""
        from amber.export import Dense, ModelGraph, Output
        from amber.export import Preprocess as GraphPreprocess
        from amber.policy.policy_helpers import action_info

        w, m = self.get_weights(), self.model

        def dense(tower: KerasTower | None) -> list[Any]:
            if tower is None:
                return []
            return [Dense(w[f"{tower.prefix}.{i}.weight"], w[f"{tower.prefix}.{i}.bias"], act)
                    for i, act in zip(tower.indices, tower.activations, strict=True)]

        trunk = dense(m.trunk)
        if m.dueling:
            towers = {"v": [*trunk, *dense(m.heads[0])], "a": [*trunk, *dense(m.heads[1])]}
            outputs = [Output("action_dist_inputs", "dueling", ("v", "a"))]
        else:
            towers = {"q": [*trunk, *dense(m.heads[0])]}
            outputs = [Output("action_dist_inputs", "identity", ("q",))]
        pre = GraphPreprocess("one_hot", m.in_dim, m.obs_start) if m.discrete_obs else GraphPreprocess(
            "flatten", m.in_dim)
        return ModelGraph(tuple(self.observation_space.shape or ()), pre, towers, outputs,
                          action_info(self.observation_space, self.action_space, q_values=True),
                          framework="tf2")

    def get_state(self) -> dict[str, Any]:
        """:meth:`TFPolicyBase.get_state` plus ``target_weights`` and ``cur_epsilon`` (as torch's)."""
        state = super().get_state()
        state["target_weights"] = self.get_target_weights()
        state["cur_epsilon"] = self.cur_epsilon
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output (or a torch DQN policy's); every weight is checked first."""
        target = (self._checked(self.target_model.variables(), state["target_weights"], "target weights")
                  if "target_weights" in state else [])
        super().set_state(state)
        for var, value in target:
            var.assign(value)
