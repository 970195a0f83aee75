"""Building the plugin manager. Importing this module has no side effects."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import pluggy

from amber import hookspecs
from amber.errors import PluginLoadError, warn

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "default_plugin_manager", "get_plugin_manager",
           "one_plugin_caller"]

ENTRY_POINT_GROUP = "amber"

#: In-tree plugins, by module path. They are registered before entry points,
#: so they work uninstalled and with autoload off.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "amber.plugins.object_state",
    "amber.plugins.pickle_fmt",
    "amber.plugins.msgpack_fmt",
    "amber.plugins.env_state",
    "amber.plugins.torch_export",
    "amber.plugins.onnx_export",
    "amber.plugins.keras_export",
    "amber.plugins.migrations",
    "amber.plugins.rllib_compat",
)

#: How a user gets past a broken installed plugin.
WAY_OUT = "leave it out with AMBER_PLUGINS=..., or set AMBER_DISABLE_PLUGIN_AUTOLOAD=1"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _dist_name(ep: importlib.metadata.EntryPoint | None) -> str:
    return ep.dist.name if ep is not None and ep.dist is not None else "unknown"


def _to_load(name: str, eps: list[importlib.metadata.EntryPoint]) -> bool:
    """Whether to load the entry points called ``name``: not when they are an in-tree plugin's own.

    :raises PluginLoadError: two distributions use the name, or one uses an in-tree plugin's.
    """
    in_tree = {module.rsplit(".", 1)[-1]: module for module in DEFAULT_PLUGINS}
    where = sorted({f"distribution {_dist_name(ep)} ({name} = {ep.value!r})" for ep in eps})
    if name in in_tree:
        if all(ep.value == in_tree[name] for ep in eps):
            return False
        raise PluginLoadError(
            f"entry point {name!r} of {', '.join(where)} has the name of amber's in-tree plugin "
            f"{in_tree[name]}, so it would never load: rename it (its key in "
            f"[project.entry-points.{ENTRY_POINT_GROUP}]) or uninstall it", plugin=name)
    if len(where) > 1:
        raise PluginLoadError(
            f"two installed plugins are called {name!r} (entry-point group {ENTRY_POINT_GROUP!r}): "
            f"{' and '.join(where)}; only one would load: uninstall one, or {WAY_OUT}", plugin=name)
    return True


def _load(pm: pluggy.PluginManager, name: str, ep: importlib.metadata.EntryPoint | None) -> None:
    """Load and register the entry point ``name``; refuse a class, warn about a plugin with no hook."""
    label = f"plugin {name!r} (entry-point group {ENTRY_POINT_GROUP!r}, distribution {_dist_name(ep)})"
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    except Exception as e:  # an installed plugin's own import error
        raise PluginLoadError(f"{label} failed to load: {type(e).__name__}: {e}. Fix or uninstall it, "
                              f"{WAY_OUT}", plugin=name) from e
    plugin = pm.get_plugin(name)
    if inspect.isclass(plugin):
        where = f"{plugin.__module__}:{plugin.__qualname__}"
        raise PluginLoadError(
            f"{label} is the class {where}, whose hooks need an instance: point the entry point at an "
            f"instance ({plugin.__module__}:plugin, with plugin = {plugin.__qualname__}() in that module) "
            "or at a module of @amber.hookimpl functions", plugin=name)
    if plugin is not None and not pm.get_hookcallers(plugin):
        warn(f"{label} registers no hook: {_why_no_hook(plugin)}")


def _why_no_hook(plugin: object) -> str:
    """Why ``plugin`` (an entry point's module or object) registers nothing, and what to do."""
    marker = f"{ENTRY_POINT_GROUP}_impl"  # pluggy's mark of an @amber.hookimpl
    bare = sorted(n for n in dir(plugin) if n.startswith("amber_") and callable(getattr(plugin, n, None)))
    if bare:
        verb = "is" if len(bare) == 1 else "are"
        return f"{', '.join(bare)} {verb} not marked @amber.hookimpl, so never called"
    none = "it defines no @amber.hookimpl function"
    if not inspect.ismodule(plugin):
        return none
    classes = sorted(n for n, v in vars(plugin).items()
                     if inspect.isclass(v) and v.__module__ == plugin.__name__
                     and any(hasattr(getattr(v, a, None), marker) for a in dir(v)))
    if not classes:
        return none
    return (f"{none}; the hooks of {', '.join(classes)} are methods, called on an instance: point the entry "
            f"point at one (module:plugin, with plugin = {classes[0]}() in the module)")


def _load_entry_points(pm: pluggy.PluginManager, allow: Iterable[str] | None) -> None:
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    installed = sorted(by_name)
    names = list(allow) if allow is not None else _env_list("AMBER_PLUGINS")
    if names is None:
        names = installed
    elif unknown := [n for n in names if n not in installed]:  # a typo would load nothing, silently
        where = "allow" if allow is not None else "AMBER_PLUGINS"
        warnings.warn(f"{where} names {', '.join(unknown)}, which no installed plugin is called "
                      f"(installed: {', '.join(installed) or 'none'})", stacklevel=3)
    for name in names:
        eps = by_name.get(name, [])
        if _to_load(name, eps):
            _load(pm, name, eps[0] if eps else None)


def get_plugin_manager(
    *,
    autoload: bool | None = None,
    allow: Iterable[str] | None = None,
    trace: bool = False,
) -> pluggy.PluginManager:
    """Create a plugin manager with amber's hooks, in-tree plugins and installed plugins.

    :param autoload: load third-party plugins from the entry-point group ``amber``.
        None (default): yes unless ``AMBER_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param allow: load only the entry-point plugins with these names. None
        (default): the comma-separated ``AMBER_PLUGINS``, or all if unset.
        In-tree plugins are always loaded.
    :param trace: print every hook call and result to stderr.
    :return: a new, checked :class:`pluggy.PluginManager`.
    :raises PluginLoadError: a plugin failed to import, does not match the specs, is a class,
        or two distributions (or one and an in-tree plugin) use one entry-point name.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(modname)
        except ImportError as e:
            raise PluginLoadError(
                f"in-tree plugin {modname!r} failed to import: {e}", plugin=modname
            ) from e
        pm.register(module, name=modname.rsplit(".", 1)[-1])

    if autoload is None:
        autoload = not _env_flag("AMBER_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        _load_entry_points(pm, allow)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginLoadError(f"plugin {e.plugin!r} does not match amber's hooks: {e}") from e
    if trace:
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


@functools.lru_cache(maxsize=1)
def default_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use (not at import)."""
    return get_plugin_manager(trace=_env_flag("AMBER_TRACE_HOOKS"))


def one_plugin_caller(pm: pluggy.PluginManager, hook_name: str, plugin: object) -> Any:
    """A caller of ``hook_name`` that asks ``plugin`` alone, through pluggy (so its checks apply):
    how amber tells which plugin failed or returned what."""
    return pm.subset_hook_caller(hook_name, remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
