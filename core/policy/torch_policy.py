"""A torch policy: a :class:`~amber.models.torch_mlp.PPOTorchModel`, its Adam optimizer and its RNG.

Everything that decides what the policy does next (weights, optimizer
moments, the action-sampling generator, counters) is in :meth:`TorchPolicy.get_state`,
so a policy restored from a checkpoint acts and trains bit-identically to the original.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from amber.models.torch_distributions import (
    TorchCategorical,
    TorchDiagGaussian,
    TorchDistribution,
    dist_class_for,
)
from amber.models.torch_mlp import PPOTorchModel, numpy_mlp_layers, weights_will_be_loaded
from amber.policy.policy import Policy
from amber.policy.spaces import space_from_state, space_to_state
from amber.names import is_nameable, name_of

__all__ = [
    "TorchPolicy",
    "build_from_spec",
    "action_info",
    "optimizer_state_from_tree",
    "optimizer_state_to_tree",
    "portable_config",
]


def _seeds(seed: int | None) -> tuple[int, int]:
    """Two independent 64-bit seeds (model init, action sampling) from one user seed."""
    if seed is None:
        init, sample = torch.Generator(), torch.Generator()
        return init.seed(), sample.seed()
    a, b = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return int(a), int(b)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@contextmanager
def _no_change() -> Iterator[None]:
    yield


def _numpy_mlp(x: np.ndarray, layers: Any) -> np.ndarray:
    for weight_t, bias, activation in layers:
        x = x @ weight_t
        x += bias
        if activation == "tanh":
            np.tanh(x, out=x)
        elif activation == "relu":
            np.maximum(x, 0.0, out=x)
    return x


def optimizer_state_to_tree(value: Any) -> Any:
    """An optimizer ``state_dict()`` as a state tree: tensors become numpy copies."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, Mapping):
        return {k: optimizer_state_to_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [optimizer_state_to_tree(v) for v in value]
    return value


def optimizer_state_from_tree(value: Any, *, _key: Any = None) -> Any:
    """The inverse of :func:`optimizer_state_to_tree`: arrays become tensors again."""
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, Mapping):
        # msgpack may hand back the per-parameter keys as ints or str: torch wants ints.
        return {(int(k) if _key == "state" and isinstance(k, str) and k.isdigit() else k):
                optimizer_state_from_tree(v, _key=k) for k, v in value.items()}
    if isinstance(value, list):
        items = [optimizer_state_from_tree(v) for v in value]
        return tuple(items) if _key == "betas" else items
    return value


_DROP = object()

