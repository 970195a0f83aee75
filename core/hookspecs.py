"""Every hook amber calls, grouped by phase: capture → write → read → migrate → export.

A plugin is any module or object with functions decorated ``@amber.hookimpl``
whose names match these specs; it may implement any subset of the hooks and
of each hook's arguments. The engine always calls hooks with keyword
arguments. The in-tree formats (pickle, msgpack) and exporters use exactly
these hooks; a third party ships its own by declaring an entry point in the
group ``amber``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from amber.registry import ExporterSpec, FormatSpec, Migration
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


# --------------------------------------------------------------------------
# write: formats
# --------------------------------------------------------------------------


@hookspec
def amber_register_formats() -> Sequence[FormatSpec] | None:
    """Register checkpoint formats.

    Called once per plugin manager, when the format registry is first built.
    Every plugin's result is collected (1:N). A :class:`amber.registry.FormatSpec`
    carries the format's name, extension, capabilities and its ``write`` and
    ``read`` functions: the engine writes a state tree in a named format by
    calling ``write(state, sink)`` and reads it back with ``read(source)``,
    handling atomicity, digests and verification itself. Two plugins
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

    Called when a file's format is not recorded (``amber inspect FILE``) and
    to check that a checkpoint's files are in the format its manifest names.
    Stops at first non-None result.

    :param path: the file.
    :param header: its first 64 bytes (fewer if the file is shorter).
    :return: the format name, or None if this plugin does not recognise it.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# migrate: upgrading old checkpoints
# --------------------------------------------------------------------------


@hookspec
def amber_register_migrations() -> Sequence[Migration] | None:
    """Register migration steps between checkpoint versions.

    Called once per plugin manager, when the registry is first built; every
    plugin's steps are collected (1:N). When a checkpoint's version is older
    than the current one, the engine chains the steps (``from_version`` →
    ``to_version``) and applies them in order to the loaded checkpoint before
    ``load`` returns; ``amber migrate`` writes the result back.

    :return: the steps this plugin provides, or None.

    .. versionadded:: 0.1
    """


# --------------------------------------------------------------------------
# export: models for serving
# --------------------------------------------------------------------------


@hookspec
def amber_register_exporters() -> Sequence[ExporterSpec] | None:
    """Register model exporters (native torch, ONNX, Keras...).

    Called once per plugin manager, when the registry is first built; every
    plugin's exporters are collected (1:N). An exporter's ``export(model,
    directory, options)`` writes files that load with their own runtime alone;
    it imports its heavy dependencies inside ``export`` and raises
    :class:`amber.errors.MissingPluginError` naming the extra when they are
    missing.

    :return: the exporters this plugin provides, or None.

    .. versionadded:: 0.1
    """
