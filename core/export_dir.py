"""Where an export goes: the directory it is written into, what it may replace there, and its lock.

:func:`amber.export.export_model` writes into a directory through these
helpers. The directory is a plain directory outside every checkpoint
(:func:`check_outside_checkpoints`); an export holds the directory's lock
(:func:`export_lock`, an advisory ``flock`` on the directory itself) from
reading the earlier ``model.json`` until its files are in place, so two
exports into one directory never interleave: the second waits, then
replaces the first whole. An entry of a declared name is replaced only when
it is a regular file, or a directory that the earlier export's
``model.json`` lists with every file it holds (:func:`check_replaceable`):
a directory of someone else's files is refused, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.atomic import is_temporary, staging
from amber.durable import describe
from amber.errors import CorruptCheckpointError, ExportError
from amber.verified_io import describe_mode, open_regular

if TYPE_CHECKING:
    from amber.registry import FormatRegistry

__all__ = [
    "MODEL_JSON",
    "carry_over",
    "check_outside_checkpoints",
    "check_replaceable",
    "export_lock",
    "exporting_into_folders",
    "prepare_dir",
    "previous_export",
    "remove_created",
    "remove_export",
]

#: The file every export writes beside the model files.
MODEL_JSON = "model.json"


def check_outside_checkpoints(target: Path) -> None:
    """Refuse to export into a checkpoint, or a folder inside one: its ``checkpoint.json`` would not
    list the model files, and ``amber verify`` would then fail on it. A checkpoint's own ``model/``
    folder, written while the checkpoint is staged (``export_native_model_files``), is allowed.

    :raises ExportError: naming the checkpoint.
    """
    from amber.layout import MANIFEST, enclosing_checkpoint

    if any(is_temporary(part) for part in target.parts):
        return  # inside a save's staging directory: the checkpoint's manifest will list the files
    where = "a checkpoint" if (target / MANIFEST).is_file() else None
    if where is None and (outer := enclosing_checkpoint(target)) is not None:
        where = f"inside the checkpoint {outer}"
    if where is not None:
        raise ExportError(f"refusing to export into {target}: it is {where}, whose checkpoint.json would "
                          "not list the model files (`amber verify` would then fail on it); choose a "
                          "directory outside it", path=target)


def prepare_dir(target: Path) -> list[Path]:
    """Make ``target`` (and missing parents) a plain directory; return those this call created,
    outermost first, for :func:`remove_created` to take back if the export fails."""
    if target.is_symlink():
        raise ExportError(f"refusing to export into {target}: it is a symbolic link", path=target)
    created = [d for d in (*reversed(target.parents), target) if not os.path.lexists(d)]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"cannot export into {target}: it exists and is not a directory",
                          path=target) from None
    except OSError as e:
        remove_created(created)
        raise ExportError(f"cannot create {target}: {describe(e)}", path=target) from e
    if target.is_symlink() or not target.is_dir():
        raise ExportError(f"refusing to export into {target}: not a plain directory", path=target)
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove the directories a failed export created, innermost first, each only if still empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            return  # not empty (or gone): what holds something else stays, and so do its parents


@contextlib.contextmanager
def export_lock(target: Path) -> Iterator[None]:
    """Hold ``target``'s export lock for the block: an exclusive ``flock`` on the directory itself
    (no file is added to it), waited for if another export holds it. Where ``flock`` does not exist
    (Windows), no lock is taken.

    :raises ExportError: ``target`` cannot be opened as a directory (a link, gone).
    """
    try:
        import fcntl
    except ImportError:  # no flock here: exports into one directory must not run at once
        yield
        return
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(target, flags)
    except OSError as e:
        raise ExportError(f"cannot lock {target} for the export: {describe(e)}", path=target) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def previous_export(target: Path) -> dict[str, Any] | None:
    """The ``model.json`` an earlier export left in ``target``, if it is one of ours."""
    path = target / MODEL_JSON
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        raise ExportError(f"refusing to replace {path}: it is a symbolic link", path=path)
    if not stat.S_ISREG(mode):  # a FIFO would block the read; a directory would be deleted
        raise ExportError(f"refusing to replace {path}: it is {describe_mode(mode)}", path=path)
    try:
        fd = open_regular(path)
    except CorruptCheckpointError as e:  # swapped for a link or a FIFO meanwhile, or unreadable
        raise ExportError(f"refusing to replace {e.message}", path=path) from e
    try:
        with os.fdopen(fd, "rb") as f:
            raw = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("producer"), Mapping) \
            or raw["producer"].get("name") != "amber":
        return None
    return raw


def _listed(previous: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The ``files`` an earlier export's ``model.json`` lists (empty if none)."""
    files = (previous or {}).get("files")
    return files if isinstance(files, Mapping) else {}


