"""What an algorithm checkpoint's own state names, made live again: the algorithm class and its
config (:func:`config_from_state`), with a caller's overrides, and the check that a checkpoint
restored into a live algorithm is of its kind. Classes and functions are found through the name
registry (:class:`amber.state.Ref`), never imported by path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from amber.errors import CheckpointError, InvalidStateError, UnregisteredNameError
from amber.state import Ref

if TYPE_CHECKING:
    import pluggy

    from amber.algorithms.algorithm_config import AlgorithmConfig
    from amber.algorithms.callbacks import DefaultCallbacks

__all__ = ["GIVEN_AGAIN", "check_same_kind", "config_from_state"]

#: What a loader can be given again, by where an Algorithm's own state holds it: the
#: ``Algorithm.from_checkpoint`` keyword that replaces it. A portable format writes a class or
#: function with no registered name as a placeholder here alone; anywhere else (a policy class...)
#: nothing could give it back, so the save fails instead (:func:`amber.names.to_names`).
GIVEN_AGAIN: Mapping[str, str] = {
    "config.env": "env",
    "config.policy_mapping_fn": "policy_mapping_fn",
    "config.callbacks_class": "callbacks",
}


def config_from_state(
    own: Mapping[str, Any],
    *,
    path: str | os.PathLike[str],
    pm: pluggy.PluginManager | None,
    policy_ids: Iterable[str] | None = None,
    policy_mapping_fn: Callable[..., str] | None = None,
    policies_to_train: Iterable[str] | None = None,
    env: Any = None,
    callbacks: type[DefaultCallbacks] | None = None,
) -> tuple[Any, AlgorithmConfig]:
    """The algorithm class and config a checkpoint's own state names, with the caller's overrides.

    :raises UnregisteredNameError: a class or function the checkpoint names is not registered
        (or was not stored) and the caller did not pass it.
    """
    from amber.algorithms.callbacks import callbacks_from_state
    from amber.envs.registry import check_saved_env

    chosen = callbacks_from_state(own["config"].get("callbacks_class"), callbacks, path)
    given = {"env": env, "policy_mapping_fn": policy_mapping_fn, "callbacks_class": chosen}
    algo_cls = _resolve(own["algorithm_class"], "algorithm_class", path, pm)
    raw = {k: given[k] if given.get(k) is not None else _resolve(v, f"config.{k}", path, pm)
           for k, v in own["config"].items()}
    keep = None if policy_ids is None else list(dict.fromkeys(policy_ids))
    if keep is not None and isinstance(raw.get("policies"), Mapping):  # only these are built
        raw["policies"] = {pid: raw["policies"][pid] for pid in keep if pid in raw["policies"]}
    raw["policies"] = {
        pid: {**spec, "policy_class": _resolve(spec["policy_class"], f"policies.{pid}", path, pm)}
        if isinstance(spec, dict) and "policy_class" in spec else spec
        for pid, spec in (raw.get("policies") or {}).items()
    }
    if env is None:  # a checkpoint's "module:EnvId" never imports the module
        check_saved_env(raw.get("env"), path)
    config = algo_cls.get_default_config().from_dict(raw, strict=False)  # older keys are skipped
    config.callbacks_class = chosen or raw.get("callbacks_class")
    from amber.envs.ray_runners import saved_env_runners  # N runners again when their state is saved
    from amber.envs.runner_state import check_env_count

    config.num_env_runners = saved_env_runners(own, config.num_env_runners, path)
    check_env_count(own, config.num_envs_per_env_runner, path)
    config.algo_class = algo_cls
    config.plugin_manager = pm
    if keep is not None:
        config.policies = {pid: config.policies.get(pid) for pid in keep}
        if config.policies_to_train is not None and policies_to_train is None:
            config.policies_to_train = [p for p in config.policies_to_train if p in keep]
    if policies_to_train is not None:
        config.policies_to_train = list(policies_to_train)
    return algo_cls, config


def check_same_kind(live: type, own: Mapping[str, Any], path: str | os.PathLike[str],
                     pm: pluggy.PluginManager | None) -> None:
    """Refuse to restore a checkpoint of another kind of algorithm (a DQN's into a PPO): neither
    class derives from the other. A saved class not registered here is left to the state checks.

    :raises InvalidStateError: the kinds differ; the message names both and the way out.
    """
    try:
        saved = _resolve(own.get("algorithm_class"), "algorithm_class", path, pm)
    except CheckpointError:
        return
    if isinstance(saved, type) and not (issubclass(live, saved) or issubclass(saved, live)):
        raise InvalidStateError(
            f"{path} holds a {saved.__name__} checkpoint and this algorithm is a {live.__name__}: "
            f"`Algorithm.from_checkpoint(path)` builds the {saved.__name__} it holds", path=path)


def _resolve(value: Any, what: str, path: str | os.PathLike[str], pm: pluggy.PluginManager | None) -> Any:
    """A stored name's class or function, through the name registry (never an import by path).

    :raises UnregisteredNameError: the name is not registered here, or was not stored
        (a placeholder): the message says what to pass or register.
    """
    if not isinstance(value, Ref):
        return value
    if value.is_placeholder:
        raise UnregisteredNameError(
            f"{path} was saved without its {what.removeprefix('config.')} ({value.target[1:]!r} had no "
            f"registered name, so a portable format could not store it); {_way_out(what)}", path=path)
    return value.resolve(what=what, path=path, pm=pm)


def _way_out(what: str) -> str:
    """What a caller can do about a placeholder at ``what``: the keyword that gives it again, if any."""
    if what in GIVEN_AGAIN:
        return (f"pass it: Algorithm.from_checkpoint(path, {GIVEN_AGAIN[what]}=...), or register it "
                "with amber.register_class before saving")
    again = ("save the checkpoint again after amber.register_class(...) of it (registered before "
             "loading too), or in a format that holds any object (`amber formats`)")
    if what.startswith("policies."):
        return (f"no argument can give a policy class again: load the other policies with "
                f"Algorithm.from_checkpoint(path, policy_ids=[...]) leaving out {what[9:]!r}, or {again}")
    return f"no argument can give it again: {again}"
