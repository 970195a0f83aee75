"""Multi-agent environments with RLlib's dict API, and the example ``MultiAgentCartPole``.

Importing this module does not import gymnasium; ``MultiAgentCartPole``
imports it when built.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["MultiAgentCartPole", "MultiAgentEnv"]

AgentID = Any
MultiAgentDict = dict


class MultiAgentEnv:
    """Base of multi-agent environments (RLlib's ``MultiAgentEnv``).

    ``reset(*, seed=None, options=None) -> (obs, infos)`` and
    ``step(action_dict) -> (obs, rewards, terminateds, truncateds, infos)``
    exchange dicts keyed by agent id; ``terminateds`` and ``truncateds`` also
    carry ``"__all__"``, true when the whole episode ended. The agents present
    in ``obs`` are the ones expected to act next.

    Subclasses set ``possible_agents`` (every agent id), ``agents`` (those in
    the running episode) and the per-agent spaces ``observation_spaces`` /
    ``action_spaces`` (dicts by agent id), or single ``observation_space`` /
    ``action_space`` shared by all agents.
    """

    observation_space: Any = None
    action_space: Any = None

    def __init__(self) -> None:
        for name in ("possible_agents", "agents"):
            if name not in vars(self):
                setattr(self, name, [])
        for name in ("observation_spaces", "action_spaces"):
            if name not in vars(self):
                setattr(self, name, {})

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[MultiAgentDict, MultiAgentDict]:
        """Start an episode: ``(obs, infos)`` by agent id."""
        raise NotImplementedError

    def step(
        self, action_dict: Mapping[AgentID, Any]
    ) -> tuple[MultiAgentDict, MultiAgentDict, MultiAgentDict, MultiAgentDict, MultiAgentDict]:
        """Apply the actions of the agents that observed.

        :return: ``(obs, rewards, terminateds, truncateds, infos)`` by agent id.
        """
        raise NotImplementedError

    def get_observation_space(self, agent_id: AgentID) -> Any:
        """The observation space of one agent."""
        spaces = getattr(self, "observation_spaces", None) or {}
        return spaces[agent_id] if agent_id in spaces else self.observation_space

    def get_action_space(self, agent_id: AgentID) -> Any:
        """The action space of one agent."""
        spaces = getattr(self, "action_spaces", None) or {}
        return spaces[agent_id] if agent_id in spaces else self.action_space

    @property
    def num_agents(self) -> int:
        """How many agents are in the running episode."""
        return len(self.agents)

    @property
    def max_num_agents(self) -> int:
        """How many agents there can be."""
        return len(self.possible_agents)

    @property
    def unwrapped(self) -> MultiAgentEnv:
        """The environment itself (for symmetry with gymnasium)."""
        return self

    def close(self) -> None:
        """Release the environment's resources."""


class MultiAgentCartPole(MultiAgentEnv):
    """``num_agents`` independent CartPole-v1 games (each with its 500-step limit).

    Agent ids are the ints ``0..num_agents-1``. An agent that is done reports
    its last observation once and then no longer appears; ``"__all__"`` is
    true when every agent is done. ``reset(seed=s)`` seeds game ``i`` with ``s + i``.

    :param config: ``{"num_agents": N}`` (default 1, at most :attr:`MAX_AGENTS`).
    """

    #: Each agent is a gymnasium env built up front: a bound, so that a config (or a
    #: checkpoint's) cannot ask for a million of them.
    MAX_AGENTS = 1024

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        import gymnasium

        super().__init__()
        config = dict(config or {})
        n = config.get("num_agents", 1)
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= self.MAX_AGENTS:
            raise ValueError(f"num_agents must be an int from 1 to {self.MAX_AGENTS}, not {n!r}")
        n = int(n)
        self.envs = [gymnasium.make("CartPole-v1") for _ in range(n)]
        self.possible_agents = list(range(n))
        self.agents = []
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.observation_spaces = {i: self.observation_space for i in range(n)}
        self.action_spaces = {i: self.action_space for i in range(n)}
        self.terminated_agents: set[int] = set()
        self.truncated_agents: set[int] = set()

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[int, Any], dict[int, Any]]:
        """Reset every game; ``(obs, infos)`` for all agents."""
        self.terminated_agents = set()
        self.truncated_agents = set()
        obs: dict[int, Any] = {}
        infos: dict[int, Any] = {}
        for i, env in enumerate(self.envs):
            obs[i], infos[i] = env.reset(seed=None if seed is None else seed + i, options=options)
        self.agents = list(self.possible_agents)
        return obs, infos

    def step(
        self, action_dict: Mapping[int, Any]
    ) -> tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any], dict[Any, Any], dict[Any, Any]]:
        """Step the games of the agents in ``action_dict``."""
        obs: dict[Any, Any] = {}
        rewards: dict[Any, Any] = {}
        terminateds: dict[Any, Any] = {}
        truncateds: dict[Any, Any] = {}
        infos: dict[Any, Any] = {}
        for agent, action in action_dict.items():
            if agent not in self.agents:
                raise ValueError(
                    f"agent {agent!r} is done or unknown (active agents: {self.agents}); "
                    "send actions only for agents that observed"
                )
            obs[agent], rewards[agent], terminateds[agent], truncateds[agent], infos[agent] = (
                self.envs[agent].step(action)
            )
            if terminateds[agent]:
                self.terminated_agents.add(agent)
            elif truncateds[agent]:
                self.truncated_agents.add(agent)
        self.agents = [a for a in self.possible_agents
                       if a not in self.terminated_agents and a not in self.truncated_agents]
        all_done = not self.agents
        terminateds["__all__"] = all_done and not self.truncated_agents
        truncateds["__all__"] = all_done and bool(self.truncated_agents)
        return obs, rewards, terminateds, truncateds, infos

    def close(self) -> None:
        """Close every game."""
        for env in self.envs:
            env.close()
