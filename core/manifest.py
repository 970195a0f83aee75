"""What a checkpoint.json holds, and the checks every one passes when it is read.

:class:`Manifest` is a parsed checkpoint.json; :func:`validate_manifest` checks
every field of one (types, the file paths it lists, their sizes and digests,
the policy ids); :func:`check_id` is the rule for an id that becomes a
directory name. :mod:`amber.layout` reads and writes manifests with these and
re-exports them.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any

from amber.digest import all_well_formed, is_cryptographic, parse_digest
from amber.errors import InvalidIdError
from amber.verified_io import MANIFEST, FileEntries, FileEntry
from amber.verified_io import corrupt as _corrupt

__all__ = ["CHECKPOINT_TYPES", "HIDDEN_CATEGORIES", "MAX_ID_BYTES", "MAX_ID_LENGTH", "STATE_STEMS",
           "Manifest", "check_id", "hidden_characters", "validate_manifest"]

#: Each checkpoint type's main state file, without its format's extension.
STATE_STEMS = {"Algorithm": "algorithm_state", "Policy": "policy_state", "State": "state"}
CHECKPOINT_TYPES = tuple(STATE_STEMS)
MAX_ID_LENGTH = 128
#: The most bytes an id takes in UTF-8: a file name's limit on common file systems (ext4, APFS,
#: NTFS...), which 128 non-ASCII characters can exceed.
MAX_ID_BYTES = 255


#: Unicode categories refused in ids and in the file names a manifest lists, and escaped by the
#: CLI wherever they come from a checkpoint: control characters (Cc, which holds ESC and C1),
#: format characters (Cf: bidi overrides such as U+202E, zero-width characters), lone
#: surrogates (Cs: no file system can encode them) and the line and paragraph separators (Zl, Zp).
#: Spaces (Zs) are allowed: they show as what they are.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def hidden_characters(text: str) -> list[str]:
    """The characters of ``text`` in :data:`HIDDEN_CATEGORIES`: ones that do not show as
    themselves (or cannot be encoded), each once, in order."""
    if text.isprintable():  # every hidden character is unprintable: the common case is quick
        return []
    return list(dict.fromkeys(c for c in text if unicodedata.category(c) in HIDDEN_CATEGORIES))


def _utf8_size(text: str) -> int:
    """How many bytes ``text`` takes in UTF-8 (a lone surrogate counted as the 3 it would take)."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_id(value: object, *, what: str = "policy id", path: os.PathLike[str] | str | None = None) -> str:
    """Check an id that becomes a directory name; return it.

    Refused: empty, longer than :data:`MAX_ID_LENGTH` characters or :data:`MAX_ID_BYTES`
    bytes in UTF-8 (a file name's limit), ``.``/``..``, a path
    separator, and any character in :data:`HIDDEN_CATEGORIES` (control and
    format characters such as bidi overrides, lone surrogates, line and
    paragraph separators), which could hide or disguise what the id is.

    :raises InvalidIdError: the id is refused; the message says why (with the id escaped).
    """
    why = None
    if not isinstance(value, str):
        why = f"must be a str, not {type(value).__name__}"
    elif not value:
        why = "must not be empty"
    elif len(value) > MAX_ID_LENGTH:
        why = f"is longer than {MAX_ID_LENGTH} characters"
    elif _utf8_size(value) > MAX_ID_BYTES:
        why = f"is longer than {MAX_ID_BYTES} bytes in UTF-8 ({_utf8_size(value)}), a file name's limit"
    elif value in (".", ".."):
        why = "must not be '.' or '..'"
    elif "/" in value or "\\" in value:
        why = "must not contain a path separator"
    elif hidden := hidden_characters(value):
        shown = ", ".join(f"U+{ord(c):04X} ({unicodedata.category(c)})" for c in hidden)
        why = f"must not contain control, format or separator characters or lone surrogates: {shown}"
    if why:
        raise InvalidIdError(f"{what} {value!r} {why}", path=path)
    return value  # type: ignore[return-value]


