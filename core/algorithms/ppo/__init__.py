"""PPO (``amber.algorithms.ppo``): PPOConfig and PPO."""

from amber.algorithms.ppo.ppo import PPO, PPOConfig

__all__ = ["PPO", "PPOConfig"]
