"""Every hook amber calls, grouped by phase: capture → write → read → migrate → export.

A plugin is any module or object with functions decorated ``@amber.hookimpl``
whose names match these specs; it may implement any subset of the hooks and
of each hook's arguments. The engine always calls hooks with keyword
arguments. The in-tree formats and exporters (``amber.plugins.*``) use
exactly these hooks; a third party ships its own by declaring an entry point
in the group ``amber``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from amber.checkpoint import Checkpoint
    from amber.migration import Migration
    from amber.registry import ExporterSpec, FormatSpec
    from amber.state import StateTree

hookspec = pluggy.HookspecMarker("amber")
hookimpl = pluggy.HookimplMarker("amber")


# --------------------------------------------------------------------------
# capture: turning live components into state trees and back
# --------------------------------------------------------------------------


@hookspec
def amber_register_components(owner: object) -> Mapping[str, object] | None:
    """Add components of your own to an owner's checkpoint.

    Called once each time the engine captures or restores the state of an
    owner (an Algorithm, a Policy, or whatever object calls
    :func:`amber.components.capture`). Every plugin's result is collected
    (1:N); keys must not clash with the owner's own component names nor with
    another plugin's.

    :param owner: the object whose state is being captured or restored.
    :return: a mapping of component name to component, or None to add nothing.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def amber_capture_state(component: object, key: str) -> StateTree | None:
    """Return the state of one component as a state tree.

    Called once per component each time its owner is captured (at save).
    Implement it for the component types your plugin knows (a torch module,
    an optimizer, an RNG, your environment) and return None for all others.
    Stops at first non-None result.

    :param component: the live object.
    :param key: its dotted path in the owner's state (``"rng.numpy"``), for messages.
    :return: a state tree (see :mod:`amber.state`), or None if this plugin does not
        handle the component.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def amber_restore_state(component: object, state: StateTree, key: str) -> bool | None:
    """Apply a state tree, as returned by ``amber_capture_state``, to a live component.

    Called once per component at restore, only after every file of the
    checkpoint was read and verified. If any component fails, the engine
    restores the states it captured just before, so a failed restore leaves
    the owner as it was. Stops at first non-None result.

    :param component: the live object to update in place.
    :param state: its saved state.
    :param key: its dotted path in the owner's state, for messages.
    :return: True once applied, or None if this plugin does not handle the component.

    .. versionadded:: 0.1
    """


@hookspec
def amber_register_names() -> Mapping[str, object] | None:
    """Register names for classes and functions your package's checkpoints refer to.

    From checkpoint_version 2.0 a checkpoint names every class or function
    it holds (an env class, a policy class, a mapping function) by a
    registered name, never by import path; loading resolves names exactly
    and imports nothing else. Called once per plugin manager, when the
    registry is first built; every plugin's names are collected (1:N), and
    one name given to two different objects is an error. Users register
    single objects with :func:`amber.register_class` instead.

    :return: a mapping of name (e.g. ``"mypkg.MyEnv"``) to class or function, or None.

    .. versionadded:: 0.2
    """


# --------------------------------------------------------------------------
# write: formats
# --------------------------------------------------------------------------


@hookspec
def amber_register_formats() -> Sequence[FormatSpec] | None:
    """Register checkpoint formats.

    Called once per plugin manager, when the format registry is first built.
    Every plugin's result is collected (1:N). A :class:`amber.registry.FormatSpec`
    carries the format's name, extension, capabilities, its ``write`` and
    ``read`` functions and the pip extra it needs (``extra``): the engine
    writes a state tree in a named format by calling ``write(state, sink)``
    and reads it back with ``read(source)``, handling atomicity, digests and
    verification itself (an ``ImportError`` from either becomes a
    :class:`amber.errors.MissingPluginError` naming the extra). Two plugins
    registering one name is an error naming both.

    :return: the formats this plugin provides, or None.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# read: recognising files
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def amber_detect_format(path: Path, header: bytes) -> str | None:
    """Say which registered format a state file is in, from its first bytes.

    Called only by :func:`amber.checkpoint.detect_format`, for a lone state
    file whose checkpoint.json is not at hand (e.g. one copied out of a
    checkpoint). The loaders, ``amber inspect`` and ``amber verify`` never call
    it: they use the format recorded in checkpoint.json. Stops at first
    non-None result.

    :param path: the file.
    :param header: its first 64 bytes (fewer if the file is shorter).
    :return: the format name, or None if this plugin does not recognise it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def amber_read_foreign_checkpoint(path: Path, policy_ids: Sequence[str] | None) -> Checkpoint | None:
    """Read a directory that is not an amber checkpoint but another system's (e.g. RLlib's).

    Called by every loader when ``path`` is a directory without a
    checkpoint.json. Recognise the other system's files, read them safely
    (never run code from them: refuse with a :class:`amber.errors.CheckpointError`
    that says how to convert instead) and return a
    :class:`amber.checkpoint.Checkpoint` whose ``checkpoint_version`` names
    that system's version (``"rllib-1.1"``); the plugin's migration steps
    then lead from it to amber's versions. Stops at first non-None result.

    :param path: the directory.
    :param policy_ids: for an algorithm checkpoint, the policies to read (None: all).
    :return: the checkpoint read, or None if this plugin does not recognise the directory.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def amber_describe_foreign_checkpoint(path: Path) -> Mapping[str, Any] | None:
    """Say what another system's checkpoint directory is, from its own manifests alone.

    Called by ``get_checkpoint_info`` (``amber inspect``, ``amber convert``,
    ``amber export``) and ``verify`` when ``path`` is a directory without a
    checkpoint.json. Read only that system's metadata: never a state file,
    never anything that could run code (a format that can is described, not
    refused). Stops at first non-None result.

    :param path: the directory.
    :return: None if this plugin does not recognise the directory; else a map
        with ``system`` (who wrote it, for people: ``"RLlib 2.10 (Ray 2.10.0)"``),
        ``type`` (``"Algorithm"`` or ``"Policy"``), ``checkpoint_version`` (as
        :func:`amber_read_foreign_checkpoint` names it: ``"rllib-1.1"``),
        ``format``, ``state_file`` (relative to ``path``), ``policy_ids``, and
        ``files``: each file the plugin would read, by path relative to
        ``path``, to ``{"size": int, "digest": None}`` (the other system
        records no digest). Optionally ``unreadable``: why amber will not read
        it and how to get a checkpoint it reads (a str, shown by ``verify`` and
        ``trust`` instead of the ``amber migrate`` hint).
    :raises amber.errors.CheckpointError: the directory is that system's, but
        its manifest is malformed (named).

    .. versionadded:: 0.2
    """


