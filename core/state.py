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
    rebuilt only where a leaf below them changed (tuples come back as tuples).

    Each container is walked once, whatever the number of paths to it: a
    container shared within the tree is replaced by one shared container, a
    cycle stays a cycle, and the time is linear in the number of containers
    and leaves. ``fn`` sees a leaf of a shared container at the first key
    path found to it. Containers nested deeper than :data:`MAX_DEPTH` are kept
    as they are.
    """
    if depth > MAX_DEPTH:
        return tree
    if not isinstance(tree, (dict, list, tuple)):
        return fn(path, tree)
    return _Replacement(fn).run(tree, path, depth)


class _Replacement:
    """One :func:`walk_replace`: walk every container once, find those a changed leaf lies below
    (through any path, cycles included), then rebuild those only, all pointing at each other."""

    def __init__(self, fn: Callable[[str, Any], Any]) -> None:
        self.fn = fn
        self.walked: dict[int, Any] = {}  # id -> container: each is walked once
        self.leaves: dict[tuple[int, Any], Any] = {}  # (id(container), key) -> its new leaf
        self.parents: dict[int, list[int]] = {}  # id -> ids of the containers holding it
        self.changed: set[int] = set()  # ids of the containers to rebuild
        self.new: dict[int, Any] = {}  # id -> its rebuilt container

    def run(self, tree: Any, path: str, depth: int) -> Any:
        self._walk(tree, path, depth)
        todo = list(self.changed)
        while todo:  # a container holding a changed one changes too
            for parent_id in self.parents.get(todo.pop(), ()):
                if parent_id not in self.changed:
                    self.changed.add(parent_id)
                    todo.append(parent_id)
        return self._rebuild(tree)

    def _walk(self, node: Any, path: str, depth: int) -> None:
        """Walk ``node`` (a container not walked yet), depth first in key order, as the tree reads."""
        if depth >= MAX_DEPTH:
            return  # what it holds is kept as it is
        self.walked[id(node)] = node
        for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(v, (dict, list, tuple)):
                self.parents.setdefault(id(v), []).append(id(node))
                if id(v) not in self.walked:
                    self._walk(v, _key(path, k), depth + 1)
                continue
            new = self.fn(_key(path, k), v)
            if new is not v:
                self.leaves[id(node), k] = new
                self.changed.add(id(node))

    def _rebuild(self, tree: Any) -> Any:
        changed = [self.walked[i] for i in self.changed]
        for node in changed:  # dicts and lists first, empty, so that anything can point at them
            if not isinstance(node, tuple):
                self.new[id(node)] = {} if isinstance(node, dict) else []
        for node in changed:  # a tuple after the tuples inside it (a cycle passes through a list or dict)
            todo = [node]
            while todo:
                top = todo[-1]
                inner = [v for v in top if isinstance(v, tuple) and id(v) in self.changed
                         and id(v) not in self.new] if isinstance(top, tuple) else []
                if inner:
                    todo.extend(inner)
                    continue
                todo.pop()
                if isinstance(top, tuple) and id(top) not in self.new:
                    self.new[id(top)] = tuple(self._item(top, i, v) for i, v in enumerate(top))
        for node in changed:
            if isinstance(node, dict):
                self.new[id(node)].update((k, self._item(node, k, v)) for k, v in node.items())
            elif isinstance(node, list):
                self.new[id(node)].extend(self._item(node, i, v) for i, v in enumerate(node))
        return self.new.get(id(tree), tree)

    def _item(self, container: Any, key: Any, value: Any) -> Any:
        """What ``container[key]`` becomes: its new leaf, the rebuilt container, or itself."""
        found = self.leaves.get((id(container), key), value)
        if found is value and isinstance(value, (dict, list, tuple)):
            return self.new.get(id(value), value)
        return found


def validate_tree(tree: Any, *, format: str, where: str = "") -> None:
    """Check that ``tree`` holds only what a portable format can write.

    A container shared within the tree is checked once (unless it also sits
    deeper); a container that contains itself is refused, naming where the
    cycle leads back to.

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

    inside: dict[int, str] = {}  # the containers being checked (the current node's own) -> key path
    checked: dict[int, int] = {}  # containers checked whole -> the deepest level they were checked at

    def check(parent: str, key: Any, node: Any, depth: int) -> None:  # key path: parent + key
        if not isinstance(node, (dict, list, tuple)):
            why = f"nested deeper than {MAX_DEPTH} levels" if depth > MAX_DEPTH else _leaf_problem(node)
            if why is not None:
                raise fail(_key(parent, key) if depth else "", why)
            return
        keypath = _key(parent, key) if depth else ""
        if id(node) in inside:
            raise fail(keypath, f"it contains itself (a cycle back to {inside[id(node)] or '(root)'}); "
                                "this format cannot store cycles: break the cycle, or save in a format "
                                "that holds any object (`amber formats`)")
        if depth > MAX_DEPTH:
            raise fail(keypath, f"nested deeper than {MAX_DEPTH} levels")
        if checked.get(id(node), -1) >= depth:
            return
        inside[id(node)] = keypath
        if isinstance(node, dict):
            for k, v in node.items():
                why = _key_problem(k)
                if why is not None:
                    raise fail(keypath, why)
                check(keypath, k, v, depth + 1)
        else:
            for i, v in enumerate(node):
                check(keypath, i, v, depth + 1)
        del inside[id(node)]
        checked[id(node)] = max(checked.get(id(node), -1), depth)

    check("", None, tree, 0)


def _key_problem(k: Any) -> str | None:
    if isinstance(k, np.integer):  # agent ids some envs give: portable formats store them as int
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, (str, int)):
        return (f"dict key {k!r} ({type(k).__qualname__}) is neither str nor int (nor a numpy "
                "integer, stored as int); save in a format that holds any object (`amber formats`)")
    if isinstance(k, int) and not _INT_MIN <= k <= _INT_MAX:
        return f"int key {k} does not fit in 64 bits"
    return None


def _leaf_problem(node: Any) -> str | None:
    """Why ``node`` is not a leaf a portable format can write, or None."""
    if isinstance(node, (np.ndarray, np.generic)):  # first: np.str_ is a str, np.float64 a float
        dtype = node.dtype
        if isinstance(node, np.ma.MaskedArray):
            return "masked arrays would lose their mask; save .data and .mask"
        if dtype.kind in "US":
            return f"numpy dtype {dtype} is not numeric or bool (convert numpy strings with str() or bytes())"
        if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            return (f"numpy dtype {dtype} is not numeric or bool (object and structured dtypes can run "
                    "code or lose data when read)")
        return None
    if node is None or isinstance(node, (bool, float, str, bytes, Ref)):
        return None
    if isinstance(node, int):
        return None if _INT_MIN <= node <= _INT_MAX else f"int {node} does not fit in 64 bits"
    if is_reference_type(node):
        return (f"{getattr(node, '__qualname__', node)!r} has no registered name. Register it "
                "(amber.register_class) before saving, or save in a format that holds any object "
                "(`amber formats`)")
    return (f"values of type {type(node).__module__}.{type(node).__qualname__} are not "
            "state-tree leaves; convert it to arrays/dicts, or save in a format that holds any "
            "object (`amber formats`)")
