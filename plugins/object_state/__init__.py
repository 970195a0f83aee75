"""In-tree plugin: state capture for the components every algorithm has.

Handles Python's and numpy's random generators and any object with
``get_state()``/``set_state(state)`` methods (the :class:`Stateful`
protocol), as the last resort (``trylast``). Registered like any plugin,
from ``DEFAULT_PLUGINS``; environments are handled by
:mod:`amber.plugins.env_state`, policies capture their own torch state.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import numpy as np

from amber.algorithms.training_state import LazyRNG
from amber.errors import CheckpointError
from amber.hookspecs import hookimpl
from amber.rng_state import (
    checked_bit_generator_state,
    deferred_restore,
    python_random_state,
    random_state_tuple,
)
from amber.state import wide_ints_to_text


@runtime_checkable
class Stateful(Protocol):
    """A component that captures and restores its own state as a state tree."""

    def get_state(self) -> Any:
        """Return the component's state as a state tree."""
        ...

    def set_state(self, state: Any) -> None:
        """Apply a state returned by :meth:`get_state`."""
        ...


def _stateful(component: object) -> bool:
    """``isinstance(component, Stateful)``, without a runtime protocol check's cost (it looks up
    every protocol member's attributes each time)."""
    return callable(getattr(component, "get_state", None)) and callable(getattr(component, "set_state", None))


def _python_random_state(rng: random.Random) -> dict[str, Any]:
    version, internal, gauss_next = rng.getstate()
    return {"version": version, "mt": np.asarray(internal, dtype=np.uint32), "gauss_next": gauss_next}


@hookimpl(trylast=True)
def amber_capture_state(component: object) -> Any:
    """Capture RNGs (a :class:`~amber.algorithms.training_state.LazyRNG` as its generator,
    made now if it is not yet) and :class:`Stateful` components."""
    if isinstance(component, LazyRNG):
        component = component.live()
    if isinstance(component, np.random.Generator):
        return {"bit_generator": wide_ints_to_text(component.bit_generator.state)}
    if isinstance(component, np.random.RandomState):
        name, keys, pos, has_gauss, gauss = component.get_state(legacy=True)
        return {"name": name, "keys": keys, "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    if isinstance(component, random.Random):
        return _python_random_state(component)
    if _stateful(component):
        return component.get_state()
    return None


@hookimpl(trylast=True)
def amber_restore_state(component: object, state: Any, key: str) -> bool | None:
    """Restore RNGs (each state checked whole first) and :class:`Stateful` components.

    A generator's kind comes from :data:`~amber.rng_state.BIT_GENERATORS`;
    a malformed or unknown RNG state is a CheckpointError and leaves the generator as it was.
    A :class:`~amber.algorithms.training_state.LazyRNG` not made yet gets the state, checked
    now, when it is made; one made is restored as its generator.
    """
    if isinstance(component, LazyRNG):
        if not component.made:
            component.defer(deferred_restore(component.kind, state, key))
            return True
        component = component.live()
    if isinstance(component, np.random.Generator):
        saved = state.get("bit_generator") if isinstance(state, dict) else None
        kind, checked = checked_bit_generator_state(saved, f"{key}.bit_generator")
        live = component.bit_generator
        if kind is not type(live):
            raise CheckpointError(f"saved state {key!r} is of a {kind.__name__} generator, "
                                  f"this one is a {type(live).__name__}")
        live.state = checked
        return True
    if isinstance(component, np.random.RandomState):
        component.set_state(random_state_tuple(state, key))
        return True
    if isinstance(component, random.Random):
        component.setstate(python_random_state(state, key))
        return True
    if _stateful(component):
        component.set_state(state)
        return True
    return None
