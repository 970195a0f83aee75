"""Adopting a config: an algorithm built inside :func:`adopting_config` keeps the config it is
given instead of copying it (a restore's config, made for that algorithm alone)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from amber.scoped import scoped

if TYPE_CHECKING:
    from amber.algorithms.algorithm_config import AlgorithmConfig

__all__ = ["adopting_config", "copy_unless_adopted", "is_adopted"]

_ADOPTED: ContextVar[AlgorithmConfig | None] = ContextVar("amber_adopted_config", default=None)


def adopting_config(config: AlgorithmConfig) -> AbstractContextManager[None]:
    """Inside the block, an algorithm built with ``config`` keeps it instead of copying it: for a
    config made only to build that algorithm (a restore's), which nobody else holds."""
    return scoped(_ADOPTED, config)


def is_adopted(config: AlgorithmConfig) -> bool:
    """Whether ``config`` is the one :func:`adopting_config` gives now (a restore's)."""
    return _ADOPTED.get() is config


def copy_unless_adopted(config: AlgorithmConfig) -> AlgorithmConfig:
    """``config.copy()``, or ``config`` itself inside :func:`adopting_config` of it."""
    return config if _ADOPTED.get() is config else config.copy()
