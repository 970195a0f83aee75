"""An adapter that runs a PettingZoo parallel-API environment as amber's :class:`MultiAgentEnv`.

Importing this module does not import pettingzoo: the adapter only calls the wrapped
env's methods. Use it through a registered name, which is what a checkpoint stores::

    from mpe2 import simple_spread_v3
    from amber.envs import PettingZooEnv, register_env

    register_env("spread", lambda cfg: PettingZooEnv(simple_spread_v3.parallel_env(**cfg)))

The wrapped env's state is not captured in checkpoints (no plugin knows it): running
episodes restart on restore, with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from amber.envs.multi_agent import MultiAgentEnv

__all__ = ["PettingZooEnv"]


def _check_parallel(env: Any) -> Any:
    """``env`` if it has the parallel API; a TypeError that says what to do otherwise."""
    if callable(getattr(env, "agent_iter", None)):
        raise TypeError(
            f"{type(env).__name__} is a PettingZoo AEC env; PettingZooEnv wraps parallel-API envs: "
            "convert it with pettingzoo.utils.conversions.aec_to_parallel(env), or use the "
            "module's parallel_env()")
    missing = [m for m in ("reset", "step", "observation_space", "action_space", "possible_agents")
               if not hasattr(env, m)]
    if missing:
        raise TypeError(f"{env!r} is not a PettingZoo ParallelEnv: it has no {', '.join(missing)}")
    return env


class PettingZooEnv(MultiAgentEnv):
    """A PettingZoo ``ParallelEnv`` with amber's multi-agent dict API.

    Agent ids are the env's own (e.g. ``"agent_0"``); ``possible_agents`` and the per-agent
    spaces are read once at construction. ``step`` returns the observations of the agents that
    acted (a done agent reports its last observation once); ``terminateds``/``truncateds``
    carry ``"__all__"``, true when no agent is left, truncated when any agent was truncated in
    the episode. ``reset(seed=s)`` passes the seed on.

    :param env: a ParallelEnv instance, or ``creator(env_config) -> ParallelEnv``.
    :param env_config: the creator's argument (default ``{}``); only with a creator.
    :raises TypeError: ``env`` is an AEC env, a config dict (register a creator with
        :func:`amber.envs.register_env` instead) or not a ParallelEnv.
    """

    def __init__(self, env: Any, env_config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(env, Mapping):
            raise TypeError(
                "PettingZooEnv wraps an env, not a config: register a creator and name it in the "
                "config, e.g. amber.envs.register_env('spread', lambda cfg: "
                "PettingZooEnv(simple_spread_v3.parallel_env(**cfg)))")
        if callable(getattr(env, "step", None)):  # an env instance
            if env_config is not None:
                raise TypeError("env_config is only used with a creator function, not an env instance")
        elif callable(env):
            env = env(dict(env_config or {}))
        self.env = _check_parallel(env)
        self.possible_agents = list(env.possible_agents)
        self.agents = []
        self.observation_spaces = {a: env.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: env.action_space(a) for a in self.possible_agents}
        self.metadata = dict(getattr(env, "metadata", None) or {})
        self._truncated_any = False

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[Any, Any], dict[Any, Any]]:
        """Reset the wrapped env; ``(obs, infos)`` for the agents that act first."""
        obs, infos = self.env.reset(seed=seed, options=None if options is None else dict(options))
        self.agents = list(self.env.agents)
        self._truncated_any = False
        return dict(obs), {a: infos.get(a, {}) for a in obs}

    def step(
        self, action_dict: Mapping[Any, Any]
    ) -> tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any], dict[Any, Any], dict[Any, Any]]:
        """Step the wrapped env with the actions of the agents that observed."""
        unknown = [a for a in action_dict if a not in self.agents]
        if unknown:
            raise ValueError(f"agents {unknown!r} are done or unknown (active agents: {self.agents}); "
                             "send actions only for agents that observed")
        obs, rewards, terms, truncs, infos = self.env.step(dict(action_dict))
        self.agents = list(self.env.agents)
        terminateds = {a: bool(v) for a, v in terms.items()}
        truncateds = {a: bool(v) for a, v in truncs.items()}
        self._truncated_any |= any(truncateds.values())
        all_done = not self.agents
        terminateds["__all__"] = all_done and not self._truncated_any
        truncateds["__all__"] = all_done and self._truncated_any
        return dict(obs), {a: float(r) for a, r in rewards.items()}, terminateds, truncateds, dict(infos)

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()

