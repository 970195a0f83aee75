"""A minimal safetensors writer and reader for numpy arrays, without the library.

Layout (https://github.com/huggingface/safetensors): ``<Q N>``, then N bytes
of UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}``, then the tensors' bytes, little-endian, in C
order, offsets relative to the start of the data, with no gap between
tensors and nothing after the last one.

The writer pads the header with spaces so that the data starts 64-byte
aligned, and orders the tensors by the largest power of two dividing their
itemsize (largest first), so every tensor starts at a multiple of it: the
tensors are naturally aligned without gaps, which the format forbids. Each
array's bytes are streamed to the file; a non-contiguous array is copied a
few MiB at a time, never whole.

The reader checks the whole header (size, JSON, duplicate keys, types,
offsets in bounds, contiguous and non-overlapping, sizes agreeing with
dtype and shape) and hands out zero-copy views of the buffer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "HEADER_ALIGN",
    "MAX_HEADER_BYTES",
    "PendingTensor",
    "SafetensorsFile",
    "SafetensorsFormatError",
    "plan_tensor",
    "write_safetensors",
]

#: The largest header a reader accepts (the limit of the safetensors library).
MAX_HEADER_BYTES = 100_000_000
#: The data section starts at a multiple of this many bytes.
HEADER_ALIGN = 64
#: A non-contiguous array is written this many bytes at a time (about).
CHUNK_BYTES = 4 << 20

#: safetensors dtype -> numpy dtype string, for the dtypes numpy has.
ST_TO_NUMPY = {
    "BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
    "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
    "C64": "<c8",
}
#: numpy dtype string -> safetensors dtype, for the dtypes the writer stores natively
#: (C64 is left out: safetensors readers before 0.6 lack it).
NUMPY_TO_ST = {v: k for k, v in ST_TO_NUMPY.items() if k != "C64"}
#: Byte size of the element of every safetensors dtype (for checking a foreign header).
_ST_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in ST_TO_NUMPY.items()}
_ST_ITEMSIZE.update({"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1})
_METADATA = "__metadata__"


class SafetensorsFormatError(ValueError):
    """A safetensors file is malformed or does not hold what was asked for."""


@dataclass(frozen=True)
class PendingTensor:
    """An array to be written: its name, its dtype and shape as recorded in the header."""

    name: str
    array: np.ndarray
    st_dtype: str
    st_shape: tuple[int, ...]


def plan_tensor(name: str, array: np.ndarray) -> PendingTensor:
    """How ``array`` is stored: natively if safetensors has its dtype, else as raw ``U8`` bytes.

    :param name: the tensor's name in the header.
    :param array: a numeric or bool array (any layout, any byte order).
    :return: the tensor to pass to :func:`write_safetensors`.
    """
    st = NUMPY_TO_ST.get(array.dtype.str)
    if st is not None:
        return PendingTensor(name, array, st, tuple(array.shape))
    return PendingTensor(name, array, "U8", (array.nbytes,))


def _alignment(array: np.ndarray) -> int:
    size = array.dtype.itemsize
    return min(size & -size, HEADER_ALIGN)


def write_safetensors(
    f: BinaryIO, tensors: Sequence[PendingTensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file to ``f``, streaming each array's bytes.

    :param f: a binary file open for writing.
    :param tensors: from :func:`plan_tensor`, with unique names other than ``__metadata__``.
    :param metadata: strings for the header's ``__metadata__``.
    """
    ordered = sorted(tensors, key=lambda t: -_alignment(t.array))  # stable
    header: dict[str, Any] = {}
    offset = 0
    for t in ordered:
        if t.name == _METADATA or t.name in header:
            raise ValueError(f"tensor name {t.name!r} is reserved or used twice")
        header[t.name] = {
            "dtype": t.st_dtype,
            "shape": list(t.st_shape),
            "data_offsets": [offset, offset + t.array.nbytes],
        }
        offset += t.array.nbytes
    if metadata:
        header[_METADATA] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % HEADER_ALIGN)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for t in ordered:
        for chunk in _c_order_chunks(t.array):
            f.write(chunk)


