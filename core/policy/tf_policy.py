"""PPO's tf2 policy: a :class:`~amber.models.keras_mlp.PPOKerasModel` (separate policy and value
MLPs in Keras 3), its Keras Adam and its action-sampling generator.

The counterpart of :class:`amber.policy.torch_policy.TorchPolicy`: the same
networks, the same state layout (:mod:`amber.policy.tf_policy_base`), the
same actions and ``extra`` columns. Batches run through the Keras model in a
``tf.function``; single observations (sampling one env) through a numpy copy
of the weights, as the torch policy's fast path does. Actions are drawn with
the policy's numpy generator (:mod:`amber.models.numpy_distributions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amber.models.keras_mlp import PPOKerasModel
from amber.models.numpy_distributions import NumpyCategorical, NumpyDiagGaussian
from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.policy import sample_batch as sb
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.tf_policy_base import TFPolicyBase

__all__ = ["PPOTFPolicy"]


class PPOTFPolicy(TFPolicyBase):
    """PPO's tf2 policy over Box or Discrete spaces, with separate policy and value MLPs.

    :param config: at least ``model`` (RLlib's model config), ``lr``, ``seed`` and ``grad_clip``.
    """

    model: PPOKerasModel

    def __init__(self, observation_space: Any, action_space: Any, config: Any) -> None:
        super().__init__(observation_space, action_space, config)
        self._np_dist = NumpyCategorical if self._discrete_actions else NumpyDiagGaussian
        tf = self.tf
        obs_dtype = tf.int64 if self._discrete_obs else tf.float32
        spec = tf.TensorSpec([None, *(observation_space.shape or ())], obs_dtype)
        self._forward = tf.function(self.model.__call__, input_signature=[spec], autograph=False)
        #: The compiled PPO epochs, by loss settings (:mod:`amber.algorithms.ppo.ppo_tf_learner`).
        self.train_functions: dict[Any, Any] = {}

    def make_model(self, rng: np.random.Generator | None) -> PPOKerasModel:
        """:class:`~amber.models.keras_mlp.PPOKerasModel` from the config's ``model``."""
        return PPOKerasModel(self.observation_space, self.action_space, self.config.get("model") or {}, rng)

    # -- acting --------------------------------------------------------------

    def _numpy_net(self) -> tuple[Preprocess, NumpyMLP, NumpyMLP]:
        cache = self._np_cache
        if cache is not None and cache[0] == self._weights_version:
            return cache[1]
        weights = self.get_weights()
        hidden = self.model.pi.activations[0] if len(self.model.pi.activations) > 1 else None
        net = (Preprocess.for_space(self.observation_space), NumpyMLP.from_state_dict(weights, "pi", hidden),
               NumpyMLP.from_state_dict(weights, "vf", hidden))
        self._np_cache = (self._weights_version, net)
        return net

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(action_dist_inputs, vf_preds)`` for a batch of model inputs (:meth:`obs_array`)."""
        if obs.shape[:1] == (1,) and self.fast_inference:
            preprocess, pi, vf = self._numpy_net()
            x = preprocess(obs)
            return pi(x), vf(x)[:, 0]
        dist_inputs, vf = self._forward(self.tf.constant(obs))
        return dist_inputs.numpy(), vf.numpy()

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, [], extra)``, as the torch policy's.

        Discrete actions are int64; Box actions float32, not clipped. ``extra`` holds
        ``action_logp``, ``action_dist_inputs`` and ``vf_preds``.

        :param explore: sample from the distribution (True, also for None) or act greedily.
        """
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        arr = self.obs_array(obs_batch)
        dist_inputs, vf = self.forward(arr)
        dist = self._np_dist(dist_inputs)
        sample = explore is None or bool(explore)
        actions = dist.sample(self.generator) if sample else dist.deterministic_sample()
        logp = dist.logp(actions)
        self.global_timestep += int(arr.shape[0])
        if self._discrete_actions:
            actions = actions + self._action_offset if self._action_offset else actions
        else:
            actions = actions.astype(np.float32, copy=False).reshape((actions.shape[0], *self._action_shape))
        extra = {sb.ACTION_LOGP: logp.astype(np.float32, copy=False),
                 sb.ACTION_DIST_INPUTS: dist_inputs.astype(np.float32, copy=False),
                 sb.VF_PREDS: vf.astype(np.float32, copy=False)}
        return actions, [], extra

    def compute_values(self, obs_batch: Any) -> np.ndarray:
        """The value function's predictions, float32 ``[batch]``."""
        return self.forward(self.obs_array(obs_batch))[1].astype(np.float32, copy=False)

    # -- export ------------------------------------------------------------------

    def export_graph(self) -> Any:
        """This policy's inference network as an :class:`amber.export.ModelGraph` (framework ``tf2``).

        Outputs ``action_dist_inputs`` and ``vf_preds``, as the torch policy's graph.
        """
        from amber.export import Dense, ModelGraph, Output
        from amber.export import Preprocess as GraphPreprocess
        from amber.policy.policy_helpers import action_info

        weights = self.get_weights()
        towers = {}
        for tower in self.model.towers:
            towers[tower.prefix] = [
                Dense(weights[f"{tower.prefix}.{i}.weight"], weights[f"{tower.prefix}.{i}.bias"], act)
                for i, act in zip(tower.indices, tower.activations, strict=True)]
        m = self.model
        pre = (GraphPreprocess("one_hot", m.in_dim, m.obs_start) if m.discrete_obs
               else GraphPreprocess("flatten", m.in_dim))
        outputs = [Output("action_dist_inputs", "identity", ("pi",)), Output("vf_preds", "squeeze", ("vf",))]
        return ModelGraph(tuple(self.observation_space.shape or ()), pre, towers, outputs,
                          action_info(self.observation_space, self.action_space), framework="tf2")
