"""Which environments :mod:`amber.plugins.env_state` knows, and their wrapper chains.

Imports neither gymnasium nor amber's environments: a live env of theirs means they are loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["SAVED_CONFIG", "WRAPPER_STATE", "classic", "is_multi_agent_cartpole", "is_plain", "saved_config",
           "state_attrs", "wrappers"]

#: What every ``gymnasium.Wrapper`` holds: the env it wraps and its configuration.
BASE_ATTRS = frozenset({"env", "_saved_kwargs", "_action_space", "_observation_space", "_metadata",
                        "_cached_spec", "spec"})
#: The running state of each wrapper ``gymnasium.make`` puts around CartPole and Pendulum (by its
#: name in ``gymnasium.wrappers``): the only wrapper attributes saved and restored. Anything else a
#: wrapper holds (``TimeLimit._max_episode_steps``...) is configuration, built from the algorithm's
#: config and never taken from a checkpoint.
WRAPPER_STATE: Mapping[str, frozenset[str]] = {
    "TimeLimit": frozenset({"_elapsed_steps"}),
    "OrderEnforcing": frozenset({"_has_reset"}),
    "PassiveEnvChecker": frozenset({"checked_reset", "checked_step", "checked_render", "close_called",
                                    "checked_data_reuse", "_previous_data"}),
}
#: Configuration that earlier ambers saved with those wrappers' state: a checkpoint may hold it
#: (checked to be of the live value's kind), and it is never applied.
SAVED_CONFIG: Mapping[str, frozenset[str]] = {
    "TimeLimit": frozenset({"_max_episode_steps"}),
    "OrderEnforcing": frozenset({"_disable_render_order_enforcing"}),
}
INT64 = (-(2**63), 2**63)


def _gymnasium_own(wrapper: Any, table: Mapping[str, frozenset[str]]) -> frozenset[str] | None:
    """``table``'s entry for ``wrapper`` when it is the ``gymnasium.wrappers`` class of that name."""
    cls, module = type(wrapper), sys.modules.get("gymnasium.wrappers")
    if cls.__name__ in table and module is not None and getattr(module, cls.__name__, None) is cls:
        return table[cls.__name__]
    return None


def state_attrs(wrapper: Any) -> frozenset[str] | None:
    """The names of ``wrapper``'s running state: :data:`WRAPPER_STATE`'s for gymnasium's own
    wrappers, none for a wrapper that holds nothing of its own (only what every wrapper holds);
    None for any other wrapper (amber cannot tell its state from its configuration).
    """
    known = _gymnasium_own(wrapper, WRAPPER_STATE)
    if known is not None:
        return known
    return frozenset() if set(vars(wrapper)) <= BASE_ATTRS else None


def saved_config(wrapper: Any) -> frozenset[str]:
    """The configuration attributes of ``wrapper`` an earlier amber saved (:data:`SAVED_CONFIG`)."""
    return _gymnasium_own(wrapper, SAVED_CONFIG) or frozenset()


def is_plain(value: Any) -> bool:
    """None, a bool, a float, a str or an int that fits in 64 bits."""
    if value is None or isinstance(value, (bool, float, str)):
        return True
    return isinstance(value, int) and INT64[0] <= value < INT64[1]


def classic(env: Any) -> str | None:
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


def is_multi_agent_cartpole(env: Any) -> bool:
    """Whether ``env`` is an :class:`amber.envs.MultiAgentCartPole`."""
    ma = sys.modules.get("amber.envs.multi_agent")
    return ma is not None and type(env) is ma.MultiAgentCartPole


def wrappers(env: Any) -> list[Any]:
    """The wrapper chain around the base env, from the outside in."""
    chain = []
    while hasattr(env, "env") and env is not getattr(env, "unwrapped", env):
        chain.append(env)
        env = env.env
    return chain
