"""Restoring the environments :mod:`amber.plugins.env_state` captures: checked whole, then applied.

:func:`plan_env` checks a saved env state against the live env and returns
the assignments that apply it; nothing is changed until every part passed.
Of each wrapper exactly its running state is restored (the attributes
:func:`~amber.plugins.env_state.kinds.state_attrs` names, each with a value of
the live one's kind, a count within what the live wrapper can reach);
configuration an earlier amber saved with it (``TimeLimit._max_episode_steps``)
is checked and never applied, and any other name is refused. The env's
generator is rebuilt from the table of bit generators. Every refusal is a
:class:`~amber.errors.CheckpointError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.errors import CheckpointError, warn
from amber.plugins.env_state.kinds import (
    INT64,
    classic,
    is_multi_agent_cartpole,
    saved_config,
    state_attrs,
    wrappers,
)
from amber.rng_state import bad, checked_bit_generator, checked_int

__all__ = ["Assignment", "plan_env"]

#: (object, attribute name, value): one change a restore makes.
Assignment = tuple[object, str, Any]
#: The shape of the base env's ``state`` by kind.
_SHAPES = {"CartPole": (4,), "Pendulum": (2,)}
#: The keys of a saved state by kind (besides ``kind``).
_KEYS = {"CartPole": {"wrappers", "state", "np_random", "steps_beyond_terminated"},
         "Pendulum": {"wrappers", "state", "np_random", "last_u"},
         "MultiAgentCartPole": {"envs", "agents", "terminated", "truncated"}}
#: Wrapper attributes that may be saved as None while the live one holds a value (not yet reset).
_NULLABLE = frozenset({("TimeLimit", "_elapsed_steps")})
_MAX_TEXT = 1024
_KINDS = (("bool", (bool, np.bool_)), ("int", (int, np.integer)), ("float", (float, np.floating)))


def plan_env(env: Any, state: Any, key: str) -> list[Assignment] | None:
    """The assignments that apply ``state`` to ``env``; None when ``env`` is not one of ours.

    :raises CheckpointError: the state does not fit this env (the key named).
    """
    kind = classic(env)
    if kind is not None:
        return _plan_classic(env, kind, state, key)
    if is_multi_agent_cartpole(env):
        return _plan_multi(env, state, key)
    return None


def _check_keys(state: Any, kind: str, key: str) -> Mapping[str, Any]:
    if not isinstance(state, Mapping):
        raise bad(key, "expected an env state map", state)
    if state.get("kind") != kind:
        raise CheckpointError(f"saved state {key!r} is of a {str(state.get('kind'))[:60]!r} env, "
                              f"this one is a {kind}")
    missing, extra = _KEYS[kind] - set(state), set(state) - _KEYS[kind] - {"kind"}
    if missing or extra:
        raise bad(key, f"{kind} state keys missing {sorted(missing)}, unknown {sorted(map(str, extra))}")
    return state


def _plan_classic(env: Any, kind: str, state: Any, key: str) -> list[Assignment]:
    state = _check_keys(state, kind, key)
    chain, saved = wrappers(env), state["wrappers"]
    if not isinstance(saved, list) or not all(isinstance(w, Mapping) and set(w) == {"type", "attrs"}
                                              for w in saved):
        raise bad(f"{key}.wrappers", "expected a list of {type, attrs} maps", saved)
    names = [type(w).__qualname__ for w in chain]
    if names != [w["type"] for w in saved]:
        shown = [str(w["type"])[:60] for w in saved]
        raise CheckpointError(f"saved state {key!r} is of a {kind} env wrapped in {shown}, "
                              f"this one is wrapped in {names}")
    plan: list[Assignment] = []
    for i, (wrapper, wstate) in enumerate(zip(chain, saved, strict=True)):
        plan += _plan_wrapper(wrapper, wstate["attrs"], f"{key}.wrappers[{i}].attrs")
    base = env.unwrapped
    plan.append((base, "state", _base_state(state["state"], _SHAPES[kind], f"{key}.state")))
    plan += _plan_rng(base, state["np_random"], f"{key}.np_random")
    if kind == "CartPole":
        sbt = state["steps_beyond_terminated"]
        if sbt is not None:  # counts the steps taken after termination: never negative
            sbt = checked_int(sbt, f"{key}.steps_beyond_terminated", 0, INT64[1])
        plan.append((base, "steps_beyond_terminated", sbt))
    else:
        plan.append((base, "last_u", _last_u(state["last_u"], f"{key}.last_u")))
    return plan


def _plain_kind(value: Any) -> str | None:
    if value is None:
        return "none"
    for kind, types in _KINDS:
        if isinstance(value, types):
            return kind
    return "str" if isinstance(value, str) else None


def _plan_wrapper(wrapper: Any, attrs: Any, key: str) -> list[Assignment]:
    """The assignments of a wrapper's running state; its saved configuration is checked, not applied."""
    if not isinstance(attrs, Mapping):
        raise bad(key, "expected a map of attributes", attrs)
    names, live, plan = state_attrs(wrapper), vars(wrapper), []
    if names is None:  # saved by an earlier amber, which restored any plain attribute
        if attrs:
            warn(f"saved state {key!r}: the attributes of {type(wrapper).__qualname__} are not restored "
                 "(amber restores the running state of the wrappers gymnasium.make adds, and cannot tell "
                 "this wrapper's state from its configuration): it keeps its values as built")
        return []
    config = saved_config(wrapper)
    for name, value in attrs.items():
        where = f"{key}.{name}"
        if not isinstance(name, str):
            raise bad(where, "an attribute name must be a str", name)
        if name == "_previous_data" and name in names and name in live:
            plan.append((wrapper, name, _previous_data(wrapper, value, where)))
        elif name in names and name in live and _plain_kind(live[name]):
            value = _same_kind(wrapper, name, live[name], value, where)
            plan.append((wrapper, name, _counted(wrapper, name, value, where)))
        elif name in config and name in live:  # configuration: the live env's, built from the config
            _same_kind(wrapper, name, live[name], value, where)
        else:
            raise CheckpointError(f"saved state {where!r}: {type(wrapper).__qualname__} has no running-state "
                                  "attribute of that name to restore")
    missing = sorted(n for n in names if n in live and n not in attrs)
    if missing:
        raise bad(key, f"lacks the attributes {missing} of the live {type(wrapper).__qualname__}")
    return plan


