"""Verified writes: every file of a checkpoint is hashed and counted as it is written.

:class:`HashingFile` is a new file that hashes and counts the bytes written to it
(large writes hashed on another thread while they are written) and fsyncs on
close; :class:`Sink` is what a format writes a state through. The entries they
record go into the manifest (:mod:`amber.layout`); :mod:`amber.verified_io` reads
them back, verified.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

from amber.atomic import fsync_on_close
from amber.digest import format_digest, new_hasher
from amber.durable import submit_or_run
from amber.verified_io import MANIFEST, FileEntry

__all__ = ["HashingFile", "Sink"]

#: Writes of at least this many bytes are hashed on another thread, piece by piece, while written.
_OVERLAP_BYTES = 8 << 20
_HASHER: concurrent.futures.ThreadPoolExecutor | None = None
_HASHER_LOCK = threading.Lock()


def _hashing_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that hashes large writes (started on first use)."""
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None:
            _HASHER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amber-hash")
        return _HASHER


class HashingFile(io.RawIOBase):
    """A new file that hashes and counts what is written to it, and fsyncs on close."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._f = open(path, "xb", buffering=0)  # noqa: SIM115 - closed in close()
        self._h = new_hasher()
        self._size = 0
        self.entry: FileEntry | None = None  # type: ignore[assignment]

    def writable(self) -> bool:  # noqa: D102
        return True

    def write(self, b: Any) -> int:  # noqa: D102
        mv = memoryview(b)
        if not mv.c_contiguous:
            raise ValueError("HashingFile.write needs a contiguous buffer")
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        if mv.nbytes < _OVERLAP_BYTES:
            self._h.update(mv)
            self._write_all(mv)
        else:  # hash each piece on the hashing thread while this one writes it (both free the GIL)
            for start in range(0, mv.nbytes, _OVERLAP_BYTES):
                piece = mv[start:start + _OVERLAP_BYTES]
                hashed = submit_or_run(_hashing_thread(), self._h.update, piece)  # (at exit: here)
                try:
                    self._write_all(piece)
                finally:
                    hashed.result()  # the caller may reuse its buffer once write returns
        self._size += mv.nbytes
        return mv.nbytes

    def _write_all(self, mv: memoryview) -> None:
        done = 0
        while done < mv.nbytes:
            done += self._f.write(mv[done:]) or 0

    def close(self) -> None:  # noqa: D102
        if self.closed:
            return
        try:
            if fsync_on_close():  # inside a staging directory, its commit fsyncs every file at once
                os.fsync(self._f.fileno())
        finally:
            self._f.close()
            super().close()
        self.entry = FileEntry(self._size, format_digest(self._h))


class Sink:
    """The engine's :class:`amber.registry.StateSink`: files of one state, recorded in ``files``."""

    def __init__(self, directory: Path, stem: str, extension: str, files: dict[str, FileEntry]) -> None:
        self._directory = directory
        self._stem = stem
        self._extension = extension
        self._files = files
        self._open: list[HashingFile] = []

    @property
    def path(self) -> Path:
        """The main file's path."""
        return self._directory / f"{self._stem}{self._extension}"

    def open(self, suffix: str = "") -> BinaryIO:
        """Open the main file, or the sibling ``<stem><suffix>``, for writing."""
        name = f"{self._stem}{suffix or self._extension}"
        if "/" in name or name in self._files or name == MANIFEST:
            raise ValueError(f"cannot open {name!r} twice or outside the checkpoint")
        f = HashingFile(self._directory / name)
        self._open.append(f)
        self._files[name] = FileEntry(0, "")  # placeholder keeps the order
        return io.BufferedWriter(f, buffer_size=1 << 20)  # type: ignore[return-value]

    def finish(self) -> None:
        """Record every file written (all must be closed)."""
        for f in self._open:
            if not f.closed:
                f.close()
            assert f.entry is not None
            self._files[f.path.name] = f.entry
