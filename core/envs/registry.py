"""Making environments from what a config names: a registered name, a gymnasium id or a class.

A gymnasium ``"module:EnvId"`` id imports ``module`` (which registers ``EnvId``), as
``gymnasium.make`` does, when the id comes from the user's code or command line. An id read
from a checkpoint never imports anything: :func:`check_saved_env` accepts it only when the
module is already imported and the id registered.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from amber.envs.env_context import env_context
from amber.errors import UnregisteredNameError

__all__ = ["EnvProbe", "UnknownEnvironmentError", "check_saved_env", "declared_multi_agent", "make_env",
           "make_env_copies", "probe_env", "probe_spaces", "register_env", "registered_envs"]


class UnknownEnvironmentError(UnregisteredNameError, ValueError):
    """An environment name neither registered with :func:`register_env` nor a gymnasium id: a
    ValueError where a config names it, an UnregisteredNameError (passed through, not "does not
    fit") where a checkpoint does, as for the checkpoint's other names."""


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


def _module_id(env: str) -> tuple[str, str] | None:
    """``(module, env_id)`` of a gymnasium ``"module:EnvId"`` id, else None."""
    module, sep, env_id = env.partition(":")
    return (module, env_id) if sep and module and env_id and ":" not in env_id else None


def check_saved_env(env: Any, path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a checkpoint's ``"module:EnvId"`` env id unless it is usable without an import.

    A checkpoint never makes amber import a module: such an id is accepted only when
    ``module`` is already imported in this process and ``EnvId`` is in gymnasium's registry
    (the user imported the module that registers it). Other values are left to :func:`make_env`.

    :param env: the checkpoint's ``config.env``.
    :param path: the checkpoint, for the message.
    :raises UnregisteredNameError: a module id whose module is not imported or whose id is
        not registered.
    """
    if not isinstance(env, str) or env in _CREATORS:
        return
    parts = _module_id(env)
    if parts is None:
        return
    module, env_id = parts
    import gymnasium

    if module in sys.modules and env_id in gymnasium.registry:
        return
    from amber.errors import UnregisteredNameError

    raise UnregisteredNameError(
        f"{path}: the checkpoint's environment {env!r} names module {module!r}, which amber never "
        f"imports for a checkpoint; import it first (`import {module}`, which registers {env_id!r}), "
        "or pass the environment: Algorithm.from_checkpoint(path, env=...)", path=path)


def _config_parameter(sig: inspect.Signature | None, config: dict[str, Any]) -> bool:
    """Whether a gymnasium.Env class's ``__init__`` takes ``env_config`` as one positional
    argument: it has a parameter named ``config`` or ``env_config``, or exactly one required
    positional parameter (any name) that ``env_config`` does not name as a keyword. Otherwise
    (gymnasium's own classes: keyword parameters with defaults, such as ``render_mode``; or
    ``__init__(self, size)`` with ``{"size": 5}``) it takes ``env_config``'s items as keywords."""
    if sig is None:
        return False
    params = sig.parameters
    if "config" in params or "env_config" in params:
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params.values() if p.kind in positional and p.default is p.empty]
    if len(required) != 1:
        return False
    try:
        sig.bind(**config)
    except TypeError:
        return True
    return required[0].name not in config


def _build_env_class(cls: type, config: dict[str, Any]) -> Any:
    """``cls(config)`` or ``cls(**config)`` (see :func:`_config_parameter`), the arguments checked
    against the signature first so that a mismatch names the class and what was passed."""
    try:
        sig: inspect.Signature | None = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    positional = _config_parameter(sig, config)
    args, kwargs = ((config,), {}) if positional else ((), config)
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            call = f"{cls.__qualname__}({'' if positional else '**'}{config!r})"
            why = "" if positional else (
                " (keyword arguments: its __init__ has no parameter named config or env_config, nor "
                "exactly one required positional parameter; name it env_config to get the dict)")
            raise TypeError(f"cannot build env class {cls.__module__}.{cls.__qualname__}{sig} with "
                            f"env_config {config!r}: amber calls {call}{why}, which fails: {e}") from None
    return cls(*args, **kwargs)


def make_env(env: Any, env_config: Mapping[str, Any] | None = None, *,
             vector_index: int | None = None) -> Any:
    """Build one environment instance.

    A creator and an env class get ``env_config`` as an :class:`~amber.envs.EnvContext` (a dict
    that also carries ``worker_index``, ``vector_index``, ``num_workers`` and ``remote``, kept
    from ``env_config`` when it is one, else 0, 0, 0 and False); a gymnasium id gets its items as
    keywords.

    :param env: a name registered with :func:`register_env`, a gymnasium id
        (``gymnasium.make(id, **env_config)``; a ``"module:EnvId"`` id imports
        ``module`` first, as gymnasium does), a ``gymnasium.Env`` subclass
        (``cls(env_config)`` if its ``__init__`` has a parameter named ``config`` or
        ``env_config``, or exactly one required positional parameter of any name;
        else ``cls(**env_config)``, as gymnasium's own classes take their settings)
        or a :class:`~amber.envs.MultiAgentEnv` subclass (``cls(env_config)``).
    :param env_config: the environment's settings (a dict or an :class:`~amber.envs.EnvContext`).
    :param vector_index: which copy of its env runner this is (None: ``env_config``'s, or 0).
    :raises ValueError: ``env`` is none of these (the message names the choices).
    :raises TypeError: a ``gymnasium.Env`` class whose ``__init__`` does not accept
        ``env_config`` as it is passed (the message names the class, its signature and
        the call).
    """
    from amber.envs.multi_agent import MultiAgentEnv

    config = env_context(env_config, **({} if vector_index is None else {"vector_index": vector_index}))
    if isinstance(env, str):
        if env in _CREATORS:
            return _CREATORS[env](config)
        import gymnasium

        if env in gymnasium.registry or _module_id(env) is not None:
            return gymnasium.make(env, **config)
        close = difflib.get_close_matches(env, [*_CREATORS, *_gym_ids()], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownEnvironmentError(
            f"unknown environment {env!r}: not registered with amber.envs.register_env "
            f"(registered: {registered_envs() or 'none'}) nor a gymnasium id "
            f"(e.g. 'CartPole-v1', 'Pendulum-v1').{hint} A gymnasium.Env or MultiAgentEnv "
            "class works too (a checkpoint naming it loads once it is registered in this process)."
        )
    if isinstance(env, type):
        if issubclass(env, MultiAgentEnv):
            return env(config)
        import gymnasium

        if issubclass(env, gymnasium.Env):
            return _build_env_class(env, config)
    raise ValueError(
        f"cannot make an environment from {env!r}: give a name registered with "
        f"amber.envs.register_env (registered: {registered_envs() or 'none'}), a gymnasium id "
        "such as 'CartPole-v1', a gymnasium.Env subclass or a MultiAgentEnv subclass"
    )


def make_env_copies(env: Any, env_config: Mapping[str, Any] | None,
                    vector_indices: Iterable[int]) -> list[Any]:
    """:func:`make_env` once per vector index (an env runner's copies); those built are closed if
    one fails."""
    made: list[Any] = []
    try:
        for index in vector_indices:
            made.append(make_env(env, env_config, vector_index=index))
    except BaseException:
        for instance in made:
            instance.close()
        raise
    return made


def probe_spaces(
    env: Any, env_config: Mapping[str, Any] | None = None
) -> tuple[dict[Any, tuple[Any, Any]], bool]:
    """Build the env once and read its spaces.

    :return: ``({agent_id: (observation_space, action_space)}, is_multi_agent)``;
        a single-agent env has the one agent ``0``.
    """
    instance, spaces, multi_agent = probe_env(env, env_config)
    instance.close()
    return spaces, multi_agent


def probe_env(env: Any, env_config: Mapping[str, Any] | None = None
              ) -> tuple[Any, dict[Any, tuple[Any, Any]], bool]:
    """Build the env and read its spaces, as :func:`probe_spaces` does, keeping the env (never
    reset: an :class:`EnvRunner` may take it as its first copy, ``first_env``).

    :return: ``(env, {agent_id: (observation_space, action_space)}, is_multi_agent)``.
    """
    from amber.envs.multi_agent import MultiAgentEnv

    instance = make_env(env, env_config)
    try:
        if isinstance(instance, MultiAgentEnv):
            agents = _agent_ids(instance, env)
            spaces = {a: (instance.get_observation_space(a), instance.get_action_space(a)) for a in agents}
            from amber.algorithms.rllib_api import check_agent_spaces  # RLlib's Dict by agent id: refused

            check_agent_spaces(instance, spaces)
            return instance, spaces, True
        return instance, {0: (instance.observation_space, instance.action_space)}, False
    except BaseException:
        instance.close()
        raise


def _agent_ids(instance: Any, env: Any) -> list[Any]:
    """A multi-agent env's agent ids: its ``possible_agents``, else the keys of its per-agent
    ``observation_spaces``, else RLlib 2.10's ``_agent_ids`` (a set: sorted when the ids allow).

    :raises ValueError: none of them names an agent (the message names the env).
    """
    agents = list(getattr(instance, "possible_agents", None) or getattr(instance, "observation_spaces", None)
                  or ())
    if not agents:
        legacy = getattr(instance, "_agent_ids", None) or ()
        try:
            agents = sorted(legacy)
        except TypeError:  # ids of mixed types: the set's order
            agents = list(legacy)
    if not agents:
        name = env if isinstance(env, str) else getattr(env, "__qualname__", repr(env))
        raise ValueError(
            f"multi-agent env {name!r} ({type(instance).__qualname__}) names no agents: set "
            "self.possible_agents to the list of its agent ids in __init__ (RLlib 2.10's "
            "self._agent_ids works too), after super().__init__()")
    return agents


def declared_multi_agent(env: Any) -> bool | None:
    """Whether ``env`` makes a :class:`~amber.envs.MultiAgentEnv`, when that is known without building
    it: for a class, and for a gymnasium id (never multi-agent); None for a registered name (its
    creator decides) and anything else."""
    from amber.envs.multi_agent import MultiAgentEnv

    if isinstance(env, type):
        if issubclass(env, MultiAgentEnv):
            return True
        import gymnasium

        return False if issubclass(env, gymnasium.Env) else None
    if isinstance(env, str) and env not in _CREATORS and _module_id(env) is None:
        import gymnasium

        return False if env in gymnasium.registry else None
    return None


class EnvProbe:
    """The env a config names, built once and only when something needs it: its spaces, or whether
    it is multi-agent when :func:`declared_multi_agent` cannot tell.

    An algorithm restored from a checkpoint knows its policies' spaces, so unless the env is
    only known by a registered name nothing is built until sampling starts.

    :param num_workers: the config's ``num_env_runners``, for the env's
        :class:`~amber.envs.EnvContext` (the env built is worker 0's copy 0).
    """

    def __init__(self, env: Any, env_config: Mapping[str, Any] | None, *, num_workers: int = 0) -> None:
        self.env, self.env_config = env, env_context(env_config, num_workers=num_workers)  # worker 0, copy 0
        self._declared = declared_multi_agent(env)
        self._probed: tuple[Any, dict[Any, tuple[Any, Any]], bool] | None = None

    def _probe(self) -> tuple[Any, dict[Any, tuple[Any, Any]], bool]:
        if self._probed is None:
            self._probed = probe_env(self.env, self.env_config)
        return self._probed

    @property
    def multi_agent(self) -> bool:
        """Whether the env is multi-agent (built to find out only when not declared)."""
        return self._declared if self._declared is not None else self._probe()[2]

    @property
    def spaces(self) -> dict[Any, tuple[Any, Any]]:
        """``{agent_id: (observation_space, action_space)}`` (:func:`probe_env`'s), building the env."""
        return self._probe()[1]

    def take_env(self) -> Any:
        """The env built to probe, never reset, now the caller's to use and close; None if none was built."""
        if self._probed is None or self._probed[0] is None:
            return None
        instance, spaces, multi = self._probed
        self._probed = (None, spaces, multi)
        return instance

    def close(self) -> None:
        """Close the env built to probe unless it was taken."""
        instance = self.take_env()
        if instance is not None:
            instance.close()
