"""The env runner's saved episodes, checked before any is applied (a restore changes nothing
until every slot has been read)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.errors import InvalidStateError

__all__ = ["Episode", "parse_slot"]


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
    """A saved slot's values, checked, as :class:`_Slot` attributes (only ``started`` when its
    episode was not captured, which then restarts)."""
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
