"""The on-disk layout: checkpoint.json manifests.

Every level of a checkpoint (the algorithm, each policy) has a
``checkpoint.json`` listing every other file of that level with its size
and digest; the algorithm's manifest lists each policy's checkpoint.json,
so verifying from the top covers everything. Readers check a file's size
and digest before handing its bytes to a format: that verified file I/O is
:mod:`amber.verified_io`; what a manifest holds and the checks it passes are
:mod:`amber.manifest`. This module re-exports both's names.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amber.digest import canonical_members, json_digest, load_json, members_digest
from amber.errors import CheckpointError, CheckpointWriteError, CorruptCheckpointError, NotACheckpointError
from amber.manifest import (
    CHECKPOINT_TYPES,
    HIDDEN_CATEGORIES,
    MAX_ID_LENGTH,
    STATE_STEMS,
    Manifest,
    check_id,
    hidden_characters,
    validate_manifest,
)
from amber.migration import check_not_newer

# loaded with the read path: verified_io asks it (lazily) whether a failed read met a replaced
# checkpoint, and a read imports nothing
from amber.read_changed import replaced as _replaced  # noqa: F401
from amber.verified_io import (
    MANIFEST,
    FileEntries,
    FileEntry,
    Source,
    check_file,
    describe_mode,
    open_nofollow,
    read_fd,
    read_verified,
)
from amber.verified_io import corrupt as _corrupt
from amber.verified_write import HashingFile, Sink

__all__ = [
    "CHECKPOINT_TYPES",
    "HIDDEN_CATEGORIES",
    "MANIFEST",
    "MAX_ID_LENGTH",
    "MAX_MANIFEST_BYTES",
    "STATE_STEMS",
    "FileEntries",
    "FileEntry",
    "HashingFile",
    "Manifest",
    "Sink",
    "Source",
    "check_file",
    "check_id",
    "enclosing_checkpoint",
    "manifest_changed",
    "unlisted_entries",
    "holds_nothing",
    "hidden_characters",
    "read_manifest",
    "read_verified",
    "unread_foreign",
    "write_manifest",
]

SELF_DIGEST = "manifest_digest"
STATE_PREFIXES = tuple(f"{stem}." for stem in STATE_STEMS.values())
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _below_root(root: Path, directory: Path) -> str:
    """``directory`` relative to ``root`` (``""`` for the root itself); every directory from
    ``root`` down to it must be a real directory, never a link (nor a FIFO, a file...)."""
    rel = directory.relative_to(root)
    current = root
    for part in rel.parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise _corrupt(current, "is missing") from None
        except (OSError, ValueError) as e:
            raise _corrupt(current, f"cannot be read: {e}") from e
        if stat.S_ISLNK(mode):
            raise _corrupt(current, "is a symbolic link; checkpoints may not contain links")
        if not stat.S_ISDIR(mode):
            raise _corrupt(current, f"is {describe_mode(mode)}, not a directory")
    return rel.as_posix() if rel.parts else ""


def _check_place(base: Path, directory: Path) -> None:
    """Raise the error that says why ``directory/checkpoint.json`` cannot be read, if ``directory``
    (below ``base``) is not a real directory or holds no manifest; return if neither."""
    inner = _below_root(base, directory)
    if not inner and not directory.is_dir():
        raise NotACheckpointError(
            f"{directory} is not a checkpoint directory"
            + (" (it does not exist)" if not os.path.lexists(directory) else ""),
            path=directory,
        )
    if not os.path.lexists(directory / MANIFEST):
        _no_manifest(directory, inside=bool(inner))


def _foreign(names: list[str]) -> str | None:
    """Among a directory's ``names``, another system's manifest (``rllib_checkpoint.json``), if any."""
    return min((n for n in names if n.endswith(MANIFEST) and n != MANIFEST), default=None)


def _no_manifest(directory: Path, inside: bool) -> None:
    """Raise the error for a directory without checkpoint.json."""
    path = directory / MANIFEST
    names = [p.name for p in directory.iterdir()]
    # another system's manifest (e.g. RLlib's): a plugin may read it (amber_read_foreign_checkpoint)
    foreign = _foreign(names)
    if inside or (not foreign and any(n.startswith(STATE_PREFIXES) or n == "policies" for n in names)):
        raise _corrupt(path, "is missing (the directory holds checkpoint files)")
    hint = f" (it holds {foreign}: another system's checkpoint)" if foreign else ""
    raise NotACheckpointError(f"{directory} is not an amber checkpoint: no {MANIFEST}{hint}", path=directory)


def unread_foreign(directory: Path) -> NotACheckpointError | None:
    """The error for ``directory`` when it holds another system's checkpoint and no installed plugin
    reads it (None: it holds none; a link or an unreadable directory counts as none)."""
    try:
        foreign = _foreign(os.listdir(directory)) if not os.path.islink(directory) else None
    except (OSError, ValueError):  # (a name the file system cannot encode is a ValueError)
        foreign = None
    if foreign is None:
        return None
    return NotACheckpointError(f"{directory} is not an amber checkpoint: no {MANIFEST} (it holds {foreign}: "
                               "another system's checkpoint, which no installed plugin reads)",
                               path=directory)


def enclosing_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The nearest directory strictly above ``path`` that holds a ``checkpoint.json``: the
    checkpoint that ``path`` lies inside (``ALGO/policies/ID``, ``SRC/converted``), or None.
    Something written there is a file that checkpoint's manifest does not list. Links are
    resolved (``alias/x``, with ``alias`` a link to ``ALGO/policies``, is inside ``ALGO``); the
    checkpoint is named as ``path`` spells it where it can be, else by its real path."""
    for resolve in (os.path.abspath, os.path.realpath):
        try:
            parents = Path(resolve(path)).parents
        except (OSError, ValueError):  # a name the file system cannot encode: no link to resolve
            continue
        for parent in parents:
            if (parent / MANIFEST).is_file():
                return parent
    return None


