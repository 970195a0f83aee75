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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from amber.models.torch_mlp import ObsPreprocessor, build_mlp
from amber.policy.policy import Policy
from amber.policy.spaces import space_to_state
from amber.policy.torch_policy import (
    SMALL_BATCH,
    action_info,
    build_from_spec,
    intra_op_threads,
    optimizer_state_from_tree,
    optimizer_state_to_tree,
    portable_config,
)

__all__ = ["LOG_STD_MAX", "LOG_STD_MIN", "SAC_MODEL_DEFAULTS", "SACTorchModel", "SACTorchPolicy",
           "squashed_logp"]

#: The log_std of the actor's Gaussian is clipped to these bounds (RLlib's SquashedGaussian).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
#: RLlib's SAC model: [256, 256] relu, for the actor and the critics.
SAC_MODEL_DEFAULTS: dict[str, Any] = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)
_OPTIMIZERS = ("actor", "critic", "alpha")


def squashed_logp(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``tanh(u)`` for ``u ~ N(mean, exp(log_std))``, summed over action dims, ``[batch]``.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, which stays finite where tanh saturates.
    """
    z = (u - mean) * torch.exp(-log_std)
    gauss = -0.5 * z.square() - log_std - _HALF_LOG_2PI
    log_det = 2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))
    return (gauss - log_det).sum(-1)


def _box_dim(action_space: Any) -> int:
    import gymnasium as gym

    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(
            f"SAC needs a Box (continuous) action space, got {action_space!r}; "
            "for Discrete actions use DQN or PPO")
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"SAC squashes actions into the Box's bounds, which must be finite with "
                         f"high > low; got low={low.tolist()}, high={high.tolist()}")
    return int(np.prod(action_space.shape, dtype=np.int64))


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


def _seeds(seed: int | None) -> tuple[int, int, int]:
    """Three independent 64-bit seeds (init, acting, learning) from one user seed."""
    if seed is None:
        return tuple(torch.Generator().seed() for _ in range(3))  # type: ignore[return-value]
    a, b, c = np.random.SeedSequence([int(seed), 0x5AC]).generate_state(3, dtype=np.uint64)
    return int(a), int(b), int(c)


@contextmanager
def _no_change() -> Iterator[None]:
    yield


class SACTorchPolicy(Policy):
    """A SAC policy over a Box action space and Box or Discrete observations.

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Box with finite bounds.
    :param config: ``model``, ``actor_lr``, ``critic_lr``, ``alpha_lr``, ``tau``,
        ``initial_alpha``, ``target_entropy`` ("auto": ``-prod(action shape)``),
        ``twin_q``, ``gamma``, ``grad_clip`` and ``seed``; kept whole as :attr:`config`.
    :raises ValueError: a Discrete action space, or a Box without finite bounds.
    """

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        import gymnasium as gym

        self.observation_space = observation_space
        self.action_space = action_space
        self.config = dict(config)
        self.action_dim = _box_dim(action_space)
        init_seed, act_seed, learn_seed = _seeds(self.config.get("seed"))
        with torch.random.fork_rng(devices=[]):  # building nn.Linear draws from the global RNG
            self.model = SACTorchModel(
                observation_space, action_space, self.config.get("model") or {},
                twin_q=bool(self.config.get("twin_q", True)),
                initial_alpha=float(self.config.get("initial_alpha", 1.0)),
                generator=torch.Generator().manual_seed(init_seed))
        #: Draws the exploration noise of :meth:`compute_actions`.
        self.generator = torch.Generator().manual_seed(act_seed)
        #: Draws the learner's action samples (kept apart, so acting never shifts learning).
        self.learner_generator = torch.Generator().manual_seed(learn_seed)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._pending_optimizer_state: dict[str, Any] = {}
        self.global_timestep = 0
        self.num_grad_updates = 0
        self._discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self._action_shape = tuple(action_space.shape or ())
        low = np.asarray(action_space.low, np.float32).reshape(-1)
        high = np.asarray(action_space.high, np.float32).reshape(-1)
        #: The action bounds as float32 tensors ``[d]``: ``low`` and ``(high - low) / 2``.
        self.action_low = torch.from_numpy(low.copy())
        self.action_half_range = torch.from_numpy(((high - low) / np.float32(2.0)).astype(np.float32))
        target = self.config.get("target_entropy", "auto")
        self.target_entropy = -float(self.action_dim) if target in (None, "auto") else float(target)
        #: Act on single observations in numpy (see :meth:`_compute_actions_numpy`).
        self.fast_inference = True
        #: What the learner gathered from the model once (see :mod:`~amber.algorithms.sac.sac_learner`).
        self.learner_parts: Any = None
        self._np_cache: tuple[tuple[int, ...], list[list[Any]]] | None = None

    # -- optimizers ----------------------------------------------------------

    def _params(self, name: str) -> list[nn.Parameter]:
        model = self.model
        if name == "actor":
            return list(model.pi.parameters())
        if name == "critic":
            return [p for q in model.critics for p in q.parameters()]
        return [model.log_alpha]

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        """The Adam optimizer ``"actor"``, ``"critic"`` or ``"alpha"``, made on first use
        (serving never needs one), with any restored state loaded into it."""
        opt = self._optimizers.get(name)
        if opt is None:
            if name not in _OPTIMIZERS:
                raise KeyError(f"unknown optimizer {name!r}; SAC has {', '.join(_OPTIMIZERS)}")
            lr = float(self.config.get(f"{name}_lr", 3e-4))
            opt = torch.optim.Adam(self._params(name), lr=lr, fused=True)
            pending = self._pending_optimizer_state.pop(name, None)
            if pending is not None:
                opt.load_state_dict(optimizer_state_from_tree(pending))
            self._optimizers[name] = opt
        return opt

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """All three optimizers by name (made if needed)."""
        return {name: self.optimizer(name) for name in _OPTIMIZERS}

    # -- tensors -------------------------------------------------------------

    def obs_to_tensor(self, obs_batch: Any) -> torch.Tensor:
        """A batch of observations as the model's input tensor (int64 for Discrete, else float32)."""
        arr = np.asarray(obs_batch, dtype=np.int64 if self._discrete_obs else np.float32)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())

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
        sample = explore is None or bool(explore)
        arr = np.asarray(obs_batch, dtype=np.int64 if self._discrete_obs else np.float32)
        if arr.shape[:1] == (1,) and self.fast_inference:
            layers = self._numpy_actor()
            if layers is not None:
                return self._compute_actions_numpy(arr, layers, sample)
        obs = self.obs_to_tensor(arr)
        with intra_op_threads(1) if obs.shape[0] <= SMALL_BATCH else _no_change(), torch.inference_mode():
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
        return acts, [], {"action_dist_inputs": dist_inputs.numpy(), "action_logp": logp.numpy()}

    # -- the numpy fast path -------------------------------------------------------

    def _numpy_actor(self) -> list[list[Any]] | None:
        """The actor's layers as ``[weight.T, bias, activation]`` numpy views of its parameters, or None
        when the fast path cannot run it (hooks, other modules, non-float32 or non-CPU weights).

        Views share memory with the parameters, so in-place updates (optimizer
        steps, :meth:`set_weights`) are seen at once; the cache is rebuilt when a
        parameter's storage was replaced.
        """
        from torch.nn.modules import module as module_mod

        pi = self.model.pi
        params = list(pi.parameters())
        key = tuple(p.data_ptr() for p in params)
        if self._np_cache is not None and self._np_cache[0] == key:
            return self._np_cache[1]
        self._np_cache = None
        if (module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules())):
            return None
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
            return None
        layers: list[list[Any]] = []
        for module in pi:
            if type(module) is nn.Linear and module.bias is not None:
                layers.append([module.weight.detach().numpy().T, module.bias.detach().numpy(), None])
            elif type(module) in (nn.ReLU, nn.Tanh) and layers and layers[-1][2] is None:
                layers[-1][2] = "relu" if type(module) is nn.ReLU else "tanh"
            else:
                return None
        self._np_cache = (key, layers)
        return layers

    def _compute_actions_numpy(self, arr: np.ndarray, layers: list[list[Any]], sample: bool
                               ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """:meth:`compute_actions` for one observation, in numpy: the same maths and the same
        draws from :attr:`generator` as the torch path (results may differ from it by float
        rounding, about 1e-7; a given batch size always takes the same path, so runs stay exact)."""
        pre = self.model.preprocessor
        if pre.discrete:
            x = (arr.reshape(arr.shape[0], 1) == pre.categories.numpy()).astype(np.float32)
        else:
            x = arr.reshape(arr.shape[0], -1).astype(np.float32, copy=False)
        for weight_t, bias, activation in layers:
            x = x @ weight_t
            x += bias
            if activation == "relu":
                np.maximum(x, 0.0, out=x)
            elif activation == "tanh":
                np.tanh(x, out=x)
        mean, log_std = np.split(x, 2, axis=-1)
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
        extra = {"action_dist_inputs": np.concatenate([mean, log_std], axis=-1),
                 "action_logp": logp.astype(np.float32, copy=False)}
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

    # -- weights and state ---------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every weight as numpy copies by name: actor, critics, target critics and ``log_alpha``."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy weights returned by :meth:`get_weights` into the model (in place).

        :raises KeyError: a weight is missing.
        :raises ValueError: a weight's shape differs.
        """
        own = self.model.state_dict()
        missing = set(own) - set(weights)
        if missing:
            raise KeyError(f"weights are missing {sorted(missing)}")
        new = {name: np.asarray(weights[name], dtype=np.float32) for name in own}
        wrong = {n: (tuple(a.shape), tuple(own[n].shape)) for n, a in new.items() if a.shape != own[n].shape}
        if wrong:
            raise ValueError(f"weight shapes differ (given, expected): {wrong}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(torch.from_numpy(new[name].copy()))

    def num_params(self) -> int:
        """The number of weights (targets and ``log_alpha`` included)."""
        return sum(v.numel() for v in self.model.state_dict().values())

    @property
    def alpha(self) -> float:
        """The entropy temperature ``exp(log_alpha)``."""
        return float(self.model.log_alpha.detach().exp())

    def policy_spec_state(self) -> dict[str, Any]:
        """What :meth:`build_from_spec` needs: class, spaces and portable config."""
        return {
            "policy_class": type(self),
            "observation_space": space_to_state(self.observation_space),
            "action_space": space_to_state(self.action_space),
            "config": portable_config(self.config),
        }

    def _optimizer_state(self, name: str) -> Any:
        if name not in self._optimizers and name in self._pending_optimizer_state:
            return copy.deepcopy(self._pending_optimizer_state[name])
        return optimizer_state_to_tree(self.optimizer(name).state_dict())

    def get_state(self) -> dict[str, Any]:
        """The whole state: spec, weights, the three optimizers, both generators, counters."""
        return {
            "policy_spec": self.policy_spec_state(),
            "weights": self.get_weights(),
            "optimizers": {name: self._optimizer_state(name) for name in _OPTIMIZERS},
            "generator": self.generator.get_state().numpy().copy(),
            "learner_generator": self.learner_generator.get_state().numpy().copy(),
            "global_timestep": int(self.global_timestep),
            "num_grad_updates": int(self.num_grad_updates),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply a state from :meth:`get_state` (keys that are absent are left as they are).

        The weights are checked before anything changes.
        """
        if "weights" in state:
            self.set_weights(state["weights"])
        for name, saved in (state.get("optimizers") or {}).items():
            if saved is None or name not in _OPTIMIZERS:
                continue
            if name in self._optimizers:
                self._optimizers[name].load_state_dict(optimizer_state_from_tree(saved))
            else:
                self._pending_optimizer_state[name] = copy.deepcopy(saved)
        for key, gen in (("generator", self.generator), ("learner_generator", self.learner_generator)):
            if state.get(key) is not None:
                raw = np.ascontiguousarray(np.asarray(state[key], dtype=np.uint8))
                gen.set_state(torch.from_numpy(raw.copy()))
        if "global_timestep" in state:
            self.global_timestep = int(state["global_timestep"])
        if "num_grad_updates" in state:
            self.num_grad_updates = int(state["num_grad_updates"])

    @classmethod
    def build_from_spec(cls, spec: Mapping[str, Any]) -> SACTorchPolicy:
        """A policy to :meth:`set_state` into, from a ``policy_spec`` state (spaces as states or
        as spaces). Its weights are not initialised: the state's replace them."""
        return build_from_spec(cls, spec)
