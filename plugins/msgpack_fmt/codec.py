"""Encoding a state tree as a msgpack document, and decoding it safely.

See the package docstring for the on-disk layout. The encoder streams the
document to the file: a container holding no arrays is packed by msgpack in
one call, one holding arrays item by item, so the document is never in
memory as a whole; it collects the arrays that go to the safetensors
sidecar; map keys are written as :mod:`.keys` says (numpy integers as
ints; a key msgpack cannot keep is refused). The decoder runs msgpack's C
unpacker with hooks of its own that check every map, list and ext value (key
types, duplicate keys, nesting depth, array descriptors), and never imports
or unpickles anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from amber.errors import ChangedWhileReadError, CorruptCheckpointError, UnserializableStateError
from amber.registry import StateSource
from amber.state import ARRAY_KINDS, MAX_DEPTH, Ref, is_reference_type

from .keys import key_refusal, map_key, plain_keys
from .safetensors_io import PendingTensor, SafetensorsFile, SafetensorsFormatError, plan_tensor
from .sharing import MAX_REPEATED_VALUES, repeats

__all__ = ["EXT_REF", "INLINE_MAX_BYTES", "SIDECAR", "Encoder", "decode_document"]

#: Arrays of fewer bytes than this are written inline; the others go to the sidecar.
INLINE_MAX_BYTES = 64 * 1024
#: The msgpack ext type code of a function or class reference: its registered name (an import
#: path ``"module:qualname"`` in checkpoint_version 1.0).
EXT_REF = 1
#: The sidecar's suffix (``<stem>.safetensors``).
SIDECAR = ".safetensors"

_PLAIN = frozenset({type(None), bool, int, float, str, bytes})
_KEY_KINDS = frozenset({str, int})
_SPECIAL = frozenset({list, dict, msgpack.Timestamp})  # values the decoder looks at
_ND_KEYS = frozenset({b"nd", b"type", b"kind", b"shape", b"data"})
_ND_KEYS_NO_KIND = _ND_KEYS - {b"kind"}
_SCALAR_KEYS = frozenset({b"nd", b"type", b"data"})
_TENSOR_KEYS = frozenset({b"safetensors", b"type", b"shape"})
_DTYPE_RE = re.compile(r"[<>|=][biufc][0-9]{1,2}\Z")
# A registered name (2.0: "amber.PPO", "user:fn", "?<lambda>") or a 1.0 import path.
_REF_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,512}\Z")
_MAX_DIMS = 64
_Timestamp = msgpack.Timestamp


class _Split(Exception):
    """Raised inside msgpack's packer: this container holds arrays, write it item by item."""


class _Packed(bytes):
    """Bytes already encoded (a map key), queued between values on the encoder's stack."""


def _path(link: Any) -> str:
    """The key path (``a.b[0]``) of a node from its chain of ``(parent, key)`` links."""
    keys = []
    while link is not None:
        link, key = link
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out = f"{out}[{key}]" if isinstance(key, int) else (f"{out}.{key}" if out else str(key))
    return out


