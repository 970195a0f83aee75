"""Containers a state reaches by more than one path: msgpack stores no references, so the encoder
writes such a container once per path. :func:`repeats` finds how much that repeats before anything
is written, so that a state shared exponentially (a list holding itself twice, 40 levels deep: 2**40
values) is refused at once rather than written for hours. A state that shares nothing (the common
case) costs one pass over its containers."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_REPEATED_VALUES", "repeats"]

#: How many values a written document may repeat; beyond it a save is refused. (2**28 values are
#: gigabytes of msgpack: a state a save would take minutes to write out.)
MAX_REPEATED_VALUES = 1 << 28
_TREES = (dict, list, tuple)


def repeats(state: Any) -> tuple[int, Any, Any]:
    """How many values the tree written out repeats (beyond the values the state holds), and the
    links (``(parent link, key)`` chains, the encoder's) of the first container found reached twice:
    where it was first reached and where again (0, None, None: nothing is shared)."""
    if not isinstance(state, _TREES):
        return 0, None, None
    seen: dict[int, Any] = {}  # id -> the link of the first path that reached it
    shared = None
    stack: list[tuple[Any, Any]] = [(state, None)]
    while stack:
        node, link = stack.pop()
        if id(node) in seen:  # shared (or a cycle, which the encoder refuses by its depth)
            shared = shared or (seen[id(node)], link)
            continue
        seen[id(node)] = link
        # pushed last to first: the first path to a container, in key order, is the one it is "at"
        for key, kid in reversed(node.items()) if isinstance(node, dict) else _backwards(node):
            if isinstance(kid, _TREES):
                stack.append((kid, (link, key)))
    if shared is None:
        return 0, None, None
    return _repeated(state), *shared


def _backwards(items: list[Any] | tuple[Any, ...]) -> Any:
    return zip(range(len(items) - 1, -1, -1), reversed(items), strict=True)


def _repeated(state: Any) -> int:
    """The values repeated by writing ``state`` out as a tree: every distinct container sized once,
    post-order, by id (one on a cycle's way back counts as one value)."""
    sizes: dict[int, int] = {}  # id -> values in the tree written out below it (itself too)
    distinct = 0
    stack: list[tuple[Any, bool]] = [(state, False)]
    while stack:
        node, done = stack.pop()
        kids = list(node.values() if isinstance(node, dict) else node)
        if done:
            sizes[id(node)] = 1 + sum(sizes.get(id(k), 1) if isinstance(k, _TREES) else 1 for k in kids)
            distinct += 1 + sum(not isinstance(k, _TREES) for k in kids)
        elif id(node) not in sizes:
            sizes[id(node)] = 1  # (in progress: a cycle back to it counts one)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if isinstance(k, _TREES) and id(k) not in sizes)
    return sizes[id(state)] - distinct