def _unlisted_in(folder: Path, contents: Mapping[str, Any]) -> str | None:
    """The first entry below ``folder`` that is not a file ``contents`` lists (None: all are)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]  # not walked into
        for name in sorted(filenames) + sorted(links):
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            mode = os.lstat(Path(dirpath) / name).st_mode
            if rel not in contents or not stat.S_ISREG(mode):
                return rel
    return None


def check_replaceable(target: Path, names: Sequence[str], previous: Mapping[str, Any] | None) -> None:
    """Refuse to replace (or remove) an entry of ``target`` that no earlier export wrote: a
    directory that the earlier ``model.json`` does not list as one, or that holds files it does not
    list; a link; a FIFO, socket or device. A regular file (or nothing) may be replaced.

    :raises ExportError: naming the entry and why.
    """
    listed = _listed(previous)
    for name in names:
        path = target / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            continue
        if stat.S_ISLNK(mode):
            raise ExportError(f"refusing to replace {path}: it is a symbolic link", path=path)
        if not stat.S_ISDIR(mode):
            raise ExportError(f"refusing to replace {path}: it is {describe_mode(mode)}", path=path)
        entry = listed.get(name)
        if not isinstance(entry, Mapping) or "size" in entry:
            raise ExportError(f"refusing to replace {path}: it is a directory that no earlier export in "
                              f"{target} wrote (its {MODEL_JSON} does not list it as one); it would be "
                              "deleted with its files: move it away first", path=path)
        contents = entry.get("contents")
        extra = _unlisted_in(path, contents) if isinstance(contents, Mapping) else None
        if extra is not None:
            raise ExportError(f"refusing to replace {path}: it holds {extra}, which the earlier export "
                              f"did not write ({MODEL_JSON} does not list it); it would be deleted: move "
                              "it away first", path=path)


def plain_name(name: object) -> bool:
    """Whether ``name`` (from a ``model.json`` on disk) may name a model file in the directory."""
    return (isinstance(name, str) and name not in ("", ".", "..", MODEL_JSON) and "/" not in name
            and "\\" not in name and not is_temporary(name))


def _declared(registry: FormatRegistry) -> set[str]:
    """Every file name an installed exporter declares."""
    return {f.name for provided in registry.exporters.values() for f in provided.item.files}


def carry_over(
    previous: Mapping[str, Any] | None, digest: str, written: Mapping[str, Any], target: Path,
    registry: FormatRegistry,
) -> tuple[dict[str, Any], list[str]]:
    """What an earlier export in ``target`` left that this one does not rewrite: kept (same
    weights) or stale (other weights). Only names a registered exporter declares are ever removed."""
    kept: dict[str, Any] = {}
    stale: list[str] = []
    files = _listed(previous)
    if previous is None or not files:
        return kept, stale
    same = previous.get("weights_digest") == digest
    declared = _declared(registry)
    for top in files:
        if not plain_name(top) or top in written:
            continue
        if same and (target / top).exists():
            kept[top] = files[top]
        elif top in declared:
            stale.append(top)
    return kept, stale


def _root_export(target: Path, registry: FormatRegistry) -> list[str]:
    """What :func:`remove_export` removes from ``target`` (none: no export of amber's there), checked."""
    previous = previous_export(target)
    if previous is None:
        return []
    declared = _declared(registry)
    names = [n for n in _listed(previous) if plain_name(n) and n in declared and os.path.lexists(target / n)]
    check_replaceable(target, names, previous)
    return [MODEL_JSON, *names]


def remove_export(target: Path, registry: FormatRegistry) -> list[str]:
    """Remove the export at ``target``'s top level: its ``model.json`` and the files it lists that
    an installed exporter declares (other entries are left alone), as an export of other weights
    replaces them. The caller holds :func:`export_lock`. ``model.json`` goes first: ``target`` is
    never an export whose files are missing.

    :return: the names removed (none: ``target`` held no export of amber's).
    :raises ExportError: an entry no export wrote (:func:`check_replaceable`), or removing failed.
    """
    names = _root_export(target, registry)
    if not names:
        return []
    try:
        with staging(target, inside=True, what="a removal", error=ExportError) as trash:
            for name in names:  # model.json first
                os.replace(target / name, trash / name)
    except OSError as e:
        raise ExportError(f"removing the earlier export from {target} failed: {describe(e)}",
                          path=target) from e
    return names


@contextlib.contextmanager
def exporting_into_folders(directory: Path, registry: FormatRegistry) -> Iterator[Path]:
    """For exports of several policies into ``directory/<policy id>/``: hold ``directory``'s export
    lock for the block, then remove the export an earlier export of one policy left at its top
    level (:func:`remove_export`), so ``directory`` never mixes two models. What would be removed is
    checked before the block runs.

    :return: ``directory``, absolute.
    :raises ExportError: ``directory`` is refused, or holds an entry no export wrote.
    """
    target = directory.absolute()
    check_outside_checkpoints(target)
    created = prepare_dir(target)
    try:
        with export_lock(target):
            _root_export(target, registry)  # refused before any policy is exported
            yield target
            remove_export(target, registry)
    except BaseException:
        remove_created(created)
        raise
