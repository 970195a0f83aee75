"""Durable writes: fsync files and directories, and say in words why a write failed.

A commit (:mod:`amber.atomic`) makes a tree visible only after every file
and directory in it is on disk; this module does the fsyncs, several at
once from a few threads (on virtual disks each costs milliseconds, and they
overlap well).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["describe", "fsync_dir", "fsync_tree", "submit_or_run"]

T = TypeVar("T")


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
    tree is renamed into place, and their order does not matter. During
    interpreter shutdown, which starts no new work in threads, one by one here.
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
        try:
            results = pool.map(_fsync_path, jobs)
        except RuntimeError:  # no new threads once the interpreter shuts down: fsync them here
            results = None
        if results is not None:
            for _ in results:  # re-raises the first failure
                pass
            return
    for job in jobs:
        _fsync_path(job)


def submit_or_run(pool: Executor, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``pool.submit(fn, *args)``, or, where the pool takes no more work (the interpreter is shutting
    down: a save from an atexit handler, or from a thread it waits for), ``fn(*args)`` run here
    and its outcome returned as a finished future."""
    try:
        return pool.submit(fn, *args)
    except RuntimeError:
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            done.set_exception(e)
        return done
