"""Capturing and restoring an owner's components through the plugins' hooks.

An owner (an Algorithm, a Policy, anything with state) names its
components; :func:`capture` asks the plugins for each one's state tree and
:func:`restore` applies them back, all or nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from amber.errors import CheckpointError, InvalidStateError, PluginLoadError

if TYPE_CHECKING:
    import pluggy
    from pluggy import HookImpl

__all__ = ["capture", "components_of", "restore"]


def _pm(pm: pluggy.PluginManager | None) -> pluggy.PluginManager:
    from amber.plugin_manager import default_plugin_manager

    return pm if pm is not None else default_plugin_manager()


def components_of(
    owner: object, own: Mapping[str, object], *, pm: pluggy.PluginManager | None = None
) -> dict[str, object]:
    """The owner's own components plus those plugins add through ``amber_register_components``.

    :raises CheckpointError: two sources use one component name.
    :raises PluginLoadError: a plugin's ``amber_register_components`` raised, or returned something
        other than a mapping (the plugin named).
    """
    pm = _pm(pm)
    found = dict(own)
    hook = pm.hook.amber_register_components
    if not hook.get_hookimpls():  # (a call costs, even to none)
        return found
    owner_name = type(owner).__name__
    for extra in _call(hook, f"listing the components of {owner_name}", owner=owner):
        if not isinstance(extra, Mapping):
            plugin = _returning_plugin(pm, "amber_register_components", owner)
            raise PluginLoadError(
                f"{_plugin_words(plugin)} returned a {type(extra).__name__} from amber_register_components "
                f"for {owner_name}, not a map of component name to component (or None); a fault of the "
                "plugin", plugin=plugin)
        for key, component in extra.items():
            if key in found:
                raise CheckpointError(f"component name {key!r} of {type(owner).__name__} is used twice")
            found[key] = component
    return found


def capture(
    owner: object, own: Mapping[str, object], *, pm: pluggy.PluginManager | None = None
) -> dict[str, Any]:
    """Each component's state tree, by component name.

    :param owner: the object the components belong to.
    :param own: its components by name.
    :raises CheckpointError: no plugin captures some component (named).
    :raises PluginLoadError: a third-party plugin's ``amber_capture_state`` or
        ``amber_register_components`` raised, or the latter returned no map (the component and
        the plugin named). The error of an in-tree plugin, which calls the component's own code
        (its ``get_state()``), is raised as it is.
    """
    pm = _pm(pm)
    return _capture_each(components_of(owner, own, pm=pm), pm)


def _capture_each(components: Mapping[str, object], pm: pluggy.PluginManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hook = pm.hook.amber_capture_state
    for key, component in components.items():
        state = _call(hook, f"capturing the state of {key!r} ({type(component).__qualname__})",
                      component=component, key=key)
        if state is None:
            raise CheckpointError(
                f"no plugin captures the state of {key!r} ({type(component).__qualname__}); "
                "give it get_state()/set_state() or implement amber_capture_state"
            )
        out[key] = state
    return out


def _raising_impl(hook: Any, error: BaseException) -> HookImpl | None:
    """The implementation of ``hook`` that raised ``error``, found in its traceback (a wrapper's only
    where no plain implementation is in it); None if none is."""
    impls = {getattr(impl.function, "__code__", None): impl for impl in hook.get_hookimpls()}
    found = None
    tb = error.__traceback__
    while tb is not None:
        impl = impls.get(tb.tb_frame.f_code)
        if impl is not None:
            if not (impl.wrapper or impl.hookwrapper):
                return impl
            found = found or impl
        tb = tb.tb_next
    return found


def _in_tree(impl: HookImpl | None) -> bool:
    """Whether ``impl`` is one of amber's in-tree plugins (``DEFAULT_PLUGINS``)."""
    from amber.plugin_manager import DEFAULT_PLUGINS

    return impl is not None and getattr(impl.plugin, "__name__", None) in DEFAULT_PLUGINS


def _plugin_words(plugin: str | None) -> str:
    return "an unidentified plugin" if plugin is None else f"plugin {plugin!r}"


