"""Writing and reading whole checkpoints, in any registered format.

This is the engine: it knows the layout (api.md section 6), atomicity,
digests, safety and versions, and reaches formats only through the
registry built from the plugins' hooks. Writing is
:mod:`amber.checkpoint_write`, reading :mod:`amber.checkpoint_read`; this
module gathers their names and holds the symmetric user API for plain state
trees (:func:`save`, :func:`load`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from amber.async_save import SaveHandle, save_in_background, snapshot, wait_for_saves
from amber.checkpoint_read import Checkpoint, migrate_in_memory, pickle_allowed_default, read_checkpoint
from amber.checkpoint_write import Attachment, check_metadata, write_checkpoint
from amber.errors import UnknownFormatError
from amber.layout import STATE_STEMS
from amber.migration import CHECKPOINT_VERSION
from amber.registry import first_result, get_registry
from amber.state import StateTree

if TYPE_CHECKING:
    import pluggy

    from amber.specs import FormatSpec

__all__ = [
    "CHECKPOINT_VERSION",
    "STATE_STEMS",
    "Attachment",
    "Checkpoint",
    "SaveHandle",
    "detect_format",
    "format_for",
    "load",
    "migrate_in_memory",
    "pickle_allowed_default",
    "read_checkpoint",
    "save",
    "write_checkpoint",
]


@overload
def save(
    state: StateTree, path: str | os.PathLike[str], *, format: str | None = ...,
    metadata: Mapping[str, str] | None = ..., pm: pluggy.PluginManager | None = ...,
    block: Literal[True] = ..., storage_options: Mapping[str, Any] | None = ...,
) -> Path: ...


@overload
def save(
    state: StateTree, path: str | os.PathLike[str], *, format: str | None = ...,
    metadata: Mapping[str, str] | None = ..., pm: pluggy.PluginManager | None = ...,
    block: Literal[False], storage_options: Mapping[str, Any] | None = ...,
) -> SaveHandle[Path]: ...


def save(
    state: StateTree,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    metadata: Mapping[str, str] | None = None,
    pm: pluggy.PluginManager | None = None,
    block: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | SaveHandle[Path]:
    """Save a state tree as a checkpoint of type ``"State"``, atomically.

    A background save in flight (``block=False``) is waited for first, and
    an error of it that nobody retrieved is raised here (:mod:`amber.async_save`).

    :param state: a state tree (see :mod:`amber.state`).
    :param path: the checkpoint directory to create or replace, or an fsspec URL
        (``s3://bucket/run/ck``: uploaded with its manifest last, :mod:`amber.storage`).
    :param format: a registered format name (default: the first registered format that is
        portable and safe to load, :meth:`amber.registry.FormatRegistry.default_portable`).
    :param metadata: strings to record in checkpoint.json.
    :param storage_options: for a URL, passed to its fsspec file system.
    :param block: False: copy the state now (:func:`amber.async_save.snapshot`), write it in
        the background and return a :class:`~amber.async_save.SaveHandle` at once, whose
        ``result()`` is the path (or raises what a synchronous save would have raised).
    :return: the checkpoint's path; with ``block=False``, the save's handle.
    :raises UnknownFormatError: no such format (raised here even with ``block=False``).
    :raises TypeError: ``metadata`` does not map str to str (raised here even with ``block=False``).

    Example::

        import numpy as np, amber
        amber.save({"w": np.zeros(3), "step": 7}, "/tmp/amber-example")
        assert amber.load("/tmp/amber-example")["step"] == 7
    """
    fmt = format if format is not None else get_registry(pm).default_portable()
    format_for(fmt, path, pm=pm)  # an unknown format fails here, before anything is copied or written
    check_metadata(metadata)  # so does metadata a checkpoint.json cannot hold
    if block:
        wait_for_saves()
        return write_checkpoint(path, type="State", state=state, format=fmt, metadata=metadata, pm=pm,
                                storage_options=storage_options)

    def capture() -> Callable[[], Path]:
        frozen, meta = snapshot(state, where=path), dict(metadata or {})
        return lambda: write_checkpoint(path, type="State", state=frozen, format=fmt, metadata=meta, pm=pm,
                                        storage_options=storage_options)

    return save_in_background(capture, path)


def format_for(name: str, path: str | os.PathLike[str], *,
               pm: pluggy.PluginManager | None = None) -> FormatSpec:
    """The registered format ``name`` that a save to ``path`` writes.

    :raises UnknownFormatError: no such format; its message lists the known ones and names ``path``.
    """
    try:
        return get_registry(pm).get(name)
    except UnknownFormatError as e:
        if e.path is None:
            e.path = os.fspath(path)
        raise


def load(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Load the state tree of a checkpoint written by :func:`save` (or a Policy checkpoint).

    :param path: the checkpoint directory, or an fsspec URL.
    :param allow_pickle: see :func:`read_checkpoint`.
    :param storage_options: for a URL, passed to its fsspec file system.
    :return: the state tree.
    """
    return read_checkpoint(path, allow_pickle=allow_pickle, pm=pm, storage_options=storage_options).state


def detect_format(path: str | os.PathLike[str], *, pm: pluggy.PluginManager | None = None) -> str | None:
    """Which registered format a single state file is in, asked of the plugins.

    :param path: a state file (e.g. ``policy_state.pkl``).
    :return: the format name, or None if no plugin recognises it.
    """
    from amber.plugin_manager import default_plugin_manager

    pm = pm if pm is not None else default_plugin_manager()
    p = Path(path)
    with open(p, "rb") as f:
        header = f.read(64)
    found = first_result(pm, "amber_detect_format", p, header=header)
    return found if isinstance(found, str) else None
