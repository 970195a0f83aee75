"""Example environment classes, at RLlib's import paths."""
