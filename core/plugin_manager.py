"""Building the plugin manager. Importing this module has no side effects."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Iterable

import pluggy

from amber import hookspecs
from amber.errors import PluginLoadError

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "default_plugin_manager", "get_plugin_manager"]

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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _dist_of(name: str) -> str:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        if ep.dist is not None:
            return f", distribution {ep.dist.name}"
    return ""


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
    :raises PluginLoadError: a plugin failed to import or does not match the specs.
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
        names = list(allow) if allow is not None else _env_list("AMBER_PLUGINS")
        installed = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
        if names is None:
            names = installed
        elif unknown := [n for n in names if n not in installed]:  # a typo would load nothing, silently
            where = "allow" if allow is not None else "AMBER_PLUGINS"
            warnings.warn(f"{where} names {', '.join(unknown)}, which no installed plugin is called "
                          f"(installed: {', '.join(installed) or 'none'})", stacklevel=2)
        for name in names:
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            except Exception as e:  # an installed plugin's own import error
                raise PluginLoadError(
                    f"plugin {name!r} (entry-point group {ENTRY_POINT_GROUP!r}{_dist_of(name)}) failed "
                    f"to load: {type(e).__name__}: {e}. Fix or uninstall it, leave it out with "
                    "AMBER_PLUGINS=..., or set AMBER_DISABLE_PLUGIN_AUTOLOAD=1",
                    plugin=name,
                ) from e
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
