"""An :class:`~amber.algorithms.algorithm_config.AlgorithmConfig` from a dict: what
``AlgorithmConfig.from_dict`` reads, from amber's own ``to_dict()`` or from RLlib's config dicts.

RLlib's names of amber's settings are read as amber's (:data:`RLLIB_NAMES`: ``lambda``,
``framework``, ``num_workers``, ``sgd_minibatch_size``, the nested ``multiagent`` dict...), and
RLlib's tuple policy specs become :class:`~amber.policy.policy.PolicySpec`. Read strictly (a
user's dict), a key amber does not have is a ``ValueError`` naming it (a typo would otherwise be
dropped), hyperparameters are type-checked as ``.training()`` checks them and ``model`` is
merged into the algorithm's default. Read leniently (a checkpoint's saved config), keys that no
longer exist are skipped, so that older checkpoints keep loading, and ``model`` is taken whole.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RLLIB_NAMES", "TRAINING_ALIASES", "algorithm_config_for", "apply_dict", "policy_spec"]

#: RLlib 2.10's names of hyperparameters ``.training()`` takes as aliases of amber's.
TRAINING_ALIASES = {"sgd_minibatch_size": "minibatch_size", "num_sgd_iter": "num_epochs", "lambda": "lambda_"}
#: RLlib's names of amber's settings (its config dicts', and ``.training()``'s 2.10 aliases).
RLLIB_NAMES = {
    **TRAINING_ALIASES, "framework": "framework_str",
    "num_workers": "num_env_runners", "num_rollout_workers": "num_env_runners",
    "num_envs_per_worker": "num_envs_per_env_runner", "callbacks": "callbacks_class",
    "recreate_failed_workers": "restart_failed_env_runners",
    "recreate_failed_env_runners": "restart_failed_env_runners",
}
#: The keys of RLlib's nested ``multiagent`` dict that amber has (as top-level settings).
_MULTIAGENT_KEYS = ("policies", "policy_mapping_fn", "policies_to_train")


def policy_spec(spec: Any, policy_id: str | None = None) -> Any:
    """A policy spec as amber keeps it: RLlib's ``(policy_class, observation_space, action_space,
    config)`` tuple (or a shorter prefix of it) as a :class:`~amber.policy.policy.PolicySpec`;
    ``to_dict()``'s ``{"policy_class", "config"}`` form (with its spaces) too; anything else unchanged
    (``validate()`` refuses what is no spec).

    :param policy_id: the policy's id, for messages.
    :raises ValueError: a tuple longer than four, or whose class is no class or config no dict.
    """
    from amber.algorithms.config_values import _spec_from_dict
    from amber.policy.policy import PolicySpec

    if not isinstance(spec, (tuple, list)):
        return _spec_from_dict(spec, policy_id)
    bad_class = bool(spec) and spec[0] is not None and not isinstance(spec[0], type)
    bad_config = len(spec) == 4 and spec[3] is not None and not isinstance(spec[3], Mapping)
    if bad_class or bad_config or len(spec) > 4:
        raise ValueError(f"a policy spec tuple is (policy_class, observation_space, action_space, config "
                         f"dict), not {spec!r}")
    return PolicySpec(*spec)


def _policies(value: Any) -> Any:
    """The ``policies`` setting: a dict of id → spec, or an iterable of ids (each built from defaults)."""
    if isinstance(value, Mapping):
        return {pid: policy_spec(spec, pid) for pid, spec in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return {pid: None for pid in sorted(value)}
    return value


def _known_override_keys(config: Any) -> set[str]:
    """The keys a policy's overrides may hold (:func:`~amber.algorithms.config_checks.check_policy_spec`)."""
    from amber.algorithms.config_checks import ALGORITHM_WIDE_KEYS, POLICY_ONLY_KEYS

    known = set(config.hyperparameter_types()) | set(POLICY_ONLY_KEYS) | set(TRAINING_ALIASES)
    return known - set(ALGORITHM_WIDE_KEYS)


