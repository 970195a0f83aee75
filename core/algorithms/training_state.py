"""The pieces of an algorithm's state that are not its policies, as checkpoint components.

An algorithm names what its checkpoint holds in one place,
:meth:`amber.algorithms.algorithm.Algorithm.checkpoint_components`; each
component there is captured and restored by the plugins' hooks
(``amber_capture_state``/``amber_restore_state``, the in-tree
:mod:`amber.plugins.object_state` handles RNGs and anything with
``get_state``/``set_state``). The classes here are those components.
Each ``set_state`` checks the whole incoming state before it changes anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np

from amber.errors import CheckpointError, InvalidStateError

__all__ = ["LazyRNG", "PerPolicyCounts", "PerPolicyValues", "RNGMixin", "TorchGlobalRNG", "TrainingProgress",
           "UpdateCounters"]

#: The step counters every algorithm keeps, and their start values.
COUNTERS: dict[str, int | float] = {
    "num_env_steps_sampled_lifetime": 0,
    "num_agent_steps_sampled_lifetime": 0,
    "num_env_steps_trained_lifetime": 0,
    "num_agent_steps_trained_lifetime": 0,
    "time_total_s": 0.0,
}
#: How many finished episodes' returns are kept for ``episode_return_mean``.
RECENT = 100
_G = TypeVar("_G")


def _bad(what: str, value: Any) -> CheckpointError:
    shown = f"{type(value).__name__} {str(value)[:80]!r}"
    return InvalidStateError(f"checkpoint state {what} is malformed: {shown}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(what, value)
    return float(value)


class TrainingProgress:
    """Where training stands: iterations done, step counters, episodes finished, recent episode returns.

    ``episodes_total`` counts every episode finished since training began (RLlib's and Tune's
    ``episodes_total``); the returns are kept for the last :data:`RECENT` episodes only.
    """

    def __init__(self) -> None:
        self.iteration = 0
        self.counters: dict[str, Any] = dict(COUNTERS)
        self.episodes_total = 0
        self.recent_returns: list[float] = []
        self.recent_policy_returns: dict[str, list[float]] = {}

    def record(self, metrics: Mapping[str, Any]) -> None:
        """Count a sampling round's steps and keep its finished episodes' returns."""
        self.counters["num_env_steps_sampled_lifetime"] += int(metrics["num_env_steps"])
        self.counters["num_agent_steps_sampled_lifetime"] += int(metrics["num_agent_steps"])
        self.episodes_total += len(metrics["episode_returns"])
        self.recent_returns = (self.recent_returns + list(metrics["episode_returns"]))[-RECENT:]
        for pid, rets in metrics.get("agent_episode_returns", {}).items():
            self.recent_policy_returns[pid] = (self.recent_policy_returns.get(pid, []) + list(rets))[-RECENT:]

    def keep_policies(self, policy_ids: Iterable[str]) -> None:
        """Forget the recent returns of every policy but these (one removed, or not restored): a
        result reports only the algorithm's policies, and a later policy of that id starts afresh."""
        keep = set(policy_ids)
        self.recent_policy_returns = {k: v for k, v in self.recent_policy_returns.items() if k in keep}

    def return_mean(self) -> float:
        """The mean return of the recent episodes (NaN: none ended yet): a result's
        ``episode_return_mean``."""
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    def get_state(self) -> dict[str, Any]:
        """The progress as a state tree."""
        return {"iteration": self.iteration, "counters": dict(self.counters),
                "episodes_total": self.episodes_total, "recent_returns": list(self.recent_returns),
                "recent_policy_returns": {k: list(v) for k, v in self.recent_policy_returns.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output (returns may be absent: another system's checkpoint).

        A state without ``episodes_total`` (saved by an amber that did not count episodes yet, or
        another system's) counts the episodes whose returns it holds, ``len(recent_returns)``:
        what that amber reported as ``episodes_total`` (at most :data:`RECENT`). Counters without
        ``num_agent_steps_trained_lifetime`` (an amber that counted agent steps as
        ``num_env_steps_trained_lifetime``) take that value for it; the env steps stay as saved.
        """
        iteration = _count(state.get("iteration"), "progress.iteration")
        counters = state.get("counters")
        if not isinstance(counters, Mapping):
            raise _bad("progress.counters", counters)
        unknown = sorted(str(k) for k in counters if k not in COUNTERS)
        if unknown:  # only amber's counters: a name from the file must not survive a rollback
            raise _bad("progress.counters (unknown counter)", unknown[0])
        parsed = {k: _number(v, f"progress.counters.{k}") for k, v in counters.items()}
        if "num_agent_steps_trained_lifetime" not in parsed and "num_env_steps_trained_lifetime" in parsed:
            # saved before amber counted it: its num_env_steps_trained counted the agent steps trained
            parsed["num_agent_steps_trained_lifetime"] = parsed["num_env_steps_trained_lifetime"]
        what = "progress.recent_returns"
        recent = [_number(r, what) for r in _list(state.get("recent_returns", []), what)]
        per_policy = state.get("recent_policy_returns", {})
        if not isinstance(per_policy, Mapping):
            raise _bad("progress.recent_policy_returns", per_policy)
        what = "progress.recent_policy_returns"
        policy_returns = {str(k): [_number(r, what) for r in _list(v, what)] for k, v in per_policy.items()}
        episodes = _count(state.get("episodes_total", len(recent)), "progress.episodes_total")
        self.iteration, self.episodes_total = iteration, episodes
        for key, value in parsed.items():
            self.counters[key] = value if key == "time_total_s" else int(value)
        self.recent_returns = recent[-RECENT:]
        self.recent_policy_returns = {k: v[-RECENT:] for k, v in policy_returns.items()}


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise _bad(what, value)
    return int(value)


def _list(value: Any, what: str) -> Iterable[Any]:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _bad(what, value)
    if len(value) > RECENT:  # never saved longer: refused before each is turned into a float
        raise _bad(f"{what} (more than {RECENT} returns)", f"{len(value)} entries")
    return list(value)


class TorchGlobalRNG:
    """torch's process-wide random generator (initialisations, dropout-free sampling helpers)."""

    def get_state(self) -> np.ndarray:
        """Its state as bytes."""
        import torch

        return torch.get_rng_state().numpy().copy()

    def set_state(self, state: Any) -> None:
        """Apply :meth:`get_state`'s output."""
        import torch

        array = np.asarray(state)
        if array.dtype != np.uint8 or array.ndim != 1:
            raise _bad("rng.torch", array)
        torch.set_rng_state(torch.from_numpy(array.copy()))


class PerPolicyValues(dict):  # type: ignore[type-arg]
    """A float per policy id (e.g. PPO's adaptive KL coefficients); restores the ids it has."""

    kind: type = float

    def get_state(self) -> dict[str, Any]:
        """The values by policy id."""
        return {str(k): self.kind(v) for k, v in self.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Set the values of the policies present (others in the state are ignored)."""
        if not isinstance(state, Mapping):
            raise _bad("a per-policy value map", state)
        parsed = {k: self.kind(_number(v, f"per-policy value {k!r}")) for k, v in state.items() if k in self}
        self.update(parsed)


class PerPolicyCounts(PerPolicyValues):
    """An int per policy id (e.g. DQN's env step of each policy's last target sync)."""

    kind = int


class UpdateCounters:
    """Off-policy learning's counters: updates made, and the fractional credit toward the next one."""

    def __init__(self) -> None:
        self.num_updates = 0
        self.update_credit = 0.0

    def get_state(self) -> dict[str, Any]:
        """The counters."""
        return {"num_updates": self.num_updates, "update_credit": self.update_credit}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output."""
        updates = _number(state.get("num_updates", 0), "updates.num_updates")
        credit = _number(state.get("update_credit", 0.0), "updates.update_credit")
        self.num_updates, self.update_credit = int(updates), credit


class LazyRNG(Generic[_G]):
    """One of an algorithm's random generators, made on first use.

    Building a generator costs more than an algorithm that only serves its
    policies ever needs (it never draws from it), so the generator is made by
    :meth:`live`. A restore before then keeps the saved state (:meth:`defer`)
    and it is applied when the generator is made: its draws are those of a
    generator built at once and restored.

    :param kind: the class of what ``make`` builds, for a restore to check a saved state
        against before anything is made: a numpy bit generator class (``make`` builds a
        ``numpy.random.Generator`` over one, e.g. ``np.random.PCG64`` for ``default_rng``)
        or ``random.Random``.
    :param make: builds the generator, seeded (no arguments).
    """

    __slots__ = ("_generator", "_make", "_pending", "kind")

    def __init__(self, kind: type, make: Callable[[], _G]) -> None:
        self.kind = kind
        self._make = make
        self._generator: _G | None = None
        self._pending: Callable[[_G], None] | None = None

    @property
    def made(self) -> bool:
        """Whether the generator exists yet."""
        return self._generator is not None

    def live(self) -> _G:
        """The generator, made now if it is not yet (with any deferred state applied)."""
        generator = self._generator
        if generator is None:
            generator = self._make()
            if self._pending is not None:
                self._pending(generator)
                self._pending = None
            self._generator = generator
        return generator

    def defer(self, apply: Callable[[_G], None]) -> None:
        """Apply a restored state: ``apply(generator)`` now if it is made, else when it is
        (a later call replaces an earlier one still waiting).

        :param apply: sets the generator's state; the state must be checked already.
        """
        if self._generator is not None:
            apply(self._generator)
        else:
            self._pending = apply


class RNGMixin:
    """An algorithm's numpy and Python generators (:attr:`np_rng`, :attr:`py_rng`), each made on
    first use from the algorithm's seed; the checkpoint components ``rng.numpy`` and
    ``rng.python`` are their :class:`LazyRNG` holders."""

    _np_rng: LazyRNG[np.random.Generator]
    _py_rng: LazyRNG[random.Random]

    def _seed_rngs(self, seed: int | None) -> None:
        """Hold new generators seeded with ``seed`` (None: fresh entropy), not made yet."""
        self._np_rng = LazyRNG(np.random.PCG64, partial(np.random.default_rng, seed))  # default_rng's
        self._py_rng = LazyRNG(random.Random, partial(random.Random, seed))

    @property
    def np_rng(self) -> np.random.Generator:
        """The algorithm's numpy generator (``np.random.default_rng(seed)``)."""
        return self._np_rng.live()

    @property
    def py_rng(self) -> random.Random:
        """The algorithm's Python generator (``random.Random(seed)``)."""
        return self._py_rng.live()
