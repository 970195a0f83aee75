"""The ``npz`` format: amber state trees as numpy ``.npz`` archives.

A third-party amber format plugin, shipped as its own distribution
(``amber-npz``) and found through its entry point ``npz`` in the group
``amber``. It uses only amber's public plugin API (:mod:`amber.registry`,
``@amber.hookimpl``).

Layout of ``<stem>.npz``: a zip archive written by :func:`numpy.savez`
(members stored uncompressed). Every array and numpy scalar of the state is
a member ``a<N>.npy``; the member ``__tree__.npy`` is a 1-d ``uint8`` array of
ASCII JSON ``{"format": "amber-npz", "version": 1, "root": NODE}``. A NODE
is a JSON array whose first item is a tag:

=========================  =================================================
``["none"]``               ``None``
``["bool", B]``            ``bool``; B is ``true`` or ``false``
``["int", "D"]``           ``int``; D is its decimal digits (64 bits, exact)
``["float", "H"]``         ``float``; H is the 16 hex digits of its IEEE 754
                           bits (big-endian), so NaN payloads, inf and -0.0
                           survive bit for bit
``["str", S]``             ``str``
``["bytes", "B64"]``       ``bytes``, base64
``["array", "aN"]``        a numpy array, in member ``aN.npy``
``["scalar", "aN"]``       a numpy scalar, as a 0-d array in member ``aN.npy``
``["ref", "NAME"]``        a function or class by its registered name, read
                           back as :class:`amber.state.Ref` (nothing is imported)
``["list", NODE, ...]``    a list or tuple (read back as a list)
``["dict", K, NODE, ...]`` a dict, in key order; K is ``"s:<key>"`` for a str
                           key and ``"i:<digits>"`` for an int key
=========================  =================================================

Reading never unpickles and never imports: the archive must be a zip with
stored members named as above, each member's ``.npy`` header must declare a
numeric or bool dtype whose size matches the member exactly (checked before
any array is allocated), :func:`numpy.load` runs with ``allow_pickle=False``,
and the JSON is validated node by node. Anything else raises
:class:`MalformedNpzError` (a ``ValueError``),
which the engine reports as :class:`amber.errors.CorruptCheckpointError`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import amber
from amber.errors import UnserializableStateError
from amber.migration import CheckpointTrees, Migration
from amber.registry import Capabilities, FormatSpec, StateSink, StateSource
from amber.state import MAX_DEPTH, Ref

__version__ = "0.1.0"

FORMAT_NAME = "npz"
EXTENSION = ".npz"
#: The ``format`` field of the tree document, and its current version.
TREE_FORMAT = "amber-npz"
TREE_VERSION = 1
#: The archive member holding the tree document (``__tree__.npy``).
TREE_MEMBER = "__tree__"
#: What every zip archive (and so every ``.npz``) starts with.
ZIP_MAGIC = b"PK\x03\x04"

ARRAY_KINDS = frozenset("biufc")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_DOUBLE = struct.Struct(">d")
_MEMBER_RE = re.compile(r"(__tree__|a(?:0|[1-9][0-9]{0,8}))\.npy")
_ARRAY_NAME_RE = re.compile(r"a(?:0|[1-9][0-9]{0,8})")
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]{0,19})")
_FLOAT_RE = re.compile(r"[0-9a-f]{16}")
_REF_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,512}")  # a registered name ("amber.PPO", "user:f", "?<lambda>")
_REFERENCE_TYPES = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)

__all__ = [
    "FORMAT_NAME",
    "MalformedNpzError",
    "amber_detect_format",
    "amber_register_formats",
    "read",
    "write",
]


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Encoder:
    """Turns a state tree into tagged JSON nodes, collecting its arrays."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.arrays: dict[str, np.ndarray] = {}

    def fail(self, path: str, why: str) -> UnserializableStateError:
        return UnserializableStateError(
            f"cannot write {path or '(root)'} in format {FORMAT_NAME!r}: {why}",
            path=self.where or None,
            format=FORMAT_NAME,
        )

    def add_array(self, value: np.ndarray, path: str) -> str:
        if value.dtype.kind not in ARRAY_KINDS:
            raise self.fail(
                path, f"numpy dtype {value.dtype} is not numeric or bool; npz stores only those"
            )
        name = f"a{len(self.arrays)}"
        self.arrays[name] = value
        return name

    def node(self, value: Any, path: str, depth: int) -> list[Any]:
        if depth > MAX_DEPTH:
            raise self.fail(path, f"nested deeper than {MAX_DEPTH} levels (or contains itself)")
        # numpy first: np.float64 is a float and np.bool_ is no bool.
        if isinstance(value, np.ndarray):
            if isinstance(value, np.ma.MaskedArray):
                raise self.fail(path, "masked arrays would lose their mask; store data and mask")
            return ["array", self.add_array(np.asarray(value), path)]
        if isinstance(value, np.generic):
            return ["scalar", self.add_array(np.asarray(value), path)]
        if value is None:
            return ["none"]
        if isinstance(value, bool):
            return ["bool", value]
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise self.fail(path, f"int {value} does not fit in 64 bits")
            return ["int", str(int(value))]
        if isinstance(value, float):
            return ["float", _DOUBLE.pack(value).hex()]
        if isinstance(value, str):
            return ["str", str(value)]
        if isinstance(value, bytes):
            return ["bytes", base64.b64encode(value).decode("ascii")]
        if isinstance(value, Ref):
            return ["ref", value.target]
        if isinstance(value, _REFERENCE_TYPES):  # amber names classes and functions before we see them
            raise self.fail(path, f"{getattr(value, '__qualname__', value)!r} has no registered name")
        if isinstance(value, dict):
            out: list[Any] = ["dict"]
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise self.fail(path, f"dict key {key!r} is neither str nor int")
                if isinstance(key, int):
                    if not _INT_MIN <= key <= _INT_MAX:
                        raise self.fail(path, f"int key {key} does not fit in 64 bits")
                    out.append(f"i:{int(key)}")
                else:
                    out.append(f"s:{key}")
                out.append(self.node(item, _child_path(path, key), depth + 1))
            return out
        if isinstance(value, (list, tuple)):
            return ["list"] + [
                self.node(item, _child_path(path, i), depth + 1) for i, item in enumerate(value)
            ]
        raise self.fail(
            path,
            f"values of type {type(value).__module__}.{type(value).__qualname__} are not "
            "state-tree leaves; convert it to arrays/dicts, or save with format='pickle'",
        )


