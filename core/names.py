"""Registered names: how a checkpoint refers to classes and functions (checkpoint_version 2.0 on).

A checkpoint never stores an import path. Where a state tree holds a class
or a function (the algorithm class, a policy class, an env class, a
mapping function), the engine writes a :class:`~amber.state.Ref` holding
its registered name, and a loader resolves the name through this registry:
an exact match, never a prefix, never an import of a module the name does
not already belong to. The names:

- amber's own, pre-registered: ``amber.PPO``, ``amber.PPOConfig``,
  ``amber.TorchPolicy``, ``amber.MultiAgentCartPole``... (:data:`BUILTIN`);
- gymnasium's registered environments by id: ``gymnasium:CartPole-v1``;
- users' own, by :func:`register_class` (``user:<qualname>`` unless named);
- a plugin's, returned by its ``amber_register_names`` hook (the entry-point
  way for packages).

A name starting with ``?`` is a placeholder: the object could not be stored
(a lambda in a portable format) and the loader must be given it again.

A name resolves only to what its place in a checkpoint holds
(:data:`EXPECTED`): the ``algorithm_class`` to an algorithm class that trains
(not :class:`~amber.algorithms.algorithm.Algorithm` itself), the
``config.policy_mapping_fn`` to a function, never a class.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from amber.errors import DuplicateNameError, InvalidStateError, UnregisteredNameError, warn

if TYPE_CHECKING:
    import os

    import pluggy

__all__ = [
    "BUILTIN",
    "EXPECTED",
    "PLACEHOLDER",
    "check_expected",
    "import_path",
    "is_nameable",
    "legacy_name",
    "name_of",
    "register_class",
    "registered_names",
    "resolve",
]

#: amber's own names and where each lives (a table in code, never read from a file).
BUILTIN: Mapping[str, str] = {
    "amber.Algorithm": "amber.algorithms.algorithm:Algorithm",
    "amber.AlgorithmConfig": "amber.algorithms.algorithm_config:AlgorithmConfig",
    "amber.PPO": "amber.algorithms.ppo.ppo:PPO",
    "amber.PPOConfig": "amber.algorithms.ppo.ppo:PPOConfig",
    "amber.DQN": "amber.algorithms.dqn.dqn:DQN",
    "amber.DQNConfig": "amber.algorithms.dqn.dqn:DQNConfig",
    "amber.SAC": "amber.algorithms.sac.sac:SAC",
    "amber.SACConfig": "amber.algorithms.sac.sac:SACConfig",
    "amber.TorchPolicy": "amber.policy.torch_policy:TorchPolicy",
    "amber.DQNTorchPolicy": "amber.algorithms.dqn.dqn_torch_policy:DQNTorchPolicy",
    "amber.SACTorchPolicy": "amber.algorithms.sac.sac_torch_policy:SACTorchPolicy",
    "amber.PPOTFPolicy": "amber.policy.tf_policy:PPOTFPolicy",
    "amber.DQNTFPolicy": "amber.algorithms.dqn.dqn_tf_policy:DQNTFPolicy",
    "amber.SACTFPolicy": "amber.algorithms.sac.sac_tf_policy:SACTFPolicy",
    "amber.MultiAgentCartPole": "amber.envs.multi_agent:MultiAgentCartPole",
    "amber.DefaultCallbacks": "amber.algorithms.callbacks:DefaultCallbacks",
    "amber.TensorBoardLogger": "amber.algorithms.callbacks:TensorBoardLogger",
}
_BUILTIN_BY_PATH = {path: name for name, path in BUILTIN.items()}
GYM_PREFIX = "gymnasium:"
USER_PREFIX = "user:"
#: The first character of a placeholder name.
PLACEHOLDER = "?"
MAX_NAME_LENGTH = 200

_user: dict[str, Any] = {}
_user_by_id: dict[int, str] = {}
_user_by_path: dict[str, str] = {}


def import_path(obj: Any) -> str | None:
    """``"module:qualname"`` of a class or function (not checked by importing), or None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None


def is_nameable(value: Any) -> bool:
    """Whether ``value`` is a class or function, which checkpoints refer to by name."""
    return isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def check_name(name: object) -> str:
    why = None
    if not isinstance(name, str) or not name:
        why = "must be a non-empty str"
    elif len(name) > MAX_NAME_LENGTH:
        why = f"is longer than {MAX_NAME_LENGTH} characters"
    elif name.startswith(PLACEHOLDER):
        why = f"must not start with {PLACEHOLDER!r} (placeholders)"
    elif name in BUILTIN or name.startswith(("amber.", GYM_PREFIX)):
        why = "is reserved: names starting with 'amber.' or 'gymnasium:' are amber's own"
    elif any(not c.isprintable() or c.isspace() for c in name):
        why = "must not contain spaces, control or format characters"
    if why:
        raise ValueError(f"name {name!r} {why}")
    return name  # type: ignore[return-value]


