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
from typing import Any, Protocol

import xxhash

__all__ = ["DEFAULT_ALGORITHM", "Hasher", "format_digest", "new_hasher", "parse_digest"]

DEFAULT_ALGORITHM = "xxh3_128"


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
