"""Verified file I/O: every file of a checkpoint is written and read with its size and digest.

Writers go through :class:`amber.verified_write.HashingFile` (and a format through
:class:`amber.verified_write.Sink`), which hashes and counts the bytes as they are written;
readers go through :func:`read_verified` (and a format through :class:`Source`), which checks
a file's size and digest before handing its bytes on. Readers follow no symbolic link and open
nothing but regular files and directories, and never block: a FIFO, socket or device is refused
before it is opened (:func:`open_nofollow`). :mod:`amber.layout` builds the manifests from these.

A save over a checkpoint swaps directories (:mod:`amber.atomic`): within :func:`pinned`, files are
opened relative to one descriptor of the checkpoint's directory; a file that fails its check because
the checkpoint was replaced meanwhile raises :class:`ChangedWhileReadError`, not a corruption.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.digest import CHUNK_BYTES, Hasher, hash_file, new_hasher, parse_digest
from amber.errors import ChangedWhileReadError, CorruptCheckpointError

if TYPE_CHECKING:
    from amber.layout import Manifest

__all__ = [
    "ALIGN",
    "MANIFEST",
    "ChangedWhileReadError",
    "FileEntries",
    "FileEntry",
    "Source",
    "check_file",
    "corrupt",
    "describe_mode",
    "open_nofollow",
    "open_regular",
    "pinned",
    "read_fd",
    "read_verified",
]

#: The manifest's file name, in every directory level of a checkpoint (see :mod:`amber.layout`).
MANIFEST = "checkpoint.json"
#: Buffers returned by :func:`read_verified` start at a multiple of this many bytes (unless asked not to).
ALIGN = 64


@dataclass(frozen=True)
class FileEntry:
    """A file's record in a manifest."""

    size: int
    digest: str


class FileEntries(Mapping[str, FileEntry]):
    """A manifest's ``files`` (read-only) over its JSON object, once checked: an entry becomes a
    :class:`FileEntry` when it is looked up (a subset restore looks up a few of hundreds)."""

    __slots__ = ("_listed",)

    def __init__(self, listed: Mapping[str, Mapping[str, Any]]) -> None:
        self._listed = listed

    def __getitem__(self, rel: str) -> FileEntry:
        entry = self._listed[rel]
        return FileEntry(entry["size"], entry["digest"])

    def __contains__(self, rel: object) -> bool:
        return rel in self._listed

    def __iter__(self) -> Iterator[str]:
        return iter(self._listed)

    def __len__(self) -> int:
        return len(self._listed)


def corrupt(path: Path, why: str) -> CorruptCheckpointError:
    """A :class:`CorruptCheckpointError` naming ``path``."""
    return CorruptCheckpointError(f"{path}: {why}", path=path)


#: How a reader opens each directory on the way to a file and the file itself: never through a
#: link, and never waiting (a FIFO opened for reading blocks until a writer comes).
_DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
_FILE_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))


def describe_mode(mode: int) -> str:
    """What kind of directory entry ``mode`` (from ``stat``) is, in words."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _os_error(path: Path, e: OSError | ValueError, doing: str) -> CorruptCheckpointError:
    """The :class:`CorruptCheckpointError` for a failed ``lstat``/``open`` of ``path``."""
    if isinstance(e, FileNotFoundError):
        return corrupt(path, "file is missing")
    if isinstance(e, UnicodeError):
        return corrupt(path, "its name cannot be encoded for the file system (a lone surrogate)")
    if isinstance(e, ValueError):
        return corrupt(path, f"its name is not a valid file name ({e})")
    if e.errno == errno.ELOOP:
        return corrupt(path, "is a symbolic link; checkpoints may not contain links")
    return corrupt(path, f"cannot be {doing}: {e.strerror or e}")


def _step(dir_fd: int, name: str, where: Callable[[], Path], last: bool) -> int:
    """Open the entry ``name`` of the directory ``dir_fd``: a directory, or with ``last`` a regular
    file; its type is checked before it is opened and again on the open descriptor. ``where()``
    is its path, made only for an error's message."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except (OSError, ValueError) as e:
        raise _os_error(where(), e, "read") from e
    if stat.S_ISLNK(mode):
        raise corrupt(where(), "is a symbolic link; checkpoints may not contain links")
    want, check = ("a regular file", stat.S_ISREG) if last else ("a directory", stat.S_ISDIR)
    if not check(mode):  # a FIFO, socket or device is never opened: opening one can block or act
        raise corrupt(where(), f"is {describe_mode(mode)}, not {want}; refused before reading")
    try:
        fd = os.open(name, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=dir_fd)
    except (OSError, ValueError) as e:
        raise _os_error(where(), e, "opened") from e
    mode = os.fstat(fd).st_mode
    if not check(mode):  # replaced between the two looks
        os.close(fd)
        raise corrupt(where(), f"is {describe_mode(mode)}, not {want}; refused before reading")
    return fd


