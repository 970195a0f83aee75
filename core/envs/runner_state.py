"""The env runner's episodes: how a policy mapping function is called on them, and their saved
state, checked before any is applied (a restore changes nothing until every slot has been read)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from amber.errors import InvalidStateError
from amber.policy.sample_batch import DEFAULT_POLICY_ID

__all__ = ["MAX_ENVS_WITHOUT_STATE", "Episode", "check_env_count", "mapping_caller", "parse_slot"]


class Episode:
    """What a policy mapping function is told about the episode: ``id_`` and ``env_index``."""

    __slots__ = ("env_index", "id_")

    def __init__(self, id_: int, env_index: int) -> None:
        self.id_ = id_
        self.env_index = env_index

    @property
    def episode_id(self) -> int:
        """``id_``, under the old API's name."""
        return self.id_


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidStateError(f"env runner state: {what} must be an int, not {type(value).__name__}")
    return int(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidStateError(f"env runner state: {what} must be a bool, not {type(value).__name__}")
    return bool(value)


def _float(value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidStateError(f"env runner state: {what} must be a number, not {type(value).__name__}")
    return float(value)


def _map(value: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise InvalidStateError(f"env runner state: {what} must be a map, not {type(value).__name__}")
    return value


def parse_slot(saved: Any, index: int, envs: Mapping[str, Any]) -> dict[str, Any]:
    """A saved slot's values, checked, as :class:`amber.envs.runner_slots.Slot` attributes (only
    ``started`` when its episode was not captured, which then restarts)."""
    saved = _map(saved, f"slot {index}")
    started = _bool(saved["started"], f"slot {index} started")
    if not _bool(saved["captured"], f"slot {index} captured"):
        return {"started": started}
    if not started or str(index) not in envs:
        raise InvalidStateError(f"env runner state: slot {index} is captured but its env "
                                "was not started or has no saved state")
    obs = saved["obs"]
    pending = {}
    for agent, p in _map(saved["pending"], f"slot {index} pending").items():
        p = _map(p, f"slot {index} pending[{agent!r}]")
        pending[agent] = [p["obs"], p["action"], dict(_map(p["extra"], "pending extra")),
                          _float(p["reward"], "pending reward")]
    return {
        "started": True,
        "obs": None if obs is None else dict(_map(obs, f"slot {index} obs")),
        "episode": Episode(_int(saved["eps_id"], f"slot {index} eps_id"), index),
        "mapping": {a: _policy_id(p) for a, p in _map(saved["mapping"], f"slot {index} mapping").items()},
        "ep_return": _float(saved["ep_return"], f"slot {index} ep_return"),
        "ep_len": _int(saved["ep_len"], f"slot {index} ep_len"),
        "agent_returns": {a: _float(r, "agent return")
                          for a, r in _map(saved["agent_returns"], f"slot {index} agent_returns").items()},
        "pending": pending,
    }


def _policy_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidStateError(f"env runner state: a policy id must be a str, not {type(value).__name__}")
    return value


def mapping_caller(fn: Callable[..., Any] | None, worker: Any) -> Callable[[Any, Episode], Any]:
    """Call ``fn`` as its signature allows: ``(agent_id, episode, worker)``, with ``worker=`` or without."""
    if fn is None:
        return lambda agent, episode: DEFAULT_POLICY_ID
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return lambda agent, episode: fn(agent, episode, worker)
    for args, kwargs in (((0, 1, 2), {}), ((0, 1), {"worker": 2}), ((0, 1), {})):
        try:
            sig.bind(*args, **kwargs)
        except TypeError:
            continue
        if len(args) == 3:
            return lambda agent, episode: fn(agent, episode, worker)
        if kwargs:
            return lambda agent, episode: fn(agent, episode, worker=worker)
        return lambda agent, episode: fn(agent, episode)
    return lambda agent, episode: fn(agent, episode, worker)


#: How many env copies a checkpoint that saved no environment state (another system's) may
#: declare: each is built when sampling starts, so the count is bounded up front.
MAX_ENVS_WITHOUT_STATE = 1024


def check_env_count(own: Mapping[str, Any], declared: Any, path: str | os.PathLike[str]) -> None:
    """The declared number of env copies must be the number saved (or small when none was saved).

    :raises InvalidStateError: it is not, so building them could take any time or memory.
    """
    runner = (own.get("components") or {}).get("env_runner")
    slots = runner.get("slots") if isinstance(runner, Mapping) else None
    if isinstance(slots, list):
        if declared != len(slots):
            raise InvalidStateError(
                f"{path}: config.num_envs_per_env_runner is {declared!r} but the checkpoint holds the "
                f"state of {len(slots)} env copies", path=path)
    elif not isinstance(declared, int) or declared > MAX_ENVS_WITHOUT_STATE:
        raise InvalidStateError(
            f"{path}: config.num_envs_per_env_runner is {declared!r}, more than the "
            f"{MAX_ENVS_WITHOUT_STATE} env copies a checkpoint without environment state may declare",
            path=path)
