"""Environments: multi-agent base class, the example ``MultiAgentCartPole``, and the env registry."""

from __future__ import annotations

from amber.envs.multi_agent import MultiAgentCartPole, MultiAgentEnv
from amber.envs.registry import make_env, register_env, registered_envs

__all__ = ["MultiAgentCartPole", "MultiAgentEnv", "make_env", "register_env", "registered_envs"]
