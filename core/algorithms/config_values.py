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


#: The keys of a policy spec in ``to_dict()``'s form (``policy_class`` and ``config`` always there).
_SPEC_KEYS = frozenset({"policy_class", "observation_space", "action_space", "config"})
_SPACES = ("observation_space", "action_space")


def _space_to_dict(space: Any) -> Any:
    """A spec's space as plain data (:func:`~amber.policy.spaces.space_to_state`: Box, Discrete),
    so that any checkpoint format stores it; a space of another type as a copy of itself."""
    from amber.policy.spaces import space_to_state

    try:
        return space_to_state(space)
    except ValueError:
        return copy.deepcopy(space)


def _spec_to_dict(spec: Any) -> Any:
    """A policy spec as plain data: a PolicySpec as ``{"policy_class", "config"}`` and its spaces
    (the keys only where given: a spec without spaces reads as it always did)."""
    from amber.policy.policy import PolicySpec

    if isinstance(spec, PolicySpec):
        spaces = {k: _space_to_dict(getattr(spec, k)) for k in _SPACES if getattr(spec, k) is not None}
        return {"policy_class": spec.policy_class, **spaces, "config": dict(spec.config)}
    return copy.deepcopy(spec)


def _spec_from_dict(spec: Any) -> Any:
    """:func:`_spec_to_dict`'s output as a PolicySpec again (spaces decoded); anything else unchanged.

    :raises ValueError: a space description that describes no space.
    """
    from amber.policy.policy import PolicySpec
    from amber.policy.spaces import space_from_state

    if _is_spec_dict(spec):
        spaces = {k: space_from_state(v) if isinstance(v, dict) else v  # (a gymnasium Dict is a Mapping)
                  for k, v in spec.items() if k in _SPACES}
        return PolicySpec(spec["policy_class"], config=spec["config"], **spaces)
    return spec


def without_spec_spaces(config: dict[str, Any]) -> dict[str, Any]:
    """``to_dict()``'s ``config`` as a checkpoint stores it: policy specs without their spaces
    (each policy's own state holds the spaces it was built on, and a space of a type amber cannot
    describe would not fit a portable format); the form every amber reads at this version."""
    policies = config.get("policies")
    if not isinstance(policies, dict):
        return config
    kept = {pid: {k: v for k, v in spec.items() if k not in _SPACES} if _is_spec_dict(spec) else spec
            for pid, spec in policies.items()}
    return {**config, "policies": kept}


def _is_spec_dict(spec: Any) -> bool:
    return isinstance(spec, dict) and {"policy_class", "config"} <= set(spec) <= _SPEC_KEYS

