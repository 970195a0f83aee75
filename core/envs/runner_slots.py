"""The env runner's slots: one env copy and its running episode each, and the form a slot takes
in the runner's saved state (:meth:`amber.envs.env_runner.EnvRunner.get_state`; read back by
:func:`amber.envs.runner_state.parse_slot`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.envs.runner_state import Episode
from amber.policy.sample_batch import DEFAULT_POLICY_ID

__all__ = ["Slot", "only_policy", "plain", "single_agent_policy", "slot_state", "unused_mapping_warning"]


class Slot:
    """One env copy and its running episode."""

    def __init__(self, env: Any, index: int) -> None:
        self.env = env
        self.index = index
        self.started = False  # reset at least once (seeded resets happen only the first time)
        self.obs: dict[Any, Any] | None = None  # agents to act next; None: needs a reset
        self.episode = Episode(-1, index)
        self.mapping: dict[Any, str] = {}
        self.ep_return = 0.0
        self.ep_len = 0
        self.agent_returns: dict[Any, float] = {}
        self.pending: dict[Any, list[Any]] = {}  # agent -> [obs, action, extras, reward] awaiting new obs
        self.frags: dict[Any, tuple[str, dict[str, list[Any]]]] = {}

    def new_episode(self, eps_id: int, obs: dict[Any, Any]) -> None:
        """Start episode ``eps_id`` from the agents' first observations ``obs``."""
        self.obs, self.episode = obs, Episode(eps_id, self.index)
        self.mapping, self.agent_returns, self.pending, self.frags = {}, {}, {}, {}
        self.ep_return, self.ep_len = 0.0, 0


def plain(value: Any) -> Any:
    """A copy that is a state-tree leaf: numpy scalars become 0-d arrays."""
    if isinstance(value, (np.ndarray, np.generic)):
        return np.array(value)
    return value


def slot_state(slot: Slot, captured: bool) -> dict[str, Any]:
    """A slot's running episode as the runner's state holds it (``captured``: its env's state is saved)."""
    return {
        "started": slot.started, "captured": captured,
        "obs": None if slot.obs is None else {a: plain(o) for a, o in slot.obs.items()},
        "eps_id": slot.episode.id_, "mapping": dict(slot.mapping), "ep_return": slot.ep_return,
        "ep_len": slot.ep_len, "agent_returns": dict(slot.agent_returns),
        "pending": {a: {"obs": plain(p[0]), "action": plain(p[1]),
                        "extra": {k: plain(v) for k, v in p[2].items()}, "reward": p[3]}
                    for a, p in slot.pending.items()},
    }


def only_policy(policies: Mapping[str, Any]) -> str:
    """The policy that plays every agent when there is no mapping function: ``"default_policy"``,
    or the one policy there is (whatever its id)."""
    if DEFAULT_POLICY_ID not in policies and len(policies) == 1:
        return next(iter(policies))
    return DEFAULT_POLICY_ID


def single_agent_policy(policies: Mapping[str, Any]) -> str | None:
    """The policy a single-agent env's agent plays when no mapping function chooses one that
    exists: ``"default_policy"`` if there is one, else the algorithm's first policy (the one it was
    built with: a policy added later gets no samples unless a mapping says so). It depends on the
    policies alone, so a restore or a rebuilt Ray runner picks the same one. None: no policy."""
    if DEFAULT_POLICY_ID in policies:
        return DEFAULT_POLICY_ID
    return next(iter(policies), None)


def unused_mapping_warning(fn: Any, mapped: Any, played: str) -> str:
    """The warning for a single-agent env whose mapping function names a policy that does not
    exist (a multi-agent template left in the config: amber used to ignore a single-agent env's
    mapping), saying it plays ``played`` instead."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return (f"policy_mapping_fn {name} maps this single-agent env's agent 'agent0' to policy "
            f"{mapped!r}, which does not exist: playing policy {played!r}, as amber did when it "
            "ignored a mapping for a single-agent env. A mapping for a single-agent env is now "
            "used: fix it to return an existing policy id, or remove it")
