"""Which environments :mod:`amber.plugins.env_state` knows, and their wrapper chains.

Imports neither gymnasium nor amber's environments: a live env of theirs means they are loaded.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["CONFIG_ATTRS", "classic", "is_multi_agent_cartpole", "is_plain", "wrappers"]

#: Wrapper attributes that hold the env's configuration, not its running state.
CONFIG_ATTRS = frozenset({"env", "_saved_kwargs", "_action_space", "_observation_space", "_metadata",
                          "_cached_spec", "spec"})
INT64 = (-(2**63), 2**63)


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