def register_class(obj: Any, name: str | None = None) -> str:
    """Register a class or function of your own so that checkpoints can refer to it; return its name.

    Register before saving (so the checkpoint names it) and before loading
    (so the name resolves). Registering the same object again is a no-op.

    :param obj: a class or function (an env class, a policy class, a mapping function...).
    :param name: the name to store; default ``"user:<qualname>"``.
    :return: the name.
    :raises DuplicateNameError: another object already has that name.
    :raises ValueError: a malformed or reserved name, or ``obj`` is not a class or function.

    Example::

        import amber

        def my_mapping_fn(agent_id, episode, worker, **kw):
            return "p0"

        assert amber.register_class(my_mapping_fn) == "user:my_mapping_fn"
    """
    if not is_nameable(obj):
        raise ValueError(f"only classes and functions are registered, not {type(obj).__name__}")
    if name is None:
        qualname = getattr(obj, "__qualname__", "")
        if not qualname or "<" in qualname:
            raise ValueError(f"{obj!r} has no usable name (a lambda or local function): pass name=...")
        name = USER_PREFIX + qualname
    check_name(name)
    existing = _user.get(name)
    if existing is not None and existing is not obj:
        raise DuplicateNameError(
            f"name {name!r} is already registered for {import_path(existing)}; "
            f"pick another: amber.register_class({getattr(obj, '__qualname__', obj)}, name=...)"
        )
    _user[name] = obj
    _user_by_id[id(obj)] = name
    path = import_path(obj)
    if path and "<" not in path:
        _user_by_path.setdefault(path, name)
    return name


def registered_names(pm: pluggy.PluginManager | None = None) -> list[str]:
    """Every name that resolves in this process: amber's, users' and plugins'."""
    return sorted({*BUILTIN, *_user, *_plugin_names(pm)})


def _plugin_names(pm: pluggy.PluginManager | None) -> Mapping[str, Any]:
    from amber.registry import get_registry

    return get_registry(pm).class_names


def _load_builtin(name: str) -> Any:
    obj = _loaded_builtins.get(name)
    if obj is None:
        module, _, qualname = BUILTIN[name].partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        _loaded_builtins[name] = obj
    return obj


_loaded_builtins: dict[str, Any] = {}  # amber's own classes and functions, once imported


def _gym_entry(env_id: str) -> Any:
    import gymnasium as gym

    try:
        spec = gym.spec(env_id)
    except Exception:
        return None
    entry = spec.entry_point
    if isinstance(entry, str):
        from gymnasium.envs.registration import load_env_creator

        return load_env_creator(entry)
    return entry


def _gym_name(obj: Any) -> str | None:
    if not isinstance(obj, type) or not (obj.__module__ or "").startswith("gymnasium."):
        return None
    import gymnasium as gym

    path = import_path(obj)
    ids = sorted(i for i, s in gym.registry.items() if s.entry_point == path or s.entry_point is obj)
    return GYM_PREFIX + ids[0] if ids else None


def name_of(obj: Any, pm: pluggy.PluginManager | None = None) -> str | None:
    """The registered name of a class or function, or None if it has none."""
    found = _user_by_id.get(id(obj))
    if found is not None and _user.get(found) is obj:
        return found
    path = import_path(obj)
    builtin = _BUILTIN_BY_PATH.get(path or "")
    if builtin is not None and _load_builtin(builtin) is obj:
        return builtin
    for name, item in _plugin_names(pm).items():
        if item is obj:
            return str(name)
    return _gym_name(obj)


def legacy_name(path: str, pm: pluggy.PluginManager | None = None) -> str:
    """The 2.0 name for a 1.0 checkpoint's import path ``"module:qualname"``.

    amber's own paths map to their names; a path registered by a user or a
    plugin maps to that registration's name; any other to ``"user:<qualname>"``,
    the name :func:`register_class` gives by default.
    """
    if path in _BUILTIN_BY_PATH:
        return _BUILTIN_BY_PATH[path]
    if path in _user_by_path:
        return _user_by_path[path]
    if path.startswith("gymnasium."):
        import gymnasium as gym

        ids = sorted(i for i, s in gym.registry.items() if s.entry_point == path)
        if ids:
            return GYM_PREFIX + ids[0]
    for name, item in _plugin_names(pm).items():
        if import_path(item) == path:
            return str(name)
    return USER_PREFIX + path.partition(":")[2]


def _trains(obj: Any) -> bool:
    """Whether ``obj`` is an algorithm class with a training step of its own (not the base class)."""
    from amber.algorithms.algorithm import Algorithm

    return (isinstance(obj, type) and issubclass(obj, Algorithm) and obj is not Algorithm
            and obj.training_step is not Algorithm.training_step and not inspect.isabstract(obj))


def _is_function(obj: Any) -> bool:
    """Whether ``obj`` is a function (a class is callable too, but returns no policy id)."""
    return callable(obj) and not isinstance(obj, type)


#: What a name must resolve to at each place of a checkpoint that names one (the ``what`` of
#: :func:`resolve`), said as the message says it, and the check.
EXPECTED: Mapping[str, tuple[str, Callable[[Any], bool]]] = {
    "algorithm_class": ("an algorithm class that trains (amber.PPO, amber.DQN, amber.SAC or a registered "
                        "subclass)", _trains),
    "config.policy_mapping_fn": ("a function (agent_id, episode, worker, **kw) -> policy id", _is_function),
}


