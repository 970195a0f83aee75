"""Atomic directory commits: stage in a temporary sibling, fsync, rename into place.

A save writes everything into ``.<name>.amber-tmp-<pid>-<rand>`` beside the
target, fsyncs every file and directory, then renames the staging directory
onto the target. Saving over an existing checkpoint swaps the two
directories in one ``renameat2(RENAME_EXCHANGE)`` call on Linux, so at every
instant the path holds either the old checkpoint or the new one. A staging
directory carries a marker file until just before its commit; only
directories with that marker, named like a staging directory and left by a
process that no longer runs, are removed by later saves into the same
parent. Nothing else is ever deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amber.errors import CheckpointWriteError

__all__ = ["MARKER", "commit", "fsync_dir", "fsync_tree", "staging"]

MARKER = ".amber-staging"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.amber-tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EDQUOT: "the disk quota is exceeded",
}


def describe(e: OSError) -> str:
    """A short reason for a failed write, in words."""
    return _WHY.get(e.errno or 0, e.strerror or str(e))


def fsync_dir(path: Path) -> None:
    """fsync a directory so that the entries made in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files are fsynced as they are closed)."""
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    for d in reversed(dirs):  # children first, then the parents that name them
        fsync_dir(d)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove staging directories in ``parent`` left by crashed saves; return them."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING_RE.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        try:
            ours = (path / MARKER).is_file() or not any(path.iterdir())
        except OSError:
            continue
        if ours:
            _remove_staging(path)
            removed.append(path)
    return removed


def _remove_staging(path: Path) -> None:
    """Delete a staging directory, its marker last, so a crash midway leaves it recognisable."""
    for child in path.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (path / MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _write_marker(path: Path) -> None:
    with open(path / MARKER, "wb") as f:
        f.write(b"amber staging directory; safe to delete if no save is running\n")


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """Create a staging directory beside ``target`` and remove it if the block fails.

    :raises CheckpointWriteError: the parent cannot be created or written.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        tmp = parent / f".{target.name}.amber-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        _write_marker(tmp)
    except OSError as e:
        raise CheckpointWriteError(
            f"cannot create a checkpoint in {parent}: {describe(e)}", path=target
        ) from e
    try:
        yield tmp
    except BaseException:
        if (tmp / MARKER).exists():
            _remove_staging(tmp)
        else:  # failed during commit, after the marker was removed
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    """libc's renameat2, or None where there is none (looked up once: it spawns ldconfig)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _check_replaceable(target: Path) -> None:
    if target.is_symlink() or not target.is_dir():
        raise CheckpointWriteError(
            f"{target} exists and is not a directory; not overwriting it", path=target
        )
    names = {p.name for p in target.iterdir()}
    if names and "checkpoint.json" not in names:
        raise CheckpointWriteError(
            f"{target} is a non-empty directory that is not an amber checkpoint; "
            "not overwriting it (choose an empty or new directory)",
            path=target,
        )


def _unmark(tmp: Path) -> None:
    """Drop the staging marker just before the rename that commits ``tmp``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp / MARKER)


def commit(tmp: Path, target: Path) -> None:
    """Move the finished staging directory ``tmp`` to ``target`` atomically.

    An existing empty directory or amber checkpoint at ``target`` is replaced
    as a whole; anything else there is left alone and the save fails.

    :raises CheckpointWriteError: ``target`` holds something that is not ours.
    """
    fsync_tree(tmp)
    _renameat2()  # look it up now, not between removing the marker and the swap
    for _ in range(3):
        if not os.path.lexists(target):
            try:
                _unmark(tmp)
                os.rename(tmp, target)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another saver got there first: swap with theirs
        _check_replaceable(target)
        _unmark(tmp)
        if _exchange(tmp, target):
            _write_marker(tmp)  # tmp now holds the old checkpoint
            _remove_staging(tmp)
            break
        # No atomic exchange here: move the old one aside first (a crash in
        # between leaves it beside the target under a hidden name).
        _write_marker(tmp)
        aside = target.parent / f".{target.name}.amber-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, aside)
        _unmark(tmp)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
        break
    else:
        raise CheckpointWriteError(f"{target} kept changing during the save", path=target)
    fsync_dir(target.parent)