def _without_unknown_overrides(config: Any, policies: Any) -> Any:
    """Leniently read: the policies without (and a warning naming) the keys of a saved policy's
    overrides the algorithm no longer has, which the checks at build would refuse; they never had
    an effect."""
    from amber.policy.policy import PolicySpec

    if not isinstance(policies, Mapping):
        return policies
    from amber.algorithms.config_checks import check_policy_spec

    known, out = _known_override_keys(config), {}
    for pid, spec in policies.items():
        own = spec.config if isinstance(spec, PolicySpec) else spec
        stale = sorted(k for k in own if k not in known) if isinstance(own, Mapping) else []
        refused = {}
        for key in (k for k in own if k not in stale) if isinstance(own, Mapping) else ():
            try:  # a value an older amber took without looking (PPO used none but lr and model)
                check_policy_spec(config, pid, {key: own[key]})
            except ValueError as e:
                refused[key] = str(e)
        if stale or refused:
            warnings.warn(f"policy {pid!r}: skipping saved config override(s) "
                          + "; ".join([*(f"{k!r} ({type(config).__name__} takes no such setting per "
                                         "policy)" for k in stale),
                                       *(f"{k!r} ({why})" for k, why in refused.items())]),
                          stacklevel=4)
            kept = {k: v for k, v in own.items() if k not in stale and k not in refused}
            spec = (PolicySpec(spec.policy_class, spec.observation_space, spec.action_space, kept)
                    if isinstance(spec, PolicySpec) else kept)
        out[pid] = spec
    return out


def _flatten(data: dict[str, Any], strict: bool) -> dict[str, Any]:
    """``data`` with RLlib's names as amber's and its ``multiagent`` dict's keys at the top level.

    :raises ValueError: (strict) a ``multiagent`` key amber lacks, or two names of one setting
        with different values.
    """
    from amber.algorithms.rllib_api import KEYWORDS  # RLlib's multi_agent() settings amber lacks

    multi = data.pop("multiagent", None)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    extra = dict(multi) if isinstance(multi, Mapping) else {}
    taken = (*_MULTIAGENT_KEYS, *(k for k in KEYWORDS["multi_agent"] if k not in _MULTIAGENT_KEYS))
    if strict and set(extra) - set(taken):  # (those of KEYWORDS: checked with the top-level keys)
        raise ValueError(f"unknown multiagent setting(s) {sorted(set(extra) - set(taken))}; "
                         f"amber has {', '.join(_MULTIAGENT_KEYS)}")
    for key, value in [*data.items(), *((k, extra[k]) for k in taken if k in extra)]:
        name = RLLIB_NAMES.get(key, key)
        if name in out and out[name] is not value and out[name] != value:
            if strict:
                raise ValueError(f"{origin[name]!r} and {key!r} both set {name} and differ: "
                                 f"{out[name]!r} and {value!r}")
            if key != name:
                continue  # amber's own name wins
        out[name], origin[name] = value, key
    if multi is not None:
        out["multi_agent"] = True
    return out


def _unknown_message(config: Any, data: Mapping[str, Any], unknown: list[str], known: set[str]) -> str:
    """The refusal of settings ``config`` lacks, named as the caller wrote them (``sgd_minibatch_size``,
    not amber's ``minibatch_size``), with the algorithm configs that have them and the closest
    names ``config`` has (never the key given, nor another name of the same setting)."""
    from amber.algorithms.dqn.dqn import DQNConfig
    from amber.algorithms.ppo.ppo import PPOConfig
    from amber.algorithms.sac.sac import SACConfig

    written = {RLLIB_NAMES.get(str(k), str(k)): str(k) for k in data}
    given = [written.get(k, k) for k in unknown]
    others = [cls() for cls in (PPOConfig, DQNConfig, SACConfig) if not isinstance(config, cls)]
    owners: dict[str, list[str]] = {}  # "PPOConfig": the keys it has
    for key in unknown:
        found = " and ".join(type(c).__name__ for c in others if key in vars(c))
        owners.setdefault(found, []).append(written.get(key, key))
    where = "; ".join(f"{', '.join(map(repr, keys))} {'is a setting' if len(keys) == 1 else 'are settings'} "
                      f"of {found}" for found, keys in owners.items() if found)
    names = sorted(known | {alias for alias, name in RLLIB_NAMES.items() if name in known})
    close = sorted({c for k in owners.get("", []) for c in difflib.get_close_matches(k, names, n=2)})
    return (f"unknown setting(s) {', '.join(map(repr, given))} for {type(config).__name__}"
            + (f" ({where}: use that config)" if where else "")
            + (f"; did you mean {', '.join(close)}?" if close else ""))