def unlisted_entries(directory: Path, manifest: Manifest) -> list[str]:
    """What the checkpoint at ``directory`` (whose manifest is ``manifest``) holds that neither its
    manifest nor its policies' manifests list: each such file, link or directory (not what is
    below it), relative, sorted. Links are not followed.

    :raises CheckpointError: a policy's manifest cannot be read (so what it lists is unknown).
    """
    listed = set()
    for rel, entry in manifest.files.items():
        listed.add(rel)
        if rel.endswith(f"/{MANIFEST}"):
            inner = rel[: -len(MANIFEST)]
            sub = read_manifest(directory / inner, expected=entry, root=directory)
            listed |= {inner + r for r in sub.files}
    folders = {p for rel in listed for p in _ancestors(rel)}
    extra = []
    for here, dirnames, filenames in os.walk(directory):
        base = Path(here).relative_to(directory).as_posix()
        prefix = "" if base == "." else f"{base}/"
        for name in [*dirnames]:
            if prefix + name not in folders or os.path.islink(os.path.join(here, name)):
                if not holds_nothing(os.path.join(here, name)):
                    extra.append(prefix + name)
                dirnames.remove(name)  # nothing below it is listed: it is named alone
        extra += [prefix + n for n in filenames if prefix + n not in listed and prefix + n != MANIFEST]
    return sorted(extra)


def holds_nothing(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory (not a link) with no file, link or other entry at any depth,
    only directories, if that. Such a folder holds no data and no load reads it, and object stores
    keep no folders at all, so it is no part of a checkpoint to report: older ambers left an empty
    ``assets/`` in a tf2 policy's native SavedModel folder."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    for here, dirnames, filenames in os.walk(path):  # (links to folders are among dirnames, unfollowed)
        if filenames or any(os.path.islink(os.path.join(here, d)) for d in dirnames):
            return False
    return True


def manifest_changed(directory: Path, manifest: Manifest) -> bool:
    """Whether ``directory``'s manifest is no longer ``manifest`` (or is gone): another save
    committed there since it was read, so what was seen of the folder may mix two checkpoints."""
    try:
        return read_manifest(directory).raw != manifest.raw
    except CheckpointError:
        return True


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _manifest_bytes(base: Path, rel: str, path: Path, expected: FileEntry | None) -> bytes:
    """The bytes of ``base/rel`` (a manifest), read without following links or blocking."""
    if expected is not None:
        return bytes(read_verified(base, rel, expected, aligned=False))
    fd = open_nofollow(base, rel)
    size = os.fstat(fd).st_size
    if size > MAX_MANIFEST_BYTES:
        os.close(fd)
        raise _corrupt(path, f"is {size} bytes, more than a manifest may be")
    return bytes(read_fd(fd, size, path, aligned=False))


def read_manifest(
    directory: Path, *, expected: FileEntry | None = None, root: Path | None = None
) -> Manifest:
    """Read and validate ``directory/checkpoint.json``.

    The manifest is opened without following links or blocking: a link,
    FIFO, socket or device in its place is refused before it is read.

    :param expected: the manifest's own entry in the parent manifest, if any.
    :param root: the top of the checkpoint, when ``directory`` is below it:
        every directory in between must be a real directory (no symlink).
    :raises NotACheckpointError: no directory, or no checkpoint.json in it.
    :raises CorruptCheckpointError: unreadable, not a regular file, not JSON,
        duplicate keys, wrong types.
    """
    directory = directory if isinstance(directory, Path) else Path(directory)
    path = directory / MANIFEST
    base = directory if root is None else root if isinstance(root, Path) else Path(root)
    inner = "" if base is directory else directory.relative_to(base).as_posix()
    inner = "" if inner == "." else inner  # (root given, and the directory itself)
    try:  # opening checks every directory on the way: only a failure needs the checks that name it
        data = _manifest_bytes(base, f"{inner}/{MANIFEST}" if inner else MANIFEST, path, expected)
    except CorruptCheckpointError:
        _check_place(base, directory)
        raise
    try:
        raw, members = load_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _corrupt(path, f"is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise _corrupt(path, "must hold a JSON object")
    check_not_newer(raw, directory)  # before any digest: a newer amber may hash differently
    recorded = raw.pop(SELF_DIGEST, None)
    if recorded is None:
        raise _corrupt(path, f"lacks the key {SELF_DIGEST!r}")
    members = members if members is not None else canonical_members(raw)
    members.pop(SELF_DIGEST, None)
    if recorded != members_digest(members):
        raise _corrupt(path, "content does not match its own digest (edited or damaged)")
    manifest = validate_manifest(raw, path)
    manifest.members = members
    return manifest


def _self_digest(content: Mapping[str, Any]) -> str:
    """The digest a manifest records of itself (``content``: all of it but that digest)."""
    return json_digest(content)


def write_manifest(directory: Path, content: Mapping[str, Any]) -> FileEntry:
    """Write ``directory/checkpoint.json`` (fsynced, with its own digest); return its entry."""
    content = {**content, SELF_DIGEST: _self_digest(content)}
    # No trailing newline: cutting any byte off the end leaves invalid JSON.
    data = json.dumps(content, indent=2).encode("utf-8")
    if len(data) > MAX_MANIFEST_BYTES:  # a reader refuses it: the checkpoint would not load
        raise CheckpointWriteError(
            f"its {MANIFEST} would be {len(data)} bytes, more than a manifest may be "
            f"({MAX_MANIFEST_BYTES}): is its metadata that large?", path=directory)
    with HashingFile(directory / MANIFEST) as f:
        f.write(data)
    return f.entry


