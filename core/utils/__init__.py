"""Utilities with RLlib's import paths (``amber.utils.checkpoints``)."""
