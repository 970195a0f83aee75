"""A context variable set for the length of a ``with`` block."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Generic, TypeVar

__all__ = ["scoped"]

T = TypeVar("T")


class scoped(Generic[T]):  # noqa: N801 - used as a function: ``with scoped(var, value):``
    """Inside the block, ``var`` is ``value``; afterwards it is what it was before.

    A plain context manager (no generator), so the restores that nest several cost little.
    """

    __slots__ = ("_token", "_value", "_var")

    def __init__(self, var: ContextVar[T], value: T) -> None:
        self._var = var
        self._value = value
        self._token: Token[T] | None = None

    def __enter__(self) -> None:
        self._token = self._var.set(self._value)

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None  # entered
        self._var.reset(self._token)
