"""Environments: multi-agent base class, the example ``MultiAgentCartPole``, the PettingZoo
adapter, the env registry and :class:`EnvContext` (what env creators are given). Importing this
package imports neither gymnasium nor pettingzoo."""

from __future__ import annotations

from amber.envs.env_context import EnvContext
from amber.envs.multi_agent import MultiAgentCartPole, MultiAgentEnv
from amber.envs.pettingzoo_env import PettingZooEnv
from amber.envs.registry import check_saved_env, make_env, register_env, registered_envs

__all__ = ["EnvContext", "MultiAgentCartPole", "MultiAgentEnv", "PettingZooEnv", "check_saved_env",
           "make_env", "register_env", "registered_envs"]
