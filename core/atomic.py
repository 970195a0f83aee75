"""Atomic commits: stage in a temporary directory, fsync, rename into place.

Every write of the engine (a checkpoint, an export) goes through one
protocol. :func:`staging` makes a staging directory
``.<name>.amber-tmp-<pid>-<rand>`` and, before it, a marker file of the same
name plus ``.marker``; the marker is removed only after the staging directory
is gone. So a crash at any instant leaves every stray staging directory next
to its marker, and later stagings in the same directory remove one only when
its marker is there and its writer is proven gone (:mod:`amber.stale`: the
marker records the host, boot and PID namespace of the writer). Nothing else
is ever deleted.

Then one of two commits makes the result visible, after fsyncing every file
and directory of it (all at once, from a few threads: on virtual disks each
fsync costs milliseconds, and they overlap well):

- :func:`commit` (a checkpoint): the staging directory sits beside the target
  and is renamed onto it. Saving over an existing checkpoint swaps the two
  directories in one ``renameat2(RENAME_EXCHANGE)`` call on Linux, so at every
  instant the path holds either the old checkpoint or the new one. Only an
  empty directory or an amber checkpoint is ever replaced
  (:func:`check_replaceable`, checked before staging and again at the commit):
  anything else at the target fails the save and is left as it was.
- :func:`commit_entries` (an export): the staging directory sits inside the
  target directory, which may hold other files of the user's; the named
  entries are moved into it one by one, the one marking the set complete
  last, and a failed move puts back what was there.

Inside another staging (an export written into a checkpoint being saved),
the inner commit leaves the fsyncs to the outer one.
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
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from amber.durable import describe, fsync_dir, fsync_tree
from amber.errors import CheckpointError, CheckpointWriteError
from amber.stale import MARKER_SUFFIX, marker_text, pid_alive, remove_stale
from amber.stale import STAGING_RE as _STAGING_RE

__all__ = [
    "MARKER_SUFFIX",
    "check_replaceable",
    "commit",
    "commit_entries",
    "fsync_on_close",
    "guarded",
    "is_temporary",
    "pid_alive",
    "remove_entry",
    "remove_stale",
    "staging",
]

_ASIDE_RE = re.compile(r"^\..+\.amber-(?:old|del)-\d+-[0-9a-f]{8}$")  # set aside; being deleted
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


#: How many :func:`staging` blocks the current context is inside.
_STAGING_DEPTH = contextvars.ContextVar("amber_staging_depth", default=0)


def fsync_on_close() -> bool:
    """Whether a file the engine closes now must fsync itself: not inside :func:`staging`,
    whose commit fsyncs the whole tree at once."""
    return _STAGING_DEPTH.get() == 0


def _marker(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + MARKER_SUFFIX)


def is_temporary(name: str) -> bool:
    """Whether a directory entry is a save's staging directory, its marker, a set-aside old
    checkpoint, or one being deleted (:mod:`amber.checkpoint_manager`): never a checkpoint of its own."""
    return bool(_STAGING_RE.match(name) or _ASIDE_RE.match(name))


@contextlib.contextmanager
def staging(
    target: Path,
    *,
    inside: bool = False,
    what: str = "a checkpoint",
    error: Callable[..., CheckpointError] = CheckpointWriteError,
) -> Iterator[Path]:
    """Create a staging directory (and its marker) for ``target``; remove both when the block ends.

    Stale staging directories of crashed writers in the same directory are removed first.
    Staging beside ``target``, what is there is checked first (:func:`check_replaceable`).

    :param target: what the staging directory will become (:func:`commit`) or
        be moved into (:func:`commit_entries`).
    :param inside: stage inside ``target`` (an existing directory) rather than beside it.
    :param what: what is written, for the message of a failure.
    :param error: the error raised when the staging directory cannot be made,
        called as ``error(message, path=target)``.
    :raises CheckpointWriteError: (or ``error``) the directory cannot be created or written;
        ``target`` holds something that is not an amber checkpoint.
    """
    try:
        os.fsencode(target)
    except UnicodeError as e:  # a lone surrogate: no file system can hold the name
        raise error(f"{what} cannot be written to {target!r}: the name cannot be encoded for the "
                    f"file system ({e.reason})", path=target) from e
    parent = target if inside else target.parent
    if not inside:  # refused before anything is written; commit checks again
        check_replaceable(target)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent)
        tmp = parent / f".{target.name}.amber-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(_marker(tmp), "xb") as f:
            f.write(marker_text())
        tmp.mkdir()
    except OSError as e:
        raise error(f"cannot create {what} in {parent}: {describe(e)}", path=target) from e
    token = _STAGING_DEPTH.set(_STAGING_DEPTH.get() + 1)
    try:
        yield tmp
    finally:
        _STAGING_DEPTH.reset(token)
        # Committed: nothing is left to remove. Failed: the staging directory, then its marker.
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
            _marker(tmp).unlink(missing_ok=True)


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


def check_replaceable(target: Path) -> None:
    """Refuse to replace ``target`` unless it is missing, an empty directory or an amber checkpoint.

    An amber checkpoint is a directory whose ``checkpoint.json`` reads as an
    amber manifest (a regular file, valid, its own digest matching) and which
    holds nothing that manifest (or, in a policy's folder, that policy's) does not list. Another tool's
    ``checkpoint.json``, a directory with files of its own, a file, a link, a
    FIFO... are refused, and left as they were. So is a checkpoint of a newer
    amber, whose manifest this one cannot verify.

    :raises CheckpointWriteError: ``target`` holds something that is not ours (named).
    """
    from amber.layout import manifest_changed, read_manifest, unlisted_entries  # (the layout is above)
    from amber.verified_io import describe_mode

    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise CheckpointWriteError(
            f"{target} exists and is {describe_mode(mode)}, not a checkpoint directory; not overwriting it",
            path=target,
        )
    names = os.listdir(target)
    if not names:
        return
    manifest = None
    try:
        manifest = read_manifest(target)
        extra = unlisted_entries(target, manifest)  # its policies' folders too
    except CheckpointError as e:
        if manifest is not None and manifest_changed(target, manifest):
            return  # another amber save committed there while we looked: an amber checkpoint
        raise CheckpointWriteError(
            f"{target} is neither empty nor an amber checkpoint ({e.message}); not overwriting it "
            "(choose an empty or new directory)",
            path=target,
        ) from e
    if extra and not manifest_changed(target, manifest):  # (a save committing meanwhile: ours)
        shown = ", ".join(repr(n) for n in extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise CheckpointWriteError(
            f"{target} is an amber checkpoint holding files that its checkpoint.json does not list "
            f"({shown}); not overwriting it (move them, or choose an empty or new directory)",
            path=target,
        )


#: Checks a commit to a path runs right before it renames (:func:`guarded`): (real path, check).
_GUARDS: contextvars.ContextVar[tuple[tuple[str, Callable[[], None]], ...]] = contextvars.ContextVar(
    "amber_commit_guards", default=())


@contextlib.contextmanager
def guarded(target: Path, check: Callable[[], None]) -> Iterator[None]:
    """Within the block, a :func:`commit` to ``target`` calls ``check`` after its fsyncs, right
    before it renames; ``check`` raises to refuse the commit (a rewrite in place refuses to undo
    a save another process committed there meanwhile)."""
    token = _GUARDS.set((*_GUARDS.get(), (os.path.realpath(target), check)))
    try:
        yield
    finally:
        _GUARDS.reset(token)


def _check_guards(target: Path, expect: Callable[[], None] | None) -> None:
    if expect is not None:
        expect()
    guards = _GUARDS.get()
    if guards:
        here = os.path.realpath(target)
        for path, check in guards:
            if path == here:
                check()


def commit(tmp: Path, target: Path, *, expect: Callable[[], None] | None = None) -> None:
    """Move the finished staging directory ``tmp`` to ``target`` atomically.

    An existing empty directory or amber checkpoint at ``target`` is replaced
    as a whole; anything else there is left alone and the save fails
    (:func:`check_replaceable`).

    :param expect: called after the fsyncs, right before the rename (as the checks of
        :func:`guarded` are): it raises to refuse the commit, nothing moved.
    :raises CheckpointWriteError: ``target`` holds something that is not ours.
    """
    fsync_tree(tmp, files=True)  # everything durable before the rename makes it visible
    _renameat2()  # looked up once, before anything is moved
    for _ in range(3):
        _check_guards(target, expect)
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another saver got there first: swap with theirs
        check_replaceable(target)
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


def remove_entry(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def commit_entries(tmp: Path, target: Path, names: Sequence[str], *, remove: Sequence[str] = ()) -> None:
    """Move the entries ``names`` of the finished staging directory ``tmp`` into ``target``, in order.

    Each replaces what ``target`` held under its name; if a move fails, the
    entries already moved are taken out again and what they replaced is put
    back. Put the entry that marks the set complete (a manifest) last. Then
    the entries ``remove`` are deleted from ``target``; its other entries are
    left alone. ``tmp`` (made by :func:`staging` with ``inside=True``) and its
    marker are removed.

    :raises OSError: a move failed; ``target`` holds what it held before.
    """
    durable = _STAGING_DEPTH.get() <= 1  # inside an outer staging, its commit fsyncs everything
    if durable:
        fsync_tree(tmp, files=True)
    trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=tmp))
    done: list[tuple[str, bool]] = []
    try:
        for name in names:
            dst = target / name
            had = os.path.lexists(dst)
            if had:
                os.replace(dst, trash / name)
            done.append((name, had))
            os.replace(tmp / name, dst)
    except OSError:
        for name, had in reversed(done):  # put back what was there
            if os.path.lexists(target / name):
                remove_entry(target / name)
            if had:
                os.replace(trash / name, target / name)
        raise
    if durable:
        fsync_dir(target)
    for name in remove:
        remove_entry(target / name)
    if remove and durable:
        fsync_dir(target)
    shutil.rmtree(tmp, ignore_errors=True)
    _marker(tmp).unlink(missing_ok=True)
