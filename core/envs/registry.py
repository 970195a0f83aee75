"""Making environments from what a config names: a registered name, a gymnasium id or a class."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["make_env", "register_env", "registered_envs"]

_CREATORS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_env(name: str, creator: Callable[[dict[str, Any]], Any]) -> None:
    """Register an environment creator under a name (RLlib's ``tune.register_env``).

    :param name: the name a config's ``.environment(env=name)`` uses; registering it again replaces it.
    :param creator: ``creator(env_config) -> env``, called with a copy of the config's ``env_config``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an environment name must be a non-empty string, not {name!r}")
    if not callable(creator):
        raise TypeError(f"the creator registered as {name!r} is not callable: {creator!r}")
    _CREATORS[name] = creator


def registered_envs() -> list[str]:
    """The names registered with :func:`register_env`, sorted."""
    return sorted(_CREATORS)


def _gym_ids() -> list[str]:
    import gymnasium

    return list(gymnasium.registry.keys())


def _takes_config(cls: type) -> bool:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return "config" in params or "env_config" in params


def make_env(env: Any, env_config: Mapping[str, Any] | None = None) -> Any:
    """Build one environment instance.

    :param env: a name registered with :func:`register_env`, a gymnasium id
        (``gymnasium.make(id, **env_config)``), a ``gymnasium.Env`` subclass
        (built with ``env_config`` as one positional argument if its ``__init__``
        takes ``config``/``env_config``, else as keyword arguments) or a
        :class:`~amber.envs.MultiAgentEnv` subclass (``cls(env_config)``).
    :param env_config: the environment's settings.
    :raises ValueError: ``env`` is none of these (the message names the choices).
    """
    from amber.envs.multi_agent import MultiAgentEnv

    config = dict(env_config or {})
    if isinstance(env, str):
        if env in _CREATORS:
            return _CREATORS[env](config)
        import gymnasium

        if env in gymnasium.registry:
            return gymnasium.make(env, **config)
        close = difflib.get_close_matches(env, [*_CREATORS, *_gym_ids()], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown environment {env!r}: not registered with amber.envs.register_env "
            f"(registered: {registered_envs() or 'none'}) nor a gymnasium id "
            f"(e.g. 'CartPole-v1', 'Pendulum-v1').{hint} A gymnasium.Env or MultiAgentEnv "
            "class works too."
        )
    if isinstance(env, type):
        if issubclass(env, MultiAgentEnv):
            return env(config)
        import gymnasium

        if issubclass(env, gymnasium.Env):
            return env(config) if _takes_config(env) else env(**config)
    raise ValueError(
        f"cannot make an environment from {env!r}: give a name registered with "
        f"amber.envs.register_env (registered: {registered_envs() or 'none'}), a gymnasium id "
        "such as 'CartPole-v1', a gymnasium.Env subclass or a MultiAgentEnv subclass"
    )
