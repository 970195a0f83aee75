"""File digests recorded in checkpoint.json.

amber records ``"xxh3_128:<hex>"``. The digest detects corruption (bit rot,
truncation, partial copies), not tampering: anyone who can edit a file can
edit checkpoint.json too, which is why the readers never trust content
either (see docs/reliability.md). xxh3-128 was picked by measurement
(benchmarks/digest_speed.py, docs/benchmarks.md): about 8 GB/s against
1.5 GB/s for sha256 and 0.6 GB/s for blake2b on the reference machine, which
is what lets a verified load stay within 1.5x of a raw read. sha256 and
blake2b digests are read too.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, BinaryIO, Protocol

import xxhash

__all__ = ["DEFAULT_ALGORITHM", "Hasher", "format_digest", "hash_file", "new_hasher", "parse_digest"]

DEFAULT_ALGORITHM = "xxh3_128"
#: How many bytes :func:`hash_file` reads at a time.
CHUNK_BYTES = 4 << 20


class Hasher(Protocol):
    """The part of hashlib's interface amber uses."""

    def update(self, data: Any, /) -> None: ...  # noqa: D102

    def hexdigest(self) -> str: ...  # noqa: D102


_FACTORIES = {
    "xxh3_128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
}
_HEX_LENGTHS = {"xxh3_128": 32, "sha256": 64, "blake2b": 128}


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Hasher:
    """A fresh hasher for ``algorithm`` (``KeyError`` if unknown)."""
    return _FACTORIES[algorithm]()  # type: ignore[no-any-return]


def format_digest(hasher: Hasher, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """``"<algorithm>:<hex>"`` for a finished hasher."""
    return f"{algorithm}:{hasher.hexdigest()}"


def parse_digest(value: object) -> tuple[str, str] | None:
    """``(algorithm, hex)`` from a recorded digest, or None if it is malformed or unknown."""
    if not isinstance(value, str):
        return None
    algorithm, sep, hexpart = value.partition(":")
    if not sep or algorithm not in _FACTORIES or len(hexpart) != _HEX_LENGTHS[algorithm]:
        return None
    if any(c not in "0123456789abcdef" for c in hexpart):
        return None
    return algorithm, hexpart


def hash_file(
    file: str | os.PathLike[str] | int | BinaryIO,
    *,
    fsync: bool = False,
    algorithm: str = DEFAULT_ALGORITHM,
) -> tuple[int, str]:
    """Stream a file through a hasher, in chunks of :data:`CHUNK_BYTES`.

    :param file: a path (opened and closed here), or an open file descriptor or
        binary file, read from its current position to its end and left open.
    :param fsync: also fsync the file (a file just written that must be durable).
    :param algorithm: the digest algorithm (``KeyError`` if unknown).
    :return: ``(size, "<algorithm>:<hex>")``, the size being the bytes read.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return hash_file(f, fsync=fsync, algorithm=algorithm)
    if isinstance(file, int):
        with os.fdopen(file, "rb", closefd=False) as f:
            return hash_file(f, fsync=fsync, algorithm=algorithm)
    h = new_hasher(algorithm)
    size = 0
    while chunk := file.read(CHUNK_BYTES):
        h.update(chunk)
        size += len(chunk)
    if fsync:
        os.fsync(file.fileno())
    return size, format_digest(h, algorithm)
