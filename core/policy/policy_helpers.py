"""Helpers every policy shares, in any framework: seeds, state views, the portable part of a
config, a policy built from a saved ``policy_spec``, and what ``model.json`` says about the
spaces. Imports neither torch nor tensorflow (:mod:`amber.policy.torch_utils` re-exports them)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np

from amber.models.build_budget import weights_will_be_loaded
from amber.names import is_nameable, name_of
from amber.policy.spaces import space_from_state
from amber.scoped import scoped

__all__ = ["action_info", "build_from_spec", "check_no_unknown_weights", "policy_seeds", "portable_config",
           "state_views", "views_wanted"]

T = TypeVar("T")


def policy_seeds(seed: int | None, n: int, *, salt: tuple[int, ...] = ()) -> tuple[int, ...]:
    """``n`` independent 64-bit seeds from one user seed (fresh random ones when it is None).

    :param salt: mixed into the seed (``SeedSequence([seed, *salt])``), so that two policy
        classes draw different seeds from the same user seed.
    """
    entropy = None if seed is None else [int(seed), *salt] if salt else int(seed)
    return tuple(int(s) for s in np.random.SeedSequence(entropy).generate_state(n, dtype=np.uint64))


_VIEWS: ContextVar[bool] = ContextVar("amber_state_views", default=False)


def state_views() -> AbstractContextManager[None]:
    """Inside the block, policies' :meth:`get_state` hands out numpy *views* of their CPU tensors
    (weights, optimizer moments) instead of copies (:func:`views_wanted`).

    For a caller that uses the state before anything changes the policy: a synchronous save
    writes them as they are, a background save copies them once (:mod:`amber.async_save`).
    """
    return scoped(_VIEWS, True)


def views_wanted() -> bool:
    """Whether the caller is inside :func:`state_views`."""
    return _VIEWS.get()

_DROP = object()


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


def build_from_spec(cls: type[T], spec: Mapping[str, Any]) -> T:
    """``cls(observation_space, action_space, config)`` from a ``policy_spec`` state, without
    initialising weights (a saved state is about to replace them)."""
    obs_space, act_space = spec["observation_space"], spec["action_space"]
    if isinstance(obs_space, Mapping):
        obs_space = space_from_state(dict(obs_space))
    if isinstance(act_space, Mapping):
        act_space = space_from_state(dict(act_space))
    with weights_will_be_loaded():
        return cls(obs_space, act_space, dict(spec.get("config") or {}))  # type: ignore[call-arg]


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


def check_no_unknown_weights(owner: str, weights: Mapping[str, Any], own: Any) -> None:
    """Refuse weights that are none of the model's (``own``: its parameter names), naming them: a
    ``set_weights`` would otherwise drop them silently (weights of another network, or misnamed).

    :raises KeyError: naming the unknown keys and the model's.
    """
    unknown = sorted(str(k) for k in weights if k not in own)
    if unknown:
        raise KeyError(f"{owner}.set_weights: {unknown} are not weights of this policy's model "
                       f"(its weights: {sorted(own)})")
