"""What plugins describe themselves with: :class:`FormatSpec`, :class:`ExporterSpec`.

A format plugin returns :class:`FormatSpec` objects from
``amber_register_formats``, an exporter plugin :class:`ExporterSpec` objects
from ``amber_register_exporters``. Everything the engine knows about a format
or an exporter (its files, how they load, the pip extra it needs, which
framework it is native to, its keyword shorthand) comes from these: the
engine itself names none. :mod:`amber.registry` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from amber.state import StateTree

__all__ = [
    "DISTRIBUTION",
    "Capabilities",
    "ExportedFile",
    "ExporterSpec",
    "FormatSpec",
    "StateSink",
    "StateSource",
    "install_hint",
]

#: The distribution whose extras plugins name (``pip install 'amber-rl[EXTRA]'``).
DISTRIBUTION = "amber-rl"


def install_hint(extra: str | None) -> str:
    """How to install what a format or exporter needs, from its pip extra.

    :param extra: an extra of amber's distribution (``"gpu"``), or None: the
        plugin's own distribution brings what it needs.
    """
    if extra:
        return f"install it with: pip install '{DISTRIBUTION}[{extra}]'"
    return "install the missing package, or reinstall the distribution of the plugin that provides it"


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

    @property
    def python_version(self) -> str | None:
        """The Python that wrote the checkpoint (``python_version`` in its checkpoint.json, such as
        ``"3.11.7"``); None where not recorded. A format not portable across Python versions
        compares it with the running one. A source that other code than the engine made, or an
        older amber's engine, may lack it: read it with ``getattr(source, "python_version", None)``.
        """
        ...

    @property
    def amber_version(self) -> str | None:
        """The amber that wrote the checkpoint (``amber_version`` in its checkpoint.json); None where
        not recorded (read it as ``python_version``)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What a format can promise."""

    portable: bool
    """Readable by any Python version and platform (nothing tied to the writer's interpreter)."""
    safe: bool
    """Reading it never runs code from the file: fine for checkpoints from strangers."""
    arbitrary_objects: bool
    """Holds any Python object, not only state trees."""


@dataclass(frozen=True)
class FormatSpec:
    """A checkpoint format, as registered by a plugin through ``amber_register_formats``.

    :param name: the name users pick it by (``algo.save(dir, format=NAME)``).
    :param extension: the main state file's extension, with the dot (``".msgpck"``).
    :param capabilities: what it promises.
    :param write: ``write(state, sink)`` writes one state tree through ``sink``.
    :param read: ``read(source) -> state`` reads it back.
    :param description: one line for ``amber formats``.
    :param extra: the pip extra of amber that brings its dependencies, or None when
        it needs none beyond amber's own (or ships them as its own distribution).
        An ``ImportError`` from ``write`` or ``read`` becomes a
        :class:`amber.errors.MissingPluginError` naming it.
    """

    name: str
    extension: str
    capabilities: Capabilities
    write: Callable[[StateTree, StateSink], None]
    read: Callable[[StateSource], StateTree]
    description: str = ""
    extra: str | None = None

    @property
    def install_hint(self) -> str:
        """How to install what this format needs (see :func:`install_hint`)."""
        return install_hint(self.extra)


@dataclass(frozen=True)
class ExportedFile:
    """A file or directory an exporter writes, as ``model.json`` and the docs describe it.

    :param name: its name in the export directory (``"model.tflite"``; a directory
        is named without a slash). Never ``model.json``.
    :param load: one line saying how to load and call it with its own runtime
        (``"tflite_runtime.Interpreter(model_path=path)"``).
    :param runtime: the package that loads it (``"tflite_runtime"``).
    """

    name: str
    load: str
    runtime: str = ""

    def __post_init__(self) -> None:
        if self.name in ("", ".", "..", "model.json") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"an exported file's name must be a plain name other than model.json, "
                             f"not {self.name!r}")


@dataclass(frozen=True)
class ExporterSpec:
    """A model exporter, as registered through ``amber_register_exporters``.

    :param name: the name users pick it by (``policy.export_model(dir, format=NAME)``).
    :param export: ``export(graph, directory, options) -> paths written``: writes
        the files of :attr:`files` into ``directory`` (a staging directory) from an
        :class:`amber.model_graph.ModelGraph`.
    :param description: one line for ``amber formats``.
    :param extra: the pip extra of amber that brings its dependencies, or None. An
        ``ImportError`` from ``export`` becomes a
        :class:`amber.errors.MissingPluginError` naming it.
    :param files: the files and directories it writes, each with how it loads.
        The engine records these facts in ``model.json``, refuses any other name
        the exporter writes, and removes them when a later export of other
        weights into the same directory does not rewrite them. An exporter that
        declares none may write any name, but its files are never removed.
    :param native_for: the frameworks whose policies it writes the native files
        of: ``export_model(dir)`` with no exporter named picks the one native to
        the graph's framework (``("torch",)``), with the option ``native=True``
        (:data:`amber.export.NATIVE_OPTION`). At most one exporter per framework.
    :param shorthand: a keyword of ``export_model`` that picks it, its value
        passed as the option :attr:`shorthand_option` (``shorthand="tflite"``,
        ``shorthand_option="quantize"``: ``export_model(dir, tflite=8)``). A value
        of None, False or 0 picks nothing, as RLlib's ``export_model`` does with
        its opset keyword. Unique among exporters.
    :param shorthand_option: the option the shorthand's value is passed as; always one of
        :attr:`options` (added there when not listed).
    :param options: the names of the options it takes from users
        (``export_model(dir, format=NAME, KEY=VALUE)``, ``amber export -o KEY=VALUE``): any other
        is refused before ``export`` runs. None by default. The option
        :data:`amber.export.NATIVE_OPTION` is amber's, given whether declared or not.
    """

    name: str
    export: Callable[[Any, Path, Mapping[str, Any]], Sequence[Path]]
    description: str = ""
    extra: str | None = None
    files: tuple[ExportedFile, ...] = ()
    native_for: tuple[str, ...] = ()
    shorthand: str | None = None
    shorthand_option: str | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "native_for", tuple(self.native_for))
        if isinstance(self.options, str):
            raise ValueError(f"exporter {self.name!r}: options is a collection of names, not the str "
                             f"{self.options!r} (options=({self.options!r},))")
        options = tuple(dict.fromkeys([*self.options, *filter(None, [self.shorthand_option])]))
        bad = next((o for o in options if not isinstance(o, str) or not o), None)
        if bad is not None:
            raise ValueError(f"exporter {self.name!r}: option {bad!r} is not a name (a non-empty str)")
        object.__setattr__(self, "options", options)
        if (self.shorthand is None) != (self.shorthand_option is None):
            raise ValueError(f"exporter {self.name!r}: shorthand and shorthand_option go together")
        if self.shorthand is not None and not self.shorthand.isidentifier():
            raise ValueError(f"exporter {self.name!r}: shorthand {self.shorthand!r} is not a keyword")

    @property
    def install_hint(self) -> str:
        """How to install what this exporter needs (see :func:`install_hint`)."""
        return install_hint(self.extra)

    def file(self, name: str) -> ExportedFile | None:
        """The declared file ``name``, if this exporter declares it."""
        return next((f for f in self.files if f.name == name), None)
