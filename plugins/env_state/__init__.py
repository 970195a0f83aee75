"""In-tree plugin: state capture for the environments amber ships with.

Handles gymnasium's CartPole and Pendulum (bare or in the wrapper chain that
``gymnasium.make`` builds) and :class:`~amber.envs.MultiAgentCartPole`, so a
restored environment continues its episode bit-exactly. Other environments
are left to other plugins (or to ``get_state``/``set_state`` on the env,
handled by :mod:`amber.plugins.object_state`). Importing this module imports neither
gymnasium nor the environments: a live env of theirs means they are loaded.

Of a wrapper, only its running state is saved and restored: the attributes
:data:`~amber.plugins.env_state.kinds.WRAPPER_STATE` lists for each wrapper
``gymnasium.make`` adds (``TimeLimit._elapsed_steps``, not its
``_max_episode_steps``: configuration comes from the algorithm's config, never
from a checkpoint). An env inside any other wrapper that holds attributes of
its own is not captured. A restore checks the whole saved state against the
live env before it changes anything (:mod:`amber.plugins.env_state.restore`),
the generator is rebuilt from a fixed table of kinds, and any mismatch is a
CheckpointError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amber.hookspecs import hookimpl
from amber.plugins.env_state.kinds import classic, is_multi_agent_cartpole, is_plain, state_attrs, wrappers
from amber.plugins.env_state.restore import plan_env
from amber.state import wide_ints_to_text

__all__ = ["capture_env", "restore_env"]


def _wrapper_state(wrapper: Any) -> dict[str, Any] | None:
    """A wrapper's running state (:func:`~amber.plugins.env_state.kinds.state_attrs`), or None when
    amber does not know which of its attributes are state."""
    names = state_attrs(wrapper)
    if names is None:
        return None
    attrs: dict[str, Any] = {}
    previous = vars(wrapper).get("_previous_data", False) if "_previous_data" in names else False
    for name, value in vars(wrapper).items():
        if name not in names or name == "_previous_data":
            continue
        if not is_plain(value):
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


def capture_env(env: Any) -> dict[str, Any] | None:
    """The state tree of a CartPole/Pendulum gymnasium env or a MultiAgentCartPole; None for others."""
    kind = classic(env)
    if kind is not None:
        chain = [_wrapper_state(w) for w in wrappers(env)]
        if any(w is None for w in chain):
            return None
        base = env.unwrapped
        raw = getattr(base, "state", None)  # Pendulum has none before its first reset
        state = None if raw is None else np.array(raw, dtype=np.float64)
        out: dict[str, Any] = {"kind": kind, "wrappers": chain, "state": state,
                               "np_random": _rng_state(base)}
        if kind == "CartPole":
            out["steps_beyond_terminated"] = base.steps_beyond_terminated
        else:
            last_u = getattr(base, "last_u", None)
            out["last_u"] = None if last_u is None else np.asarray(last_u).copy()
        return out
    if is_multi_agent_cartpole(env):
        subs = [capture_env(e) for e in env.envs]
        if any(s is None for s in subs):
            return None
        return {"kind": "MultiAgentCartPole", "envs": subs, "agents": list(env.agents),
                "terminated": sorted(env.terminated_agents), "truncated": sorted(env.truncated_agents)}
    return None


def restore_env(env: Any, state: Any, key: str = "env") -> bool:
    """Apply :func:`capture_env`'s output to a live env of the same kind (False: not one of ours).

    The whole state is checked first (:func:`~amber.plugins.env_state.restore.plan_env`): on
    any error the env is left exactly as it was.

    :param key: where the state is in the checkpoint, for messages.
    :raises CheckpointError: the state does not fit this env: another kind, other wrappers, an
        attribute the wrapper does not have as plain data, a value of another kind, a malformed
        generator state (the key named).
    """
    plan = plan_env(env, state, key)
    if plan is None:
        return False
    for obj, name, value in plan:  # names checked by plan_env: plain data the live object has
        setattr(obj, name, value)
    return True


@hookimpl
def amber_capture_state(component: object) -> Any:
    """Capture the environments this module knows."""
    return capture_env(component)


@hookimpl
def amber_restore_state(component: object, state: Any, key: str) -> bool | None:
    """Restore the environments this module knows."""
    if not isinstance(state, dict) or "kind" not in state:
        return None
    return True if restore_env(component, state, key) else None
