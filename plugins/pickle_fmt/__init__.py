"""The ``pickle`` format: cloudpickle, holds any Python object.

Not portable across Python versions and not safe to read from strangers
(unpickling runs code); amber refuses it under safe loading. Arrays are
pickled out of band (protocol 5): their bytes follow the pickle stream in
the same file, 64-byte aligned, and are read back without a copy.

File layout of ``<stem>.pkl``: the pickle stream, then each out-of-band
buffer (aligned), then a trailer: ``<Q pickle length>``, one ``<QQ offset,
length>`` per buffer, ``<Q buffer count>`` and the 8 bytes ``AMBRPKL1``.
A state without arrays is thus also a plain pickle file.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

import amber
from amber.registry import Capabilities, FormatSpec, StateSink, StateSource

MAGIC = b"AMBRPKL1"
ALIGN = 64
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with arrays that are neither C- nor Fortran-contiguous pickled as a
    contiguous copy: numpy 2.4 pickles such an array of non-native byte order with the
    native one (``>f4`` comes back ``<f4``)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            return np.ascontiguousarray(obj).__reduce_ex__(5)
        return super().reducer_override(obj)


def write(state: Any, sink: StateSink) -> None:
    """Pickle ``state`` with its arrays' buffers out of band, in one file."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(state)
    payload = out.getbuffer()
    table = []
    with sink.open() as f:
        f.write(payload)
        pos = len(payload)
        for pb in buffers:
            raw = pb.raw()
            pad = (-pos) % ALIGN
            f.write(b"\0" * pad)
            pos += pad
            table.append((pos, raw.nbytes))
            f.write(raw)
            pos += raw.nbytes
        trailer = [_Q.pack(len(payload))]
        trailer += [_QQ.pack(o, n) for o, n in table]
        trailer += [_Q.pack(len(table)), MAGIC]
        f.write(b"".join(trailer))


def read(source: StateSource) -> Any:
    """Unpickle a state written by :func:`write` (only ever called when pickle is allowed)."""
    buf = source.read()
    size = len(buf)
    if size < 16 or bytes(buf[-8:]) != MAGIC:
        raise ValueError("no amber pickle trailer")
    (count,) = _Q.unpack_from(buf, size - 16)
    table_start = size - 16 - count * _QQ.size - _Q.size
    if count > size // _QQ.size or table_start < 0:
        raise ValueError("buffer table out of bounds")
    (payload_len,) = _Q.unpack_from(buf, table_start)
    views = []
    end = payload_len
    for i in range(count):
        offset, length = _QQ.unpack_from(buf, table_start + _Q.size + i * _QQ.size)
        if offset < end or offset + length > table_start:
            raise ValueError("buffer table out of bounds")
        views.append(buf[offset : offset + length])
        end = offset + length
    if payload_len > table_start:
        raise ValueError("pickle stream out of bounds")
    return pickle.loads(buf[:payload_len], buffers=views)


@amber.hookimpl
def amber_register_formats() -> list[FormatSpec]:
    """Register the ``pickle`` format."""
    return [
        FormatSpec(
            name="pickle",
            extension=".pkl",
            capabilities=Capabilities(portable=False, safe=False, arbitrary_objects=True),
            write=write,
            read=read,
            description="cloudpickle; holds any Python object; same Python only; trusted sources only",
            extra=None,  # cloudpickle is one of amber's own dependencies
        )
    ]


@amber.hookimpl(trylast=True)
def amber_detect_format(path: Path, header: bytes) -> str | None:
    """Recognise a pickle stream (protocol 2 or later) or a ``.pkl`` file."""
    if header[:1] == b"\x80" and 2 <= header[1:2][0] <= 5 if len(header) >= 2 else False:
        return "pickle"
    return "pickle" if path.suffix == ".pkl" else None
