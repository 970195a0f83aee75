"""Restores: models built without weight initialisation, sizes bounded by the saved state, and
states a restore owns (kept rather than copied).

Torch-free, so that any model module (and the policies' restore paths) can use it.
"""

from __future__ import annotations

import contextvars
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from amber.scoped import scoped

__all__ = [
    "ModelSizeError",
    "adopting",
    "adopting_state",
    "charge",
    "restoring",
    "state_size",
    "weights_will_be_loaded",
]


class ModelSizeError(ValueError):
    """A model declares more parameters than the saved weights it is built for hold."""


class _Budget:
    """How many more parameters (and buffer entries) models built now may allocate."""

    __slots__ = ("left", "total")

    def __init__(self, total: int) -> None:
        self.total = self.left = int(total)

    def charge(self, n: int, what: str, consume: bool) -> None:
        if n > self.left:
            raise ModelSizeError(
                f"the model's {what} needs {n} values, more than the {self.total} values the saved "
                "state holds: its declared sizes (fcnet_hiddens, hiddens, spaces) do not match its weights")
        if consume:
            self.left -= n


# None: not restoring; a _Budget or True: weights will be loaded (a budget also bounds sizes)
_WEIGHTS_WILL_BE_LOADED: contextvars.ContextVar[_Budget | bool] = contextvars.ContextVar(
    "amber_weights_will_be_loaded", default=False)


def weights_will_be_loaded(budget: int | None = None) -> AbstractContextManager[None]:
    """Build models without initialising their weights, which a saved state is about to replace.

    Orthogonal initialisation of a 2048x2048 layer takes seconds; a restore needs none of it.

    :param budget: the number of values the saved state holds (every array's size, see
        :func:`state_size`). Each layer and preprocessor built in the block is charged before
        torch allocates it, and :class:`ModelSizeError` is raised when the model would hold more
        than that, so a small checkpoint cannot declare a model of terabytes.
    """
    current = _WEIGHTS_WILL_BE_LOADED.get()
    if budget is not None:
        current = _Budget(budget)
    elif not isinstance(current, _Budget):  # an inner block keeps an outer budget
        current = True
    return scoped(_WEIGHTS_WILL_BE_LOADED, current)


def state_size(tree: Any) -> int:
    """The total number of values in every numpy array of a state tree (a bound for
    :func:`weights_will_be_loaded`)."""
    total, stack = 0, [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, np.ndarray):
            total += int(node.size)
        elif isinstance(node, dict):  # a state tree's maps are dicts (no ABC check: it is slow cold)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return total


def restoring() -> bool:
    """Whether models are being built inside :func:`weights_will_be_loaded`."""
    return bool(_WEIGHTS_WILL_BE_LOADED.get())


def charge(n: int, what: str, *, consume: bool = True) -> None:
    """Charge ``n`` values against the budget of :func:`weights_will_be_loaded`, if any.

    :param consume: False to check only that ``n`` fits what is left (for buffers derived
        from sizes that weights pay for, such as a one-hot encoding's categories).
    :raises ModelSizeError: ``n`` is more than what is left.
    """
    budget = _WEIGHTS_WILL_BE_LOADED.get()
    if isinstance(budget, _Budget):
        budget.charge(int(n), what, consume)


_ADOPT: contextvars.ContextVar[bool] = contextvars.ContextVar("amber_adopt_state", default=False)


def adopting_state() -> AbstractContextManager[None]:
    """Inside the block, the states given to ``set_state`` belong to the restore (a checkpoint
    just read, dropped afterwards): a policy may keep their arrays instead of copying them."""
    return scoped(_ADOPT, True)


def adopting() -> bool:
    """Whether ``set_state`` runs inside :func:`adopting_state`."""
    return _ADOPT.get()
