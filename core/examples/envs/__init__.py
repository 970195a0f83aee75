"""Example environments, at RLlib's import paths."""