def apply_dict(config: Any, data: Mapping[str, Any], *, strict: bool = True) -> None:
    """Set ``config``'s settings from ``data`` (``to_dict()``'s form, or RLlib's names).

    :param strict: refuse keys ``config`` does not have, type-check hyperparameters as
        ``.training()`` does and merge ``model`` into the default (a user's dict); False skips
        such keys and takes ``model`` whole (a saved checkpoint's config, maybe of an older amber).
    :raises ValueError: (strict) an unknown key, named with the closest known ones; an RLlib
        setting amber lacks in a form its fluent method refuses (``{"num_gpus": 1}``; the off forms,
        ``{"num_gpus": 0}``, are ignored: :func:`~amber.algorithms.rllib_api.rllib_dict_setting`); a
        hyperparameter of the wrong type; a framework amber does not support.
    """
    from amber.algorithms.rllib_api import rllib_dict_setting

    settings = _flatten({k: v for k, v in data.items() if k != "_config_class"}, strict)
    config._multi_agent = bool(settings.pop("multi_agent", False))
    known = {k for k in vars(config) if not k.startswith("_")} | {"algo_class"}
    unknown = sorted(str(k) for k in settings if k not in known)
    if strict:  # RLlib's settings amber lacks: their off forms ignored, as the fluent methods do
        ignored = [k for k in unknown if rllib_dict_setting(type(config).__name__, k, settings[k])]
        unknown = [k for k in unknown if k not in ignored]
        settings = {k: v for k, v in settings.items() if k not in ignored}
    if unknown and strict:
        raise ValueError(_unknown_message(config, data, unknown, known))
    typed = config.hyperparameter_types() if strict else {}
    for key, value in settings.items():
        if key in unknown or key in typed:
            continue
        if key == "policies":
            value = _policies(value) if strict else _without_unknown_overrides(config, _policies(value))
        if key == "framework_str" and strict:
            config.framework(value)
            continue
        setattr(config, key, value)
    config.training(**{k: v for k, v in settings.items() if k in typed})


def algorithm_config_for(algo_cls: Any, config: Any, env: Any = None) -> Any:
    """The config ``Algorithm(config=..., env=...)`` builds with, validated: a copy of ``config``
    (itself, inside :func:`~amber.algorithms.config_adoption.adopting_config`), or, from RLlib's dict
    form, the algorithm's own config class read as ``from_dict`` reads it (strictly), over its defaults;
    ``env`` (RLlib's argument) sets the environment.

    :raises ValueError: the dict's errors (an unknown key, named), or the config's (``validate()``).
    :raises TypeError: ``config`` is neither a config nor a dict.
    """
    from amber.algorithms.algorithm_config import AlgorithmConfig, copy_unless_adopted

    if isinstance(config, Mapping):
        default = algo_cls.get_default_config()
        made = type(default).from_dict(config)
        made.algo_class = default.algo_class
        config = made
    elif config is None:
        config = algo_cls.get_default_config()
    elif isinstance(config, AlgorithmConfig):
        config = copy_unless_adopted(config)
    else:
        raise TypeError(f"{algo_cls.__name__}(config=...) takes an AlgorithmConfig or a dict, not "
                        f"{type(config).__name__}")
    if env is not None:
        config.environment(env)
    config.validate()
    return config