def write(state: Any, sink: StateSink) -> None:
    """Write ``state`` to ``sink``'s main file as one ``.npz`` archive.

    :param state: a state tree (see :mod:`amber.state`).
    :param sink: where to write, given by the engine.
    :raises UnserializableStateError: naming the first key path npz cannot hold.
    """
    encoder = _Encoder(str(sink.path))
    root = encoder.node(state, "", 0)
    document = {"format": TREE_FORMAT, "version": TREE_VERSION, "root": root}
    # ensure_ascii keeps lone surrogates in str exact (as \\udXXX escapes).
    text = json.dumps(document, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    members: dict[str, np.ndarray] = {
        TREE_MEMBER: np.frombuffer(text.encode("ascii"), dtype=np.uint8),
        **encoder.arrays,
    }
    with sink.open() as f:
        np.savez(f, allow_pickle=False, **members)


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


class MalformedNpzError(ValueError):
    """The bytes are not a well-formed amber npz archive."""


#: What the zip, npy and JSON readers raise on bad input; :func:`read` reports
#: each as :class:`MalformedNpzError`.
_READ_ERRORS = (
    ValueError,  # numpy headers, JSON, UTF-8, base64 (and MalformedNpzError itself)
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    KeyError,
    RuntimeError,  # encrypted members, unsupported compression (NotImplementedError)
    RecursionError,
    struct.error,
)


def _bad(why: str) -> NoReturn:
    raise MalformedNpzError(f"malformed npz checkpoint: {why}")


def _reject_constant(name: str) -> NoReturn:
    _bad(f"the tree holds the JSON constant {name}")


def _reject_float(text: str) -> NoReturn:
    _bad(f"the tree holds the JSON number {text[:40]}; numbers are stored as tagged strings")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            _bad(f"the tree document repeats the key {key!r}")
        out[key] = value
    return out


def _read_npy_header(fp: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        _bad(f"unsupported .npy version {version}")
    return shape, dtype


def _check_members(archive: zipfile.ZipFile, total: int) -> set[str]:
    """Validate every member before any array is loaded; return the array names."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        _bad("the archive repeats a member name")
    found: set[str] = set()
    for info in infos:
        match = _MEMBER_RE.fullmatch(info.filename)
        if match is None:
            _bad(f"unexpected archive member {info.filename[:80]!r}")
        if (
            info.compress_type != zipfile.ZIP_STORED
            or info.file_size != info.compress_size
            or info.file_size > total
        ):
            _bad(f"member {info.filename!r} is compressed or larger than the archive")
        with archive.open(info) as fp:
            shape, dtype = _read_npy_header(fp)
            if dtype.kind not in ARRAY_KINDS or dtype.hasobject or dtype.names is not None:
                _bad(f"member {info.filename!r} has dtype {dtype}; only numeric and bool allowed")
            need = math.prod(shape) * dtype.itemsize
            if need != info.file_size - fp.tell():
                _bad(f"member {info.filename!r} declares {need} bytes of data but holds "
                     f"{info.file_size - fp.tell()}")
        found.add(match.group(1))
    if TREE_MEMBER not in found:
        _bad(f"no {TREE_MEMBER}.npy member")
    return found - {TREE_MEMBER}


class _Decoder:
    """Turns validated tagged JSON nodes back into a state tree."""

    def __init__(self, npz: Mapping[str, np.ndarray], names: set[str]) -> None:
        self.npz = npz
        self.unused = set(names)

    def take(self, name: Any, *, scalar: bool) -> Any:
        if not isinstance(name, str) or not _ARRAY_NAME_RE.fullmatch(name):
            _bad(f"bad array reference {name!r}")
        if name not in self.unused:
            _bad(f"array {name!r} is missing or referenced twice")
        self.unused.discard(name)
        array = self.npz[name]
        if not isinstance(array, np.ndarray) or array.dtype.kind not in ARRAY_KINDS:
            _bad(f"array {name!r} is not a numeric or bool array")
        if scalar:
            if array.ndim != 0:
                _bad(f"scalar {name!r} is stored with shape {array.shape}")
            return array[()]
        return array

    def node(self, node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            _bad(f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            _bad(f"a node must be a tagged JSON array, not {str(node)[:40]}")
        tag, args = node[0], node[1:]
        if tag == "list":
            return [self.node(child, depth + 1) for child in args]
        if tag == "dict":
            if len(args) % 2:
                _bad("a dict node has a key without a value")
            out: dict[Any, Any] = {}
            for i in range(0, len(args), 2):
                key = _decode_key(args[i])
                if key in out:
                    _bad(f"a dict repeats the key {key!r}")
                out[key] = self.node(args[i + 1], depth + 1)
            return out
        if tag == "none":
            if args:
                _bad("a none node takes no value")
            return None
        if len(args) != 1:
            _bad(f"a {tag[:20]!r} node takes exactly one value")
        (arg,) = args
        if tag == "bool":
            if not isinstance(arg, bool):
                _bad("a bool node holds no JSON boolean")
            return arg
        if tag == "int":
            if not isinstance(arg, str) or not _INT_RE.fullmatch(arg):
                _bad(f"bad int {str(arg)[:40]!r}")
            value = int(arg)
            if not _INT_MIN <= value <= _INT_MAX:
                _bad(f"int {value} does not fit in 64 bits")
            return value
        if tag == "float":
            if not isinstance(arg, str) or not _FLOAT_RE.fullmatch(arg):
                _bad(f"bad float bits {str(arg)[:40]!r}")
            return _DOUBLE.unpack(bytes.fromhex(arg))[0]
        if tag == "str":
            if not isinstance(arg, str):
                _bad("a str node holds no JSON string")
            return arg
        if tag == "bytes":
            if not isinstance(arg, str):
                _bad("a bytes node holds no JSON string")
            return base64.b64decode(arg.encode("ascii"), validate=True)
        if tag == "ref":
            if not isinstance(arg, str) or not _REF_RE.fullmatch(arg):
                _bad(f"bad reference {str(arg)[:80]!r}")
            return Ref(arg)
        if tag in ("array", "scalar"):
            return self.take(arg, scalar=tag == "scalar")
        _bad(f"unknown tag {tag[:20]!r}")


def _decode_key(key: Any) -> str | int:
    if not isinstance(key, str) or key[:2] not in ("s:", "i:"):
        _bad(f"bad dict key {str(key)[:40]!r}")
    if key.startswith("s:"):
        return key[2:]
    digits = key[2:]
    if not _INT_RE.fullmatch(digits):
        _bad(f"bad int dict key {key[:40]!r}")
    value = int(digits)
    if not _INT_MIN <= value <= _INT_MAX:
        _bad(f"int key {value} does not fit in 64 bits")
    return value


def _load_document(npz: Mapping[str, np.ndarray]) -> Any:
    raw = npz[TREE_MEMBER]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        _bad(f"{TREE_MEMBER} must be a 1-d uint8 array, not {raw.dtype} {raw.shape}")
    try:
        document = json.loads(
            raw.tobytes().decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_reject_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except RecursionError:
        _bad("the tree document is nested too deeply")
    if not isinstance(document, dict) or set(document) != {"format", "version", "root"}:
        _bad("the tree document must hold exactly 'format', 'version' and 'root'")
    if document["format"] != TREE_FORMAT:
        _bad(f"the tree document's format is {str(document['format'])[:40]!r}")
    version = document["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version != TREE_VERSION:
        _bad(f"tree version {str(version)[:20]!r} is not {TREE_VERSION}; upgrade amber-npz")
    return document["root"]


def read(source: StateSource) -> Any:
    """Read a state tree written by :func:`write`; never unpickles or imports.

    :param source: the verified state file, given by the engine.
    :return: the state tree (tuples come back as lists).
    :raises MalformedNpzError: (a ``ValueError``) the file is not a well-formed amber
        npz archive.
    """
    data = bytes(source.read())
    try:
        return _read(data)
    except MalformedNpzError:
        raise
    except _READ_ERRORS as e:
        raise MalformedNpzError(f"malformed npz checkpoint: {type(e).__name__}: {e}") from e


def _read(data: bytes) -> Any:
    if not data.startswith(ZIP_MAGIC):
        _bad("not a zip archive")
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # pragma: no cover - zip magic checked
        _bad("not an npz archive")
    with loaded as npz:
        names = _check_members(npz.zip, len(data))
        decoder = _Decoder(npz, names)
        state = decoder.node(_load_document(npz), 0)
        if decoder.unused:
            _bad(f"arrays not referenced by the tree: {sorted(decoder.unused)[:5]}")
    return state


# --------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------


@amber.hookimpl
def amber_register_formats() -> list[FormatSpec]:
    """Register the ``npz`` format."""
    return [
        FormatSpec(
            name=FORMAT_NAME,
            extension=EXTENSION,
            capabilities=Capabilities(portable=True, safe=True, arbitrary_objects=False),
            write=write,
            read=read,
            description="numpy .npz archive with a JSON tree; portable; safe to load",
        )
    ]


@amber.hookimpl
def amber_detect_format(path: Path, header: bytes) -> str | None:
    """Recognise a zip archive named ``*.npz``."""
    if header.startswith(ZIP_MAGIC) and path.suffix == EXTENSION:
        return FORMAT_NAME
    return None


# --------------------------------------------------------------------------
# migrations: a format plugin ships the steps for its own old checkpoints
# --------------------------------------------------------------------------

#: amber-npz 0.x wrote checkpoints labelled ``"npz-0"`` (before it followed
#: amber's checkpoint versions), with each state tree wrapped as
#: ``{"npz_state": tree}``. This step brings them into amber's chain at 1.0.
LEGACY_VERSION = "npz-0"


def _unwrap(tree: Any) -> Any:
    if not (isinstance(tree, dict) and set(tree) == {"npz_state"}):
        raise ValueError("an npz-0 state must be {'npz_state': ...}")
    return tree["npz_state"]


def _from_legacy(trees: CheckpointTrees) -> CheckpointTrees:
    return trees.replace(state=_unwrap(trees.state),
                         policies={pid: _unwrap(p) for pid, p in trees.policies.items()})


@amber.hookimpl
def amber_register_migrations() -> list[Migration]:
    """The step from amber-npz 0.x's own checkpoints to amber's 1.0."""
    return [Migration(LEGACY_VERSION, "1.0", _from_legacy,
                      description="amber-npz 0.x wrapped each state as {'npz_state': ...}; unwrapped")]
