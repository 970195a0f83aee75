"""The map keys the msgpack format keeps: ``str``, ``int`` and numpy integers (stored as ``int``).

Agent ids are map keys as the environment gives them, and some environments give numpy
integers: those are written as msgpack ints and come back as Python ints, which are equal to
them and hash the same, so lookups by the environment's own ids still work. Any other key
(a tuple, ``None``, a float, a bool...) has no msgpack map key that reads back as itself, so a
save refuses it (:func:`key_refusal`) rather than write a document no reader accepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["key_refusal", "map_key", "plain_keys"]

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_EXACT_KEYS = frozenset({str, int})  # packed as they are by msgpack's own packer
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})  # never hold a map
_TREES = (dict, list, tuple)


def map_key(key: Any) -> str | int | None:
    """The msgpack map key ``key`` is written as, or None if the format cannot keep it.

    A ``str`` or ``int`` subclass (an ``IntEnum``) is written as its base value, a numpy integer
    as an ``int``; a bool (an ``int`` to Python) is refused, as it would read back as ``0``/``1``.
    """
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, (bool, np.bool_)):
        return None
    if isinstance(key, (int, np.integer)):
        value = int(key)
        return value if _INT_MIN <= value <= _INT_MAX else None
    return None


def key_refusal(key: Any) -> str:
    """Why ``key`` (refused by :func:`map_key`) cannot be written, and what keeps it."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        what = f"int key {int(key)} does not fit in 64 bits"
    else:
        what = (f"dict key {key!r} ({type(key).__qualname__}) cannot be a msgpack map key (msgpack keeps "
                "str, int and numpy integer keys, numpy integers as int)")
    return f"{what}; save with format='pickle', which keeps any key"


def plain_keys(tree: Any) -> bool:
    """Whether every map key in ``tree`` is an exact ``str`` or ``int`` (msgpack's own packer writes
    those as they are; any other key must go through :func:`map_key`).

    Scalar-only containers are passed over at C speed; a shared container is looked at again.
    """
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if not _EXACT_KEYS.issuperset(map(type, node)):
                return False
            node = node.values()
        if not _SCALARS.issuperset(map(type, node)):
            stack.extend(v for v in node if isinstance(v, _TREES))
    return True