class Encoder:
    """Writes one state tree as a msgpack document; collects the sidecar's arrays.

    :param inline_max: arrays of fewer bytes are written inline.
    :param where: the file being written, for error messages.
    """

    def __init__(self, inline_max: int = INLINE_MAX_BYTES, where: str | None = None) -> None:
        self.inline_max = inline_max
        self.where = where
        self.tensors: list[PendingTensor] = []
        self._names = {"__metadata__"}
        self._packer = msgpack.Packer(
            use_bin_type=True, strict_types=True, use_single_float=False, autoreset=True,
            default=self._unexpected,
        )
        self._whole_packer = msgpack.Packer(
            use_bin_type=True, strict_types=True, use_single_float=False, autoreset=True,
            default=self._whole,
        )

    def _fail(self, link: Any, why: str) -> UnserializableStateError:
        return UnserializableStateError(
            f"cannot write {_path(link) or '(root)'} in format 'msgpack': {why}",
            path=self.where, format="msgpack",
        )

    def _unexpected(self, value: Any) -> Any:
        raise TypeError(f"unexpected {type(value).__name__} in the msgpack encoder")

    def _whole(self, value: Any) -> Any:
        """``default`` of the packer that tries a container at once: no arrays allowed."""
        if isinstance(value, np.ndarray):
            raise _Split
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, dict):
            return dict(value)
        try:
            return self._leaf(value, None)
        except UnserializableStateError:
            raise _Split from None  # let the streaming path name the key path

    def write(self, f: BinaryIO, state: Any) -> None:
        """Encode ``state`` to ``f``.

        A container without arrays below it is packed by msgpack in one call;
        a container with arrays is written as its header, then each item in
        turn, so the document is never in memory as a whole, and an array is
        encoded only when its turn comes.

        :raises UnserializableStateError: a value the format cannot hold (named by key path), or
            containers shared so widely that the tree written out would repeat more than
            :data:`~.sharing.MAX_REPEATED_VALUES` values (checked before anything is written).
        """
        repeated, first, again = repeats(state)
        if repeated > MAX_REPEATED_VALUES:
            raise self._fail(again, f"it is the container already at {_path(first) or '(root)'}, and the "
                             "state shares containers so widely that written out as a tree (msgpack stores "
                             f"no references) it would repeat {repeated} values; store each once, or save "
                             "with format='pickle', which keeps shared objects")
        self._write(f, state)

    def _write(self, f: BinaryIO, state: Any) -> None:
        pack, out = self._packer.pack, f.write
        stack: list[tuple[Any, int, Any]] = [(state, 0, None)]
        while stack:
            node, depth, link = stack.pop()
            kind = type(node)
            if kind is _Packed:
                out(node)
                continue
            if kind in _PLAIN:
                try:
                    out(pack(node))
                except UnicodeEncodeError as e:  # a str holding a lone surrogate has no UTF-8 form
                    raise self._fail(link, f"it is not valid Unicode ({e.reason})") from e
                continue
            if depth > MAX_DEPTH:
                raise self._fail(link, f"nested deeper than {MAX_DEPTH} levels")
            if not isinstance(node, (dict, list, tuple)):
                try:
                    out(pack(self._leaf(node, link)))
                except UnicodeEncodeError as e:  # a str subclass, a Ref
                    raise self._fail(link, f"it is not valid Unicode ({e.reason})") from e
                continue
            try:
                whole = self._whole_packer.pack(node)
                if plain_keys(node):  # any other key (np.int64, a tuple) msgpack writes as a map or
                    out(whole)        # a list, unreadable: item by item, _key converts or refuses it
                    continue
            except (_Split, ValueError, OverflowError):  # ValueError: too deep for msgpack (a cycle)
                pass
            if isinstance(node, dict):
                items = list(node.items())
                out(self._packer.pack_map_header(len(items)))
                for k, v in reversed(items):
                    stack.append((v, depth + 1, (link, k)))
                    try:
                        stack.append((_Packed(pack(self._key(k, link))), 0, None))
                    except UnicodeEncodeError as e:
                        raise self._fail(link, f"dict key {k!r} is not valid Unicode ({e.reason})") from e
            else:
                out(self._packer.pack_array_header(len(node)))
                for i in range(len(node) - 1, -1, -1):
                    stack.append((node[i], depth + 1, (link, i)))

    def _key(self, key: Any, link: Any) -> str | int:
        written = map_key(key)
        if written is None:
            raise self._fail(link, key_refusal(key))
        return written

    def _leaf(self, value: Any, link: Any) -> Any:
        if isinstance(value, np.ndarray):
            return self._array(value, link)
        if isinstance(value, np.generic):
            self._check_dtype(value.dtype, link)
            return {b"nd": False, b"type": value.dtype.str, b"data": value.tobytes()}
        if isinstance(value, Ref):
            return msgpack.ExtType(EXT_REF, value.target.encode("utf-8"))
        # subclasses (IntEnum...) as their base, ignoring overridden __int__/__str__
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, bytes):
            return bytes(memoryview(value))
        if is_reference_type(value):  # the engine names classes and functions before a format sees them
            raise self._fail(link, f"{value!r} has no registered name (amber.register_class)")
        raise self._fail(link, f"values of type {type(value).__qualname__} are not state leaves")

    def _check_dtype(self, dtype: np.dtype, link: Any) -> None:
        if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
            raise self._fail(link, f"numpy dtype {dtype} is not numeric or bool")

    def _array(self, array: np.ndarray, link: Any) -> dict[bytes, Any]:
        self._check_dtype(array.dtype, link)
        if isinstance(array, np.ma.MaskedArray):
            raise self._fail(link, "masked arrays would lose their mask; save .data and .mask")
        array = np.asarray(array)  # matrix and other subclasses as plain arrays
        shape = list(array.shape)
        if array.nbytes < self.inline_max:
            return {b"nd": True, b"type": array.dtype.str, b"kind": b"", b"shape": shape,
                    b"data": array.tobytes()}
        name = base = _path(link) or "(root)"
        n = 1
        while name in self._names:
            n += 1
            name = f"{base}#{n}"
        self._names.add(name)
        self.tensors.append(plan_tensor(name, array))
        return {b"safetensors": name, b"type": array.dtype.str, b"shape": shape}


