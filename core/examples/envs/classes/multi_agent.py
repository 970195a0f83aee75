"""``MultiAgentCartPole`` at RLlib's path ``ray.rllib.examples.envs.classes.multi_agent``."""

from __future__ import annotations

from amber.envs.multi_agent import MultiAgentCartPole, MultiAgentEnv

__all__ = ["MultiAgentCartPole", "MultiAgentEnv"]
