"""Values of an :class:`~amber.algorithms.algorithm_config.AlgorithmConfig`: type checks of
settings, and policy specs to and from plain dicts (for ``to_dict``/``from_dict``)."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["matches_type"]


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a setting's type hint (shallow: containers by kind, ints as floats)."""
    import numpy as np

    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint in (int, float):
        numbers = (int, np.integer) if hint is int else (int, float, np.integer, np.floating)
        return isinstance(value, numbers) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if base in (dict, Mapping):
        return isinstance(value, Mapping)
    return True


def _spec_to_dict(spec: Any) -> Any:
    from amber.policy.policy import PolicySpec

    if isinstance(spec, PolicySpec):
        return {"policy_class": spec.policy_class, "config": dict(spec.config)}
    return copy.deepcopy(spec)


def _spec_from_dict(spec: Any) -> Any:
    from amber.policy.policy import PolicySpec

    if isinstance(spec, dict) and set(spec) == {"policy_class", "config"}:
        return PolicySpec(spec["policy_class"], config=spec["config"])
    return spec
