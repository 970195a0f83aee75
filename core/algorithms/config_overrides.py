"""Algorithm settings from a file and ``key=value`` overrides, as ``rllib train -f`` and RL Zoo's
``--hyperparams`` take them (what ``amber train --config FILE -o KEY=VALUE`` reads).

A settings mapping uses :meth:`AlgorithmConfig.to_dict`'s keys (and ``.training()``'s aliases,
e.g. ``lambda``); :func:`configure` applies one to an algorithm's default config, dicts
(``model``) merged key by key, and names any unknown key.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["configure", "merge_settings", "parse_override", "read_settings_file"]


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON file (``.json``) or a YAML file (anything else; needs PyYAML).

    :raises ValueError: not valid JSON/YAML, not a mapping, or YAML without PyYAML installed.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    else:
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                             "or give a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.fcnet_hiddens=[64,64]"`` → ``(["model", "fcnet_hiddens"], [64, 64])``: the value
    read as JSON, else kept as the string (``env=CartPole-v1``).

    :raises ValueError: not ``key=value``, or an empty part in a dotted key.
    """
    key, sep, raw = text.partition("=")
    if not sep or any(not part for part in key.split(".")):
        raise ValueError(f"{text!r} is not key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, dicts merged key by key (neither is changed)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = _deep_merge(out[key], value)
        out[key] = value
    return out


def merge_settings(settings: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``settings`` with each ``key=value`` override applied in turn (dotted keys reach into
    nested dicts, made as needed); aliases (``lambda``) renamed.

    :raises ValueError: a malformed override, or one reaching into a setting that is not a dict.
    """
    from amber.algorithms.algorithm_config import _ALIASES

    out = {_ALIASES.get(k, k): v for k, v in settings.items()}
    for text in overrides:
        path, value = parse_override(text)
        path[0] = _ALIASES.get(path[0], path[0])
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part, {})
            if not isinstance(child, Mapping):
                raise ValueError(f"{text!r}: {'.'.join(path[:i + 1])} is not a mapping")
            node[part] = node = dict(child)  # a copy: ``settings`` is left as it was
        node[path[-1]] = value
    return out


def configure(config_class: Any, settings: Mapping[str, Any]) -> Any:
    """``config_class``'s default config updated with ``settings`` (read as ``from_dict`` reads
    them, dicts merged into the defaults); hyperparameters are type-checked by ``.training()``.

    :raises ValueError: an unknown setting (named, with the closest known ones) or a
        hyperparameter of the wrong type.
    """
    from amber.algorithms.config_dict import RLLIB_NAMES

    settings = {RLLIB_NAMES.get(k, k): v for k, v in settings.items()}  # RLlib's names, as from_dict
    defaults = config_class().to_dict()
    known = sorted((set(defaults) - {"_config_class"}) | {"multiagent"})
    unknown = sorted(set(settings) - set(known))
    if unknown:
        close = {c for k in unknown for c in difflib.get_close_matches(k, known, n=2)}
        hint = f"; did you mean {', '.join(sorted(close))}?" if close else ""
        raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))} for "
                         f"{config_class.__name__}{hint}")
    merged = _deep_merge(defaults, settings)
    config = config_class.from_dict(merged)
    typed = config_class.hyperparameter_types()
    config.training(**{k: merged[k] for k in settings if k in typed})  # checks their types
    return config