#: Batches up to this size are computed with one torch intra-op thread (OpenMP threads
#: cost far more than they give on tiny matrices, and stall when other processes share the cores).
SMALL_BATCH = 64


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with torch limited to ``n`` intra-op threads, then restore the setting."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def portable_config(value: Any) -> Any:
    """The parts of a config a portable format can store.

    Keeps dicts (str/int keys), lists, tuples (as lists), scalars, strings,
    bytes, numpy numeric arrays, and classes/functions with a registered
    name; drops the rest (lambdas, live objects), which cannot be restored
    from a portable checkpoint anyway.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return value if value.dtype.kind in "biufc" else _DROP
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                pv = portable_config(v)
                if pv is not _DROP:
                    out[k] = pv
        return out
    if isinstance(value, (list, tuple)):
        items = [portable_config(v) for v in value]
        return [v for v in items if v is not _DROP]
    if is_nameable(value) and name_of(value) is not None:
        return value
    return _DROP


def action_info(observation_space: Any, action_space: Any, *, squashed: bool = False,
                q_values: bool = False) -> dict[str, Any]:
    """What ``model.json`` says about the spaces and how to act from ``action_dist_inputs``.

    :param squashed: Box actions are ``low + (tanh(mean) + 1) / 2 * (high - low)`` (SAC).
    :param q_values: the outputs are Q-values (DQN): act by argmax.
    """
    import gymnasium as gym

    def space(s: Any) -> dict[str, Any]:
        if isinstance(s, gym.spaces.Discrete):
            return {"type": "Discrete", "n": int(s.n), "start": int(s.start)}
        return {"type": "Box", "shape": list(s.shape), "dtype": np.dtype(s.dtype).name,
                "low": np.asarray(s.low, dtype=np.float64).tolist(),
                "high": np.asarray(s.high, dtype=np.float64).tolist()}

    if isinstance(action_space, gym.spaces.Discrete):
        dist = "q_values" if q_values else "categorical"
        act = f"argmax(action_dist_inputs, axis=-1) + {int(action_space.start)}"
    elif squashed:
        dist = "squashed_gaussian"
        act = ("mean = action_dist_inputs[:, :d]; action = low + (tanh(mean) + 1) / 2 * (high - low), "
               "reshaped to the action shape")
    else:
        dist = "diag_gaussian"
        act = "mean = action_dist_inputs[:, :d]; action = clip(mean, low, high), reshaped to the action shape"
    return {"observation_space": space(observation_space), "action_space": space(action_space),
            "action_distribution": dist, "greedy_action": act}


def build_from_spec(cls: type[Any], spec: Mapping[str, Any]) -> Any:
    """``cls(observation_space, action_space, config)`` from a ``policy_spec`` state, without
    initialising weights (a saved state is about to replace them)."""
    obs_space, act_space = spec["observation_space"], spec["action_space"]
    if isinstance(obs_space, Mapping):
        obs_space = space_from_state(dict(obs_space))
    if isinstance(act_space, Mapping):
        act_space = space_from_state(dict(act_space))
    with weights_will_be_loaded():
        return cls(obs_space, act_space, dict(spec.get("config") or {}))


class TorchPolicy(Policy):
    """A torch policy over Box or Discrete spaces, with separate policy and value MLPs.

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Box or Discrete space.
    :param config: at least ``model`` (RLlib's model config), ``lr``, ``seed``
        (int or None) and ``grad_clip``; kept whole as :attr:`config`.
    """

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        import gymnasium as gym

        self.observation_space = observation_space
        self.action_space = action_space
        self.config = dict(config)
        init_seed, sample_seed = _seeds(self.config.get("seed"))
        with torch.random.fork_rng(devices=[]):  # building nn.Linear draws from the global RNG
            self.model = PPOTorchModel(observation_space, action_space, self.config.get("model") or {},
                                       generator=torch.Generator().manual_seed(init_seed))
        self.dist_class: type[TorchDistribution] = dist_class_for(action_space)
        self._optimizer: torch.optim.Optimizer | None = None  # made on first use (see optimizer)
        self._pending_optimizer_state: Any = None
        self.generator = torch.Generator()
        self.generator.manual_seed(sample_seed)
        self.global_timestep = 0
        self.num_grad_updates = 0
        self._discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
        self._discrete_actions = isinstance(action_space, gym.spaces.Discrete)
        self._action_offset = int(action_space.start) if self._discrete_actions else 0
        self._action_shape = tuple(action_space.shape or ())
        #: Act on single observations with the numpy fast path (see :meth:`compute_actions`).
        self.fast_inference = True
        self._np_cache: tuple[tuple[Any, ...], Any] | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The Adam optimizer, made on first use (serving never needs one: making it costs
        seconds of imports), with any restored optimizer state loaded into it."""
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
            if self._pending_optimizer_state is not None:
                self._optimizer.load_state_dict(optimizer_state_from_tree(self._pending_optimizer_state))
                self._pending_optimizer_state = None
        return self._optimizer

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=float(self.config.get("lr", 5e-5)),
                                eps=float(self.config.get("adam_epsilon", 1e-8)), fused=True)

    # -- tensors -------------------------------------------------------------

    def obs_to_tensor(self, obs_batch: Any) -> torch.Tensor:
        """A batch of observations as the model's input tensor (int64 for Discrete, else float32)."""
        arr = np.asarray(obs_batch, dtype=np.int64 if self._discrete_obs else np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr)

    def actions_to_tensor(self, actions: Any) -> torch.Tensor:
        """Env actions as the distribution's input: int64 indices, or float32 ``[batch, d]``."""
        if self._discrete_actions:
            arr = np.asarray(actions, dtype=np.int64)
            if self._action_offset:
                arr = arr - self._action_offset
        else:
            arr = np.asarray(actions, dtype=np.float32)
            arr = arr.reshape(arr.shape[0], -1)
        return torch.from_numpy(np.array(arr, copy=not arr.flags.writeable))

    # -- acting --------------------------------------------------------------

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, [], extra)``.

        Discrete actions are int64; Box actions float32 and not clipped to the
        space's bounds. ``extra`` holds ``action_logp``, ``action_dist_inputs``
        and ``vf_preds``.

        :param explore: sample from the distribution (True, also for None) or act greedily.
        """
        arr = np.asarray(obs_batch, dtype=np.int64 if self._discrete_obs else np.float32)
        sample = explore is None or bool(explore)
        if arr.shape[:1] == (1,) and self.fast_inference:
            layers = self._numpy_layers()
            if layers is not None:
                return self._compute_actions_numpy(arr, layers, sample)
        obs = self.obs_to_tensor(arr)
        with intra_op_threads(1) if obs.shape[0] <= SMALL_BATCH else _no_change(), torch.inference_mode():
            dist_inputs, vf = self.model(obs)
            dist = self.dist_class(dist_inputs)
            if sample:
                actions = dist.sample(self.generator)
            else:
                actions = dist.deterministic_sample()
            logp = dist.logp(actions)
        self.global_timestep += int(obs.shape[0])
        acts = actions.numpy()
        if self._discrete_actions:
            if self._action_offset:
                acts = acts + self._action_offset
        else:
            acts = acts.reshape((acts.shape[0], *self._action_shape))
        extra = {"action_logp": logp.numpy(), "action_dist_inputs": dist_inputs.numpy(),
                 "vf_preds": vf.numpy()}
        return acts, [], extra

    # -- the numpy fast path -------------------------------------------------------

    def _numpy_layers(self) -> Any:
        """The model's layers as numpy views of its parameters, or None when the fast path can't run it.

        The arrays share memory with the parameters, so in-place updates
        (optimizer steps, :meth:`set_weights`, :meth:`set_state`,
        ``load_state_dict``) are seen at once; the cache is rebuilt whenever a
        module or a parameter's storage was replaced (``p.data = ...``, ``.to()``).
        """
        model = self.model
        cache = self._np_cache
        if cache is not None:
            params = cache[1][0]
            if cache[0] == (model, model.pi, model.vf, [p.data_ptr() for p in params]):
                return cache[1][1]
        self._np_cache = None
        if type(model) is not PPOTorchModel or self.dist_class not in (TorchCategorical, TorchDiagGaussian):
            return None
        built = numpy_mlp_layers(model)
        if built is None:
            return None
        params = list(model.parameters())
        self._np_cache = ((model, model.pi, model.vf, [p.data_ptr() for p in params]), (params, built))
        return built

    def _compute_actions_numpy(self, arr: np.ndarray, layers: Any, sample: bool
                               ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """:meth:`compute_actions` for one observation, in numpy.

        The same maths as the torch path, with the same draws from
        :attr:`generator` (so it stays deterministic and checkpoint-exact);
        results may differ from the torch path's by float rounding (about 1e-7):
        the ``action_logp`` and ``vf_preds`` recorded here are not bit-identical
        to a training forward pass, which the PPO loss tolerates.
        """
        preprocess, pi_layers, vf_layers = layers
        x = preprocess(arr)
        dist_inputs = _numpy_mlp(x, pi_layers)
        vf = _numpy_mlp(x, vf_layers)[:, 0]
        if self.dist_class is TorchCategorical:
            z = dist_inputs - dist_inputs.max(-1, keepdims=True)
            e = np.exp(z)
            total = e.sum(-1, keepdims=True)
            log_probs = z - np.log(total)
            if sample:
                cdf = np.cumsum(e / total, -1)
                u = torch.rand((cdf.shape[0], 1), generator=self.generator, dtype=torch.float32).numpy()
                actions = np.minimum((cdf < u).sum(-1), cdf.shape[-1] - 1)
            else:
                actions = dist_inputs.argmax(-1)
            logp = log_probs[np.arange(len(actions)), actions]
            actions = actions.astype(np.int64, copy=False)
            acts = actions + self._action_offset if self._action_offset else actions
        else:
            mean, log_std = np.split(dist_inputs, 2, axis=-1)
            std = np.exp(log_std)
            if sample:
                noise = torch.randn(mean.shape, generator=self.generator, dtype=torch.float32).numpy()
                actions = mean + std * noise
            else:
                actions = mean.copy()
            zs = (actions - mean) / std
            logp = (np.float32(-0.5) * np.square(zs) - log_std - np.float32(_HALF_LOG_2PI)).sum(-1)
            acts = actions.reshape((actions.shape[0], *self._action_shape))
        self.global_timestep += int(arr.shape[0])
        extra = {"action_logp": logp.astype(np.float32, copy=False), "action_dist_inputs": dist_inputs,
                 "vf_preds": vf.astype(np.float32, copy=False)}
        return acts, [], extra

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

    def compute_values(self, obs_batch: Any) -> np.ndarray:
        """The value function's predictions, float32 ``[batch]``."""
        with torch.inference_mode():
            return self.model.value(self.obs_to_tensor(obs_batch)).numpy()

    # -- weights and state ---------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """The model's weights as numpy copies, by parameter name."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy weights returned by :meth:`get_weights` into the model (in place)."""
        own = self.model.state_dict()
        missing = set(own) - set(weights)
        if missing:
            raise KeyError(f"weights are missing {sorted(missing)}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(torch.from_numpy(np.array(weights[name], dtype=np.float32, copy=True)))

    def num_params(self) -> int:
        """The number of model parameters."""
        return sum(p.numel() for p in self.model.parameters())

    def policy_spec_state(self) -> dict[str, Any]:
        """What :meth:`build_from_spec` needs: class, spaces and portable config."""
        return {
            "policy_class": type(self),
            "observation_space": space_to_state(self.observation_space),
            "action_space": space_to_state(self.action_space),
            "config": portable_config(self.config),
        }

    def get_state(self) -> dict[str, Any]:
        """The whole state: spec, weights, optimizer, sampling generator, counters."""
        return {
            "policy_spec": self.policy_spec_state(),
            "weights": self.get_weights(),
            "optimizer": (copy.deepcopy(self._pending_optimizer_state) if self._optimizer is None
                          and self._pending_optimizer_state is not None
                          else optimizer_state_to_tree(self.optimizer.state_dict())),
            "generator": self.generator.get_state().numpy().copy(),
            "global_timestep": int(self.global_timestep),
            "num_grad_updates": int(self.num_grad_updates),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply a state from :meth:`get_state` (keys that are absent are left as they are)."""
        if "weights" in state:
            self.set_weights(state["weights"])
        if state.get("optimizer") is not None:
            if self._optimizer is None:
                self._pending_optimizer_state = copy.deepcopy(state["optimizer"])
            else:
                self._optimizer.load_state_dict(optimizer_state_from_tree(state["optimizer"]))
        if state.get("generator") is not None:
            gen = np.ascontiguousarray(np.asarray(state["generator"], dtype=np.uint8))
            self.generator.set_state(torch.from_numpy(gen.copy()))
        if "global_timestep" in state:
            self.global_timestep = int(state["global_timestep"])
        if "num_grad_updates" in state:
            self.num_grad_updates = int(state["num_grad_updates"])

    @classmethod
    def build_from_spec(cls, spec: Mapping[str, Any]) -> TorchPolicy:
        """A policy to :meth:`set_state` into, from a ``policy_spec`` state (spaces as states or
        as spaces). Its weights are not initialised: the state's replace them."""
        return build_from_spec(cls, spec)