def check_expected(obj: Any, name: str, what: str, path: str | os.PathLike[str] | None = None) -> Any:
    """``obj``, the object ``name`` resolved to, when it is what ``what`` holds (:data:`EXPECTED`).

    :raises InvalidStateError: it is not (say, a mapping function that names a class): the
        message names the checkpoint, the place and the name.
    """
    expected = EXPECTED.get(what)
    if expected is None or (expected[1](obj) and not name.startswith(GYM_PREFIX)):
        return obj
    kind = ("a gymnasium environment" if name.startswith(GYM_PREFIX)
            else f"the class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}")
    where = "" if path is None else f"{path}: "
    raise InvalidStateError(
        f"{where}the checkpoint's {what} names {name!r}, which is {kind}, not {expected[0]}; "
        "the checkpoint was altered or saved with a mistaken setting", path=path)


def _registered(name: str, pm: pluggy.PluginManager | None) -> Any:
    """What ``name`` is registered for in this process, or None."""
    if name in BUILTIN:
        return _load_builtin(name)
    if name in _user:
        return _user[name]
    plugin = _plugin_names(pm)
    if name in plugin:
        return plugin[name]
    if name.startswith(GYM_PREFIX):
        return _gym_entry(name[len(GYM_PREFIX):])
    return None


def resolve(
    name: str,
    *,
    what: str = "",
    path: str | os.PathLike[str] | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Any:
    """The class or function registered as ``name`` (exact match).

    :param what: what the checkpoint uses it for (``"config.env"``), for the message.
    :param path: the checkpoint, for the message.
    :raises UnregisteredNameError: no such name here, or a placeholder; says how to register it.
    :raises InvalidStateError: the name is registered, for something ``what`` cannot hold
        (:func:`check_expected`).
    """
    where = f" ({what})" if what else ""
    if name.startswith(PLACEHOLDER):
        raise UnregisteredNameError(
            f"{path}: the checkpoint's {what or 'reference'} {name[1:]!r} was not stored (it had no "
            "registered name, so a portable format could not write it) and no argument can give it "
            "again: save the checkpoint again after amber.register_class(...) of it (registered before "
            "loading too), or in a format that holds any object (`amber formats`)",
            path=path,
        )
    if what in EXPECTED and name.startswith(GYM_PREFIX):  # an env id, never imported for this
        check_expected(None, name, what, path)
    found = _registered(name, pm)
    if found is not None:
        return check_expected(found, name, what, path)
    hint = name[len(USER_PREFIX):] if name.startswith(USER_PREFIX) else "obj"
    raise UnregisteredNameError(
        f"{path}: the checkpoint refers to {name!r}{where}, which is not registered in this process; "
        f"register it before loading: amber.register_class({hint}"
        + ("" if name.startswith(USER_PREFIX) and name[len(USER_PREFIX):] == hint else f", name={name!r}")
        + ") (a package registers its names in an amber_register_names hook)",
        path=path,
    )


def to_names(
    tree: Any,
    *,
    portable: bool,
    placeholders: bool | Collection[str] = False,
    format: str = "",
    where: str = "",
    pm: pluggy.PluginManager | None = None,
) -> Any:
    """``tree`` with every class or function replaced by a :class:`~amber.state.Ref` to its name.

    Containers are copied only where something changed. An object with no
    registered name is kept as it is for a format that holds any object
    (pickle); for a portable one it becomes a placeholder (``placeholders``)
    or is an error. ``placeholders`` is True (anywhere) or the key paths where a loader can be
    given the object again (only there).

    :raises UnserializableStateError: an unregistered class or function, in a portable format.
    """
    from amber.errors import UnserializableStateError
    from amber.registry import get_registry
    from amber.state import Ref, walk_replace

    def leaf(keypath: str, value: Any) -> Any:
        if not is_nameable(value):
            return value
        name = name_of(value, pm)
        if name is not None:
            return Ref(name)
        if not portable:
            return value
        shown = str(getattr(value, "__qualname__", None) or type(value).__name__)[:MAX_NAME_LENGTH]
        if placeholders is True or (not isinstance(placeholders, bool) and keypath in placeholders):
            left_out.append(f"{keypath} ({shown})")
            return Ref(PLACEHOLDER + shown)
        registry = get_registry(pm)
        holders = [f"format={n!r}" for n in registry.names()
                   if registry.get(n).capabilities.arbitrary_objects]
        raise UnserializableStateError(
            f"cannot write {keypath or '(root)'} in format {format!r}: {shown!r} has no registered name, "
            f"so a loader could not find it again; nothing was written. Register it before saving (and "
            f"before loading): amber.register_class({shown.split('.')[-1]}) (a lambda needs name=...), "
            f"or save in a format that holds any object ({', '.join(holders) or '`amber formats`'})",
            path=where or None, format=format,
        )

    left_out: list[str] = []
    named = walk_replace(tree, leaf)
    if left_out:
        warn(f"{where}: {', '.join(left_out)} has no registered name, so format {format!r} cannot store it: "
             "loading will ask for it again (amber.register_class stores it by name)")
    return named