class _Decoder:
    """The hooks msgpack's unpacker calls, and the lazily opened sidecar."""

    def __init__(self, source: StateSource) -> None:
        self.source = source
        self._sidecar: SafetensorsFile | None = None
        self._used: set[str] = set()
        self._height: dict[int, int] = {}  # id -> levels of containers, when more than 1

    @property
    def sidecar_path(self) -> Path:
        """The sidecar's path (for error messages)."""
        return self.source.path.with_suffix(SIDECAR)

    def on_map(self, pairs: list[tuple[Any, Any]]) -> Any:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("map has a duplicate key")
        key_kinds = set(map(type, out))
        if not key_kinds <= _KEY_KINDS:
            if bytes in key_kinds:
                return self._descriptor(out)
            bad = next(k for k in key_kinds if k not in _KEY_KINDS)
            raise ValueError(f"map key of type {bad.__name__}")
        values = out.values()
        if not _SPECIAL.isdisjoint(map(type, values)):
            self._check_children(out, values)
        return out

    def on_list(self, items: list[Any]) -> list[Any]:
        if not _SPECIAL.isdisjoint(map(type, items)):
            self._check_children(items, items)
        return items

    def _check_children(self, container: Any, values: Iterable[Any]) -> None:
        """Refuse timestamps; record the container's height, refusing trees too deep."""
        if _Timestamp in set(map(type, values)):
            raise ValueError("unexpected msgpack timestamp")
        height = 1 + max(
            self._height.get(id(v), 1) for v in values if type(v) is list or type(v) is dict
        )
        if height > MAX_DEPTH + 1:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        self._height[id(container)] = height

    def ext(self, code: int, data: bytes) -> Ref:
        if code != EXT_REF:
            raise ValueError(f"unknown msgpack ext type {code}")
        target = data.decode("utf-8")
        if not _REF_RE.match(target):
            raise ValueError(f"malformed reference {target[:200]!r}")
        return Ref(target)

    def _descriptor(self, d: dict[Any, Any]) -> Any:
        keys = d.keys()
        if keys == _TENSOR_KEYS:
            return self._tensor(d)
        nd = d.get(b"nd")
        if nd is True and keys in (_ND_KEYS, _ND_KEYS_NO_KIND):
            if d.get(b"kind", b"") != b"":
                raise ValueError(f"array kind {d[b'kind']!r} is refused (object/structured)")
            dtype, shape = _dtype(d[b"type"]), _shape(d[b"shape"])
            data = d[b"data"]
            if type(data) is not bytes:
                raise ValueError("array data is not bytes")
            count = math.prod(shape)
            if count * dtype.itemsize != len(data):
                raise ValueError(
                    f"array of {dtype.str} and shape {shape} needs {count * dtype.itemsize} "
                    f"bytes, has {len(data)}"
                )
            return np.frombuffer(bytearray(data), dtype=dtype, count=count).reshape(shape)
        if nd is False and keys == _SCALAR_KEYS:
            dtype, data = _dtype(d[b"type"]), d[b"data"]
            if type(data) is not bytes or len(data) != dtype.itemsize:
                raise ValueError(f"numpy scalar of {dtype.str} needs {dtype.itemsize} bytes")
            return np.frombuffer(data, dtype=dtype)[0]
        raise ValueError(f"map with bytes keys {list(keys)[:8]!r} is no array descriptor")

    def _tensor(self, d: dict[bytes, Any]) -> np.ndarray:
        name, dtype, shape = d[b"safetensors"], _dtype(d[b"type"]), _shape(d[b"shape"])
        if type(name) is not str:
            raise ValueError("sidecar tensor name is not a str")
        if name in self._used:
            raise ValueError(f"sidecar tensor {name!r} is referenced twice")
        self._used.add(name)
        try:
            if self._sidecar is None:
                if not self.source.has(SIDECAR):
                    raise SafetensorsFormatError("is referenced but not listed in checkpoint.json")
                self._sidecar = SafetensorsFile(self.source.read(SIDECAR))
            return self._sidecar.array(name, dtype, shape)
        except SafetensorsFormatError as e:
            raise CorruptCheckpointError(
                f"{self.sidecar_path}: {e}", path=self.sidecar_path, format="msgpack"
            ) from e


