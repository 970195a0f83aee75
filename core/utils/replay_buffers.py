"""A replay buffer of transitions in preallocated numpy ring storage.

Each column (``obs``, ``actions``, ``rewards``...) is one numpy array of
``capacity`` rows, allocated on the first :meth:`ReplayBuffer.add` from the
columns' dtypes and shapes; new rows overwrite the oldest once the buffer is
full. Its whole state (the rows held, the write cursor, the sampling RNG) is a
state tree of arrays that the checkpoint formats write without copying.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.state import text_to_wide_ints, wide_ints_to_text

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Uniform replay over the last ``capacity`` transitions.

    :param capacity: the number of rows kept.
    :param seed: seeds the sampling RNG (None: from the OS).
    """

    def __init__(self, capacity: int, *, seed: int | None = None) -> None:
        if int(capacity) <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity!r}")
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self._columns: dict[str, np.ndarray] = {}
        self._cursor = 0  # the next row written
        self._size = 0
        self.num_added = 0  # rows ever added (a counter, not bounded by capacity)

    def __len__(self) -> int:
        return self._size

    @property
    def cursor(self) -> int:
        """The row the next transition is written to."""
        return self._cursor

    @property
    def columns(self) -> list[str]:
        """The columns' names (empty before the first add)."""
        return list(self._columns)

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held."""
        return sum(col[: self._size].nbytes for col in self._columns.values())

    def _allocate(self, batch: Mapping[str, np.ndarray]) -> None:
        for name, col in batch.items():
            self._columns[name] = np.empty((self.capacity, *col.shape[1:]), dtype=col.dtype)

    def add(self, batch: Mapping[str, Any]) -> None:
        """Append rows: a dict of equal-length columns (the same columns every time).

        :raises ValueError: columns of different lengths, or not the buffer's columns.
        """
        cols = {k: np.asarray(v) for k, v in batch.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) != 1:
            sizes = {k: len(v) for k, v in cols.items()}
            raise ValueError(f"replay buffer columns differ in length: {sizes}")
        n = lengths.pop()
        if n == 0:
            return
        if not self._columns:
            self._allocate(cols)
        elif set(cols) != set(self._columns):
            raise ValueError(f"replay buffer got columns {sorted(cols)}, holds {sorted(self._columns)}")
        if n > self.capacity:  # only the newest rows fit
            cols = {k: v[n - self.capacity:] for k, v in cols.items()}
            self.num_added += n - self.capacity
            n = self.capacity
        first = min(n, self.capacity - self._cursor)
        for name, store in self._columns.items():
            src = cols[name]
            store[self._cursor:self._cursor + first] = src[:first]
            if first < n:
                store[: n - first] = src[first:]
        self._cursor = (self._cursor + n) % self.capacity
        self._size = min(self.capacity, self._size + n)
        self.num_added += n

    def sample(self, num_items: int) -> dict[str, np.ndarray]:
        """``num_items`` rows drawn uniformly with replacement (copies).

        :raises ValueError: the buffer is empty.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self._size, size=int(num_items))
        return {name: store[idx] for name, store in self._columns.items()}

    def clear(self) -> None:
        """Drop every row (storage is kept); the RNG goes on."""
        self._cursor = 0
        self._size = 0

    # -- state -----------------------------------------------------------------------

    def get_state(self, *, include_data: bool = True) -> dict[str, Any]:
        """The buffer's state; its columns are views of the storage (no copy).

        :param include_data: False leaves out the rows (``store_replay_buffer=False``):
            a buffer restored from such a state is empty.
        """
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "size": self._size if include_data else 0,
            "cursor": self._cursor if include_data else 0,
            "num_added": self.num_added,
            "rng": wide_ints_to_text(self.rng.bit_generator.state),  # PCG64's 128-bit ints as text
        }
        if include_data:
            state["columns"] = {name: store[: self._size] for name, store in self._columns.items()}
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output. Checks it whole before changing anything.

        New storage is allocated (the arrays of a previous state are never
        written to), so a caller may keep the old state to roll back to.

        :raises ValueError: a state that does not describe a valid buffer.
        """
        capacity, size, cursor = (_count(state, "capacity"), _count(state, "size"), _count(state, "cursor"))
        raw_columns = state.get("columns") or {}
        if not isinstance(raw_columns, Mapping):
            raise ValueError("replay buffer state: 'columns' must be a map of arrays")
        columns = {}
        for name, col in raw_columns.items():
            if not isinstance(col, np.ndarray) or col.dtype.kind not in "biuf" or col.ndim < 1:
                raise ValueError(f"replay buffer state: column {name!r} must be a numeric array of rows")
            columns[name] = col
        # a buffer that is not full was filled from row 0 (add or clear), so its cursor is its size
        consistent = size in (0, capacity) or cursor == size
        if not (capacity > 0 and 0 <= size <= capacity and 0 <= cursor < capacity and consistent):
            raise ValueError(
                f"invalid replay buffer state: capacity {capacity}, size {size}, cursor {cursor}")
        if size and (not columns or any(len(col) != size for col in columns.values())):
            raise ValueError(f"replay buffer state holds {size} rows but its columns differ: "
                             f"{ {k: len(v) for k, v in columns.items()} }")
        num_added = _count(state, "num_added") if "num_added" in state else size
        if not isinstance(state["rng"], Mapping):
            raise ValueError("replay buffer state: 'rng' must be a bit generator's state map")
        rng = np.random.default_rng()
        rng.bit_generator.state = text_to_wide_ints(dict(state["rng"]))
        stores: dict[str, np.ndarray] = {}
        for name, col in columns.items():
            if size == capacity and col.flags.writeable and col.flags.c_contiguous and col.base is None:
                stores[name] = col  # a full buffer that owns its memory: adopt it, no copy
                continue
            store = np.empty((capacity, *col.shape[1:]), dtype=col.dtype)
            store[:size] = col
            stores[name] = store
        self.capacity, self._size, self._cursor = capacity, size, cursor if size else 0
        self.num_added = num_added
        self.rng = rng
        self._columns = stores


def _count(state: Mapping[str, Any], key: str) -> int:
    """``state[key]`` as an int (a bool, float or string is refused, never converted)."""
    value = state[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"replay buffer state: {key!r} must be an int, not {type(value).__name__}")
    return int(value)
