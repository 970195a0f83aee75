"""What plugins register, and the registries built from it.

A plugin describes a format with :class:`FormatSpec`, an exporter with
:class:`ExporterSpec`, a migration step with :class:`amber.migration.Migration`
and its classes' names with a mapping; the engine collects them through the
hooks of :mod:`amber.hookspecs` and keeps them in a :class:`FormatRegistry`.
The specs themselves live in :mod:`amber.specs` and are re-exported here,
so plugins import them from ``amber.registry``.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amber.errors import (
    CheckpointError,
    DuplicateFormatError,
    DuplicateNameError,
    PluginLoadError,
    UnknownExporterError,
    UnknownFormatError,
    warn,
)
from amber.migration import Migration
from amber.plugin_manager import DEFAULT_PLUGINS, WAY_OUT, one_plugin_caller
from amber.specs import (
    DISTRIBUTION,
    Capabilities,
    ExportedFile,
    ExporterSpec,
    FormatSpec,
    StateSink,
    StateSource,
    install_hint,
)

if TYPE_CHECKING:
    from pathlib import Path

    import pluggy

#: The hint for a name no installed plugin provides.
UNKNOWN_HINT = "a third-party {kind} is installed with pip and registers itself (entry-point group amber)"

__all__ = [
    "Capabilities",
    "ExportedFile",
    "ExporterSpec",
    "FormatRegistry",
    "FormatSpec",
    "Migration",
    "StateSink",
    "StateSource",
    "get_registry",
    "install_hint",
]


@dataclass(frozen=True)
class Provided:
    """A registered item and the plugin (and distribution) that provided it."""

    item: Any
    plugin: str
    distribution: str | None = None


@dataclass
class FormatRegistry:
    """Everything the plugins registered, built once per plugin manager and cached.

    It holds the formats and the exporters by name, each with the plugin (and
    distribution) that provided it, the migration steps, and the classes and
    functions plugins registered by name.
    """

    formats: dict[str, Provided] = field(default_factory=dict)
    exporters: dict[str, Provided] = field(default_factory=dict)
    migrations: list[Provided] = field(default_factory=list)
    class_names: dict[str, Any] = field(default_factory=dict)
    """Classes and functions by the name plugins registered (``amber_register_names``)."""

    def get(self, name: str) -> FormatSpec:
        """The format called ``name``.

        :raises UnknownFormatError: listing the known names, with a hint.
        """
        try:
            return self.formats[name].item  # type: ignore[no-any-return]
        except KeyError:
            raise UnknownFormatError(name, self.formats, hint=self._hint(name, "format")) from None

    def default_portable(self) -> str:
        """The default of :func:`amber.save`, and what another system's checkpoint is migrated
        into: amber's own format (an in-tree plugin's) that is portable and safe to load, so
        installing a format never changes it; where that plugin was unregistered, the first
        portable and safe format by name.

        :raises UnknownFormatError: no such format is installed.
        """
        own = {module.rsplit(".", 1)[-1] for module in DEFAULT_PLUGINS}  # in-tree plugins' names
        candidates = [name for name, provided in sorted(self.formats.items())
                      if provided.item.capabilities.portable and provided.item.capabilities.safe]
        for name in sorted(candidates, key=lambda name: self.formats[name].plugin not in own):
            return name  # amber's own first, then by name (the sort is stable)
        raise UnknownFormatError("(a portable, safe format)", self.formats, hint=None)

    def names(self) -> list[str]:
        """The registered format names, sorted."""
        return sorted(self.formats)

    def provider(self, name: str) -> Provided:
        """Who provides the format ``name``."""
        self.get(name)
        return self.formats[name]

    def exporter(self, name: str) -> ExporterSpec:
        """The exporter called ``name``.

        :raises UnknownExporterError: listing the known names, with a hint.
        """
        try:
            return self.exporters[name].item  # type: ignore[no-any-return]
        except KeyError:
            raise _hinted(UnknownExporterError(name, self.exporters), self._hint(name, "exporter")) from None

    def native_exporter(self, framework: str) -> ExporterSpec:
        """The exporter that writes the native files of ``framework``'s policies.

        :raises UnknownExporterError: none is native to it.
        """
        for provided in self.exporters.values():
            if framework in provided.item.native_for:
                return provided.item  # type: ignore[no-any-return]
        err = UnknownExporterError(f"(native to {framework})", self.exporters)
        raise _hinted(err, f"no exporter writes the native files of {framework!r} policies; "
                           "pick one with format=NAME")

    def shorthand(self, keyword: str) -> ExporterSpec:
        """The exporter whose keyword shorthand is ``keyword``.

        :raises UnknownExporterError: none is.
        """
        for provided in self.exporters.values():
            if provided.item.shorthand == keyword:
                return provided.item  # type: ignore[no-any-return]
        known = sorted(p.item.shorthand for p in self.exporters.values() if p.item.shorthand)
        err = UnknownExporterError(f"{keyword}=", self.exporters)
        raise _hinted(err, f"no exporter takes the keyword {keyword}= "
                           f"(keywords: {', '.join(known) or 'none'})")

    def _hint(self, name: str, kind: str) -> str:
        """An unknown name's hint: what the other kind of plugin of that name is and needs, else generic."""
        other, other_kind = ((self.exporters, "model exporter") if kind == "format"
                             else (self.formats, "format"))
        if name not in other:
            return UNKNOWN_HINT.format(kind=kind)
        spec = other[name].item
        needs = f"; it needs: pip install '{DISTRIBUTION}[{spec.extra}]'" if spec.extra else ""
        return f"{name!r} is a {other_kind}, not {'an' if kind == 'exporter' else 'a'} {kind}{needs}"


