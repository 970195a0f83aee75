"""Durable writes: fsync files and directories, and say in words why a write failed.

A commit (:mod:`amber.atomic`) makes a tree visible only after every file
and directory in it is on disk; this module does the fsyncs, several at
once from a few threads (on virtual disks each costs milliseconds, and they
overlap well).
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["describe", "fsync_dir", "fsync_tree"]


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