def _call(hook: Any, doing: str, **kwargs: Any) -> Any:
    """``hook(**kwargs)``; what a third-party implementation raises becomes a PluginLoadError naming
    the plugin and what was being done (``doing``). A CheckpointError, and the error of an in-tree
    plugin (which calls the component's own code: a runner that died is an EnvRunnerDiedError), are
    raised as they are.
    """
    try:
        return hook(**kwargs)
    except CheckpointError:
        raise
    except Exception as e:
        impl = _raising_impl(hook, e)
        if _in_tree(impl):
            raise
        plugin = impl.plugin_name if impl is not None else None
        raise PluginLoadError(f"{doing} failed in {_plugin_words(plugin)} ({hook.name}): "
                              f"{type(e).__name__}: {e}; a fault of the plugin", plugin=plugin) from e


def _returning_plugin(pm: pluggy.PluginManager, hook_name: str, owner: object) -> str | None:
    """The plugin whose ``hook_name(owner=owner)`` returns something other than a map or None
    (each called alone, through pluggy; only once a call of them all returned one)."""
    from amber.plugin_manager import one_plugin_caller

    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        caller = one_plugin_caller(pm, hook_name, impl.plugin)
        with contextlib.suppress(Exception):
            if any(not isinstance(r, Mapping) for r in caller(owner=owner)):
                return impl.plugin_name
    return None


def restore(
    owner: object,
    own: Mapping[str, object],
    state: Mapping[str, Any],
    *,
    pm: pluggy.PluginManager | None = None,
    rollback: bool = True,
) -> None:
    """Apply saved states to the owner's components, all or nothing.

    Components absent from ``state`` are left as they are. Each component's
    state is captured first; if applying any state fails, every component
    touched (the failing one included) gets its captured state back and the
    error is raised, so the owner is left as it was. Whatever a plugin
    raises, the error is a CheckpointError naming the component.

    :param rollback: False: capture nothing first and put nothing back, for an owner that is
        discarded when a restore fails (one just built to restore a checkpoint into).
    :raises CheckpointError: ``state`` is not a map, no plugin captures or restores some
        component, a restore failed, or putting the previous states back failed (each named).
    """
    pm = _pm(pm)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"the saved components of {type(owner).__name__} are a "
                              f"{type(state).__name__}, not a map")
    try:
        comps = {k: c for k, c in components_of(owner, own, pm=pm).items() if k in state}
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"listing the components of {type(owner).__name__} failed: "
                              f"{type(e).__name__}: {e}") from e
    before = {key: _guarded(key, "capturing the current state of", _capture_each, {key: c}, pm)[key]
              for key, c in comps.items() if rollback}
    touched: list[str] = []
    for key, component in comps.items():
        touched.append(key)
        try:
            _guarded(key, "restoring", _restore_one, key, component, state[key], pm)
        except CheckpointError as e:
            if rollback:
                _roll_back(comps, before, touched, pm, e)
            raise


def _restore_one(key: str, component: object, state: Any, pm: pluggy.PluginManager) -> None:
    if not pm.hook.amber_restore_state(component=component, state=state, key=key):
        raise CheckpointError(f"no plugin restores the state of {key!r} ({type(component).__qualname__})")


def _guarded(key: str, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, any exception turned into a CheckpointError naming component ``key``."""
    try:
        return fn(*args)
    except CheckpointError as e:
        if key in str(e):
            raise
        # the same class where it takes the base class's arguments (InvalidStateError...)
        cls = type(e) if type(e).__init__ is CheckpointError.__init__ else CheckpointError
        raise cls(f"{doing} {key!r} failed: {e}", path=e.path, format=e.format, plugin=e.plugin) from e
    except Exception as e:
        # a restore that fails on its state: the state does not fit the component
        cls = InvalidStateError if doing == "restoring" else CheckpointError
        raise cls(f"{doing} {key!r} failed: {type(e).__name__}: {e}") from e


def _roll_back(
    comps: Mapping[str, object], before: Mapping[str, Any], touched: list[str],
    pm: pluggy.PluginManager, error: CheckpointError,
) -> None:
    """Put the captured states back on every touched component; a failure here is added to ``error``."""
    failed = []
    for key in reversed(touched):
        try:
            _restore_one(key, comps[key], before[key], pm)
        except Exception as e:  # keep putting the others back
            failed.append(f"{key!r} ({type(e).__name__}: {e})")
    if failed:
        error.message = f"{error.message}; putting back the previous state of {', '.join(failed)} failed too"
        error.args = (error.message,)
