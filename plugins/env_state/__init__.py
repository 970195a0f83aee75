"""In-tree plugin: state capture for the environments amber ships with.

Handles gymnasium's CartPole and Pendulum (bare or in the wrapper chain that
``gymnasium.make`` builds) and :class:`~amber.envs.MultiAgentCartPole`, so a
restored environment continues its episode bit-exactly. Other environments
are left to other plugins (or to ``get_state``/``set_state`` on the env,
handled by :mod:`amber.plugins.object_state`). Importing this module imports neither
gymnasium nor the environments: a live env of theirs means they are loaded.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from amber.hookspecs import hookimpl
from amber.state import text_to_wide_ints, wide_ints_to_text

__all__ = ["capture_env", "restore_env"]

#: Wrapper attributes that hold the env's configuration, not its running state.
_CONFIG_ATTRS = frozenset({"env", "_saved_kwargs", "_action_space", "_observation_space", "_metadata",
                           "_cached_spec", "spec"})
_INT64 = (-(2**63), 2**63)


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, float, str)):
        return True
    return isinstance(value, int) and _INT64[0] <= value < _INT64[1]


def _classic(env: Any) -> str | None:
    """``"CartPole"``/``"Pendulum"`` when ``env`` is (a wrapped) one, else None."""
    if "gymnasium" not in sys.modules:
        return None
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    base = getattr(env, "unwrapped", None)
    if type(base) is CartPoleEnv:
        return "CartPole"
    if type(base) is PendulumEnv:
        return "Pendulum"
    return None


def _wrappers(env: Any) -> list[Any]:
    chain = []
    while hasattr(env, "env") and env is not getattr(env, "unwrapped", env):
        chain.append(env)
        env = env.env
    return chain


def _wrapper_state(wrapper: Any) -> dict[str, Any] | None:
    attrs: dict[str, Any] = {}
    previous = vars(wrapper).get("_previous_data", False)
    for name, value in vars(wrapper).items():
        if name in _CONFIG_ATTRS or name == "_previous_data":
            continue
        if not _is_plain(value):
            return None  # a wrapper whose state we do not know
        attrs[name] = value
    if previous is not False:  # PassiveEnvChecker's one-off data-reuse check
        attrs["_previous_data"] = None
        if previous is not None:
            obs, info = previous
            if isinstance(obs, np.ndarray) and info == {}:
                attrs["_previous_data"] = {"obs": obs.copy()}
            else:  # not portable: skip that check after restore
                attrs["checked_data_reuse"] = True
    return {"type": type(wrapper).__qualname__, "attrs": attrs}


def _rng_state(base: Any) -> dict[str, Any] | None:
    rng = base._np_random
    if rng is None:
        return None
    return {"bit_generator": wide_ints_to_text(rng.bit_generator.state),
            "seed": wide_ints_to_text(base._np_random_seed)}


def _set_rng(base: Any, saved: dict[str, Any] | None) -> None:
    if saved is None:
        base._np_random, base._np_random_seed = None, None
        return
    state = text_to_wide_ints(dict(saved["bit_generator"]))
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    base._np_random = np.random.Generator(bit_gen)
    base._np_random_seed = text_to_wide_ints(saved["seed"])


def capture_env(env: Any) -> dict[str, Any] | None:
    """The state tree of a CartPole/Pendulum gymnasium env or a MultiAgentCartPole; None for others."""
    kind = _classic(env)
    if kind is not None:
        wrappers = [_wrapper_state(w) for w in _wrappers(env)]
        if any(w is None for w in wrappers):
            return None
        base = env.unwrapped
        raw = getattr(base, "state", None)  # Pendulum has none before its first reset
        state = None if raw is None else np.array(raw, dtype=np.float64)
        out: dict[str, Any] = {"kind": kind, "wrappers": wrappers, "state": state,
                               "np_random": _rng_state(base)}
        if kind == "CartPole":
            out["steps_beyond_terminated"] = base.steps_beyond_terminated
        else:
            last_u = getattr(base, "last_u", None)
            out["last_u"] = None if last_u is None else np.asarray(last_u).copy()
        return out
    ma = sys.modules.get("amber.envs.multi_agent")
    if ma is not None and type(env) is ma.MultiAgentCartPole:
        subs = [capture_env(e) for e in env.envs]
        if any(s is None for s in subs):
            return None
        return {"kind": "MultiAgentCartPole", "envs": subs, "agents": list(env.agents),
                "terminated": sorted(env.terminated_agents), "truncated": sorted(env.truncated_agents)}
    return None


def restore_env(env: Any, state: dict[str, Any]) -> bool:
    """Apply :func:`capture_env`'s output to a live env of the same kind (False: not one of ours).

    :raises ValueError: the env is of another kind, or wrapped differently, than the saved one.
    """
    kind = _classic(env)
    if kind is not None:
        if state.get("kind") != kind:
            raise ValueError(f"the saved env is a {state.get('kind')}, this one a {kind}")
        chain = _wrappers(env)
        saved = state["wrappers"]
        if [type(w).__qualname__ for w in chain] != [w["type"] for w in saved]:
            raise ValueError(f"the saved {kind} env was wrapped in {[w['type'] for w in saved]}, "
                             f"this one in {[type(w).__qualname__ for w in chain]}")
        for wrapper, wstate in zip(chain, saved, strict=True):
            for name, value in wstate["attrs"].items():
                if name == "_previous_data" and value is not None:
                    value = (np.array(value["obs"]), {})
                setattr(wrapper, name, value)
        base = env.unwrapped
        base.state = None if state["state"] is None else np.array(state["state"], dtype=np.float64)
        _set_rng(base, state["np_random"])
        if kind == "CartPole":
            sbt = state["steps_beyond_terminated"]
            base.steps_beyond_terminated = None if sbt is None else int(sbt)
        else:
            last_u = state["last_u"]
            base.last_u = None if last_u is None else np.asarray(last_u)[()]
        return True
    ma = sys.modules.get("amber.envs.multi_agent")
    if ma is not None and type(env) is ma.MultiAgentCartPole:
        if state.get("kind") != "MultiAgentCartPole" or len(state["envs"]) != len(env.envs):
            raise ValueError(f"the saved env is not a MultiAgentCartPole of {len(env.envs)} agents")
        for sub, sub_state in zip(env.envs, state["envs"], strict=True):
            restore_env(sub, sub_state)
        env.agents = [int(a) for a in state["agents"]]
        env.terminated_agents = {int(a) for a in state["terminated"]}
        env.truncated_agents = {int(a) for a in state["truncated"]}
        return True
    return False


@hookimpl
def amber_capture_state(component: object) -> Any:
    """Capture the environments this module knows."""
    return capture_env(component)


@hookimpl
def amber_restore_state(component: object, state: Any) -> bool | None:
    """Restore the environments this module knows."""
    if not isinstance(state, dict) or "kind" not in state:
        return None
    return True if restore_env(component, state) else None