def _hinted(err: CheckpointError, hint: str) -> CheckpointError:
    """``err`` with `` (hint)`` added to its message."""
    err.message = f"{err.message} ({hint})"
    err.args = (err.message,)
    return err


def _plugin_names(pm: pluggy.PluginManager) -> dict[int, tuple[str, str | None]]:
    dists = {id(plugin): dist.project_name for plugin, dist in pm.list_plugin_distinfo()}
    return {
        id(plugin): (name, dists.get(id(plugin)))
        for name, plugin in pm.list_name_plugin()
        if plugin is not None
    }


def _results(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[Any, str, str | None]]:
    """Each plugin's result of a registration hook, with the plugin's name and distribution.

    :raises PluginLoadError: a plugin's hook raised (the plugin named).
    """
    names = _plugin_names(pm)
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name, dist = names.get(id(impl.plugin), (impl.plugin_name, None))
        caller = one_plugin_caller(pm, hook_name, impl.plugin)
        try:
            found = caller()
        except Exception as e:
            raise PluginLoadError(f"{_failed(plugin_name, dist, hook_name, e)}; {_way_out(dist)}",
                                  plugin=plugin_name) from e
        for results in found:
            yield results, plugin_name, dist


def _collect(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[Any, str, str | None]]:
    for results, plugin_name, dist in _results(pm, hook_name):
        if results is not None and not isinstance(results, (list, tuple)):
            raise PluginLoadError(
                f"plugin {plugin_name!r}{_dist(dist)} returned a {type(results).__name__} from {hook_name}, "
                "expected a list or None (one item goes in a list: return [item])", plugin=plugin_name)
        for item in results or ():
            yield item, plugin_name, dist


