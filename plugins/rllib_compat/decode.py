"""Reading RLlib's files safely: its JSON manifests and its msgpack-numpy state files.

RLlib 2.10 writes state with ``msgpack`` patched by ``msgpack_numpy``, whose
own decoder unpickles object arrays; this module never uses it. It runs
msgpack's C unpacker with limits bounded by the file's size and an object
hook that turns msgpack-numpy's array and scalar maps into numpy values,
refusing object, void (structured) and other non-numeric dtypes. Nothing is
imported and nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from amber.errors import CorruptCheckpointError

__all__ = ["MAX_MANIFEST_BYTES", "MAX_STATE_BYTES", "decode_msgpack", "read_json", "read_file"]

#: Largest ``rllib_checkpoint.json`` read.
MAX_MANIFEST_BYTES = 1 << 20
#: Largest state file read (RLlib's files are read whole into memory).
MAX_STATE_BYTES = 1 << 36
#: The dtype kinds decoded: numbers and bool (state trees) and fixed-width strings.
_KINDS = frozenset("biufcSU")
_ND_KEYS = frozenset({b"nd", b"type", b"kind", b"shape", b"data"})
_ND_KEYS_OLD = _ND_KEYS - {b"kind"}
_SCALAR_KEYS = frozenset({b"nd", b"type", b"data"})
_COMPLEX_KEYS = frozenset({b"complex", b"data"})
_MAX_DIMS = 64


def read_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file that is not a symbolic link and holds at most ``limit`` bytes.

    :param path: the file.
    :param limit: the largest size accepted.
    :return: its content.
    :raises CorruptCheckpointError: missing, a link or not a regular file, too large, unreadable.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path} is missing", path=path, format="rllib-msgpack") from None
    except OSError as e:
        raise CorruptCheckpointError(f"{path} cannot be read: {e}", path=path, format="rllib-msgpack") from e
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise CorruptCheckpointError(f"{path} is a symbolic link or not a regular file; refused",
                                     path=path, format="rllib-msgpack")
    if info.st_size > limit:
        raise CorruptCheckpointError(f"{path} is {info.st_size} bytes, more than the {limit} read",
                                     path=path, format="rllib-msgpack")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            data = f.read(info.st_size + 1)
    except OSError as e:
        raise CorruptCheckpointError(f"{path} cannot be read: {e}", path=path, format="rllib-msgpack") from e
    if len(data) != info.st_size:
        raise CorruptCheckpointError(f"{path} changed size while read", path=path, format="rllib-msgpack")
    return data


def read_json(path: Path) -> dict[str, Any]:
    """An ``rllib_checkpoint.json``: a JSON object.

    :param path: the file.
    :return: its content.
    :raises CorruptCheckpointError: unreadable, not JSON, or not an object.
    """
    data = read_file(path, MAX_MANIFEST_BYTES)
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptCheckpointError(f"{path} is not valid JSON: {e}", path=path,
                                     format="rllib-msgpack") from e
    if not isinstance(raw, dict):
        raise CorruptCheckpointError(f"{path} must hold a JSON object, not {type(raw).__name__}",
                                     path=path, format="rllib-msgpack")
    return raw


def _dtype(descr: Any, kind: Any) -> np.dtype[Any]:
    if kind not in (None, b"", ""):
        raise ValueError(f"array kind {kind!r} (object or structured arrays) is refused")
    if isinstance(descr, bytes):
        descr = descr.decode("ascii")
    if not isinstance(descr, str) or len(descr) > 16:
        raise ValueError(f"array type {descr!r} is not a plain numpy dtype string")
    dtype = np.dtype(descr)
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"array dtype {descr!r} (kind {dtype.kind!r}) is refused: only numbers, "
                         "bool and fixed-width strings are read")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ValueError(f"array shape {shape!r} is not a list of at most {_MAX_DIMS} sizes")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"array shape {shape!r} has a size that is not a non-negative int")
    return tuple(shape)


def _array(obj: dict[Any, Any]) -> Any:
    """One msgpack-numpy map as a numpy array or scalar."""
    data = obj[b"data"]
    if not isinstance(data, bytes):
        raise ValueError("array data is not bytes")
    if obj[b"nd"] is True:
        dtype = _dtype(obj[b"type"], obj.get(b"kind"))
        shape = _shape(obj[b"shape"])
        if math.prod(shape) * dtype.itemsize != len(data):
            raise ValueError(f"array of shape {shape} and dtype {dtype.str} needs "
                             f"{math.prod(shape) * dtype.itemsize} bytes, has {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if obj[b"nd"] is False:
        dtype = _dtype(obj[b"type"], None)
        if len(data) != dtype.itemsize:
            raise ValueError(f"scalar of dtype {dtype.str} needs {dtype.itemsize} bytes, has {len(data)}")
        return np.frombuffer(data, dtype=dtype)[0]
    raise ValueError(f"array marker 'nd' is {obj[b'nd']!r}, not a bool")


def _hook(obj: dict[Any, Any]) -> Any:
    """msgpack's object hook: msgpack-numpy maps become numpy values, other maps stay."""
    keys = obj.keys()
    if b"nd" in obj:
        if keys == _ND_KEYS or keys == _ND_KEYS_OLD or keys == _SCALAR_KEYS:
            return _array(obj)
        raise ValueError(f"a map with an 'nd' marker has unexpected keys {sorted(map(repr, keys))}")
    if keys == _COMPLEX_KEYS and obj[b"complex"] is True:
        text = obj[b"data"]
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError("complex value is not a short string")
        return np.complex128(complex(text))
    return obj


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not used by RLlib; refused")


def decode_msgpack(path: Path, *, limit: int = MAX_STATE_BYTES) -> Any:
    """Decode one of RLlib's msgpack state files into plain dicts, lists and numpy values.

    :param path: the file (``algorithm_state.msgpck`` or ``policy_state.msgpck``).
    :param limit: the largest file read.
    :return: the decoded tree.
    :raises CorruptCheckpointError: naming the file: truncated, garbage, trailing bytes,
        unsafe or malformed arrays, or nesting too deep.
    """
    data = read_file(path, limit)
    size = max(len(data), 1)
    unpacker = msgpack.Unpacker(
        None, raw=False, strict_map_key=False, use_list=True, object_hook=_hook, ext_hook=_no_ext,
        max_buffer_size=size, max_str_len=size, max_bin_len=size, max_array_len=size,
        max_map_len=size, max_ext_len=size,
    )
    try:
        unpacker.feed(data)
        tree = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise ValueError(f"{len(data) - unpacker.tell()} bytes after the document")
        return tree
    except CorruptCheckpointError:
        raise
    except Exception as e:  # msgpack's errors on bad bytes are ValueError subclasses and others
        raise CorruptCheckpointError(
            f"{path} cannot be read as RLlib msgpack (truncated or corrupt): {type(e).__name__}: {e}",
            path=path, format="rllib-msgpack",
        ) from e
