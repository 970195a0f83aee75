"""SAC's tf2 policy: a squashed Gaussian actor, twin Q critics, their Polyak targets and a learned
alpha, in Keras 3.

The counterpart of :class:`~amber.algorithms.sac.sac_torch_policy.SACTorchPolicy`:
the same networks and state layout (torch's names: ``log_alpha``, ``pi.0.weight``,
``q1.0.weight``, ``q1_target.0.weight``...; three Adam optimizers ``actor``,
``critic``, ``alpha``; generators ``generator`` for acting and
``learner_generator`` for the learner's noise, both numpy's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.algorithms.sac.sac_common import LOG_STD_MAX, LOG_STD_MIN, SAC_MODEL_DEFAULTS
from amber.algorithms.sac.sac_common import box_dim as _box_dim
from amber.models.keras_mlp import KerasTower, build_tower, obs_input_dim
from amber.models.numpy_distributions import NumpySquashedGaussian
from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.policy import sample_batch as sb
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.tf_policy_base import TFPolicyBase

__all__ = ["SACKerasModel", "SACTFPolicy"]


class SACKerasModel:
    """The actor ``pi``, critics ``q1``/``q2``, targets ``q1_target``/``q2_target`` and ``log_alpha``."""

    def __init__(self, observation_space: Any, action_space: Any, model_config: Mapping[str, Any] | None, *,
                 twin_q: bool, initial_alpha: float, rng: np.random.Generator | None) -> None:
        import gymnasium as gym

        from amber.models.keras_mlp import tf_runtime

        _, keras = tf_runtime()
        cfg = {**SAC_MODEL_DEFAULTS, **(model_config or {})}
        hiddens, act = list(cfg["fcnet_hiddens"] or []), cfg["fcnet_activation"]
        d = _box_dim(action_space)
        self.discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self.obs_start = int(observation_space.start) if self.discrete_obs else 0
        self.in_dim = obs_input_dim(observation_space)
        self.pi = build_tower("pi", self.in_dim, hiddens, act, 2 * d, out_gain=0.01, rng=rng)
        self.critics = [build_tower(n, self.in_dim + d, hiddens, act, 1, out_gain=1.0, rng=rng)
                        for n in (("q1", "q2") if twin_q else ("q1",))]
        self.targets = [build_tower(f"{q.prefix}_target", self.in_dim + d, hiddens, act, 1, out_gain=1.0,
                                    rng=None) for q in self.critics]
        for target, critic in zip(self.targets, self.critics, strict=True):
            for (_, t), (_, c) in zip(target.variables(), critic.variables(), strict=True):
                t.assign(c.numpy())
        self.log_alpha = keras.Variable(np.float32(np.log(float(initial_alpha))), dtype="float32",
                                        name="log_alpha")

    def features(self, obs: Any) -> Any:
        """Observations (a tensor) → float32 features."""
        from amber.models.keras_mlp import tf_runtime

        tf, _ = tf_runtime()
        if self.discrete_obs:
            return tf.one_hot(tf.reshape(tf.cast(obs, tf.int64), [-1]) - self.obs_start, self.in_dim,
                              dtype=tf.float32)
        return tf.reshape(tf.cast(obs, tf.float32), [-1, self.in_dim])

    def __call__(self, obs: Any) -> Any:
        """``action_dist_inputs``: mean and clipped log_std, ``[batch, 2 * d]``."""
        from amber.models.keras_mlp import tf_runtime

        tf, _ = tf_runtime()
        mean, log_std = tf.split(self.pi(self.features(obs)), 2, axis=-1)
        return tf.concat([mean, tf.clip_by_value(log_std, LOG_STD_MIN, LOG_STD_MAX)], axis=-1)

    def variables(self) -> list[tuple[str, Any]]:
        """``(torch name, variable)`` of every weight, in torch's state-dict order."""
        out: list[tuple[str, Any]] = [("log_alpha", self.log_alpha), *self.pi.variables()]
        for critic, target in zip(self.critics, self.targets, strict=True):
            out += [*critic.variables(), *target.variables()]
        return out