def _parts(rel: str) -> tuple[str, ...]:
    """``PurePosixPath(rel).parts``, quickly for a path in normal form (as a manifest lists)."""
    parts = rel.split("/")
    if "" in parts or "." in parts:  # pathlib drops these (and keeps a leading "/")
        return PurePosixPath(rel).parts
    return tuple(parts)


def open_nofollow(root: Path, rel: str) -> int:
    """Open ``root/rel`` for reading: a regular file, reached through no symlink below ``root``.

    Each directory on the way is opened relative to the one before it, with
    ``O_NOFOLLOW | O_NONBLOCK``, and every entry's type is checked before it is
    opened: a link, FIFO, socket or device is refused and never read from (so
    a FIFO cannot make the reader wait forever). ``root`` itself, the path the
    caller named, may be a link; within :func:`pinned`, the walk starts from the pin.

    :return: a file descriptor the caller closes.
    :raises CorruptCheckpointError: missing, a link, not a regular file, or unreadable (named).
    :raises ChangedWhileReadError: pinned, it failed because the checkpoint was replaced meanwhile.
    """
    parts = _parts(rel)
    if (pin := _pin_of(root)) is not None:  # every component below the pin: no link followed
        root, parts, fd = pin[0], pin[2] + parts, os.dup(pin[1])
    else:
        try:
            fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
        except (OSError, ValueError) as e:
            raise _os_error(root, e, "opened") from e
    try:
        if not parts:
            raise corrupt(root, "is a directory, not a regular file")
        for i, part in enumerate(parts):
            nxt = _step(fd, part, lambda n=i + 1: root.joinpath(*parts[:n]), i == len(parts) - 1)
            os.close(fd)
            fd = nxt
    except CorruptCheckpointError as e:
        os.close(fd)
        if pin is not None and _moved(pin[0], pin[1]):  # (a file its replacement removed)
            raise _changed(e) from e
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


#: The checkpoint directory read within :func:`pinned`, and a descriptor of it.
_PINNED: ContextVar[tuple[Path, int] | None] = ContextVar("amber_pinned_checkpoint", default=None)


@contextlib.contextmanager
def pinned(root: str | os.PathLike[str]) -> Iterator[None]:
    """For the block, every :func:`open_nofollow` at or below ``root`` starts from one descriptor
    of its directory (a link at ``root`` followed once), so the files read are one checkpoint's
    even if a save replaces it meanwhile (one it removed is a :class:`ChangedWhileReadError`).
    A ``root`` that cannot be opened pins nothing: the reader names what is wrong."""
    try:
        fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    except (OSError, ValueError):
        yield  # (nothing pinned)
        return
    token = _PINNED.set((Path(root), fd))
    try:
        yield
    finally:
        _PINNED.reset(token)
        os.close(fd)


def _pin_of(root: Path) -> tuple[Path, int, tuple[str, ...]] | None:
    """The pinned checkpoint at or above ``root``: its path, its descriptor, ``root``'s parts below."""
    if (pin := _PINNED.get()) is None or not (root == pin[0] or pin[0] in Path(root).parents):
        return None
    inner = Path(root).relative_to(pin[0]).parts
    return None if ".." in inner else (*pin, inner)


def _replaced(root: Path, rel: str, entry: FileEntry, listed_in: str) -> bool:
    from amber.read_changed import replaced  # (it reads manifests with this module's functions)

    return replaced(root, rel, entry, listed_in)


def _moved(path: Path, fd: int) -> bool:
    """Whether the directory open as ``fd`` was removed, or is no longer the one at ``path``."""
    mine = os.fstat(fd)
    try:
        now = os.stat(path)
    except (OSError, ValueError):
        return True
    return mine.st_nlink == 0 or (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino)


def _changed(error: CorruptCheckpointError | str) -> ChangedWhileReadError:
    return ChangedWhileReadError(f"the checkpoint changed while it was read (another save replaced it "
                                 f"meanwhile; nothing is damaged): read it again ({error})")


def open_regular(path: Path) -> int:
    """Open one file for reading the way :func:`open_nofollow` does (the directory holding it may
    be a link; the file may not), e.g. a ``model.json`` about to be replaced.

    :raises CorruptCheckpointError: missing, a link, not a regular file, or unreadable (named).
    """
    return open_nofollow(path.parent, path.name)


def read_fd(fd: int, size: int, path: Path, hasher: Hasher | None = None, *,
            aligned: bool = True) -> memoryview:
    """Read exactly ``size`` bytes into a fresh writable buffer, and close ``fd``.

    With ``hasher``, each chunk is hashed right after it is read, while it is
    still in the CPU cache (measurably faster than a second pass).

    :param aligned: the buffer starts at a multiple of :data:`ALIGN` bytes (False: wherever; for a
        small file decoded whole, such as a manifest, a plain buffer is quicker to make).
    """
    return _read_exactly(fd, size, lambda: path, hasher, aligned)


