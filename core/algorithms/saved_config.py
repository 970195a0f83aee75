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

__all__ = ["GIVEN_AGAIN", "NOT_ADOPTED", "SHAPED", "check_policy_networks", "check_same_kind",
           "config_from_state", "given_policies_to_train"]

#: What a loader can be given again, by where an Algorithm's own state holds it: the
#: ``Algorithm.from_checkpoint`` keyword that replaces it. A portable format writes a class or
#: function with no registered name as a placeholder here alone; anywhere else (a policy class...)
#: nothing could give it back, so the save fails instead (:func:`amber.names.to_names`).
GIVEN_AGAIN: Mapping[str, str] = {
    "config.env": "env",
    "config.policy_mapping_fn": "policy_mapping_fn",
    "config.callbacks_class": "callbacks",
}
#: The ``model`` settings a policy's weights show in their shapes (checked with the weights).
SHAPED = ("fcnet_hiddens",)
#: Settings of a checkpoint's config that a loader never takes from it: where the loading process
#: writes its later saves is its own choice, not a file's (a checkpoint from elsewhere would send
#: them to any fsspec URL, credentials and all). ``algo.config.checkpointing(storage_path=...)``
#: sets it again (as RLlib's from_checkpoint starts a fresh log dir).
NOT_ADOPTED = ("storage_path",)


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
    for key in NOT_ADOPTED:  # (each's default is None: this process's own choice)
        setattr(config, key, None)
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
        config.policies_to_train = given_policies_to_train(policies_to_train, config.policies)
    return algo_cls, config


def given_policies_to_train(value: Iterable[str], loaded: Iterable[str]) -> list[str]:
    """A caller's ``policies_to_train`` argument, checked against the policies loaded: the
    caller's mistake, not the checkpoint's (a plain ValueError, raised before anything is built).

    :raises TypeError: a str (pass a list).
    :raises ValueError: it names a policy that is not loaded (named, with those loaded).
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"policies_to_train takes a list of policy ids, not the string {value!r}")
    train, known = list(value), list(loaded)
    unknown = sorted({str(p) for p in train if p not in known})
    if unknown:
        raise ValueError(f"from_checkpoint(policies_to_train={train!r}) names policies that are not loaded: "
                         f"{unknown}; loaded: {sorted(map(str, known))} (policy_ids chooses which are)")
    return train


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


def check_policy_networks(algo: Any, own: Mapping[str, Any], states: Mapping[str, Any],
                          path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint whose policy's own saved config (its state's ``policy_spec``) describes
    another network than the algorithm gives that policy. The algorithm's loaders build the one
    the algorithm gives; ``Policy.from_checkpoint`` and ``amber.serve.load_policy`` build the
    policy's own; the actions would differ. The ``model`` settings both hold are compared, but
    those the weights' shapes show (:data:`SHAPED`: the weights' check refuses them, bounded by
    their size). A policy's overrides (``PolicySpec(config={"model": ...})``) are part of what it
    is given.

    :param algo: the algorithm the policies are restored into (just built, or live).
    :param own: the checkpoint's own algorithm state: its config's specs give the policies that
        ``algo`` lacks (a restore builds them).
    :raises InvalidStateError: naming the path, the policy and each setting that differs.
    """
    for pid, state in states.items():
        spec = state.get("policy_spec") if isinstance(state, Mapping) else None
        saved = _model_of(spec.get("config") if isinstance(spec, Mapping) else None)
        given = _model_of(_given_config(algo, own, pid))
        if saved is None or given is None:
            continue
        differ = sorted(str(k) for k in saved.keys() & given.keys() - set(SHAPED)
                        if _plain(saved[k]) and _plain(given[k]) and _norm(saved[k]) != _norm(given[k]))
        if differ:
            shown = "; ".join(f"{k}: {saved[k]!r} in the policy's, {given[k]!r} given" for k in differ)
            raise InvalidStateError(
                f"{path}: policy {pid!r} was saved with another network than the algorithm's config gives "
                f"it (model {shown}): the algorithm would act otherwise than the policy loaded alone. "
                "Policy.from_checkpoint loads that policy with its own config", path=path)


def _given_config(algo: Any, own: Mapping[str, Any], pid: str) -> Any:
    """The config ``algo`` gives policy ``pid``: the live policy's, else the one it would build
    from the checkpoint's spec (None where that spec cannot be read: the build says why)."""
    from amber.algorithms.config_dict import policy_spec
    from amber.policy.policy import PolicySpec

    live = algo.policies.get(pid)
    if live is not None:
        return live.config
    config = own.get("config") if isinstance(own, Mapping) else None
    specs = config.get("policies") if isinstance(config, Mapping) else None
    try:
        spec = policy_spec(specs.get(pid) if isinstance(specs, Mapping) else None, pid)
        overrides = spec.config if isinstance(spec, PolicySpec) else spec
        return algo.policy_config(pid, dict(overrides) if isinstance(overrides, Mapping) else {},
                                  len(algo.policies))
    except Exception:  # noqa: BLE001 - a spec the build refuses, naming it
        return None


def _model_of(config: Any) -> Mapping[str, Any] | None:
    model = config.get("model") if isinstance(config, Mapping) else None
    return model if isinstance(model, Mapping) else None


def _plain(value: Any) -> bool:
    """Whether a setting is plain data (numbers, strings, lists and dicts of them), comparable as
    it is; a class or function is left alone (saved by name, it compares unequal to itself)."""
    import numpy as np

    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    return isinstance(value, Mapping) and all(map(_plain, value.values()))


def _norm(value: Any) -> Any:
    """A plain setting as it compares across formats (tuples as lists, numpy scalars as Python's)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value
