"""What plugins register, and the registries built from it.

A plugin describes a format with :class:`FormatSpec`, an exporter with
:class:`ExporterSpec`, a migration step with :class:`amber.migration.Migration`
and its classes' names with a mapping; the engine collects them through the
hooks of :mod:`amber.hookspecs` and keeps them in a :class:`FormatRegistry`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from amber.errors import (
    DuplicateFormatError,
    DuplicateNameError,
    PluginLoadError,
    UnknownExporterError,
    UnknownFormatError,
)

from amber.migration import Migration

if TYPE_CHECKING:
    import pluggy

    from amber.state import StateTree

__all__ = [
    "Capabilities",
    "ExporterSpec",
    "FormatRegistry",
    "FormatSpec",
    "Migration",
    "StateSink",
    "StateSource",
    "get_registry",
]


class StateSink(Protocol):
    """Where a format writes one state: given by the engine to :attr:`FormatSpec.write`.

    The engine hashes, sizes and fsyncs everything written through it and
    records each file in checkpoint.json.
    """

    @property
    def path(self) -> Path:
        """The main file's path (``<stem><extension>``)."""
        ...

    def open(self, suffix: str = "") -> BinaryIO:
        """Open a new file for writing: the main file, or with ``suffix`` a sibling
        ``<stem><suffix>`` (e.g. ``".safetensors"``). Close it when done."""
        ...


class StateSource(Protocol):
    """What a format reads one state from: given by the engine to :attr:`FormatSpec.read`."""

    @property
    def path(self) -> Path:
        """The main file's path."""
        ...

    def has(self, suffix: str = "") -> bool:
        """Whether the manifest lists the file ``<stem><suffix>``."""
        ...

    def read(self, suffix: str = "") -> memoryview:
        """The whole file's bytes, verified against checkpoint.json (size and digest).

        The buffer is writable, 64-byte aligned and owned by the caller: arrays
        may be views of it (zero copy).
        """
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a format can promise."""

    portable: bool
    """Readable by any Python version and platform (no pickle)."""
    safe: bool
    """Reading it never runs code from the file: fine for checkpoints from strangers."""
    arbitrary_objects: bool
    """Holds any Python object, not only state trees."""


@dataclass(frozen=True)
class FormatSpec:
    """A checkpoint format, as registered by a plugin through ``amber_register_formats``.

    :param name: the name users pick it by (``format="msgpack"``).
    :param extension: the main state file's extension, with the dot (``".msgpck"``).
    :param capabilities: what it promises.
    :param write: ``write(state, sink)`` writes one state tree through ``sink``.
    :param read: ``read(source) -> state`` reads it back.
    :param description: one line for ``amber formats``.
    """

    name: str
    extension: str
    capabilities: Capabilities
    write: Callable[[StateTree, StateSink], None]
    read: Callable[[StateSource], StateTree]
    description: str = ""


@dataclass(frozen=True)
class ExporterSpec:
    """A model exporter, as registered through ``amber_register_exporters``.

    :param name: the name users pick it by (``"onnx"``, ``"keras"``, ``"torch"``).
    :param export: ``export(model, directory, options) -> files written``.
    :param description: one line for ``amber formats``.
    :param extra: the pip extra that brings its dependencies (``"onnx"`` for ``amber[onnx]``).
    """

    name: str
    export: Callable[[Any, Path, Mapping[str, Any]], Sequence[Path]]
    description: str = ""
    extra: str | None = None


@dataclass(frozen=True)
class Provided:
    """A registered item and the plugin (and distribution) that provided it."""

    item: Any
    plugin: str
    distribution: str | None = None


@dataclass
class FormatRegistry:
    """Formats, exporters, migration steps and plugins' names, built once per plugin manager."""

    formats: dict[str, Provided] = field(default_factory=dict)
    exporters: dict[str, Provided] = field(default_factory=dict)
    migrations: list[Provided] = field(default_factory=list)
    class_names: dict[str, Any] = field(default_factory=dict)
    """Classes and functions by the name plugins registered (``amber_register_names``)."""

    def get(self, name: str) -> FormatSpec:
        """The format called ``name``.

        :raises UnknownFormatError: listing the known names.
        """
        try:
            return self.formats[name].item  # type: ignore[no-any-return]
        except KeyError:
            raise UnknownFormatError(name, self.formats, hint=_extra_hint(name)) from None

    def names(self) -> list[str]:
        """The registered format names, sorted."""
        return sorted(self.formats)

    def provider(self, name: str) -> Provided:
        """Who provides the format ``name``."""
        self.get(name)
        return self.formats[name]

    def by_extension(self, extension: str) -> FormatSpec | None:
        """The format whose main file ends in ``extension``, if exactly one does."""
        found = [p.item for p in self.formats.values() if p.item.extension == extension]
        return found[0] if len(found) == 1 else None

    def exporter(self, name: str) -> ExporterSpec:
        """The exporter called ``name``.

        :raises UnknownExporterError: listing the known names.
        """
        try:
            return self.exporters[name].item  # type: ignore[no-any-return]
        except KeyError:
            raise UnknownExporterError(name, self.exporters) from None


_EXTRAS = {"onnx": "onnx", "keras": "keras", "tf2": "keras"}


def _extra_hint(name: str) -> str | None:
    extra = _EXTRAS.get(name)
    if extra:
        return f"install it with: pip install 'amber-rl[{extra}]'"
    return "a third-party format is installed with pip and registers itself (entry-point group 'amber')"


def _plugin_names(pm: pluggy.PluginManager) -> dict[int, tuple[str, str | None]]:
    dists = {id(plugin): dist.project_name for plugin, dist in pm.list_plugin_distinfo()}
    return {
        id(plugin): (name, dists.get(id(plugin)))
        for name, plugin in pm.list_name_plugin()
        if plugin is not None
    }


def _results(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[Any, str, str | None]]:
    """Each plugin's result of a registration hook, with the plugin's name and distribution."""
    names = _plugin_names(pm)
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name, dist = names.get(id(impl.plugin), (impl.plugin_name, None))
        # Call through pluggy for this one plugin, so wrappers and checks apply.
        caller = pm.subset_hook_caller(
            hook_name, remove_plugins=[p for p in pm.get_plugins() if p is not impl.plugin]
        )
        for results in caller():
            yield results, plugin_name, dist


def _collect(pm: pluggy.PluginManager, hook_name: str) -> Iterable[tuple[Any, str, str | None]]:
    for results, plugin_name, dist in _results(pm, hook_name):
        for item in results or ():
            yield item, plugin_name, dist


def build_registry(pm: pluggy.PluginManager) -> FormatRegistry:
    """Build the registry from ``pm``'s hook results.

    :raises DuplicateFormatError: two plugins register the same format or exporter name.
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
    for item, plugin, dist in _collect(pm, "amber_register_migrations"):
        if not isinstance(item, Migration):
            raise PluginLoadError(
                f"plugin {plugin!r} returned {type(item).__name__} from amber_register_migrations, "
                "expected amber.migration.Migration", plugin=plugin,
            )
        reg.migrations.append(Provided(item, plugin, dist))
    _collect_names(pm, reg)
    return reg


def _collect_names(pm: pluggy.PluginManager, reg: FormatRegistry) -> None:
    from amber.names import check_name, is_nameable

    owners: dict[str, str] = {}
    for found, plugin, _dist in _results(pm, "amber_register_names"):
        for name, obj in dict(found or {}).items():
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


def invalidate_registry(pm: pluggy.PluginManager) -> None:
    """Forget ``pm``'s cached registry (after registering or removing a plugin)."""
    _CACHE.pop(pm, None)
