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


def _spec_from_dict(spec: Any, policy_id: str | None = None) -> Any:
    """:func:`_spec_to_dict`'s output as a PolicySpec again (spaces decoded); anything else unchanged.

    :param policy_id: the policy's id, for the error.
    :raises ValueError: a space description that describes no space (naming the policy, the key
        and the descriptions amber reads).
    """
    from amber.policy.policy import PolicySpec

    if _is_spec_dict(spec):
        spaces = {k: _space_from_dict(v, k, policy_id) if isinstance(v, dict) else v  # (a gymnasium Dict
                  for k, v in spec.items() if k in _SPACES}                           # is a Mapping)
        return PolicySpec(spec["policy_class"], config=spec["config"], **spaces)
    return spec


def _space_from_dict(value: dict[str, Any], key: str, policy_id: str | None) -> Any:
    """A spec's space description (``to_dict()``'s) decoded; the error says whose and what is read."""
    from amber.policy.spaces import space_from_state

    try:
        return space_from_state(value)
    except (ValueError, KeyError, TypeError) as e:
        whose = f"policy {policy_id!r}" if policy_id is not None else "a policy spec"
        rllib = ("; it looks like RLlib's serialized space (PolicySpec.serialize(), {'space': ...}), "
                 "which amber does not read" if "space" in value and "type" not in value else "")
        raise ValueError(
            f"{whose}: {key} {value!r} describes no space amber reads ({type(e).__name__}: {e}){rllib}. "
            "amber reads to_dict()'s descriptions, {'type': 'Box', 'low': array, 'high': array, "
            "'dtype': str} and {'type': 'Discrete', 'n': int, 'start': int}, or a gymnasium space; "
            "or leave the key out: the policy gets the env's spaces") from e


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