def _read_exactly(fd: int, size: int, where: Callable[[], Path], hasher: Hasher | None,
                  aligned: bool) -> memoryview:
    """:func:`read_fd`, with ``where()`` the file's path, made only for an error's message."""
    if aligned:
        raw = np.empty(size + ALIGN, dtype=np.uint8)
        offset = (-raw.ctypes.data) % ALIGN
        buf = memoryview(raw[offset : offset + size])
    else:
        buf = memoryview(bytearray(size))
    try:
        got = 0
        while got < size:
            n = os.readv(fd, [buf[got : got + CHUNK_BYTES]])
            if not n:
                raise corrupt(where(), f"is truncated: {got} bytes, expected {size}")
            if hasher is not None:
                hasher.update(buf[got : got + n])
            got += n
        if os.read(fd, 1):
            raise corrupt(where(), f"is longer than the {size} bytes recorded")
    finally:
        os.close(fd)
    return buf


def read_verified(root: Path, rel: str, entry: FileEntry, *, aligned: bool = True,
                  listed_in: str = "checkpoint.json") -> memoryview:
    """The bytes of ``root/rel``, checked against its manifest entry.

    :param aligned: as for :func:`read_fd`.
    :param listed_in: the file that records ``entry`` (``model.json`` for an export), for messages.
    :raises CorruptCheckpointError: missing, a link, wrong size or wrong digest.
    :raises ChangedWhileReadError: so, because a save replaced the checkpoint meanwhile.
    """
    try:
        return _read_checked(root, rel, entry, aligned, listed_in)
    except CorruptCheckpointError as e:
        if _replaced(root, rel, entry, listed_in):
            raise _changed(e) from e
        raise


def _read_checked(root: Path, rel: str, entry: FileEntry, aligned: bool, listed_in: str) -> memoryview:
    """:func:`read_verified`, but a replaced checkpoint's file is a CorruptCheckpointError too."""
    fd = open_nofollow(root, rel)
    actual = os.fstat(fd).st_size
    if actual != entry.size:
        os.close(fd)
        raise corrupt(root / rel, f"has {actual} bytes, {listed_in} records {entry.size}")
    algorithm, expected = parse_digest(entry.digest)  # type: ignore[misc]
    h = new_hasher(algorithm)
    buf = _read_exactly(fd, entry.size, lambda: root / rel, h, aligned)
    if h.hexdigest() != expected:
        raise corrupt(root / rel, f"content does not match its digest in {listed_in}")
    return buf


def check_file(root: Path, rel: str, entry: FileEntry) -> str | None:
    """Verify one file by streaming it; return a problem description or None.

    :raises ChangedWhileReadError: it failed because a save replaced the checkpoint meanwhile.
    """
    problem = _check(root, rel, entry)
    if problem is not None and _replaced(root, rel, entry, MANIFEST):
        raise _changed(problem)
    return problem


def _check(root: Path, rel: str, entry: FileEntry) -> str | None:
    path = root / rel
    try:
        fd = open_nofollow(root, rel)
    except CorruptCheckpointError as e:
        return e.message
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            return f"{path}: has {size} bytes, checkpoint.json records {entry.size}"
        algorithm, _ = parse_digest(entry.digest)  # type: ignore[misc]
        size, digest = hash_file(f, algorithm=algorithm)
    if size != entry.size:
        return f"{path}: has {size} bytes, checkpoint.json records {entry.size}"
    if digest != entry.digest:
        return f"{path}: content does not match its digest in checkpoint.json"
    return None


class Source:
    """The engine's :class:`amber.registry.StateSource` over one manifest's files."""

    def __init__(self, manifest: Manifest, stem: str, extension: str) -> None:
        self._manifest = manifest
        self._stem = stem
        self._extension = extension
        #: Who wrote the checkpoint: checkpoint.json's ``python_version``, ``amber_version`` (None: none).
        self.python_version, self.amber_version = (v if isinstance(v := manifest.raw.get(k), str) else None
                                                   for k in ("python_version", "amber_version"))

    @property
    def path(self) -> Path:
        """The main file's path."""
        return self._manifest.directory / f"{self._stem}{self._extension}"

    def _name(self, suffix: str) -> str:
        return f"{self._stem}{suffix or self._extension}"

    def has(self, suffix: str = "") -> bool:
        """Whether the manifest lists ``<stem><suffix>``."""
        return self._name(suffix) in self._manifest.files

    def read(self, suffix: str = "") -> memoryview:
        """The verified bytes of ``<stem><suffix>``."""
        name = self._name(suffix)
        entry = self._manifest.files.get(name)
        if entry is None:
            raise corrupt(self._manifest.directory / name, "is not listed in checkpoint.json")
        return read_verified(self._manifest.directory, name, entry)
