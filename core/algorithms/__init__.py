"""Algorithms with RLlib's API: PPO (``amber.algorithms.ppo``), DQN, SAC."""
