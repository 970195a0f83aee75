"""Snapshots of state trees: the copy a background save writes, whatever training does next.

:func:`snapshot` copies a state tree in the caller's thread, each numpy array
once. Most of a large algorithm's bytes are its weights and optimizer moments,
which the policies hand out as numpy *views* of their live tensors (see
:func:`amber.policy.torch_utils.state_views`). Copying those at memory speed
still takes most of a background save's time in the caller's thread, so a
background save copies them later, in its writer thread:

- while the state is taken, a policy notes each view of live memory with
  :func:`live_view` (inside :func:`recording_live_views`), with a way to read
  the memory's version counter;
- inside :func:`deferring` (the background save's capture), :func:`snapshot`
  gives those arrays an empty buffer and leaves their copy to a
  :class:`DeferredCopy`, which the writer runs before it writes anything;
- until that copy is done, every code path that changes weights or optimizer
  state in place calls :func:`wait_for_snapshot` first (amber's optimizer
  steps, target-network updates, ``set_weights`` and restores do);
- after copying, the writer compares each view's version counter with the
  one noted at the save. A change made in place without waiting (by code that
  skipped :func:`wait_for_snapshot`) fails the save with
  :class:`~amber.errors.StateChangedError` instead of writing a checkpoint
  that mixes two moments. Writes that do not count versions (through a
  tensor's ``.data``, or a numpy view) are not seen: those must wait.

A snapshot taken outside :func:`deferring` copies everything at once.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from amber.durable import submit_or_run
from amber.errors import StateChangedError, UnserializableStateError

__all__ = ["DeferredCopy", "deferring", "live_view", "recording_live_views", "snapshot",
           "wait_for_snapshot"]

#: A live view noted by :func:`live_view`: the array, its version reader, its version then.
_LiveEntry = tuple[np.ndarray, Callable[[], int], int]
_LIVE: ContextVar[dict[int, _LiveEntry] | None] = ContextVar("amber_live_views", default=None)


@contextmanager
def recording_live_views() -> Iterator[dict[int, _LiveEntry]]:
    """Inside the block, :func:`live_view` notes arrays in the returned mapping (for
    :func:`snapshot`'s ``live``)."""
    live: dict[int, _LiveEntry] = {}
    token = _LIVE.set(live)
    try:
        yield live
    finally:
        _LIVE.reset(token)


def live_view(array: np.ndarray, version: Callable[[], int]) -> None:
    """Note that ``array`` is a view of memory that training changes in place (a weight, an
    optimizer moment), and that ``version()`` grows with each such change (a torch tensor's
    ``_version``). Does nothing outside :func:`recording_live_views`."""
    live = _LIVE.get()
    if live is not None:
        live[id(array)] = (array, version, version())


class DeferredCopy:
    """The copies of live views a background save's snapshot left for its writer thread.

    :meth:`run` copies them and checks their versions; :attr:`done` is set once it has ended
    (whether it succeeded or not), which is what :func:`wait_for_snapshot` waits for.
    """

    def __init__(self, where: str | os.PathLike[str] | None = None) -> None:
        self.where = where
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.versions: list[tuple[Callable[[], int], int]] = []
        self.done = threading.Event()

    def add(self, out: np.ndarray, entry: _LiveEntry) -> None:
        """Copy ``entry``'s array into ``out`` later, checking that its version has not moved."""
        self.pairs.append((out, entry[0]))
        self.versions.append((entry[1], entry[2]))

    def run(self) -> None:
        """Copy every pair, then check the versions.

        :raises StateChangedError: an array was changed in place since the save (nothing may
            be written from this snapshot).
        """
        try:
            _copy_pairs(self.pairs)
            changed = sum(1 for version, then in self.versions if version() != then)
            if changed:
                raise StateChangedError(
                    f"{changed} of the {len(self.versions)} weight and optimizer arrays of the background "
                    f"save to {self.where} were changed in place before the save had copied them; nothing "
                    "was written. Code that changes weights in place must call "
                    "amber.async_save.wait_for_snapshot() first, or save with block=True", path=self.where)
        finally:
            self.pairs, self.versions = [], []  # no reference to the live memory is kept
            self.done.set()


_COLLECT: ContextVar[DeferredCopy | None] = ContextVar("amber_deferred_copy", default=None)
_PENDING: list[DeferredCopy] = []


@contextmanager
def deferring(where: str | os.PathLike[str] | None = None) -> Iterator[DeferredCopy]:
    """Inside the block, :func:`snapshot` leaves the copies of live views (noted by
    :func:`live_view`) to the returned :class:`DeferredCopy`, whose owner must :meth:`hold` it
    and run it: until it has run, :func:`wait_for_snapshot` waits."""
    later = DeferredCopy(where)
    token = _COLLECT.set(later)
    try:
        yield later
    finally:
        _COLLECT.reset(token)


def hold(later: DeferredCopy) -> None:
    """From now until ``later`` has run, :func:`wait_for_snapshot` waits for it."""
    if later.pairs and not later.done.is_set():
        _PENDING[:] = [later]


def forget_pending() -> None:
    """Wait for nothing any more (in a forked child, whose copy of the writer does not run)."""
    _PENDING.clear()


def wait_for_snapshot() -> None:
    """Wait until the background save in flight has copied the weights and optimizer state it
    left for later (returns at once when there is none).

    Call it before changing a policy's weights or optimizer state in place from your own code
    while a ``save(block=False)`` may be in flight; amber's own updates, ``set_weights`` and
    restores call it.
    """
    for later in _PENDING:
        later.done.wait()


def snapshot(tree: Any, *, fresh_arrays: bool = False, where: str | os.PathLike[str] | None = None,
             live: dict[int, _LiveEntry] | None = None) -> Any:
    """An independent copy of a state tree: what a background save writes, whatever is done
    to the live objects afterwards.

    The tree is deep-copied (:func:`copy.deepcopy`): containers and objects
    are copied, objects shared within the tree stay shared, classes and
    functions are kept as they are. Each numpy array is copied once, keeping
    its memory order, so that every format writes the copy byte for byte as
    it would have written the original (a non-contiguous view becomes a
    contiguous copy: the same values).

    :param tree: the state tree (or any object the format writes).
    :param fresh_arrays: the tree was built for this save, its arrays that own
        their memory being copies made for it, as :meth:`Policy.get_state`
        returns them: those are kept, not copied a second time. An array over
        another's memory (a view, e.g. of a live tensor) is still copied.
    :param where: the checkpoint's path, for messages.
    :param live: the live views noted while the tree was taken (:func:`recording_live_views`):
        inside :func:`deferring`, their copies are left to its :class:`DeferredCopy`.
    :raises UnserializableStateError: something in the tree cannot be copied.
    """
    memo: dict[int, Any] = {}
    arrays = _arrays(tree)
    if fresh_arrays:
        for array in arrays:
            if array.base is None and array.flags.owndata:
                memo[id(array)] = array  # deepcopy returns what the memo holds: the array itself
    later = _COLLECT.get()
    now = []
    for array in arrays:
        entry = live.get(id(array)) if live and later is not None else None
        if id(array) in memo:
            continue
        if entry is not None and entry[0] is array and not array.dtype.hasobject:
            out = memo[id(array)] = _BUFFERS.take(array)
            later.add(out, entry)  # type: ignore[union-attr]
        else:
            now.append(array)
    _copy_arrays(now, memo)
    try:
        return copy.deepcopy(tree, memo)
    except Exception as e:  # an object deepcopy cannot copy (a lock, an open file...)
        raise UnserializableStateError(
            f"cannot snapshot the state for a background save to {where}: {type(e).__name__}: {e}; "
            "save with block=True", path=where) from e


class _Buffers:
    """The arrays of the last written snapshot, reused by the next one: copying into memory
    already touched is about twice as fast as into fresh pages. Holds one snapshot's worth at
    most; what a snapshot takes is handed back once its save has been written."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[tuple[Any, ...], list[np.ndarray]] = {}
        self.local = threading.local()

    @staticmethod
    def key(array: np.ndarray) -> tuple[Any, ...]:
        return array.shape, array.dtype.str, array.flags.f_contiguous and not array.flags.c_contiguous

    def take(self, like: np.ndarray) -> np.ndarray:
        with self.lock:
            found = self.free.get(self.key(like))
            out = found.pop() if found else np.empty_like(like)
        taken = getattr(self.local, "taken", None)
        if taken is not None:
            taken.append(out)
        return out

    def collect(self) -> list[np.ndarray]:
        """Start recording what this thread's snapshots take; the list is handed to :meth:`give_back`."""
        self.local.taken = []
        return self.local.taken

    def give_back(self, arrays: list[np.ndarray]) -> None:
        """A written snapshot's arrays, free for the next one (older ones are dropped)."""
        free: dict[tuple[Any, ...], list[np.ndarray]] = {}
        for a in arrays:
            free.setdefault(self.key(a), []).append(a)
        with self.lock:
            self.free = free


_BUFFERS = _Buffers()
#: Below this many bytes a snapshot copies in one thread alone.
_PARALLEL_BYTES = 16 << 20
_COPIER: concurrent.futures.ThreadPoolExecutor | None = None


def _copy_arrays(arrays: list[np.ndarray], memo: dict[int, Any]) -> None:
    """Copy each array once (same shape, dtype and memory order) into ``memo`` by id."""
    pairs, seen = [], set()
    for a in arrays:
        if id(a) not in seen and not a.dtype.hasobject:
            seen.add(id(a))
            out = _BUFFERS.take(a)
            memo[id(a)] = out
            pairs.append((out, a))
    _copy_pairs(pairs)


def _copy_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.copyto(out, a)`` for each pair; large copies on two threads (numpy frees the GIL
    while it copies)."""
    global _COPIER
    if sum(a.nbytes for _, a in pairs) < _PARALLEL_BYTES:
        for out, a in pairs:
            np.copyto(out, a)
        return
    mine: list[tuple[np.ndarray, np.ndarray]] = []
    theirs: list[tuple[np.ndarray, np.ndarray]] = []
    loads = [0, 0]
    for pair in sorted(pairs, key=lambda p: -p[1].nbytes):  # each to the lighter side
        side = 0 if loads[0] <= loads[1] else 1
        (mine, theirs)[side].append(pair)
        loads[side] += pair[1].nbytes
    if _COPIER is None:
        _COPIER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amber-snapshot")
    other = submit_or_run(_COPIER, lambda: [np.copyto(out, a) for out, a in theirs])  # (here at exit)
    try:
        for out, a in mine:
            np.copyto(out, a)
    finally:
        other.result()


def _arrays(tree: Any) -> list[np.ndarray]:
    """Every numpy array in ``tree``'s dicts, lists and tuples."""
    found: list[np.ndarray] = []
    seen: set[int] = set()  # containers already walked: a tree may contain itself
    stack = [tree]
    while stack:
        node = stack.pop()
        if type(node) in (dict, list, tuple):
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(node.values() if type(node) is dict else node)
        elif type(node) is np.ndarray and not node.dtype.hasobject:
            found.append(node)
    return found
