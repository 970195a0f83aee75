"""SAC (``amber.algorithms.sac``): SACConfig and SAC."""

from amber.algorithms.sac.sac import SAC, SACConfig

__all__ = ["SAC", "SACConfig"]
