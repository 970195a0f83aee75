"""Stale staging directories: which ones a save may remove, and how, without touching a live save's.

A staging directory's marker records who stages it: the host, the boot, the
PID namespace (the inode of ``/proc/self/ns/pid``) and the pid. A directory
is stale when its writer is proven gone: same host, boot and namespace, and
no process of that pid. A marker written elsewhere (another container sharing
the volume, another NFS client), whose pid means nothing here, is stale only
once it is :data:`FOREIGN_AGE` seconds old. A marker without that record
(written by an older amber) is judged by its pid alone, as that amber did.

A stale directory is first renamed to a tombstone (``.<name>.amber-del-<pid>-<rand>``)
and only then deleted: a writer that was alive after all can no longer rename
into place a directory being emptied (its rename fails; it never commits a part).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

__all__ = ["FOREIGN_AGE", "MARKER_SUFFIX", "marker_text", "pid_alive", "remove_stale"]

MARKER_SUFFIX = ".marker"
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.amber-tmp-(?P<pid>\d+)-[0-9a-f]{8}(?P<marker>\.marker)?$")
#: Seconds after which a staging directory of another host or PID namespace counts as abandoned.
FOREIGN_AGE = 7 * 24 * 3600
_FIRST_LINE = "amber: a save is staging the directory of the same name"
_KEYS = ("host", "boot", "pidns")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (this one, or one we may not signal)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_small(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(256).decode("ascii", "replace").strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=4)
def _identity(pid: int) -> dict[str, str]:
    """Where this process runs (``pid``: the cache key, so that a forked child looks again)."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return {"host": socket.gethostname(), "boot": _read_small("/proc/sys/kernel/random/boot_id"),
            "pidns": pidns}


def marker_text() -> bytes:
    """What a marker holds: a line saying what it is, then who stages the directory."""
    ident = _identity(os.getpid())
    lines = [_FIRST_LINE, *(f"{k}={ident[k]}" for k in _KEYS), f"pid={os.getpid()}"]
    return ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")


def _recorded(marker: Path) -> dict[str, str] | None:
    """The identity a marker records; None for a marker without one (an older amber's)."""
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        text = os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line)
    return fields if all(k in fields for k in _KEYS) else None


def is_stale(marker: Path, pid: int, *, now: float | None = None) -> bool:
    """Whether the staging directory of ``marker`` (named with ``pid``) is proven abandoned."""
    recorded = _recorded(marker)
    here = _identity(os.getpid())
    if recorded is None or all(recorded[k] == here[k] for k in _KEYS):
        return not pid_alive(pid)  # our namespace (or an older amber's marker): the pid says
    try:
        age = (time.time() if now is None else now) - os.lstat(marker).st_mtime
    except OSError:
        return False
    return age > FOREIGN_AGE


def remove_stale(parent: Path) -> list[Path]:
    """Remove staging directories (and markers) in ``parent`` left by crashed saves; return them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = STAGING_RE.match(entry.name)
        if not m or not m["marker"] or entry.is_dir(follow_symlinks=False):
            continue
        marker = Path(entry.path)
        if not is_stale(marker, int(m["pid"])):
            continue
        tmp = marker.with_name(marker.name[: -len(MARKER_SUFFIX)])
        if tmp.is_dir() and not tmp.is_symlink():
            tomb = tmp.with_name(f".{m['name']}.amber-del-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:  # never empty a name its writer could still rename into place
                os.rename(tmp, tomb)
            except OSError:
                continue  # gone meanwhile (renamed into place, or removed by another save)
            shutil.rmtree(tomb, ignore_errors=True)
            removed.append(tmp)
        if not os.path.lexists(tmp):
            marker.unlink(missing_ok=True)
    return removed
