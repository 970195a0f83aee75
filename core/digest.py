"""File digests recorded in checkpoint.json.

amber records ``"xxh3_128:<hex>"``. The digest detects corruption (bit rot,
truncation, partial copies), not tampering: anyone who can edit a file can
edit checkpoint.json too, which is why the readers never trust content
either (see docs/reliability.md). xxh3-128 was picked by measurement
(benchmarks/digest_speed.py, docs/benchmarks.md): about 8 GB/s against
1.5 GB/s for sha256 and 0.6 GB/s for blake2b on the reference machine, which
is what lets a verified load stay within 1.5x of a raw read. sha256 and
blake2b digests are read too.

Checkpoints in a format that can run code when read are written with BLAKE3
digests instead (:func:`writing_with`; sha256 up to checkpoint version 2.1):
their signature (:mod:`amber.signing`) covers the manifests, and through these
digests every file, so the digest check a verified read does anyway is the
cryptographic one. BLAKE3 was picked by measurement (benchmarks/digest_speed.py):
4.3 GB/s on one core of the reference machine against 1.7 GB/s for sha256.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from operator import itemgetter
from typing import Any, BinaryIO, Protocol

import blake3
import xxhash

from amber.scoped import scoped

__all__ = [
    "CRYPTOGRAPHIC",
    "DEFAULT_ALGORITHM",
    "Hasher",
    "all_well_formed",
    "canonical_members",
    "format_digest",
    "hash_file",
    "is_cryptographic",
    "json_digest",
    "load_json",
    "members_digest",
    "new_hasher",
    "parse_digest",
    "writing_with",
]

DEFAULT_ALGORITHM = "xxh3_128"
#: The algorithms whose digests resist forgery (xxh3 only detects damage).
CRYPTOGRAPHIC = frozenset({"blake3", "sha256", "blake2b"})
#: How many bytes :func:`hash_file` reads at a time.
CHUNK_BYTES = 4 << 20


class Hasher(Protocol):
    """The part of hashlib's interface amber uses."""

    def update(self, data: Any, /) -> None: ...  # noqa: D102

    def hexdigest(self) -> str: ...  # noqa: D102


def _blake3() -> Hasher:
    return _Blake3(blake3.blake3())  # one thread: saves already hash beside their writes


class _Blake3:
    """A BLAKE3 hasher under the name the digests record (``blake3`` objects have no ``name``)."""

    name = "blake3"
    __slots__ = ("_h",)

    def __init__(self, h: Any) -> None:
        self._h = h

    def update(self, data: Any, /) -> None:  # noqa: D102
        self._h.update(data)

    def hexdigest(self) -> str:  # noqa: D102
        return str(self._h.hexdigest())


_FACTORIES = {
    "xxh3_128": xxhash.xxh3_128,
    "blake3": _blake3,
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
}
_HEX_LENGTHS = {"xxh3_128": 32, "blake3": 64, "sha256": 64, "blake2b": 128}
_HEX = re.compile("[0-9a-f]+")


def _lines_of(algorithms: Collection[str]) -> re.Pattern[str]:
    """Lines ``<algorithm>:<hex>``, each a digest of ``algorithms`` that :func:`parse_digest` accepts."""
    one = "|".join(f"{re.escape(a)}:[0-9a-f]{{{_HEX_LENGTHS[a]}}}" for a in sorted(algorithms))
    return re.compile(f"(?:(?:{one})\n)*")


#: Every digest, or every cryptographic one, one per line (what :func:`all_well_formed` matches).
_WELL_FORMED_LINES = _lines_of(_FACTORIES)
_CRYPTOGRAPHIC_LINES = _lines_of(CRYPTOGRAPHIC & _FACTORIES.keys())
#: The algorithm of hashers made without naming one (see :func:`writing_with`).
_CURRENT = contextvars.ContextVar("amber_digest_algorithm", default=DEFAULT_ALGORITHM)


def writing_with(algorithm: str) -> AbstractContextManager[None]:
    """Inside the block, hashers made without naming an algorithm (a :class:`Sink`'s files) use
    ``algorithm``; ``KeyError`` if unknown."""
    _FACTORIES[algorithm]  # noqa: B018 - an unknown name fails here, not in the block
    return scoped(_CURRENT, algorithm)


def new_hasher(algorithm: str | None = None) -> Hasher:
    """A fresh hasher for ``algorithm`` (default: :data:`DEFAULT_ALGORITHM`, or the one of
    :func:`writing_with`); ``KeyError`` if unknown."""
    return _FACTORIES[algorithm or _CURRENT.get()]()  # type: ignore[no-any-return]


def _algorithm_of(hasher: Hasher) -> str:
    name = str(getattr(hasher, "name", "")).lower()  # hashlib: "sha256"; xxhash: "XXH3_128"
    return name if name in _FACTORIES else _CURRENT.get()


def format_digest(hasher: Hasher, algorithm: str | None = None) -> str:
    """``"<algorithm>:<hex>"`` for a finished hasher (by default, the hasher's own algorithm)."""
    return f"{algorithm or _algorithm_of(hasher)}:{hasher.hexdigest()}"


def is_cryptographic(digest: object) -> bool:
    """Whether a recorded digest is well formed and of an algorithm that resists forgery."""
    parsed = parse_digest(digest)
    return parsed is not None and parsed[0] in CRYPTOGRAPHIC