def _same_kind(wrapper: Any, name: str, live: Any, value: Any, where: str) -> Any:
    """``value`` as a Python scalar when it is of the live value's kind (None: see ``_NULLABLE``)."""
    saved, current = _plain_kind(value), _plain_kind(live)
    nullable = (type(wrapper).__qualname__, name) in _NULLABLE
    fits = saved == current or current == "none" or (saved == "none" and nullable)
    if saved is None or not fits:
        raise bad(where, f"expected a value of the kind {current} (as the live attribute)", value)
    if saved == "int" and not INT64[0] <= int(value) < INT64[1]:
        raise bad(where, "an integer out of the 64-bit range", value)
    if saved == "str" and len(value) > _MAX_TEXT:
        raise bad(where, f"a string of over {_MAX_TEXT} characters")
    return value.item() if isinstance(value, np.generic) else value


def _counted(wrapper: Any, name: str, value: Any, where: str) -> Any:
    """``value`` when it is a count the live wrapper could have reached: ``TimeLimit._elapsed_steps``
    in ``[0, _max_episode_steps]`` (the live limit; a negative count had lifted it: no episode ended)."""
    if (type(wrapper).__qualname__, name) != ("TimeLimit", "_elapsed_steps") or value is None:
        return value
    limit = getattr(wrapper, "_max_episode_steps", None)
    known = isinstance(limit, (int, np.integer)) and not isinstance(limit, bool)
    high = int(limit) if known else INT64[1] - 1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise bad(where, f"a step count out of [0, {high}] (the live TimeLimit's max_episode_steps)", value)
    return value


def _previous_data(wrapper: Any, value: Any, where: str) -> Any:
    """PassiveEnvChecker's last (obs, info), saved as None or ``{"obs": array}``."""
    if value is None:
        return None
    space = getattr(wrapper, "observation_space", None)
    obs = value.get("obs") if isinstance(value, Mapping) and set(value) == {"obs"} else None
    shape, dtype = getattr(space, "shape", None), getattr(space, "dtype", None)
    if not isinstance(obs, np.ndarray) or obs.shape != shape or obs.dtype != dtype:
        raise bad(where, f"expected None or {{'obs': {dtype} array of shape {shape}}}", value)
    return (obs.copy(), {})


def _base_state(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.shape != shape:
        raise bad(where, f"expected None or a numeric array of shape {shape}", value)
    if not np.isfinite(value).all():
        raise bad(where, "expected finite values")
    return np.array(value, dtype=np.float64)


def _last_u(value: Any, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.shape != () \
            or not math.isfinite(float(value)):
        raise bad(where, "expected None or a finite float", value)
    return value[()]


def _plan_rng(base: Any, saved: Any, key: str) -> list[Assignment]:
    if saved is None:
        return [(base, "_np_random", None), (base, "_np_random_seed", None)]
    if not isinstance(saved, Mapping) or set(saved) != {"bit_generator", "seed"}:
        raise bad(key, "expected None or a map with the keys bit_generator, seed", saved)
    generator = np.random.Generator(checked_bit_generator(saved["bit_generator"], f"{key}.bit_generator"))
    seed = saved["seed"]
    seed = None if seed is None else checked_int(seed, f"{key}.seed", -1, 2**256)
    return [(base, "_np_random", generator), (base, "_np_random_seed", seed)]


def _agent_ids(value: Any, possible: list[int], key: str) -> list[int]:
    if not isinstance(value, list) or len(value) > len(possible):
        raise bad(key, f"expected a list of agent ids among {possible}", value)
    ids = [checked_int(a, f"{key}[{i}]", 0, len(possible)) for i, a in enumerate(value)]
    if len(set(ids)) != len(ids):
        raise bad(key, "an agent id is listed twice", value)
    return ids


def _plan_multi(env: Any, state: Any, key: str) -> list[Assignment]:
    state = _check_keys(state, "MultiAgentCartPole", key)
    subs = state["envs"]
    if not isinstance(subs, list) or len(subs) != len(env.envs):
        raise bad(f"{key}.envs", f"expected a list of {len(env.envs)} CartPole states", subs)
    plan: list[Assignment] = []
    for i, (sub, sub_state) in enumerate(zip(env.envs, subs, strict=True)):
        plan += _plan_classic(sub, "CartPole", sub_state, f"{key}.envs[{i}]")
    possible = list(env.possible_agents)
    return [*plan, (env, "agents", _agent_ids(state["agents"], possible, f"{key}.agents")),
            (env, "terminated_agents", set(_agent_ids(state["terminated"], possible, f"{key}.terminated"))),
            (env, "truncated_agents", set(_agent_ids(state["truncated"], possible, f"{key}.truncated")))]
