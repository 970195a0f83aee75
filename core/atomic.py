"""Atomic directory commits: stage in a temporary sibling, fsync, rename into place.

A save writes everything into ``.<name>.amber-tmp-<pid>-<rand>`` beside the
target, fsyncs every file and directory (all at once, from a few threads:
on virtual disks each fsync costs milliseconds, and they overlap well), then
renames the staging directory onto the target. Saving over an existing checkpoint swaps the two
directories in one ``renameat2(RENAME_EXCHANGE)`` call on Linux, so at every
instant the path holds either the old checkpoint or the new one.

Before the staging directory is made, a marker file of the same name plus
``.marker`` is created beside it, and it is removed only after the staging
directory is gone (renamed into place, or deleted with the old checkpoint
it was swapped with). So a crash at any instant leaves every stray staging
directory next to its marker. Later saves into the same parent remove a
staging directory only when its marker is there and the process named in
it no longer runs. Nothing else is ever deleted.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import errno
import functools
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from amber.errors import CheckpointWriteError

__all__ = ["MARKER_SUFFIX", "commit", "fsync_dir", "fsync_on_close", "fsync_tree", "is_temporary", "staging"]

MARKER_SUFFIX = ".marker"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.amber-tmp-(?P<pid>\d+)-[0-9a-f]{8}(?P<marker>\.marker)?$")
_ASIDE_RE = re.compile(r"^\..+\.amber-old-\d+-[0-9a-f]{8}$")
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


def _fsync_path(path: str) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The most fsyncs issued at once.
_FSYNC_THREADS = 8


def fsync_tree(root: Path, *, files: bool = False) -> None:
    """fsync every directory under ``root``, and with ``files`` every file too.

    Several at once, from a few threads: each must be durable before the
    tree is renamed into place, and their order does not matter.
    """
    jobs: list[str] = []
    for d, _, names in os.walk(root):
        if files:
            jobs.extend(os.path.join(d, n) for n in names)
        jobs.append(d)
    if len(jobs) <= 2:
        for job in jobs:
            _fsync_path(job)
        return
    with ThreadPoolExecutor(min(_FSYNC_THREADS, len(jobs)), thread_name_prefix="amber-fsync") as pool:
        for _ in pool.map(_fsync_path, jobs):  # re-raises the first failure
            pass


_IN_STAGING = contextvars.ContextVar("amber_in_staging", default=False)


def fsync_on_close() -> bool:
    """Whether a file the engine closes now must fsync itself: not inside :func:`staging`,
    whose :func:`commit` fsyncs the whole tree at once."""
    return not _IN_STAGING.get()


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


def _marker(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + MARKER_SUFFIX)


def is_temporary(name: str) -> bool:
    """Whether a directory entry is a save's staging directory, its marker, or a set-aside old
    checkpoint: never a checkpoint of its own."""
    return bool(_STAGING_RE.match(name) or _ASIDE_RE.match(name))


def remove_stale(parent: Path) -> list[Path]:
    """Remove staging directories (and markers) in ``parent`` left by crashed saves; return them."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING_RE.match(entry.name)
        if not m or not m["marker"] or entry.is_dir(follow_symlinks=False) or _pid_alive(int(m["pid"])):
            continue
        marker = Path(entry.path)
        tmp = marker.with_name(marker.name[: -len(MARKER_SUFFIX)])
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        if not tmp.exists():
            marker.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def staging(target: Path) -> Iterator[Path]:
    """Create a staging directory (and its marker) beside ``target``; remove both if the block fails.

    :raises CheckpointWriteError: the parent cannot be created or written.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        tmp = parent / f".{target.name}.amber-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(_marker(tmp), "xb") as f:
            f.write(b"amber: a save is staging the directory of the same name\n")
        tmp.mkdir()
    except OSError as e:
        raise CheckpointWriteError(
            f"cannot create a checkpoint in {parent}: {describe(e)}", path=target
        ) from e
    token = _IN_STAGING.set(True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _marker(tmp).unlink(missing_ok=True)
        raise
    finally:
        _IN_STAGING.reset(token)


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


def commit(tmp: Path, target: Path) -> None:
    """Move the finished staging directory ``tmp`` to ``target`` atomically.

    An existing empty directory or amber checkpoint at ``target`` is replaced
    as a whole; anything else there is left alone and the save fails.

    :raises CheckpointWriteError: ``target`` holds something that is not ours.
    """
    fsync_tree(tmp, files=True)  # everything durable before the rename makes it visible
    _renameat2()  # looked up once, before anything is moved
    for _ in range(3):
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another saver got there first: swap with theirs
        _check_replaceable(target)
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old checkpoint
            break
        # No atomic exchange here: move the old one aside first (a crash in
        # between leaves it beside the target under a hidden name).
        aside = target.parent / f".{target.name}.amber-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
        break
    else:
        raise CheckpointWriteError(f"{target} kept changing during the save", path=target)
    fsync_dir(target.parent)
    _marker(tmp).unlink(missing_ok=True)
