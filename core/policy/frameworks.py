"""Policies across frameworks: each algorithm's policy class per framework, and states moved between them.

A torch policy and the tf2 policy of the same algorithm keep their state in
one layout (weights under torch's names, ``[out, in]`` kernels; Adam's
moments as torch's ``state_dict`` tree), so a state of one restores into the
other: the weights and the optimizer's moments carry over as they are. The
action generator does not (torch's and numpy's states differ): the converted
policy keeps the one it was built with, seeded from its config, and a warning
says so. Importing this module imports neither torch nor tensorflow.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any

from amber.errors import warn
from amber.state import Ref

__all__ = ["FRAMEWORK_PAIRS", "ClassOrInstanceMethod", "convert_algorithm_state", "convert_policy_state",
           "default_policy_class", "framework_of", "framework_of_config", "import_class", "policy_class_for",
           "policy_class_path_for", "with_framework"]

#: (torch policy class, tf2 policy class) of each algorithm, as import paths.
FRAMEWORK_PAIRS: tuple[tuple[str, str], ...] = (
    ("amber.policy.torch_policy:TorchPolicy", "amber.policy.tf_policy:PPOTFPolicy"),
    ("amber.algorithms.dqn.dqn_torch_policy:DQNTorchPolicy",
     "amber.algorithms.dqn.dqn_tf_policy:DQNTFPolicy"),
    ("amber.algorithms.sac.sac_torch_policy:SACTorchPolicy",
     "amber.algorithms.sac.sac_tf_policy:SACTFPolicy"),
)
_INDEX = {"torch": 0, "tf2": 1}


def framework_of(cls: type) -> str:
    """A policy class's framework: its ``framework`` attribute, else ``"torch"``."""
    return str(getattr(cls, "framework", None) or "torch")


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _check_framework(framework: str) -> None:
    if framework not in _INDEX:
        raise ValueError(f"unknown framework {framework!r}; choices: {', '.join(_INDEX)}")


def policy_class_path_for(path: str, framework: str) -> str | None:
    """The ``"module:name"`` path of the policy class in ``framework`` of the algorithm whose
    policy class is at ``path`` (``path`` itself when it is of that framework), without importing
    either; None when :data:`FRAMEWORK_PAIRS` does not list ``path``.

    :raises ValueError: an unknown framework.
    """
    _check_framework(framework)
    for pair in FRAMEWORK_PAIRS:
        if path in pair:
            return pair[_INDEX[framework]]
    return None


def import_class(path: str) -> type:
    """The class at ``"module:name"`` (its module imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def policy_class_for(cls: type, framework: str) -> type:
    """The policy class of ``cls``'s algorithm in ``framework`` (``cls`` itself when it is of it).

    Only ``framework``'s module is imported (a tf2 class never imports torch's).

    :raises ValueError: an unknown framework, or ``cls`` has no counterpart in it.
    """
    _check_framework(framework)
    if framework_of(cls) == framework:
        return cls
    target = policy_class_path_for(_path(cls), framework)
    if target is not None:
        try:
            return import_class(target)
        except ModuleNotFoundError as e:
            if e.name != target.partition(":")[0]:
                raise
    raise ValueError(f"{cls.__name__} has no {framework} counterpart: this algorithm does not run "
                     f"on {framework} yet")


def _resolved(cls: Any) -> Any:
    return cls.resolve(what="policy class") if isinstance(cls, Ref) else cls


def convert_policy_state(state: Mapping[str, Any], framework: str, *, policy_id: str = "") -> dict[str, Any]:
    """A policy state (from ``get_state`` or a checkpoint) for the policy class of ``framework``.

    The weights, optimizer moments and counters are kept as they are (one layout for both
    frameworks); the policy class is swapped; the action generator's state is dropped when
    the framework changes (with a warning), so the new policy keeps its own.

    :raises ValueError: the policy class has no counterpart in ``framework``.
    """
    out = dict(state)
    spec = dict(out.get("policy_spec") or {})
    cls = _resolved(spec.get("policy_class"))
    if not isinstance(cls, type):
        raise ValueError(f"policy {policy_id!r}: the state names no policy class")
    target = policy_class_for(cls, framework)
    if target is cls:
        return out
    spec["policy_class"] = target
    out["policy_spec"] = spec
    if [out.pop(name) for name in ("generator", "learner_generator") if out.get(name) is not None]:
        warn(f"policy {policy_id or '?'}: {framework_of(cls)} → {framework}: the weights and "
             "optimizer moments carry over; the action generator is reseeded from the policy's "
             "seed (generator states differ between frameworks)")
    out.pop("framework", None)
    if framework != "torch":
        out["framework"] = framework
    return out


def convert_algorithm_state(own: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]],
                            framework: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """An algorithm's own state and its policies' states for ``framework``: the config's
    ``framework_str`` and explicit policy classes, and every policy state (:func:`convert_policy_state`);
    the remote env runners' saved generator states of a policy moved are dropped, as the policy's own.

    :raises ValueError: a policy class has no counterpart in ``framework``.
    """
    config = dict(own.get("config") or {})
    config["framework_str"] = framework
    specs = {}
    for pid, spec in dict(config.get("policies") or {}).items():
        if isinstance(spec, Mapping) and spec.get("policy_class") is not None:
            cls = _resolved(spec["policy_class"])
            spec = {**spec, "policy_class": policy_class_for(cls, framework)}
        specs[pid] = spec
    config["policies"] = specs
    new_own = {**own, "config": config}
    out = {pid: convert_policy_state(s, framework, policy_id=pid) for pid, s in policies.items()}
    from amber.envs.runner_generators import without_runner_generators  # remote runners' copies, alike

    moved = [pid for pid, s in out.items() if (s.get("policy_spec") or {}).get("policy_class")
             is not (policies[pid].get("policy_spec") or {}).get("policy_class")]
    return without_runner_generators(new_own, moved), out


def with_framework(own: Mapping[str, Any], policies: Mapping[str, Mapping[str, Any]], framework: str | None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(own, policies)`` as they are for ``framework=None``, else :func:`convert_algorithm_state`'s."""
    if framework is None:
        return dict(own), dict(policies)
    return convert_algorithm_state(own, policies, framework)


def framework_of_config(config: Any) -> str:
    """A config's framework: an algorithm config's ``framework_str``, an RLlib config dict's
    ``"framework"``; ``"torch"`` when it names none (or for None)."""
    if isinstance(config, Mapping):
        return str(config.get("framework") or config.get("framework_str") or "torch")
    return str(getattr(config, "framework_str", None) or "torch")


def default_policy_class(path: str, config: Any) -> type:
    """The policy class at ``path`` (a torch class's ``"module:name"``), or its counterpart in
    ``config``'s framework (:func:`framework_of_config`): only that class's module is imported.

    :raises ValueError: an unknown framework, or the class has no counterpart in it.
    """
    framework = framework_of_config(config)
    target = policy_class_path_for(path, framework)
    if target is None:  # not a built-in policy class: its own framework's, or mapped
        return policy_class_for(import_class(path), framework)
    return import_class(target)


class ClassOrInstanceMethod:
    """A method bound to the instance it is read from, or to the class when read from one: RLlib's
    ``Algorithm.get_default_policy_class(config)`` is a classmethod, amber's reads its own config."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__func__ = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __get__(self, obj: object, owner: type | None = None) -> Callable[..., Any]:
        return types.MethodType(self.__func__, owner if obj is None else obj)
