"""SAC's torch policy: a squashed Gaussian actor, twin Q critics, their Polyak targets and a learned alpha.

The actor maps an observation to ``action_dist_inputs`` = the mean and
log_std of a diagonal Gaussian over ``u``; the log_std is clipped to
``[LOG_STD_MIN, LOG_STD_MAX]`` (RLlib's bounds) wherever it is used. The
env action is ``low + (tanh(u) + 1) / 2 * (high - low)``, so actions are
always inside the Box's bounds. Critics take the observation's features and
the action rescaled to ``[-1, 1]``.

Everything that decides what the policy does next is in :meth:`SACTorchPolicy.get_state`:
the actor, both critics and both target critics and ``log_alpha`` (all in
the weights), the three Adam optimizers (actor, critics, alpha), the
generators for acting and for the learner's action samples, and the counters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from amber.algorithms.sac.sac_common import LOG_STD_MAX, LOG_STD_MIN, SAC_MODEL_DEFAULTS
from amber.algorithms.sac.sac_common import box_dim as _box_dim
from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.models.torch_mlp import ObsPreprocessor, build_mlp
from amber.policy import sample_batch as sb
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.torch_policy_base import TorchPolicyBase
from amber.policy.torch_utils import action_info, threads_for_batch

__all__ = ["LOG_STD_MAX", "LOG_STD_MIN", "SAC_MODEL_DEFAULTS", "SACTorchModel", "SACTorchPolicy",
           "squashed_logp"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def squashed_logp(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``tanh(u)`` for ``u ~ N(mean, exp(log_std))``, summed over action dims, ``[batch]``.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, which stays finite where tanh saturates.
    """
    z = (u - mean) * torch.exp(-log_std)
    gauss = -0.5 * z.square() - log_std - _HALF_LOG_2PI
    log_det = 2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))
    return (gauss - log_det).sum(-1)


class SACTorchModel(nn.Module):
    """The actor ``pi``, critics ``q1``/``q2``, targets ``q1_target``/``q2_target`` and ``log_alpha``.

    ``q2`` and ``q2_target`` are None with ``twin_q=False``. The targets start
    as copies of the critics and never get gradients.
    """

    def __init__(self, observation_space: Any, action_space: Any, model_config: Mapping[str, Any] | None,
                 *, twin_q: bool = True, initial_alpha: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        """Build the model.

        :param model_config: RLlib's model config (missing keys: :data:`SAC_MODEL_DEFAULTS`).
        :param generator: the RNG for initialization (the global one when None).
        """
        super().__init__()
        cfg = {**SAC_MODEL_DEFAULTS, **(model_config or {})}
        hiddens, activation = list(cfg["fcnet_hiddens"] or []), cfg["fcnet_activation"]
        d = _box_dim(action_space)
        self.preprocessor = ObsPreprocessor(observation_space)
        in_dim = self.preprocessor.out_dim
        self.pi = build_mlp(in_dim, hiddens, activation, 2 * d, out_gain=0.01, generator=generator)
        self.q1 = build_mlp(in_dim + d, hiddens, activation, 1, out_gain=1.0, generator=generator)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2: nn.Sequential | None = None
        self.q2_target: nn.Sequential | None = None
        if twin_q:
            self.q2 = build_mlp(in_dim + d, hiddens, activation, 1, out_gain=1.0, generator=generator)
            self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(float(initial_alpha)), dtype=torch.float32))

    @property
    def critics(self) -> list[nn.Module]:
        """The critics (one or two)."""
        return [q for q in (self.q1, self.q2) if q is not None]

    @property
    def target_critics(self) -> list[nn.Module]:
        """The target critics, in the order of :attr:`critics`."""
        return [q for q in (self.q1_target, self.q2_target) if q is not None]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``action_dist_inputs``: mean and clipped log_std, ``[batch, 2 * d]``."""
        return clip_log_std(self.pi(self.preprocessor(obs)))


def clip_log_std(dist_inputs: torch.Tensor) -> torch.Tensor:
    """The actor's raw outputs with the log_std half clipped to ``[LOG_STD_MIN, LOG_STD_MAX]``."""
    mean, log_std = dist_inputs.chunk(2, dim=-1)
    return torch.cat([mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)], dim=-1)