# --------------------------------------------------------------------------
# migrate: upgrading old checkpoints
# --------------------------------------------------------------------------


@hookspec
def amber_register_migrations() -> Sequence[Migration] | None:
    """Register migration steps between checkpoint versions.

    Called once per plugin manager, when the registry is first built; every
    plugin's steps are collected (1:N). A step is a pure function of one
    version's manifest and state trees (:class:`amber.migration.Migration`,
    named ``"<from> -> <to>"``). When a checkpoint's version is older than the
    current one, the engine chains the steps and applies them in memory
    before a loader returns; ``amber migrate`` writes the result. A format
    plugin may ship steps for its own changes; two steps starting at the same
    version are an error.

    :return: the steps this plugin provides, or None.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# export: models for serving
# --------------------------------------------------------------------------


@hookspec
def amber_register_exporters() -> Sequence[ExporterSpec] | None:
    """Register model exporters: each an :class:`amber.registry.ExporterSpec`.

    Called once per plugin manager, when the registry is first built; every
    plugin's exporters are collected (1:N). An exporter's ``export(graph,
    directory, options)`` writes files that load with their own runtime
    alone; it imports its heavy dependencies inside ``export`` (an
    ``ImportError`` there becomes a :class:`amber.errors.MissingPluginError`
    naming the spec's ``extra``). The spec also declares the files it writes
    and how each loads (recorded in ``model.json``; the engine removes them
    when a later export of other weights does not rewrite them), the
    frameworks it writes the native files of (``native_for``) and its
    keyword shorthand of ``export_model`` (``shorthand``): the engine names
    no exporter itself.

    :return: the exporters this plugin provides, or None.

    .. versionadded:: 0.1
    """
