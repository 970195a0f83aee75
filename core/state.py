"""State trees: what amber saves.

A state tree is a nest of dicts (keys ``str`` or ``int``) and lists/tuples
whose leaves are ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
numpy arrays of numeric or bool dtype (any shape, byte order or memory
layout) and numpy scalars of those dtypes. Every format round-trips these
exactly: dtype, shape, values (NaN, inf, -0.0), key order, int vs float.
Portable formats return tuples as lists.

Functions and classes may appear too: before a format sees the tree, the
engine replaces each by a :class:`Ref` to its registered name
(:mod:`amber.names`); formats store a ``Ref`` and read it back as one,
which the consumer resolves explicitly through the name registry. Formats
with ``arbitrary_objects`` (pickle) also hold anything else.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from amber.errors import UnserializableStateError

__all__ = [
    "MAX_DEPTH",
    "Ref",
    "StateTree",
    "importable_name",
    "text_to_wide_ints",
    "validate_tree",
    "walk_replace",
    "wide_ints_to_text",
]

StateTree = Union[dict, list, tuple, str, int, float, bool, None, bytes, np.ndarray, np.generic]  # noqa: UP007 - a runtime alias on 3.10
"""A nest of containers and leaves as described in this module's docstring."""

#: Deepest nesting a state tree may have.
MAX_DEPTH = 256
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
ARRAY_KINDS = frozenset("biufc")


@dataclass(frozen=True)
class Ref:
    """A reference to a function or class by its registered name (``"amber.PPO"``).

    Checkpoints of version 1.0 held import paths (``"module:qualname"``)
    here; migrating them to 2.0 turns those into names. A target starting
    with ``?`` is a placeholder for an object that could not be stored.
    Nothing is imported until :meth:`resolve` is called, and then only
    through the name registry.
    """

    target: str

    @property
    def is_placeholder(self) -> bool:
        """True for an object that was not stored (a lambda in a portable format)."""
        return self.target.startswith("?")

    def resolve(self, *, what: str = "", path: Any = None, pm: Any = None) -> Any:
        """The registered class or function of this name (see :func:`amber.names.resolve`).

        :raises UnregisteredNameError: the name is not registered, or is a placeholder.
        """
        from amber.names import resolve

        return resolve(self.target, what=what, path=path, pm=pm)

    @classmethod
    def of(cls, obj: Any) -> Ref:
        """The reference of ``obj``; ``ValueError`` if it has none (a lambda, a closure)."""
        name = importable_name(obj)
        if name is None:
            raise ValueError(f"{obj!r} cannot be imported by name")
        return cls(name)


def importable_name(obj: Any) -> str | None:
    """``"module:qualname"`` when importing it gives back ``obj`` itself, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return f"{module}:{qualname}" if found is obj else None


def is_reference_type(value: Any) -> bool:
    """Whether ``value`` is a function or class, stored by reference in portable formats."""
    return isinstance(
        value, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    )


def _key(path: str, k: Any) -> str:
    if isinstance(k, int):
        return f"{path}[{k}]"
    return f"{path}.{k}" if path else str(k)


WIDE_INT_PREFIX = "int:"


def wide_ints_to_text(tree: Any) -> Any:
    """Bit-generator states hold 128-bit ints (PCG64); state trees hold 64-bit ones: write
    wider ints in nested dicts as ``"int:<digits>"``."""
    if isinstance(tree, dict):
        return {k: wide_ints_to_text(v) for k, v in tree.items()}
    if isinstance(tree, int) and not isinstance(tree, bool) and not -(2**63) <= tree < 2**63:
        return f"{WIDE_INT_PREFIX}{tree}"
    return tree


def text_to_wide_ints(tree: Any) -> Any:
    """The inverse of :func:`wide_ints_to_text`."""
    if isinstance(tree, dict):
        return {k: text_to_wide_ints(v) for k, v in tree.items()}
    if isinstance(tree, str) and tree.startswith(WIDE_INT_PREFIX):
        return int(tree[len(WIDE_INT_PREFIX):])
    return tree


def walk_replace(tree: Any, fn: Callable[[str, Any], Any], path: str = "", depth: int = 0) -> Any:
    """``tree`` with each leaf replaced by ``fn(key_path, leaf)``; containers are
    rebuilt only where a leaf changed (tuples come back as tuples)."""
    if depth > MAX_DEPTH:
        return tree
    if isinstance(tree, dict):
        new = {k: walk_replace(v, fn, _key(path, k), depth + 1) for k, v in tree.items()}
        return tree if all(new[k] is v for k, v in tree.items()) else new
    if isinstance(tree, (list, tuple)):
        items = [walk_replace(v, fn, _key(path, i), depth + 1) for i, v in enumerate(tree)]
        if all(a is b for a, b in zip(items, tree, strict=True)):
            return tree
        return tuple(items) if isinstance(tree, tuple) else items
    return fn(path, tree)


def validate_tree(tree: Any, *, format: str, where: str = "") -> None:
    """Check that ``tree`` holds only what a portable format can write.

    :param tree: the state tree.
    :param format: the format's name, for the message.
    :param where: the path of the file being written, for the message.
    :raises UnserializableStateError: naming the first offending key path.
    """

    def fail(keypath: str, why: str) -> UnserializableStateError:
        return UnserializableStateError(
            f"cannot write {keypath or '(root)'} in format {format!r}: {why}",
            path=where or None,
            format=format,
        )

    stack: list[tuple[str, Any, int]] = [("", tree, 0)]
    while stack:
        keypath, node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise fail(keypath, f"nested deeper than {MAX_DEPTH} levels (or contains itself)")
        if isinstance(node, (dict, list, tuple)):
            if isinstance(node, dict):
                for k, v in node.items():
                    if isinstance(k, bool) or not isinstance(k, (str, int)):
                        raise fail(keypath, f"dict key {k!r} is neither str nor int")
                    if isinstance(k, int) and not _INT_MIN <= k <= _INT_MAX:
                        raise fail(keypath, f"int key {k} does not fit in 64 bits")
                    stack.append((_key(keypath, k), v, depth + 1))
            else:
                stack.extend((_key(keypath, i), v, depth + 1) for i, v in enumerate(node))
            continue
        if node is None or isinstance(node, (bool, float, str, bytes, Ref)):
            continue
        if isinstance(node, int):
            if not _INT_MIN <= node <= _INT_MAX:
                raise fail(keypath, f"int {node} does not fit in 64 bits")
            continue
        if isinstance(node, (np.ndarray, np.generic)):
            if node.dtype.kind not in ARRAY_KINDS:
                raise fail(
                    keypath,
                    f"numpy dtype {node.dtype} is not numeric or bool (object and "
                    "structured dtypes can run code or lose data when read)",
                )
            continue
        if is_reference_type(node):
            raise fail(
                keypath,
                f"{getattr(node, '__qualname__', node)!r} has no registered name. Register it "
                "(amber.register_class), or save in a format that holds any object (`amber formats`), "
                "or pass it again when restoring "
                "(e.g. Algorithm.from_checkpoint(path, policy_mapping_fn=...))",
            )
        raise fail(
            keypath,
            f"values of type {type(node).__module__}.{type(node).__qualname__} are not "
            "state-tree leaves; convert it to arrays/dicts, or save in a format that holds any "
            "object (`amber formats`)",
        )