class SACTorchPolicy(TorchPolicyBase):
    """A SAC policy over a Box action space and Box or Discrete observations.

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Box with finite bounds.
    :param config: ``model``, ``actor_lr``, ``critic_lr``, ``alpha_lr``, ``tau``,
        ``initial_alpha``, ``target_entropy`` ("auto": ``-prod(action shape)``),
        ``twin_q``, ``gamma``, ``grad_clip`` and ``seed``; kept whole as :attr:`config`.
    :raises ValueError: a Discrete action space, or a Box without finite bounds.

    Seeding, weights, optimizers and state are
    :class:`~amber.policy.torch_policy_base.TorchPolicyBase`'s: three optimizers
    (``"actor"``, ``"critic"``, ``"alpha"``, see :meth:`get_optimizer`) and two
    generators (:attr:`generator` for acting, :attr:`learner_generator` for the
    learner's action samples, kept apart so that acting never shifts learning).
    """

    GENERATORS = ("generator", "learner_generator")
    OPTIMIZERS = ("actor", "critic", "alpha")
    SEED_SALT = (0x5AC,)

    model: SACTorchModel
    #: Draws the learner's action samples.
    learner_generator: torch.Generator

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        self.action_dim = _box_dim(action_space)
        super().__init__(observation_space, action_space, config)
        low = np.asarray(action_space.low, np.float32).reshape(-1)
        high = np.asarray(action_space.high, np.float32).reshape(-1)
        #: The action bounds as float32 tensors ``[d]``: ``low`` and ``(high - low) / 2``.
        self.action_low = torch.from_numpy(low.copy())
        self.action_half_range = torch.from_numpy(((high - low) / np.float32(2.0)).astype(np.float32))
        target = self.config.get("target_entropy", "auto")
        self.target_entropy = -float(self.action_dim) if target in (None, "auto") else float(target)
        #: What the learner gathered from the model once (see :mod:`~amber.algorithms.sac.sac_learner`).
        self.learner_parts: Any = None

    def make_model(self, generator: torch.Generator) -> SACTorchModel:
        """:class:`SACTorchModel` from the config's ``model``, ``twin_q`` and ``initial_alpha``."""
        return SACTorchModel(self.observation_space, self.action_space, self.config.get("model") or {},
                             twin_q=bool(self.config.get("twin_q", True)),
                             initial_alpha=float(self.config.get("initial_alpha", 1.0)), generator=generator)

    def make_optimizer(self, name: str) -> torch.optim.Optimizer:
        """Adam over the actor's, the critics' or ``log_alpha``'s parameters, at ``{name}_lr``."""
        model = self.model
        if name == "actor":
            params = list(model.pi.parameters())
        elif name == "critic":
            params = [p for q in model.critics for p in q.parameters()]
        else:
            params = [model.log_alpha]
        return torch.optim.Adam(params, lr=float(self.config.get(f"{name}_lr", 3e-4)), fused=True)

    # -- tensors -------------------------------------------------------------

    def normalized_actions(self, actions: Any) -> torch.Tensor:
        """Env actions rescaled to ``[-1, 1]``, float32 ``[batch, d]`` (the critics' input)."""
        arr = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
        return (torch.from_numpy(arr.copy()) - self.action_low) / self.action_half_range - 1.0

    def scale_actions(self, squashed: torch.Tensor) -> torch.Tensor:
        """Actions in ``[-1, 1]`` rescaled to the Box: ``low + (squashed + 1) / 2 * (high - low)``."""
        return self.action_low + (squashed + 1.0) * self.action_half_range

    # -- acting --------------------------------------------------------------

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, [], extra)``.

        With ``explore`` (True, also for None) ``u`` is sampled from the
        Gaussian with :attr:`generator`; without it ``u`` is the mean. The
        action is ``low + (tanh(u) + 1) / 2 * (high - low)`` (float32, in the
        bounds). ``extra`` holds ``action_dist_inputs`` (mean and clipped
        log_std) and ``action_logp`` (the log-density of ``tanh(u)``).
        """
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        sample = explore is None or bool(explore)
        arr = self.obs_array(obs_batch)
        net = self.numpy_net(arr)
        if net is not None:
            return self._compute_actions_numpy(arr, net, sample)
        obs = self.obs_to_tensor(arr)
        with threads_for_batch(obs.shape[0]), torch.inference_mode():
            dist_inputs = self.model(obs)
            mean, log_std = dist_inputs.chunk(2, dim=-1)
            if sample:
                noise = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype)
                u = mean + log_std.exp() * noise
            else:
                u = mean
            logp = squashed_logp(u, mean, log_std)
            actions = self.scale_actions(torch.tanh(u))
        self.global_timestep += int(obs.shape[0])
        acts = actions.numpy().reshape((actions.shape[0], *self._action_shape))
        return acts, [], {sb.ACTION_DIST_INPUTS: dist_inputs.numpy(), sb.ACTION_LOGP: logp.numpy()}

    # -- the numpy fast path -------------------------------------------------------

    def numpy_modules(self) -> tuple[nn.Module, ...]:
        """The preprocessor and the actor (acting never runs the critics)."""
        return self.model.preprocessor, self.model.pi

    def build_numpy_net(self) -> tuple[Preprocess, NumpyMLP] | None:
        """``(preprocess, actor)`` in numpy, or None."""
        pi = NumpyMLP.from_torch(self.model.pi)
        return None if pi is None else (Preprocess.from_torch(self.model.preprocessor), pi)

    def _compute_actions_numpy(self, arr: np.ndarray, net: tuple[Preprocess, NumpyMLP], sample: bool
                               ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """:meth:`compute_actions` for one observation, in numpy: the same maths and the same
        draws from :attr:`generator` as the torch path (results may differ from it by float
        rounding, about 1e-7; a given batch size always takes the same path, so runs stay exact)."""
        preprocess, pi = net
        mean, log_std = np.split(pi(preprocess(arr)), 2, axis=-1)
        log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        if sample:
            noise = torch.randn(mean.shape, generator=self.generator, dtype=torch.float32).numpy()
            u = mean + np.exp(log_std) * noise
            z = noise
        else:
            u, z = mean, np.zeros_like(mean)
        softplus = np.logaddexp(np.float32(0.0), np.float32(-2.0) * u)
        log_det = np.float32(2.0) * (np.float32(_LOG_2) - u - softplus)
        logp = (np.float32(-0.5) * np.square(z) - log_std - np.float32(_HALF_LOG_2PI) - log_det).sum(-1)
        low, half = self.action_low.numpy(), self.action_half_range.numpy()
        actions = low + (np.tanh(u) + np.float32(1.0)) * half
        self.global_timestep += int(arr.shape[0])
        extra = {sb.ACTION_DIST_INPUTS: np.concatenate([mean, log_std], axis=-1),
                 sb.ACTION_LOGP: logp.astype(np.float32, copy=False)}
        return actions.reshape((actions.shape[0], *self._action_shape)), [], extra

    def export_graph(self) -> Any:
        """The actor as an :class:`amber.export.ModelGraph`: output ``action_dist_inputs`` (mean and
        log_std clipped to ``[LOG_STD_MIN, LOG_STD_MAX]``), no ``vf_preds``; ``info`` says
        ``action = low + (tanh(mean) + 1) / 2 * (high - low)``."""
        from amber.export import ModelGraph, Output
        from amber.models.torch_mlp import graph_preprocess, sequential_to_dense

        model = self.model
        out = Output("action_dist_inputs", "clip_log_std", ("pi",),
                     {"low": LOG_STD_MIN, "high": LOG_STD_MAX})
        return ModelGraph(tuple(self.observation_space.shape or ()), graph_preprocess(model.preprocessor),
                          {"pi": sequential_to_dense(model.pi)}, [out],
                          action_info(self.observation_space, self.action_space, squashed=True))

    @property
    def alpha(self) -> float:
        """The entropy temperature ``exp(log_alpha)``."""
        return float(self.model.log_alpha.detach().exp())
