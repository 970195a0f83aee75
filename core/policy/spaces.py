"""Gymnasium spaces as state trees, so that a policy checkpoint says what it acts on."""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import numpy as np

from amber.scoped import scoped

__all__ = ["action_dist_dim", "obs_input_dim", "saved_policy_spaces", "space_from_state", "space_to_state",
           "using_saved_spaces"]

_SAVED: ContextVar[Mapping[str, tuple[Any, Any]] | None] = ContextVar("amber_saved_spaces", default=None)


def space_to_state(space: Any) -> dict[str, Any]:
    """A portable description of a Box or Discrete space.

    :raises ValueError: other space types.
    """
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": np.asarray(space.low).copy(), "high": np.asarray(space.high).copy(),
                "dtype": np.dtype(space.dtype).str}
    raise ValueError(f"spaces of type {type(space).__name__} are not supported (Box and Discrete are)")


def space_from_state(state: dict[str, Any]) -> Any:
    """The space :func:`space_to_state` described (a new object each time).

    A description is decoded once per process (at most :data:`MAX_DECODED` kept): later calls get
    a deep copy, which is several times quicker than building a gymnasium ``Box``.

    :raises ValueError: an unknown or malformed description.
    """
    return _from_key(state, _key(state))


def _from_key(state: dict[str, Any], key: tuple[Any, ...] | None) -> Any:
    """:func:`space_from_state` of ``state``, whose :func:`_key` is ``key``."""
    if key is None:
        return _decode(state)
    decoded = _DECODED.get(key)
    if decoded is None:
        decoded = _decode(state)
        if len(_DECODED) >= MAX_DECODED:
            _DECODED.pop(next(iter(_DECODED)), None)
        _DECODED[key] = decoded
    return _copied(decoded)


#: What a decoded space holds that is never changed in place, so that its copy may share it.
_IMMUTABLE = (type(None), bool, int, float, str, tuple, np.generic, np.dtype)


def _copied(space: Any) -> Any:
    """A deep copy of a decoded space: its arrays copied, its immutable attributes shared, anything
    else deep-copied (a quarter of :func:`copy.deepcopy`'s time for a ``Box``)."""
    new = object.__new__(type(space))
    new.__dict__.update({
        k: v.copy() if type(v) is np.ndarray else v if isinstance(v, _IMMUTABLE) else copy.deepcopy(v)
        for k, v in vars(space).items()
    })
    return new


#: How many decoded space descriptions :func:`space_from_state` keeps, the oldest dropped first.
MAX_DECODED = 64
_DECODED: dict[tuple[Any, ...], Any] = {}  # never handed out: callers get copies


def _key(state: Any) -> tuple[Any, ...] | None:
    """What determines the space a well-formed description gives; None for any other."""
    try:
        if state.get("type") == "Discrete":
            return ("Discrete", operator.index(state["n"]), operator.index(state.get("start", 0)))
        if state.get("type") == "Box":
            low, high = np.asarray(state["low"]), np.asarray(state["high"])
            return ("Box", low.dtype.str, low.shape, low.tobytes(), high.dtype.str, high.shape,
                    high.tobytes(), np.dtype(state["dtype"]).str)
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return None


def _decode(state: dict[str, Any]) -> Any:
    import gymnasium as gym

    kind = state.get("type") if isinstance(state, dict) else None
    if kind == "Discrete":
        return gym.spaces.Discrete(int(state["n"]), start=int(state.get("start", 0)))
    if kind == "Box":
        low, high = np.asarray(state["low"]), np.asarray(state["high"])
        return gym.spaces.Box(low=low, high=high, shape=low.shape, dtype=np.dtype(state["dtype"]))
    raise ValueError(f"unknown space description {kind!r}")


def obs_input_dim(observation_space: Any) -> int:
    """The model's input width for an observation space (one-hot width for Discrete).

    :raises ValueError: spaces other than Box and Discrete.
    """
    import gymnasium as gym

    if isinstance(observation_space, gym.spaces.Discrete):
        return int(observation_space.n)
    if isinstance(observation_space, gym.spaces.Box):
        return math.prod(map(int, observation_space.shape))  # (exact: no int64 wrap-around)
    raise ValueError(f"observation spaces of type {type(observation_space).__name__} are not supported")


def action_dist_dim(action_space: Any) -> int:
    """Width of ``action_dist_inputs``: n logits (Discrete) or mean and log_std (Box).

    :raises ValueError: spaces other than Box and Discrete.
    """
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box):
        return 2 * math.prod(map(int, action_space.shape))
    raise ValueError(f"action spaces of type {type(action_space).__name__} are not supported")


def using_saved_spaces(states: Mapping[str, Any]) -> AbstractContextManager[None]:
    """While an algorithm is built to restore ``states`` (policy states by id): each policy's
    spaces as its saved ``policy_spec`` describes them (:func:`saved_policy_spaces`), so that the
    env need not be built to find them. A state without a readable description is left out.

    Equal descriptions give the same space objects, as an env's agents share theirs.
    """
    made: dict[tuple[Any, ...], Any] = {}
    spaces = {}
    for pid, state in states.items():
        try:
            spec = state["policy_spec"]
            spaces[pid] = (_shared(spec["observation_space"], made), _shared(spec["action_space"], made))
        except (KeyError, TypeError, ValueError):
            continue
    return scoped(_SAVED, spaces)


def saved_policy_spaces() -> Mapping[str, tuple[Any, Any]]:
    """The spaces :func:`using_saved_spaces` read, by policy id (empty outside it)."""
    return _SAVED.get() or {}


def _shared(description: Any, made: dict[tuple[Any, ...], Any]) -> Any:
    if not isinstance(description, Mapping):
        raise ValueError("not a space description")
    d = dict(description)
    key = _key(d)
    if key is None:
        return _decode(d)
    if key not in made:
        made[key] = _from_key(d, key)
    return made[key]