def all_well_formed(digests: Collection[object], *, cryptographic: bool = False) -> bool:
    """Whether :func:`parse_digest` accepts every one of ``digests`` (and, with ``cryptographic``,
    :func:`is_cryptographic` too): the answer of checking each, in a few passes over one string.

    A manifest lists a digest per file; this checks a whole manifest's at once.
    """
    if not digests:
        return True
    try:
        joined = "\n".join(digests) + "\n"  # type: ignore[arg-type]
    except TypeError:  # one is not a str
        return False
    if joined.count("\n") != len(digests):  # a digest holding a newline would pass as two lines
        return False
    lines = _CRYPTOGRAPHIC_LINES if cryptographic else _WELL_FORMED_LINES
    return lines.fullmatch(joined) is not None


def parse_digest(value: object) -> tuple[str, str] | None:
    """``(algorithm, hex)`` from a recorded digest, or None if it is malformed or unknown."""
    if not isinstance(value, str):
        return None
    algorithm, sep, hexpart = value.partition(":")
    if not sep or algorithm not in _FACTORIES or len(hexpart) != _HEX_LENGTHS[algorithm]:
        return None
    if _HEX.fullmatch(hexpart) is None:
        return None
    return algorithm, hexpart


def hash_file(
    file: str | os.PathLike[str] | int | BinaryIO,
    *,
    fsync: bool = False,
    algorithm: str | None = None,
) -> tuple[int, str]:
    """Stream a file through a hasher, in chunks of :data:`CHUNK_BYTES`.

    :param file: a path (opened and closed here), or an open file descriptor or
        binary file, read from its current position to its end and left open.
    :param fsync: also fsync the file (a file just written that must be durable).
    :param algorithm: the digest algorithm (``KeyError`` if unknown; default as :func:`new_hasher`).
    :return: ``(size, "<algorithm>:<hex>")``, the size being the bytes read.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return hash_file(f, fsync=fsync, algorithm=algorithm)
    if isinstance(file, int):
        with os.fdopen(file, "rb", closefd=False) as f:
            return hash_file(f, fsync=fsync, algorithm=algorithm)
    algorithm = algorithm or _CURRENT.get()
    h = new_hasher(algorithm)
    size = 0
    while chunk := file.read(CHUNK_BYTES):
        h.update(chunk)
        size += len(chunk)
    if fsync:
        os.fsync(file.fileno())
    return size, format_digest(h, algorithm)


# -- The digest of a JSON document (a checkpoint.json's own: amber.layout) -----------------------

#: Serialises as :func:`json_digest` does (JSON read from a file holds no cycle to look for).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)


def json_digest(content: Mapping[str, Any]) -> str:
    """The digest of ``content`` serialised with sorted keys, no spaces, non-ASCII escaped (in the
    algorithm of :func:`new_hasher`): what a manifest records of itself."""
    h = new_hasher()
    h.update(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return format_digest(h)


def canonical_members(content: Mapping[str, Any]) -> dict[str, str]:
    """Each member of ``content`` (a JSON object: str keys) as the text ``"key":value`` that
    :func:`json_digest` serialises it to, in key order: joined by commas inside braces, they are
    that serialisation, from which a signature's MAC (:mod:`amber.signing`) leaves some out."""
    encode = _CANONICAL.encode
    return {key: f"{encode_basestring_ascii(key)}:{_file_entries_text(content[key]) or encode(content[key])}"
            for key in sorted(content)}


#: The characters JSON writes as they are (printable ASCII but the quote and the backslash).
_WRITTEN_AS_IS = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _file_entries_text(value: Any) -> str | None:
    """The canonical text of a manifest's file list (path to ``{"digest": str, "size": int}``),
    written out directly (about 40 % quicker than the encoder for a hundred files). None for
    any other value, or one with a string JSON would escape (the encoder then writes it)."""
    if type(value) is not dict or not value:
        return None
    entries = list(value.values())
    try:
        if set(map(type, entries)) != {dict} or set(map(len, entries)) != {2}:
            return None
        digests = list(map(itemgetter("digest"), entries))
        sizes = list(map(itemgetter("size"), entries))
        if set(map(type, digests)) != {str} or set(map(type, sizes)) != {int}:  # (a bool is no int)
            return None
        plain = "".join(value) + "".join(digests)  # every string written: as is, if nothing escapes
    except (KeyError, TypeError):
        return None
    if not plain.isascii() or plain.encode("ascii").translate(None, _WRITTEN_AS_IS):
        return None
    return "{" + ",".join([f'"{path}":{{"digest":"{digest}","size":{size}}}'
                           for path, digest, size in sorted(zip(value, digests, sizes, strict=True))]) + "}"


def members_digest(members: Mapping[str, str]) -> str:
    """:func:`json_digest` of the content whose :func:`canonical_members` are ``members``."""
    h = new_hasher()
    h.update(("{" + ",".join(members.values()) + "}").encode("ascii"))
    return format_digest(h)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key came twice: name the first one repeated
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return out


def load_json(text: str) -> tuple[Any, dict[str, str] | None]:
    """The JSON value of ``text``, refusing duplicate keys (``ValueError`` naming the first), and,
    for an object, its :func:`canonical_members` (None: not made here).

    ``json.loads`` alone keeps the last of duplicate keys; the members show whether it dropped
    any. In a text without a backslash every string holds the characters written, and the
    members hold every key and value kept, each string's colons as written: the text holds
    more colons than the members exactly when some member was dropped (each held a colon of
    its own). Any other text is parsed again, each object checked as it is read: a duplicate
    or any other error is then raised just as a single checked parse raises it.
    """
    try:
        value = json.loads(text)
        if type(value) is dict and "\\" not in text:
            members = canonical_members(value)
            if text.count(":") == sum(member.count(":") for member in members.values()):
                return value, members
    except (ValueError, RecursionError):
        pass  # the checked parse below raises the error a checked parse raises
    return json.loads(text, object_pairs_hook=_no_duplicates), None
