"""Algorithm settings from a file and ``key=value`` overrides, as ``rllib train -f`` and RL Zoo's
``--hyperparams`` take them (what ``amber train --config FILE -o KEY=VALUE`` reads).

A settings mapping uses :meth:`AlgorithmConfig.to_dict`'s keys (and ``.training()``'s aliases,
e.g. ``lambda``); :func:`configure` applies one to an algorithm's default config, dicts
(``model``) merged key by key, and names any unknown key and any value of the wrong type
(:data:`SETTING_TYPES`, and the hyperparameters' own). A bool setting takes JSON's ``true`` and
``false``, or Python's ``True`` and ``False`` (``-o log_results=False``): any other string is refused.
A YAML file is read with YAML 1.2's floats: ``1e-3`` is a number (PyYAML, a YAML 1.1 reader,
would keep it as a string).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SETTING_TYPES", "configure", "merge_settings", "parse_override", "read_settings_file"]

#: The types of the settings that are not hyperparameters (``hyperparameter_types()`` has
#: those), as :func:`~amber.algorithms.config_values.matches_type` checks them; ``Any``: a class,
#: a function or an env, which only ``build()`` can judge.
SETTING_TYPES: dict[str, Any] = {
    "env": Any, "env_config": dict, "framework_str": str, "num_env_runners": int,
    "num_envs_per_env_runner": int, "restart_failed_env_runners": bool, "num_cpus_per_env_runner": float,
    "policies": dict | list, "policy_mapping_fn": Any, "policies_to_train": list | None,
    "export_native_model_files": bool, "checkpoint_format": str, "store_replay_buffer": bool,
    "num_to_keep": int | None, "checkpoint_score_attribute": str | None, "checkpoint_score_order": str,
    "storage_path": str | None, "log_results": bool, "callbacks_class": Any, "seed": int | None,
    "multi_agent": bool, "multiagent": dict,
}
#: Python's spellings of a bool, taken for one by a bool setting.
_PYTHON_BOOLS = {"True": True, "False": False}
#: A float in YAML 1.2 that YAML 1.1 (PyYAML) reads as a string: an exponent without a dot or sign.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON file (``.json``) or a YAML file (anything else; needs PyYAML).

    :raises ValueError: not valid JSON/YAML, not a mapping, or YAML without PyYAML installed.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
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
            data = yaml.load(text, Loader=_yaml_loader(yaml))  # (a SafeLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def _yaml_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader, reading YAML 1.2's floats (``1e-3``, ``2E+5``) as floats."""
    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))
    return Loader


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


def _typed(config_class: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with Python's ``"True"``/``"False"`` as bools where a setting is a bool.

    :raises ValueError: a setting that is no hyperparameter, of the wrong type (named).
    """
    from amber.algorithms.config_values import matches_type

    hyper = config_class.hyperparameter_types()
    out = {}
    for key, value in settings.items():
        hint = hyper.get(key, SETTING_TYPES.get(key, Any))
        if isinstance(value, str) and value in _PYTHON_BOOLS and matches_type(True, hint) \
                and not matches_type(value, hint):
            value = _PYTHON_BOOLS[value]
        if key not in hyper and not matches_type(value, hint):  # (.training() checks the others)
            kind = getattr(hint, "__name__", None) or str(hint)
            kind += " (true or false)" if kind == "bool" else ""
            raise ValueError(f"{config_class.__name__}: setting {key!r} must be {kind}, "
                             f"not {type(value).__name__} {value!r}")
        out[key] = value
    return out


def configure(config_class: Any, settings: Mapping[str, Any]) -> Any:
    """``config_class``'s default config updated with ``settings`` (read as ``from_dict`` reads
    them, dicts merged into the defaults); every setting is type-checked: hyperparameters by
    ``.training()``, the others against :data:`SETTING_TYPES`.

    :raises ValueError: an unknown setting (named, with the closest known ones) or a
        setting of the wrong type.
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
    settings = _typed(config_class, settings)
    merged = _deep_merge(defaults, settings)
    config = config_class.from_dict(merged)
    typed = config_class.hyperparameter_types()
    config.training(**{k: merged[k] for k in settings if k in typed})  # checks their types
    return config
