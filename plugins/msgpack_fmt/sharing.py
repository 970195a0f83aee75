"""Containers a state reaches by more than one path: msgpack stores no references, so the encoder
writes such a container once per path. :func:`repeats` finds how much that repeats before anything
is written, so that a state shared exponentially (a list holding itself twice, 40 levels deep: 2**40
values) is refused at once rather than written for hours."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_REPEATED_VALUES", "repeats"]

#: How many values a written document may repeat; beyond it a save is refused.
MAX_REPEATED_VALUES = 1 << 24
_TREES = (dict, list, tuple)


def repeats(state: Any) -> tuple[int, Any, Any]:
    """How many values the tree written out repeats (beyond the values the state holds), and the
    links (``(parent link, key)`` chains, the encoder's) of the first container found reached twice:
    where it was first reached and where again (None, None: nothing is shared). Every distinct
    container is sized once, post-order, by id."""
    if not isinstance(state, _TREES):
        return 0, None, None
    sizes: dict[int, int] = {}  # id -> values in the tree written out below it (itself too)
    seen: dict[int, Any] = {}  # id -> the link of the first path that reached it
    distinct, shared = 0, (None, None)
    stack: list[tuple[Any, Any, bool]] = [(state, None, False)]
    while stack:
        node, link, done = stack.pop()
        kids = list(node.values() if isinstance(node, dict) else node)
        if done:
            sizes[id(node)] = 1 + sum(sizes.get(id(k), 1) if isinstance(k, _TREES) else 1 for k in kids)
            distinct += 1 + sum(not isinstance(k, _TREES) for k in kids)
            continue
        if id(node) in seen:  # shared (or a cycle, which the encoder refuses by its depth)
            shared = shared if shared[1] is not None else (seen[id(node)], link)
            continue
        seen[id(node)] = link
        stack.append((node, link, True))
        keys = list(node) if isinstance(node, dict) else range(len(kids))
        stack.extend((k, (link, key), False) for key, k in zip(keys, kids, strict=True)
                     if isinstance(k, _TREES))
    return sizes.get(id(state), 0) - distinct, *shared
