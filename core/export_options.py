"""Options a user gives an exporter by name (``export_model(dir, format=NAME, KEY=VALUE)``).

An exporter declares the options it takes (:attr:`amber.registry.ExporterSpec.options`);
any other is refused before the exporter runs, with the declared names and the
closest of them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.errors import ExportError
from amber.model_graph import strict_json

if TYPE_CHECKING:
    from amber.registry import ExporterSpec

__all__ = ["check_declared", "checked_options"]


def check_declared(spec: ExporterSpec, given: Iterable[str], plugin: str | None = None) -> None:
    """Refuse an option the exporter ``spec`` does not declare.

    :param given: the option names a user gave.
    :param plugin: the plugin that registered ``spec``, named in the message.
    :raises ExportError: an undeclared option, the declared ones listed (and the closest, if any).
    """
    declared = [str(o) for o in spec.options]
    unknown = [str(k) for k in given if k not in spec.options]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], declared, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    named = f"the {spec.name!r} exporter" + (f" (plugin {plugin!r})" if plugin else "")
    takes = f"its options: {', '.join(sorted(declared))}" if declared else "it takes no options"
    raise ExportError(f"{named} takes no option {', '.join(unknown)} ({takes}){hint}; nothing was written",
                      plugin=plugin)


def checked_options(spec: ExporterSpec, given: Mapping[str, Any], base: Mapping[str, Any],
                    plugin: str | None = None) -> dict[str, Any]:
    """The options of the exporter ``spec``: ``base`` (a shorthand's) and the user's ``given``,
    each recorded in ``model.json``.

    :raises ExportError: an option the exporter does not declare (:func:`check_declared`), is not a
        JSON value, or contradicts ``base``.
    """
    check_declared(spec, given, plugin)
    options = dict(base)
    for key, value in given.items():
        plain = value.item() if isinstance(value, np.generic) else value
        try:
            json.dumps(strict_json(plain), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ExportError(f"the option {key}={value!r:.60} of the {spec.name!r} exporter is not a JSON "
                              f"value (model.json records it): {e}") from e
        if key in options and options[key] != plain:
            raise ExportError(f"the option {key} of the {spec.name!r} exporter is given twice: "
                              f"{options[key]!r} and {plain!r}")
        options[key] = plain
    return options
