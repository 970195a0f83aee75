"""A built algorithm's config is frozen, as RLlib 2.10 freezes it at build.

The algorithm builds its policies, optimizers and sampling from its config once; a setting
changed afterwards would be half applied (sampling might follow a new ``train_batch_size`` while
the optimizers keep the old ``lr``), and the checkpoint would record a value the algorithm never
used. So once :func:`freeze` has run (at the end of ``Algorithm.__init__``), changing a setting
raises :class:`FrozenConfigError`, naming it and saying how to build a new algorithm instead.

Two narrow exceptions:

- :data:`LIVE_SETTINGS`, which the algorithm reads each time it uses them (where and in which
  format ``save()`` writes, what it keeps and whether it stores the replay buffers' rows,
  whether ``train()`` logs, which policies learn), so a change applies whole and what a
  checkpoint records is what was used.
- :data:`MANAGED_SETTINGS`, which the algorithm itself keeps up to date as it changes
  (``add_policy``, ``remove_policy``, ``restore``): its code sets them with :func:`set_managed`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from amber.algorithms.given_again import same_value

__all__ = ["LIVE_SETTINGS", "MANAGED_SETTINGS", "FrozenConfigError", "FrozenConfigMixin", "fluent", "freeze",
           "is_frozen", "set_managed"]

_F = TypeVar("_F", bound=Callable[..., Any])
_FROZEN = "_frozen"

#: Settings a built algorithm reads each time it uses them: changing them after build is allowed.
LIVE_SETTINGS = frozenset({"log_results", "policies_to_train", "num_to_keep", "checkpoint_score_attribute",
                           "checkpoint_score_order", "storage_path", "storage_options",
                           "store_replay_buffer", "checkpoint_format"})
#: Settings the algorithm keeps up to date itself (its policies, their mapping): :func:`set_managed`.
MANAGED_SETTINGS = frozenset({"policies", "policy_mapping_fn", "policies_to_train"})


class FrozenConfigError(AttributeError):
    """A setting of a built algorithm's (frozen) config was changed (RLlib raises an AttributeError too)."""


def freeze(config: Any) -> None:
    """Freeze ``config`` (an algorithm's own, once it is built); its copies are not frozen."""
    object.__setattr__(config, _FROZEN, True)


def is_frozen(config: Any) -> bool:
    """Whether ``config`` belongs to a built algorithm."""
    return bool(vars(config).get(_FROZEN, False))


def set_managed(config: Any, **settings: Any) -> None:
    """Set settings of :data:`MANAGED_SETTINGS`, frozen or not: for the algorithm's own code
    (``add_policy``, ``remove_policy``, ``restore``) as its policies change.

    :raises KeyError: a setting that is not one the algorithm manages (a programming error).
    """
    other = sorted(set(settings) - MANAGED_SETTINGS)
    if other:
        raise KeyError(f"set_managed() sets only {sorted(MANAGED_SETTINGS)}, not {other}")
    for name, value in settings.items():
        object.__setattr__(config, name, value)


def refusal(config: Any, names: Iterable[str], call: str | None = None) -> FrozenConfigError:
    """The error for changing ``names`` of a frozen ``config`` (by ``call``, a fluent method's name)."""
    names = sorted(names)
    owner = type(config).__name__
    what = (f"{owner}.{call}() would change {', '.join(names)}" if call
            else f"{owner}.{names[0]} cannot be set")
    how = f"config.{call}(...)" if call else f"config.{names[0]} = ..."
    return FrozenConfigError(
        f"{what}: this config belongs to a built algorithm and is frozen (as in RLlib 2.10). The "
        "algorithm built its policies, optimizers and sampling from it and would not follow the change "
        "(and its checkpoints would record a value it does not use). Build a new algorithm instead: "
        f"config = algo.config.copy(); {how}; new_algo = config.build(); then new_algo.restore(checkpoint) "
        "or new_algo.set_weights(algo.get_weights()) to carry the state over. Settings the algorithm "
        f"reads each time it uses them can still be changed: {', '.join(sorted(LIVE_SETTINGS))}.",
        name=names[0], obj=config)


def _unchanged(old: dict[str, Any], name: str, value: Any) -> bool:
    return name in old and (old[name] is value or same_value(old[name], value))


def fluent(method: _F) -> _F:
    """Decorate a fluent config method: on a frozen config it runs on a copy first, and then either
    applies the changes (all of :data:`LIVE_SETTINGS`) or raises naming every other setting it
    would change, having changed nothing. A call that changes nothing passes."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_frozen(self):
            return method(self, *args, **kwargs)
        trial = copy.copy(self)
        del vars(trial)[_FROZEN]
        method(trial, *args, **kwargs)  # a bad value: the method's own error
        old = vars(self)
        changed = {k: v for k, v in vars(trial).items() if not _unchanged(old, k, v)}
        refused = [k for k in changed if k not in LIVE_SETTINGS]
        if refused:
            raise refusal(self, refused, method.__name__)
        for name, value in changed.items():
            object.__setattr__(self, name, value)
        return self

    return wrapper  # type: ignore[return-value]


class FrozenConfigMixin:
    """Attribute writes of a frozen config: refused but for :data:`LIVE_SETTINGS` (or a value equal
    to the current one)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if is_frozen(self) and name not in LIVE_SETTINGS and not _unchanged(vars(self), name, value):
            raise refusal(self, [name])
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if is_frozen(self) and name not in LIVE_SETTINGS:
            raise refusal(self, [name])
        object.__delattr__(self, name)
