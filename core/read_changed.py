"""Whether a read failed because a save replaced the checkpoint meanwhile (no damage).

:mod:`amber.verified_io` asks this of a file that did not verify: when the
manifest now in place lists it otherwise, or no longer lists it at all, or is
gone, the reader raises :class:`amber.errors.ChangedWhileReadError` rather
than calling the checkpoint damaged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amber.errors import CheckpointError
from amber.verified_io import MANIFEST, FileEntry, _moved, _pin_of, open_nofollow, read_fd

__all__ = ["replaced"]

_GONE = object()  # a manifest that is missing or unreadable now


def _files_now(root: Path, level: str) -> Any:
    """The ``files`` of the manifest at ``root/level`` now; :data:`_GONE` if there is none to read."""
    rel = f"{level}/{MANIFEST}" if level else MANIFEST
    try:
        fd = open_nofollow(root, rel)
        now = json.loads(bytes(read_fd(fd, min(os.fstat(fd).st_size, 1 << 24), root, aligned=False)))
    except (CheckpointError, OSError, ValueError):
        return _GONE
    files = now.get("files") if isinstance(now, dict) else None
    return files if isinstance(files, dict) else _GONE


def replaced(root: Path, rel: str, entry: FileEntry, listed_in: str) -> bool:
    """Whether ``root/rel`` failed because the checkpoint was replaced while read: the pinned directory
    was, or, unpinned, the manifest that lists ``rel`` now (``root``'s own, or that of a level
    below it: a policy's folder) lists it otherwise, or none lists it any more, or ``root``'s is gone.
    A file that one listed ``root`` checkpoint lists as it was read is damaged, not replaced."""
    if (pin := _pin_of(root)) is not None:
        return _moved(pin[0], pin[1])
    if listed_in != MANIFEST:
        return False
    parts = rel.split("/")
    for depth in range(len(parts) - 1, -1, -1):  # the deepest level's manifest first
        files = _files_now(root, "/".join(parts[:depth]))
        if files is _GONE:
            if depth == 0:
                return True  # root's manifest is gone or unreadable now: not the one that was read
            continue  # (no level there)
        got = files.get("/".join(parts[depth:]))
        if isinstance(got, dict):
            return [got.get("size"), got.get("digest")] != [entry.size, entry.digest]
    return True  # no manifest lists it now: the checkpoint read was replaced
