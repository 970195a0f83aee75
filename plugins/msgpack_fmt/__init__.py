"""The ``msgpack`` format: portable, safe to read from strangers.

It is the default of :func:`amber.save` and of ``convert_to_msgpack_checkpoint``;
``Algorithm.save`` defaults to ``pickle``, as RLlib does (``.checkpointing(format=...)``).

A state is written as ``<stem>.msgpck``, one msgpack document, plus
``<stem>.safetensors`` when it holds big arrays (e.g. ``policy_state.msgpck``
and ``policy_state.safetensors``). Reading never imports, unpickles or runs
anything from the files.

The document (``use_bin_type``: ``str`` and ``bytes`` stay apart):

- dicts are maps in their key order, keys ``str`` or ``int``; lists are
  arrays. **Tuples come back as lists.**
- ``None``, ``bool``, ``int`` (64-bit, signed or unsigned), ``float``
  (always float64: NaN, inf and -0.0 survive bit for bit), ``str`` and
  ``bytes`` are msgpack's own types.
- A numpy array smaller than :data:`~amber.plugins.msgpack_fmt.codec.INLINE_MAX_BYTES`
  (64 KiB) is inline, in msgpack-numpy's encoding, so msgpack-numpy users
  can read the file: the map ``{b"nd": True, b"type": dtype.str, b"kind": b"",
  b"shape": [...], b"data": <C-order bytes>}``. A numpy scalar is ``{b"nd":
  False, b"type": dtype.str, b"data": <bytes>}`` and comes back as a numpy
  scalar of the same type.
- A bigger array is the map ``{b"safetensors": name, b"type": dtype.str,
  b"shape": [...]}``, naming a tensor of the sidecar; the name is the
  array's key path (``"policy.weights[0]"``; ``"(root)"`` for a bare array;
  ``"#2"``, ``"#3"``... appended if taken).
  msgpack-numpy leaves such a map as it is.
- A reference to a function or class (:class:`amber.state.Ref`) is the ext
  type 1 holding its registered name (UTF-8; an import path in version 1.0)
  and is read back as a ``Ref``, never imported.

Maps with ``bytes`` keys are always these descriptors: state trees have only
``str`` and ``int`` keys, so user data is never taken for an array. Arrays
come back C-contiguous (Fortran-ordered and strided ones too), with their
dtype (byte order included) and shape; inline ones are writable copies,
sidecar ones writable zero-copy views of the sidecar's buffer.

The sidecar is a standard safetensors file (see :mod:`.safetensors_io`):
bool, (u)int8-64 and float16/32/64 little-endian arrays are stored natively
with their shape, so other tools can read the weights; other arrays
(complex, big-endian, long double) as raw ``U8`` bytes of shape ``[nbytes]``,
their real dtype and shape being in the document. The header is padded so
the data starts 64-byte aligned and every tensor is aligned to its itemsize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import amber
from amber.registry import Capabilities, FormatSpec, StateSink, StateSource

from .codec import INLINE_MAX_BYTES, SIDECAR, Encoder, decode_document
from .safetensors_io import write_safetensors

__all__ = ["INLINE_MAX_BYTES", "read", "write"]

EXTENSION = ".msgpck"
#: First bytes of a document whose root is a map of 1-15 entries (fixmap), map16 or map32 ...
_ROOT_MAPS = frozenset(range(0x81, 0x90)) | {0xDE, 0xDF}
#: ... and whose first key is a str (fixstr, str8, str16, str32).
_STR_KEYS = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB}


def write(state: Any, sink: StateSink) -> None:
    """Write ``state`` as ``<stem>.msgpck`` and, for big arrays, ``<stem>.safetensors``.

    :param state: a state tree (already checked by the engine).
    :param sink: where the files go.
    :raises UnserializableStateError: a value the format cannot hold.
    """
    encoder = Encoder(INLINE_MAX_BYTES, where=str(sink.path))
    with sink.open() as f:
        encoder.write(f, state)
    if encoder.tensors:
        with sink.open(SIDECAR) as f:
            write_safetensors(
                f, encoder.tensors, {"producer": "amber", "document": sink.path.name}
            )


def read(source: StateSource) -> Any:
    """Read a state written by :func:`write`; the sidecar only if the document names it.

    :raises CorruptCheckpointError: a malformed or hostile file, naming it.
    """
    return decode_document(source.read(), source)


@amber.hookimpl
def amber_register_formats() -> list[FormatSpec]:
    """Register the ``msgpack`` format."""
    return [
        FormatSpec(
            name="msgpack",
            extension=EXTENSION,
            capabilities=Capabilities(portable=True, safe=True, arbitrary_objects=False),
            write=write,
            read=read,
            description="msgpack + safetensors sidecar; state trees only; safe to load from anyone",
            extra=None,  # msgpack and its safetensors writer need only amber's own dependencies
        )
    ]


@amber.hookimpl
def amber_detect_format(path: Path, header: bytes) -> str | None:
    """Recognise a ``.msgpck`` file, or a msgpack document whose root is a str-keyed map."""
    if path.suffix == EXTENSION:
        return "msgpack"
    if path.suffix == SIDECAR or len(header) < 2:
        return None
    first = header[0]
    if first in _ROOT_MAPS:
        skip = 1 + {0xDE: 2, 0xDF: 4}.get(first, 0)
        if len(header) > skip and header[skip] in _STR_KEYS:
            return "msgpack"
    return None