def _dtype(value: Any) -> np.dtype:
    """A numeric or bool dtype from its array-protocol string; anything else is refused."""
    if type(value) is not str or not _DTYPE_RE.match(value):
        raise ValueError(f"dtype {str(value)[:40]!r} is refused (only numeric and bool dtypes)")
    dtype = np.dtype(value)
    if dtype.kind not in ARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ValueError(f"dtype {value!r} is refused")
    return dtype


def _shape(value: Any) -> tuple[int, ...]:
    if (
        type(value) is not list
        or len(value) > _MAX_DIMS
        or not all(type(d) is int and 0 <= d < 2**63 for d in value)
    ):
        raise ValueError(f"array shape {str(value)[:80]} is not a list of non-negative ints")
    return tuple(value)


def decode_document(buf: memoryview, source: StateSource) -> Any:
    """Decode a msgpack state document (and its sidecar arrays, if it references any).

    :param buf: the verified bytes of the main file.
    :param source: where the sidecar is read from.
    :raises CorruptCheckpointError: anything malformed, naming the file.
    :raises ChangedWhileReadError: another save replaced the checkpoint while it was read.
    """
    decoder = _Decoder(source)
    n = len(buf)
    try:
        state = msgpack.unpackb(
            buf, raw=False, use_list=True, strict_map_key=False, timestamp=0,
            object_pairs_hook=decoder.on_map, list_hook=decoder.on_list, ext_hook=decoder.ext,
            max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2, max_ext_len=n,
        )
        if type(state) is _Timestamp:
            raise ValueError("unexpected msgpack timestamp")
    except (CorruptCheckpointError, ChangedWhileReadError):  # (the latter: a save replaced the sidecar)
        raise
    except msgpack.exceptions.StackError:
        raise CorruptCheckpointError(
            f"{source.path}: is nested deeper than msgpack's unpacker allows",
            path=source.path, format="msgpack",
        ) from None
    except msgpack.ExtraData:
        raise CorruptCheckpointError(
            f"{source.path}: has trailing bytes after the msgpack document",
            path=source.path, format="msgpack",
        ) from None
    except Exception as e:  # ValueError, TypeError, UnicodeDecodeError, StackError...
        raise CorruptCheckpointError(
            f"{source.path}: is not a valid msgpack state: {type(e).__name__}: {e}",
            path=source.path, format="msgpack",
        ) from e
    return state
