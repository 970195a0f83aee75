"""PPO's torch policy: a :class:`~amber.models.torch_mlp.PPOTorchModel` (separate policy and value
MLPs), its Adam optimizer and its action-sampling generator.

Seeding, weights, the optimizer, the state tree and the numpy fast path's
caching are :class:`~amber.policy.torch_policy_base.TorchPolicyBase`'s; this
module adds the model, sampling from the action distribution, the value
function and export. The helpers torch policies share live in
:mod:`amber.policy.torch_utils` (re-exported here, where they used to be).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.models.torch_distributions import (
    TorchCategorical,
    TorchDiagGaussian,
    TorchDistribution,
    dist_class_for,
)
from amber.models.torch_mlp import PPOTorchModel
from amber.policy import sample_batch as sb
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.torch_policy_base import TorchPolicyBase
from amber.policy.torch_utils import (
    action_info,
    build_from_spec,
    optimizer_state_from_tree,
    optimizer_state_to_tree,
    portable_config,
    threads_for_batch,
)

__all__ = [
    "TorchPolicy",
    "action_info",
    "build_from_spec",
    "optimizer_state_from_tree",
    "optimizer_state_to_tree",
    "portable_config",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class TorchPolicy(TorchPolicyBase):
    """PPO's policy over Box or Discrete spaces, with separate policy and value MLPs.

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Box or Discrete space.
    :param config: at least ``model`` (RLlib's model config), ``lr``, ``seed``
        (int or None) and ``grad_clip``; kept whole as :attr:`config`.
    """

    model: PPOTorchModel

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        super().__init__(observation_space, action_space, config)
        self.dist_class: type[TorchDistribution] = dist_class_for(action_space)

    def make_model(self, generator: torch.Generator) -> PPOTorchModel:
        """:class:`~amber.models.torch_mlp.PPOTorchModel` from the config's ``model``."""
        return PPOTorchModel(self.observation_space, self.action_space, self.config.get("model") or {},
                             generator=generator)

    # -- acting --------------------------------------------------------------

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, [], extra)``.

        Discrete actions are int64; Box actions float32 and not clipped to the
        space's bounds. ``extra`` holds ``action_logp``, ``action_dist_inputs``
        and ``vf_preds``.

        :param explore: sample from the distribution (True, also for None) or act greedily.
        :param kwargs: RLlib's other arguments (:data:`~amber.policy.policy.BATCH_EXTRAS`:
            ``prev_action_batch``, ``episodes``...), accepted and unused.
        :raises TypeError: any other keyword (named, with the closest known one).
        """
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        arr = self.obs_array(obs_batch)
        sample = explore is None or bool(explore)
        net = self.numpy_net(arr)
        if net is not None:
            return self._compute_actions_numpy(arr, net, sample)
        obs = self.obs_to_tensor(arr)
        with threads_for_batch(obs.shape[0]), torch.inference_mode():
            dist_inputs, vf = self.model(obs)
            dist = self.dist_class(dist_inputs)
            actions = dist.sample(self.generator) if sample else dist.deterministic_sample()
            logp = dist.logp(actions)
        self.global_timestep += int(obs.shape[0])
        acts = actions.numpy()
        if self._discrete_actions:
            if self._action_offset:
                acts = acts + self._action_offset
        else:
            acts = acts.reshape((acts.shape[0], *self._action_shape))
        extra = {sb.ACTION_LOGP: logp.numpy(), sb.ACTION_DIST_INPUTS: dist_inputs.numpy(),
                 sb.VF_PREDS: vf.numpy()}
        return acts, [], extra

    def compute_values(self, obs_batch: Any) -> np.ndarray:
        """The value function's predictions, float32 ``[batch]``."""
        with torch.inference_mode():
            return self.model.value(self.obs_to_tensor(obs_batch)).numpy()

    # -- the numpy fast path -------------------------------------------------------

    def build_numpy_net(self) -> tuple[Preprocess, NumpyMLP, NumpyMLP] | None:
        """``(preprocess, pi, vf)`` in numpy, or None (another model or distribution class)."""
        model = self.model
        if type(model) is not PPOTorchModel or self.dist_class not in (TorchCategorical, TorchDiagGaussian):
            return None
        pi, vf = NumpyMLP.from_torch(model.pi), NumpyMLP.from_torch(model.vf)
        if pi is None or vf is None:
            return None
        return Preprocess.from_torch(model.preprocessor), pi, vf

    def _compute_actions_numpy(self, arr: np.ndarray, net: tuple[Preprocess, NumpyMLP, NumpyMLP],
                               sample: bool) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """:meth:`compute_actions` for one observation, in numpy.

        The same maths as the torch path, with the same draws from
        :attr:`generator` (so it stays deterministic and checkpoint-exact);
        results may differ from the torch path's by float rounding (about 1e-7):
        the ``action_logp`` and ``vf_preds`` recorded here are not bit-identical
        to a training forward pass, which the PPO loss tolerates.
        """
        preprocess, pi, vf_net = net
        x = preprocess(arr)
        dist_inputs = pi(x)
        vf = vf_net(x)[:, 0]
        if self.dist_class is TorchCategorical:
            acts, logp = self._categorical_numpy(dist_inputs, sample)
        else:
            acts, logp = self._gaussian_numpy(dist_inputs, sample)
        self.global_timestep += int(arr.shape[0])
        extra = {sb.ACTION_LOGP: logp.astype(np.float32, copy=False), sb.ACTION_DIST_INPUTS: dist_inputs,
                 sb.VF_PREDS: vf.astype(np.float32, copy=False)}
        return acts, [], extra

    def _categorical_numpy(self, logits: np.ndarray, sample: bool) -> tuple[np.ndarray, np.ndarray]:
        """:class:`TorchCategorical`'s sample (or argmax) and log-probability, in numpy."""
        z = logits - logits.max(-1, keepdims=True)
        e = np.exp(z)
        total = e.sum(-1, keepdims=True)
        log_probs = z - np.log(total)
        if sample:
            cdf = np.cumsum(e / total, -1)
            u = torch.rand((cdf.shape[0], 1), generator=self.generator, dtype=torch.float32).numpy()
            actions = np.minimum((cdf < u).sum(-1), cdf.shape[-1] - 1)
        else:
            actions = logits.argmax(-1)
        logp = log_probs[np.arange(len(actions)), actions]
        actions = actions.astype(np.int64, copy=False)
        return (actions + self._action_offset if self._action_offset else actions), logp

    def _gaussian_numpy(self, dist_inputs: np.ndarray, sample: bool) -> tuple[np.ndarray, np.ndarray]:
        """:class:`TorchDiagGaussian`'s sample (or mean) and log-density, in numpy."""
        mean, log_std = np.split(dist_inputs, 2, axis=-1)
        std = np.exp(log_std)
        if sample:
            noise = torch.randn(mean.shape, generator=self.generator, dtype=torch.float32).numpy()
            actions = mean + std * noise
        else:
            actions = mean.copy()
        zs = (actions - mean) / std
        logp = (np.float32(-0.5) * np.square(zs) - log_std - np.float32(_HALF_LOG_2PI)).sum(-1)
        return actions.reshape((actions.shape[0], *self._action_shape)), logp

    # -- export ------------------------------------------------------------------

    def export_graph(self) -> Any:
        """This policy's inference network as an :class:`amber.export.ModelGraph` (for exporters).

        Outputs ``action_dist_inputs`` (logits, or mean and log_std) and ``vf_preds``.
        """
        from amber.export import ModelGraph, Output
        from amber.models.torch_mlp import graph_preprocess, sequential_to_dense

        model = self.model
        towers = {"pi": sequential_to_dense(model.pi), "vf": sequential_to_dense(model.vf)}
        outputs = [Output("action_dist_inputs", "identity", ("pi",)), Output("vf_preds", "squeeze", ("vf",))]
        return ModelGraph(tuple(self.observation_space.shape or ()), graph_preprocess(model.preprocessor),
                          towers, outputs, action_info(self.observation_space, self.action_space))