def first_result(pm: pluggy.PluginManager, hook_name: str, path: Path, **kwargs: Any) -> Any:
    """The first result that is not None of the first-result hook ``hook_name`` about ``path``,
    each plugin asked in pluggy's order, the others still asked when one fails.

    A plugin's :class:`CheckpointError` (its refusal of what it recognises) is raised as it is. Any
    other exception is that plugin's fault: when another plugin answers, it is warned about; when
    none does, it is raised, since the failing plugin is likely the one that knows ``path``.

    :raises PluginLoadError: a plugin failed and no other answered (the plugin and ``path`` named).
    """
    names = _plugin_names(pm)
    plugins = [impl.plugin for impl in getattr(pm.hook, hook_name).get_hookimpls()
               if not (impl.hookwrapper or impl.wrapper)]
    failed: list[tuple[str, str, str, Exception]] = []  # name, way out, what failed, why
    found = None
    for plugin in reversed(plugins):  # pluggy calls the last registered first
        caller = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not plugin])
        try:
            found = caller(path=path, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:
            name, dist = names.get(id(plugin), (pm.get_name(plugin) or repr(plugin), None))
            way_out = _way_out(dist, name if _in_tree(plugin) else None)
            failed.append((name, way_out, _failed(name, dist, hook_name, e, path), e))
            continue
        if found is not None:
            break
    if failed and found is None:
        name, way_out, said, e = failed[0]
        raise PluginLoadError(f"{said}, and no other plugin recognises it; {way_out}", path=path,
                              plugin=name) from e
    for _name, way_out, said, _e in failed:
        warn(f"{said}; another plugin answered instead; {way_out}")
    return found


def _failed(plugin: str, dist: str | None, hook_name: str, e: BaseException, on: Path | None = None) -> str:
    where = f" on {on}" if on is not None else ""
    return f"plugin {plugin!r}{_dist(dist)} failed in {hook_name}{where}: {type(e).__name__}: {e}"


def _in_tree(plugin: object) -> bool:
    """Whether ``plugin`` is one of amber's own (a module of :data:`DEFAULT_PLUGINS`)."""
    return inspect.ismodule(plugin) and plugin.__name__ in DEFAULT_PLUGINS


def _way_out(dist: str | None, in_tree: str | None = None) -> str:
    """How to get past a broken plugin: one installed (``dist``) can be left out; a fault of amber's
    own plugin ``in_tree`` is amber's to fix."""
    if in_tree is not None:
        return f"this is a fault of amber's plugin {in_tree!r}, to report to amber's developers"
    return f"fix or uninstall {dist}, or {WAY_OUT}" if dist else "fix or unregister it"


def build_registry(pm: pluggy.PluginManager) -> FormatRegistry:
    """Build the registry from ``pm``'s hook results.

    :raises DuplicateFormatError: two plugins register the same format or exporter
        name, or two exporters the same shorthand or the native files of one framework.
    """
    reg = FormatRegistry()
    for table, hook_name, kind, cls in (
        (reg.formats, "amber_register_formats", "format", FormatSpec),
        (reg.exporters, "amber_register_exporters", "exporter", ExporterSpec),
    ):
        for item, plugin, dist in _collect(pm, hook_name):
            if not isinstance(item, cls):
                raise PluginLoadError(
                    f"plugin {plugin!r} returned {type(item).__name__} from {hook_name}, "
                    f"expected {cls.__name__}",
                    plugin=plugin,
                )
            if item.name in table:
                other = table[item.name]
                raise DuplicateFormatError(
                    f"{kind} {item.name!r} is registered twice: by plugin {other.plugin!r}"
                    f"{_dist(other.distribution)} and by plugin {plugin!r}{_dist(dist)}; "
                    "uninstall one, or leave it out with AMBER_PLUGINS=...",
                    format=item.name,
                    plugin=plugin,
                )
            table[item.name] = Provided(item, plugin, dist)
    _check_exporter_claims(reg)
    for item, plugin, dist in _collect(pm, "amber_register_migrations"):
        if not isinstance(item, Migration):
            raise PluginLoadError(
                f"plugin {plugin!r} returned {type(item).__name__} from amber_register_migrations, "
                "expected amber.migration.Migration", plugin=plugin,
            )
        reg.migrations.append(Provided(item, plugin, dist))
    _collect_names(pm, reg)
    return reg


def _check_exporter_claims(reg: FormatRegistry) -> None:
    """No two exporters share a keyword shorthand, nor the native files of a framework."""
    claims: dict[str, Provided] = {}
    for provided in reg.exporters.values():
        spec = provided.item
        keys = [f"the keyword {spec.shorthand}="] if spec.shorthand else []
        keys += [f"the native files of {fw!r} policies" for fw in spec.native_for]
        for key in keys:
            other = claims.setdefault(key, provided)
            if other is not provided:
                raise DuplicateFormatError(
                    f"exporters {other.item.name!r} (plugin {other.plugin!r}{_dist(other.distribution)}) "
                    f"and {spec.name!r} (plugin {provided.plugin!r}{_dist(provided.distribution)}) "
                    f"both claim {key}; uninstall one, or leave it out with AMBER_PLUGINS=...",
                    format=spec.name, plugin=provided.plugin,
                )


def _collect_names(pm: pluggy.PluginManager, reg: FormatRegistry) -> None:
    from amber.names import check_name, is_nameable

    owners: dict[str, str] = {}
    for found, plugin, dist in _results(pm, "amber_register_names"):
        if found is not None and not isinstance(found, Mapping):
            raise PluginLoadError(f"plugin {plugin!r}{_dist(dist)} returned a {type(found).__name__} from "
                                  "amber_register_names, expected a map of names or None", plugin=plugin)
        for name, obj in (found or {}).items():
            try:
                check_name(name)
                if not is_nameable(obj):
                    raise ValueError(f"{name!r} names a {type(obj).__name__}, not a class or function")
            except ValueError as e:
                raise PluginLoadError(f"plugin {plugin!r} registers a bad name: {e}", plugin=plugin) from e
            if name in reg.class_names and reg.class_names[name] is not obj:
                raise DuplicateNameError(
                    f"name {name!r} is registered twice: by plugin {owners[name]!r} and by plugin {plugin!r}"
                )
            reg.class_names[name], owners[name] = obj, plugin


def _dist(dist: str | None) -> str:
    return f" (distribution {dist})" if dist else ""


_CACHE: weakref.WeakKeyDictionary[Any, FormatRegistry] = weakref.WeakKeyDictionary()


def get_registry(pm: pluggy.PluginManager | None = None) -> FormatRegistry:
    """The registry of ``pm`` (default: the process's plugin manager), built once and cached."""
    from amber.plugin_manager import default_plugin_manager

    pm = pm if pm is not None else default_plugin_manager()
    reg = _CACHE.get(pm)
    if reg is None:
        reg = build_registry(pm)
        _CACHE[pm] = reg
    return reg
