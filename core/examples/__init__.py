"""Examples, at RLlib's import paths."""
