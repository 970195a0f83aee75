"""Random generators rebuilt from saved states: kinds from a fixed table, each state checked whole.

A checkpoint names its bit generator's kind (``"PCG64"``); the class is
looked up in :data:`BIT_GENERATORS`, never by the name in the file, and
every field of the saved state is checked (type, range, array dtype and
shape) on a scratch generator before any live generator is touched. Each
failure is a :class:`~amber.errors.CheckpointError` naming the key.

It lives in the core because two plugins check generators with it (object_state for the
algorithm's, env_state for an environment's) and plugins never import one another.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from amber.errors import CheckpointError
from amber.state import WIDE_INT_PREFIX

__all__ = ["BIT_GENERATORS", "checked_bit_generator", "checked_bit_generator_state", "deferred_restore",
           "python_random_state", "random_state_tuple"]

#: The bit generators a checkpoint may name: numpy's, by the name their ``state`` carries.
BIT_GENERATORS: Mapping[str, type[np.random.BitGenerator]] = MappingProxyType({
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
})

# A field is ("int", exclusive upper bound) or ("u32"/"u64", shape).
_Field = tuple[str, Any]
_BUFFERED: dict[str, _Field] = {"has_uint32": ("int", 2), "uinteger": ("int", 2**32)}
_PCG: dict[str, _Field] = {"state": ("int", 2**128), "inc": ("int", 2**128)}
#: By kind: the fields of ``state["state"]`` and the fields beside it.
_FIELDS: Mapping[str, tuple[dict[str, _Field], dict[str, _Field]]] = MappingProxyType({
    "PCG64": (_PCG, _BUFFERED),
    "PCG64DXSM": (_PCG, _BUFFERED),
    "MT19937": ({"key": ("u32", (624,)), "pos": ("int", 625)}, {}),
    "Philox": ({"counter": ("u64", (4,)), "key": ("u64", (2,))},
               {"buffer": ("u64", (4,)), "buffer_pos": ("int", 5), **_BUFFERED}),
    "SFC64": ({"state": ("u64", (4,))}, _BUFFERED),
})
_WIDE = re.compile(re.escape(WIDE_INT_PREFIX) + r"[0-9]{1,80}")  # bounds are checked after
_UINT = {"u32": (np.uint32, 2**32), "u64": (np.uint64, 2**64)}


def bad(key: str, what: str, value: Any = ...) -> CheckpointError:
    """The error for a malformed saved value at ``key`` (the value shown briefly)."""
    shown = "" if value is ... else f": got {type(value).__name__} {str(value)[:60]!r}"
    return CheckpointError(f"saved state {key!r} is malformed: {what}{shown}")


def checked_int(value: Any, key: str, low: int, high: int) -> int:
    """An int (not a bool), or a wide int as ``"int:<digits>"``, with ``low <= value < high``."""
    if isinstance(value, str) and _WIDE.fullmatch(value):
        value = int(value[len(WIDE_INT_PREFIX):])
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise bad(key, f"expected an integer in [{low}, {high})", value)
    if not low <= int(value) < high:
        raise bad(key, f"expected an integer in [{low}, {high})", value)
    return int(value)


def checked_float(value: Any, key: str) -> float:
    """A finite float (ints are not accepted: the saved value was a float)."""
    if not isinstance(value, (float, np.floating)) or not math.isfinite(value):
        raise bad(key, "expected a finite float", value)
    return float(value)


def _uint_array(value: Any, key: str, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, high = _UINT[kind]
    if isinstance(value, (list, tuple)) and len(value) == shape[0]:
        return np.array([checked_int(v, f"{key}[{i}]", 0, high) for i, v in enumerate(value)], dtype)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu" or value.shape != shape:
        raise bad(key, f"expected an unsigned integer array of shape {shape}", value)
    if value.dtype == dtype:  # as saved: every value of the type is in range
        return value
    if value.size and (int(value.min()) < 0 or int(value.max()) >= high):
        raise bad(key, f"array values out of range for {np.dtype(dtype).name}")
    return value.astype(dtype)


def _fields(saved: Any, spec: Mapping[str, _Field], key: str) -> dict[str, Any]:
    if not isinstance(saved, Mapping):
        raise bad(key, "expected a map", saved)
    if set(saved) != set(spec):
        raise bad(key, f"expected the keys {sorted(spec)}, got {sorted(map(str, saved))}")
    out: dict[str, Any] = {}
    for name, (kind, arg) in spec.items():
        where = f"{key}.{name}"
        out[name] = checked_int(saved[name], where, 0, arg) if kind == "int" else \
            _uint_array(saved[name], where, kind, arg)
    return out


def checked_bit_generator(saved: Any, key: str) -> np.random.BitGenerator:
    """A new bit generator of the saved kind, in the saved state (``bit_generator.state`` as saved).

    :param saved: the state dict numpy's ``bit_generator.state`` gives (wide ints may be text).
    :param key: where it is in the checkpoint, for messages.
    :raises CheckpointError: an unknown kind, a missing, extra or wrong-typed field (named).
    """
    kind, state = _checked_fields(saved, key)
    return _set(BIT_GENERATORS[kind](0), kind, state, key)


def checked_bit_generator_state(saved: Any, key: str) -> tuple[type[np.random.BitGenerator], dict[str, Any]]:
    """The saved bit generator's class and its state as numpy gives it, once numpy accepted it on
    a scratch generator of that kind (one per kind and thread, kept: building a generator costs
    more than checking a state), for a live generator of that class to take.

    :raises CheckpointError: as :func:`checked_bit_generator`.
    """
    kind, state = _checked_fields(saved, key)
    scratch = getattr(_SCRATCH, kind, None)
    if scratch is None:
        scratch = BIT_GENERATORS[kind](0)
        setattr(_SCRATCH, kind, scratch)
    return BIT_GENERATORS[kind], _set(scratch, kind, state, key).state


_SCRATCH = threading.local()


def _checked_fields(saved: Any, key: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(saved, Mapping):
        raise bad(key, "expected a bit generator state map", saved)
    kind = saved.get("bit_generator")
    if not isinstance(kind, str) or kind not in BIT_GENERATORS:
        raise CheckpointError(f"saved state {key + '.bit_generator'!r} names the bit generator "
                              f"{str(kind)[:60]!r}; known: {', '.join(BIT_GENERATORS)}")
    inner, beside = _FIELDS[kind]
    rest = {k: v for k, v in saved.items() if k not in ("bit_generator", "state")}
    return kind, {"bit_generator": kind, "state": _fields(saved.get("state"), inner, f"{key}.state"),
                  **_fields(rest, beside, key)}


def _set(generator: np.random.BitGenerator, kind: str, state: dict[str, Any],
         key: str) -> np.random.BitGenerator:
    try:
        generator.state = state
    except (ValueError, TypeError, OverflowError) as e:
        raise bad(key, f"numpy refused the {kind} state: {e}") from e
    return generator


def random_state_tuple(saved: Any, key: str) -> tuple[str, np.ndarray, int, int, float]:
    """The ``np.random.RandomState.set_state`` tuple of a saved legacy state, checked."""
    if not isinstance(saved, Mapping) or set(saved) != {"name", "keys", "pos", "has_gauss", "gauss"}:
        raise bad(key, "expected a map with the keys gauss, has_gauss, keys, name, pos", saved)
    if saved["name"] != "MT19937":
        raise CheckpointError(f"saved state {key + '.name'!r} names {str(saved['name'])[:60]!r}; "
                              "a RandomState holds an MT19937")
    keys = _uint_array(saved["keys"], f"{key}.keys", "u32", (624,))
    pos = checked_int(saved["pos"], f"{key}.pos", 0, 625)
    has_gauss = checked_int(saved["has_gauss"], f"{key}.has_gauss", 0, 2)
    return "MT19937", keys, pos, has_gauss, checked_float(saved["gauss"], f"{key}.gauss")


def python_random_state(saved: Any, key: str) -> tuple[int, tuple[int, ...], float | None]:
    """The ``random.Random.setstate`` tuple of a saved state, checked."""
    if not isinstance(saved, Mapping) or set(saved) != {"version", "mt", "gauss_next"}:
        raise bad(key, "expected a map with the keys gauss_next, mt, version", saved)
    checked_int(saved["version"], f"{key}.version", 3, 4)
    internal = tuple(_uint_array(saved["mt"], f"{key}.mt", "u32", (625,)).tolist())  # Python ints
    if internal[-1] > 624:
        raise bad(f"{key}.mt", f"its last entry (the position) is {internal[-1]}, at most 624")
    gauss = saved["gauss_next"]
    return 3, internal, None if gauss is None else checked_float(gauss, f"{key}.gauss_next")


def deferred_restore(kind: type, saved: Any, key: str) -> Callable[[Any], None]:
    """What applies a saved state to a generator not made yet, the state checked whole now
    without making any generator (the check numpy or ``random`` would do, done in Python).

    :param kind: what the generator will be: a numpy bit generator class (for a
        ``numpy.random.Generator`` over one) or ``random.Random``.
    :param saved: the saved state, as the generator's capture gives it.
    :param key: where it is in the checkpoint, for messages.
    :return: a function setting a made generator's state to ``saved``.
    :raises CheckpointError: the state is malformed or of another kind of generator (named).
    """
    if issubclass(kind, random.Random):
        internal = python_random_state(saved, key)
        return lambda generator: generator.setstate(internal)
    bits = saved.get("bit_generator") if isinstance(saved, dict) else None
    name, state = _checked_fields(bits, f"{key}.bit_generator")
    if BIT_GENERATORS[name] is not kind:
        raise CheckpointError(f"saved state {key!r} is of a {name} generator, this one is a {kind.__name__}")

    def apply(generator: np.random.Generator) -> None:
        generator.bit_generator.state = state

    return apply