class SACTFPolicy(TFPolicyBase):
    """SAC's tf2 policy over a Box action space; its config is the torch policy's
    (``actor_lr``, ``critic_lr``, ``alpha_lr``, ``tau``, ``initial_alpha``, ``target_entropy``, ``twin_q``).

    :raises ValueError: a Discrete action space, or a Box without finite bounds.
    """

    GENERATORS = ("generator", "learner_generator")
    OPTIMIZERS = ("actor", "critic", "alpha")
    SEED_SALT = (0x5AC,)

    model: SACKerasModel
    #: Draws the learner's noise.
    learner_generator: np.random.Generator

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        self.action_dim = _box_dim(action_space)
        super().__init__(observation_space, action_space, config)
        low = np.asarray(action_space.low, np.float32).reshape(-1)
        high = np.asarray(action_space.high, np.float32).reshape(-1)
        self.action_low = low.copy()
        self.action_half_range = ((high - low) / np.float32(2.0)).astype(np.float32)
        target = self.config.get("target_entropy", "auto")
        self.target_entropy = -float(self.action_dim) if target in (None, "auto") else float(target)
        tf = self.tf
        dtype = tf.int64 if self._discrete_obs else tf.float32
        spec = tf.TensorSpec([None, *(observation_space.shape or ())], dtype)
        self._forward = tf.function(self.model.__call__, input_signature=[spec], autograph=False)
        #: The compiled update (:mod:`amber.algorithms.sac.sac_tf_learner`).
        self.train_functions: dict[Any, Any] = {}

    def make_model(self, rng: np.random.Generator | None) -> SACKerasModel:
        """:class:`SACKerasModel` from the config's ``model``, ``twin_q`` and ``initial_alpha``."""
        return SACKerasModel(self.observation_space, self.action_space, self.config.get("model") or {},
                             twin_q=bool(self.config.get("twin_q", True)),
                             initial_alpha=float(self.config.get("initial_alpha", 1.0)), rng=rng)

    def make_optimizer(self, name: str) -> Any:
        """Adam at ``{name}_lr`` (default 3e-4), with torch's step (:mod:`amber.policy.tf_adam`)."""
        from amber.policy.tf_adam import torch_adam

        return torch_adam(self.keras, float(self.config.get(f"{name}_lr", 3e-4)), 1e-8)

    def optimizer_variables(self, name: str) -> list[Any]:
        """The actor's, the critics' or ``log_alpha`` (torch's order)."""
        m = self.model
        if name == "actor":
            return [v for _, v in m.pi.variables()]
        if name == "critic":
            return [v for q in m.critics for _, v in q.variables()]
        return [m.log_alpha]

    def normalized_actions(self, actions: Any) -> np.ndarray:
        """Env actions rescaled to ``[-1, 1]``, float32 ``[batch, d]`` (the critics' input)."""
        arr = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
        return (arr - self.action_low) / self.action_half_range - np.float32(1.0)

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions in the Box's bounds: ``(actions, [], extra)``, as the torch policy's (``u`` sampled
        with the numpy :attr:`generator` when exploring, else the mean)."""
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        arr = self.obs_array(obs_batch)
        if arr.shape[:1] == (1,) and self.fast_inference:
            dist_inputs = self._numpy_actor(arr)
        else:
            dist_inputs = self._forward(self.tf.constant(arr)).numpy()
        dist = NumpySquashedGaussian(dist_inputs)
        u = dist.sample(self.generator) if explore is None or explore else dist.deterministic_sample()
        logp = dist.logp(u)
        actions = self.action_low + (np.tanh(u) + np.float32(1.0)) * self.action_half_range
        self.global_timestep += int(arr.shape[0])
        extra = {sb.ACTION_DIST_INPUTS: np.concatenate([dist.mean, dist.log_std], axis=-1).astype(np.float32),
                 sb.ACTION_LOGP: logp}
        return actions.astype(np.float32).reshape((arr.shape[0], *self._action_shape)), [], extra

    def _numpy_actor(self, arr: np.ndarray) -> np.ndarray:
        cache = self._np_cache
        if cache is None or cache[0] != self._weights_version:
            w = self.get_weights()
            pi = self.model.pi
            hidden = pi.activations[0] if len(pi.activations) > 1 else None
            cache = self._np_cache = (self._weights_version,
                                      (Preprocess.for_space(self.observation_space),
                                       NumpyMLP.from_state_dict(w, "pi", hidden)))
        preprocess, pi_net = cache[1]
        out = pi_net(preprocess(arr))
        mean, log_std = np.split(out, 2, axis=-1)
        return np.concatenate([mean, np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)], axis=-1)

    def export_graph(self) -> Any:
        """The actor as an :class:`amber.export.ModelGraph` (as the torch policy's; framework ``tf2``)."""
        from amber.export import Dense, ModelGraph, Output
        from amber.export import Preprocess as GraphPreprocess
        from amber.policy.policy_helpers import action_info

        w, m = self.get_weights(), self.model
        tower: KerasTower = m.pi
        dense = [Dense(w[f"pi.{i}.weight"], w[f"pi.{i}.bias"], act)
                 for i, act in zip(tower.indices, tower.activations, strict=True)]
        out = Output("action_dist_inputs", "clip_log_std", ("pi",), {"low": LOG_STD_MIN, "high": LOG_STD_MAX})
        pre = GraphPreprocess("one_hot", m.in_dim, m.obs_start) if m.discrete_obs else GraphPreprocess(
            "flatten", m.in_dim)
        return ModelGraph(tuple(self.observation_space.shape or ()), pre, {"pi": dense}, [out],
                          action_info(self.observation_space, self.action_space, squashed=True),
                          framework="tf2")

    @property
    def alpha(self) -> float:
        """The entropy temperature ``exp(log_alpha)``."""
        return float(np.exp(self.model.log_alpha.numpy()))
