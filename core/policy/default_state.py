"""The state of a policy class that does not define its own (RLlib's base ``Policy`` default).

A user's policy written for RLlib often implements only ``compute_actions``,
``get_weights`` and ``set_weights`` (RLlib's ``RandomPolicy`` does): RLlib's
base class saves such a policy as its weights and timestep. So does amber's:
:func:`default_state` is the state ``Policy.get_state`` returns,
:func:`apply_default_state` what ``Policy.set_state`` does with it. A class
whose state could not be restored is refused when it is saved, naming the
methods to implement, so that no checkpoint is written that cannot be loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from amber.policy.policy import Policy

__all__ = ["apply_default_state", "default_state"]

#: The counters RLlib's policies keep (saved when the policy has them as ints).
_COUNTERS = ("global_timestep", "num_grad_updates")


def _own(policy: Policy, name: str) -> bool:
    """Whether ``policy``'s class implements ``name`` itself (not only the base class's)."""
    from amber.policy.policy import Policy

    return getattr(type(policy), name) is not getattr(Policy, name)


def _space(space: Any) -> Any:
    """A Box or Discrete space as its portable description; any other space (or None) as it is."""
    from amber.policy.spaces import space_to_state

    try:
        return None if space is None else space_to_state(space)
    except ValueError:  # a Dict or Tuple space: pickle keeps it, a portable format says it cannot
        return space


def default_state(policy: Policy) -> dict[str, Any]:
    """``policy``'s state as RLlib's base ``Policy.get_state`` makes it: its ``policy_spec``
    (class, spaces, portable config), ``get_weights()``, and its ``global_timestep`` and
    ``num_grad_updates`` when it has them.

    :raises NotImplementedError: the class implements neither ``get_state``/``set_state`` nor
        ``get_weights``/``set_weights`` (named), so its state could not be saved and restored.
    """
    from amber.policy.policy_helpers import portable_config

    missing = [f"{m}()" for m in ("get_weights", "set_weights") if not _own(policy, m)]
    if missing:
        name = type(policy).__name__
        raise NotImplementedError(
            f"{name} cannot be saved: it has no get_state(), and the default state (RLlib's: the "
            f"policy's get_weights(), restored with set_weights()) needs {' and '.join(missing)}, which "
            f"{name} does not implement. Implement get_weights() and set_weights() (returning {{}} and "
            f"doing nothing for a policy without weights), or get_state() and set_state()")
    spec = {"policy_class": type(policy),
            "observation_space": _space(getattr(policy, "observation_space", None)),
            "action_space": _space(getattr(policy, "action_space", None)),
            "config": portable_config(dict(getattr(policy, "config", None) or {}))}
    state: dict[str, Any] = {"policy_spec": spec, "weights": policy.get_weights()}
    for key in _COUNTERS:
        value = getattr(policy, key, None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            state[key] = int(value)
    return state


def apply_default_state(policy: Policy, state: Mapping[str, Any]) -> None:
    """Apply a :func:`default_state` (RLlib's base ``Policy.set_state``): ``set_weights`` of its
    weights, and its counters.

    :raises NotImplementedError: the class saves its own state (``get_state``) but does not
        restore it (no ``set_state``): its state would be dropped silently.
    """
    name = type(policy).__name__
    if _own(policy, "get_state"):
        raise NotImplementedError(f"{name} implements get_state() but not set_state(): what its "
                                  f"get_state() saved cannot be restored. Implement {name}.set_state()")
    if "weights" in state:
        policy.set_weights(state["weights"])
    for key in _COUNTERS:
        if key in state:
            setattr(policy, key, int(state[key]))