def _c_order_chunks(array: np.ndarray) -> Iterator[memoryview]:
    """The bytes of ``array`` in C order, as views (contiguous) or copies of a few MiB."""
    if array.flags.c_contiguous:
        if array.nbytes:
            yield array.reshape(-1).view(np.uint8).data
        return
    rows = array.shape[0]
    row_bytes = array.nbytes // rows if rows else 0
    if row_bytes > CHUNK_BYTES and array.ndim > 1:
        for i in range(rows):
            yield from _c_order_chunks(array[i])
        return
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, rows, step):
        block = np.ascontiguousarray(array[start : start + step])
        yield block.reshape(-1).view(np.uint8).data


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's header entry, checked."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise SafetensorsFormatError(f"header has the key {dup!r} twice")
    return out


def _is_int(value: Any) -> bool:
    return type(value) is int


class SafetensorsFile:
    """A parsed safetensors file over a buffer; arrays are views of that buffer.

    :param buf: the whole file (writable for writable arrays).
    :raises SafetensorsFormatError: the header is malformed.
    """

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        size = len(buf)
        if size < 8:
            raise SafetensorsFormatError(f"is {size} bytes, too short for a header length")
        n = int.from_bytes(buf[:8], "little")
        if n > MAX_HEADER_BYTES:
            raise SafetensorsFormatError(f"declares a {n}-byte header, more than allowed")
        if 8 + n > size:
            raise SafetensorsFormatError(f"declares a {n}-byte header in a {size}-byte file")
        self.data_start = 8 + n
        try:
            text = bytes(buf[8 : 8 + n]).decode("utf-8")
            if not text.startswith("{"):
                raise SafetensorsFormatError("header does not start with '{'")
            header = json.loads(text, object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise SafetensorsFormatError(f"header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsFormatError("header is not a JSON object")
        metadata = header.pop(_METADATA, {})
        if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()
        ):
            raise SafetensorsFormatError("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = metadata
        self.tensors: dict[str, TensorInfo] = {
            name: self._check_entry(name, entry) for name, entry in header.items()
        }
        self._check_offsets(size - self.data_start)

    @staticmethod
    def _check_entry(name: str, entry: Any) -> TensorInfo:
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsFormatError(f"tensor {name!r}: entry needs dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
            raise SafetensorsFormatError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsFormatError(f"tensor {name!r}: shape must list non-negative ints")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]
        ):
            raise SafetensorsFormatError(f"tensor {name!r}: malformed data_offsets {offsets!r}")
        if math.prod(shape) * _ST_ITEMSIZE[dtype] != offsets[1] - offsets[0]:
            raise SafetensorsFormatError(
                f"tensor {name!r}: {dtype} of shape {shape} does not fill data_offsets {offsets}"
            )
        return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])

    def _check_offsets(self, data_size: int) -> None:
        end = 0
        for name, info in sorted(self.tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
            if info.begin != end:
                why = "overlaps another" if info.begin < end else "leaves a gap before it"
                raise SafetensorsFormatError(f"tensor {name!r} {why} (data_offsets)")
            end = info.end
        if end != data_size:
            raise SafetensorsFormatError(
                f"tensors cover {end} bytes of data, the file holds {data_size}"
            )

    def array(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A zero-copy view of tensor ``name`` as an array of ``dtype`` and ``shape``.

        The tensor must be stored natively with that dtype and shape, or as
        ``U8`` bytes of shape ``[nbytes]`` (any dtype, any byte order).

        :raises SafetensorsFormatError: no such tensor, or it does not match.
        """
        info = self.tensors.get(name)
        if info is None:
            raise SafetensorsFormatError(f"has no tensor {name!r}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        native = ST_TO_NUMPY.get(info.dtype) == dtype.str and info.shape == shape
        raw = info.dtype == "U8" and info.shape == (nbytes,)
        if not (native or raw) or info.end - info.begin != nbytes:
            raise SafetensorsFormatError(
                f"tensor {name!r} is {info.dtype} of shape {list(info.shape)}, which cannot "
                f"hold {dtype.str} of shape {list(shape)}"
            )
        flat = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self.data_start + info.begin)
        return flat.reshape(shape)
