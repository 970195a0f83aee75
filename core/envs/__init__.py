"""Environments: multi-agent base class, the example ``MultiAgentCartPole``, the PettingZoo
adapter and the env registry. Importing this package imports neither gymnasium nor pettingzoo."""

from __future__ import annotations

from amber.envs.multi_agent import MultiAgentCartPole, MultiAgentEnv
from amber.envs.pettingzoo_env import PettingZooEnv
from amber.envs.registry import check_saved_env, make_env, register_env, registered_envs

__all__ = ["MultiAgentCartPole", "MultiAgentEnv", "PettingZooEnv", "check_saved_env", "make_env",
           "register_env", "registered_envs"]
