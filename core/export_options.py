"""Options a user gives an exporter by name (``export_model(dir, format=NAME, KEY=VALUE)``).

An :class:`amber.registry.ExporterSpec` declares no options, so amber cannot
tell an option an exporter takes from a typo. It gives the exporter the
options in an :class:`ExporterOptions`, a dict that notes each key the
exporter looks up; an option given that the exporter never looked at is
refused once its ``export`` returns, before anything is moved into place.
An exporter that reads all its options at once (iterates them, copies them,
passes them on with ``**options``) is taken to use them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from amber.errors import ExportError
from amber.model_graph import strict_json

__all__ = ["ExporterOptions", "checked_options"]


class ExporterOptions(dict):  # type: ignore[type-arg]
    """An exporter's options, noting which keys it looked up (:meth:`unused`).

    :param data: every option it gets.
    :param given: the keys to check (the user's own, not those amber adds).
    """

    def __init__(self, data: Mapping[str, Any], *, given: Iterable[str]) -> None:
        super().__init__(data)
        self._given = frozenset(given)
        self._read: set[Any] = set()

    def unused(self) -> list[str]:
        """The given options the exporter never looked at."""
        return sorted(k for k in self._given if k not in self._read)

    def looked_up(self) -> list[str]:
        """The option names the exporter looked up, given or not (a typo's right spelling)."""
        return sorted(str(k) for k in self._read)

    def _all(self) -> None:
        self._read.update(dict.keys(self))

    def __getitem__(self, key: Any) -> Any:
        self._read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._read.add(key)
        return super().__contains__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._read.add(key)
        return super().setdefault(key, default)

    # reading them all (iterating, copying, printing, comparing) uses them all
    def __iter__(self) -> Iterator[Any]:
        self._all()
        return super().__iter__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def items(self) -> Any:
        self._all()
        return super().items()

    def values(self) -> Any:
        self._all()
        return super().values()

    def copy(self) -> dict[str, Any]:
        self._all()
        return dict(super().items())

    def popitem(self) -> tuple[Any, Any]:
        self._all()
        return super().popitem()

    def __repr__(self) -> str:
        self._all()
        return super().__repr__()

    def __eq__(self, other: object) -> bool:
        self._all()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        self._all()
        return super().__ne__(other)

    def __or__(self, other: Any) -> Any:
        self._all()
        return super().__or__(other)

    __hash__ = None  # type: ignore[assignment]


def checked_options(name: str, given: Mapping[str, Any], base: Mapping[str, Any]) -> ExporterOptions:
    """The options of the exporter ``name``: ``base`` (a shorthand's) and the user's ``given``,
    each recorded in ``model.json``.

    :raises ExportError: an option is not a JSON value, or contradicts ``base``.
    """
    options = dict(base)
    for key, value in given.items():
        plain = value.item() if isinstance(value, np.generic) else value
        try:
            json.dumps(strict_json(plain), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ExportError(f"the option {key}={value!r:.60} of the {name!r} exporter is not a JSON value "
                              f"(model.json records it): {e}") from e
        if key in options and options[key] != plain:
            raise ExportError(f"the option {key} of the {name!r} exporter is given twice: "
                              f"{options[key]!r} and {plain!r}")
        options[key] = plain
    return ExporterOptions(options, given=given)
