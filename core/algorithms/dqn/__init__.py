"""DQN (``amber.algorithms.dqn``): DQNConfig and DQN."""

from amber.algorithms.dqn.dqn import DQN, DQNConfig

__all__ = ["DQN", "DQNConfig"]