@dataclass
class Manifest:
    """A parsed checkpoint.json."""

    path: Path
    type: str
    checkpoint_version: str
    format: str
    files: Mapping[str, FileEntry]
    raw: dict[str, Any] = field(repr=False)
    #: True: every file's digest was found cryptographic when the manifest was read, all at once
    #: (False: not known; :func:`amber.signing.weak_digest` then looks at each).
    all_cryptographic: bool = field(default=False, repr=False)
    #: :func:`canonical_members` of ``raw`` as read and checked against its own digest (None: not
    #: known); :mod:`amber.signing` computes the signature's MAC from them.
    members: dict[str, str] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def directory(self) -> Path:
        """The directory this manifest describes."""
        return self.path.parent

    @property
    def state_file(self) -> str:
        """The main state file, relative to :attr:`directory`."""
        return str(self.raw["state_file"])

    @property
    def policy_ids(self) -> list[str]:
        """The policies an Algorithm checkpoint holds (empty for other types)."""
        return list(self.raw.get("policy_ids", []))


def _safe_relpath(rel: object) -> bool:
    """A relative POSIX path in normal form: no empty, ``.`` or ``..`` part, no backslash or NUL."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


#: From how many entries checking them all at once is quicker than one by one.
_AT_ONCE = 8
#: In the paths each put between slashes (``/a/b/`` then ``:`` then ``/c/``...), what only a path
#: :func:`_safe_relpath` refuses makes: a backslash, an empty, ``.`` or ``..`` part (a leading or
#: trailing slash, or an empty path, makes an empty part).
_UNSAFE_IN_WRAPPED = ("\\", "//", "/./", "/../")


def _all_files_valid(listed: dict[str, Any]) -> tuple[FileEntries, bool] | None:
    """:func:`_validate_files`'s answer for a manifest every entry of which it accepts, found in a
    few passes over all of them at once (a manifest lists two files per policy), and whether every
    digest is cryptographic; None when some entry may be refused, which the entry-by-entry check
    then names."""
    if not listed or MANIFEST in listed:
        return None
    try:  # fails for a path that is not a str, an entry that is not an object or lacks a key
        wrapped = "/" + "/:/".join(listed) + "/"
        sizes = list(map(itemgetter("size"), listed.values()))
        digests = list(map(itemgetter("digest"), listed.values()))
    except (TypeError, KeyError):
        return None
    # printable: no hidden character, NUL or newline in any path (the slashes and colons are)
    if not wrapped.isprintable() or any(bad in wrapped for bad in _UNSAFE_IN_WRAPPED):
        return None
    if set(map(type, sizes)) != {int} or min(sizes) < 0:  # (a bool is no int here)
        return None
    crypto = is_cryptographic(digests[0]) and all_well_formed(digests, cryptographic=True)  # one pass
    if not crypto and not all_well_formed(digests):
        return None
    return FileEntries(listed), crypto


def _validate_files(raw: dict[str, Any], path: Path) -> tuple[Mapping[str, FileEntry], bool]:
    """The ``files`` of a manifest: safe relative paths with names that show as themselves; and
    True if every digest was found cryptographic (False: not known)."""
    if len(raw["files"]) >= _AT_ONCE and (valid := _all_files_valid(raw["files"])) is not None:
        return valid
    files: dict[str, FileEntry] = {}
    for rel, entry in raw["files"].items():
        if not _safe_relpath(rel) or rel == MANIFEST:
            raise _corrupt(path, f"lists a file path that leaves the checkpoint: {rel!r}")
        if hidden_characters(rel):  # a lone surrogate cannot even be encoded as a file name
            raise _corrupt(path, "lists a file name with control or format characters or a lone "
                                 f"surrogate: {rel!r}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or entry["size"] < 0
            or parse_digest(entry.get("digest")) is None
        ):
            raise _corrupt(path, f"has a malformed entry for {rel!r}")
        files[rel] = FileEntry(entry["size"], entry["digest"])
    return files, False


def _validate_ids(raw: dict[str, Any], path: Path, files: Mapping[str, Any]) -> None:
    """An Algorithm's ``policy_ids`` (each with its manifest listed), a Policy's ``policy_id``."""
    ids = raw.get("policy_ids", [])
    if not isinstance(ids, list):
        raise _corrupt(path, "'policy_ids' must be a list")
    own = raw.get("policy_id")
    checked = [*ids, *([own] if raw["type"] == "Policy" and own is not None else [])]
    if len(checked) >= _AT_ONCE and _all_ids_valid(checked) and all(
        f"policies/{pid}/{MANIFEST}" in files for pid in ids
    ):
        return
    for pid in checked:
        try:
            check_id(pid, path=path)
        except InvalidIdError as e:
            raise _corrupt(path, e.message) from e
        if pid in ids and f"policies/{pid}/{MANIFEST}" not in files:
            raise _corrupt(path, f"policy {pid!r} has no checkpoint.json among its files")


def _all_ids_valid(ids: list[Any]) -> bool:
    """Whether :func:`check_id` accepts every one of ``ids``, found in a few passes over all at once
    (False: some id may be refused, and checking each one names it)."""
    if not ids:
        return True
    try:
        joined = "".join(ids)
    except TypeError:  # one is not a str
        return False
    if min(map(len, ids)) < 1 or max(map(len, ids)) > MAX_ID_LENGTH:
        return False
    if max(map(len, ids)) * 4 > MAX_ID_BYTES and max(map(_utf8_size, ids)) > MAX_ID_BYTES:
        return False
    return joined.isprintable() and "/" not in joined and "\\" not in joined and not {".", ".."} & set(ids)


def metadata_problem(metadata: Any) -> str | None:
    """Why ``metadata`` is not what every checkpoint.json may record under ``metadata`` (a mapping of
    strings to strings), naming the first bad key; None if it is. A save refuses it before writing
    (:func:`amber.checkpoint_write.check_metadata`), a read refuses a manifest holding it."""
    if not isinstance(metadata, Mapping):
        return f"must map strings to strings, not be a {type(metadata).__name__}"
    for key, value in metadata.items():
        if not isinstance(key, str):
            return f"keys must be strings, not {key!r}"
        if not isinstance(value, str):
            return f"must map strings to strings: {key!r} maps to {type(value).__name__} {value!r}"
    return None


def validate_manifest(raw: Any, path: Path) -> Manifest:
    """The :class:`Manifest` of a parsed checkpoint.json's content ``raw``, every field checked.

    :raises CorruptCheckpointError: a key missing or of the wrong type, an unknown checkpoint
        type, a file path that leaves the checkpoint or shows as something else, a malformed
        entry or digest, a bad policy id (each named, with ``path``).
    """
    if not isinstance(raw, dict):
        raise _corrupt(path, "must hold a JSON object")
    for key, kind in (("type", str), ("checkpoint_version", str), ("format", str),
                      ("state_file", str), ("files", dict)):
        if key not in raw:
            raise _corrupt(path, f"lacks the key {key!r}")
        if not isinstance(raw[key], kind):
            raise _corrupt(path, f"{key!r} must be a {kind.__name__}")
    if raw["type"] not in CHECKPOINT_TYPES:
        raise _corrupt(path, f"unknown checkpoint type {raw['type']!r}")
    files, all_cryptographic = _validate_files(raw, path)
    if raw["state_file"] not in raw["files"]:
        raise _corrupt(path, f"state_file {raw['state_file']!r} is not among its files")
    _validate_ids(raw, path, raw["files"])  # (the same keys, in a dict)
    if "metadata" in raw and (problem := metadata_problem(raw["metadata"])) is not None:
        raise _corrupt(path, f"'metadata' {problem}")
    return Manifest(path, raw["type"], raw["checkpoint_version"], raw["format"], files, raw,
                    all_cryptographic)
