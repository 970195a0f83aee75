"""A reader of the protobuf wire format: enough to check an ONNX model without the onnx package.

:mod:`amber.serving.onnx_check` reads ``model.onnx`` with it before onnxruntime
sees the bytes, so the check works wherever serving does (onnxruntime alone is
enough to serve). It is strict where the C++ parser that onnxruntime uses is
lenient, so that both cannot read one file differently: a singular field that
appears twice (which protobuf merges, or takes the last of) and a field of
another wire type than its declaration's are refused, not reconciled; groups
are refused. A message holding more than :data:`MAX_FIELDS` fields is refused
too, which bounds what the reader keeps in memory. Importing this module
imports nothing outside the standard library.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["I32", "LEN", "MAX_FIELDS", "VARINT", "Message", "WireError", "fields"]

#: Wire types: a varint, 8 bytes, a length-delimited run of bytes, 4 bytes.
VARINT, I64, LEN, I32 = 0, 1, 2, 5
#: The most fields one message may hold here (amber's largest graphs hold a few hundred).
MAX_FIELDS = 1 << 17
_UINT64 = (1 << 64) - 1


class WireError(ValueError):
    """Bytes that are not a protobuf message of the expected shape."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _UINT64, pos
        shift += 7
        if shift >= 70:
            raise WireError("a varint is longer than 10 bytes")


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` for each field of the message ``buf``, in order: an int
    for a varint or fixed-width field, a view of the bytes for a length-delimited one."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if number == 0:
            raise WireError("a field numbered 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            if pos + width > end:
                raise WireError("a fixed-width field runs past the end of its message")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == LEN:
            length, pos = _varint(buf, pos)
            if length > end - pos:
                raise WireError("a length-delimited field runs past the end of its message")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise WireError(f"wire type {wire} (a group, or not protobuf) in field {number}")
        yield number, wire, value


class Message:
    """The fields of one message by number (each occurrence kept, in order).

    :raises WireError: malformed, or more than :data:`MAX_FIELDS` fields.
    """

    def __init__(self, buf: bytes | memoryview) -> None:
        self._by: dict[int, list[tuple[int, int | memoryview]]] = {}
        for count, (number, wire, value) in enumerate(fields(memoryview(buf)), 1):
            if count > MAX_FIELDS:
                raise WireError(f"a message holds more than {MAX_FIELDS} fields")
            self._by.setdefault(number, []).append((wire, value))

    def numbers(self) -> set[int]:
        """The field numbers present."""
        return set(self._by)

    def count(self, number: int) -> int:
        """How many times field ``number`` occurs."""
        return len(self._by.get(number, ()))

    def all(self, number: int, wire: int) -> list[int | memoryview]:
        """Every value of field ``number``, which must have wire type ``wire`` each time."""
        found = self._by.get(number, [])
        if any(w != wire for w, _ in found):
            raise WireError(f"field {number} has another wire type than its declaration's")
        return [v for _, v in found]

    def one(self, number: int, wire: int) -> int | memoryview | None:
        """The value of the singular field ``number`` (None if absent); twice is refused."""
        values = self.all(number, wire)
        if len(values) > 1:
            raise WireError(f"field {number} appears {len(values)} times, once at most is expected")
        return values[0] if values else None

    def integer(self, number: int, default: int = 0) -> int:
        """A singular int64 field (a varint), signed."""
        value = self.one(number, VARINT)
        if not isinstance(value, int):  # absent (a varint is always an int)
            return default
        return value - (1 << 64) if value >= 1 << 63 else value

    def text(self, number: int) -> str:
        """A singular string field ("" if absent)."""
        return _text(self.one(number, LEN))

    def texts(self, number: int) -> list[str]:
        """A repeated string field."""
        return [_text(v) for v in self.all(number, LEN)]

    def each(self, number: int) -> Iterator[Message]:
        """A repeated message field, each occurrence read as it is reached."""
        for value in self.all(number, LEN):
            if isinstance(value, memoryview):  # (always, for a length-delimited field)
                yield Message(value)

    def messages(self, number: int) -> list[Message]:
        """A repeated message field, every occurrence read."""
        return list(self.each(number))

    def integers(self, number: int, limit: int) -> list[int]:
        """A repeated int64 field, packed or not, signed; more than ``limit`` values are refused."""
        out: list[int] = []
        for wire, value in self._by.get(number, []):
            if wire == VARINT and isinstance(value, int):
                out.append(value)
            elif wire == LEN and isinstance(value, memoryview):
                pos = 0
                while pos < len(value) and len(out) <= limit:
                    item, pos = _varint(value, pos)
                    out.append(item)
            else:
                raise WireError(f"field {number} has another wire type than its declaration's")
            if len(out) > limit:
                raise WireError(f"field {number} holds more than {limit} values")
        return [v - (1 << 64) if v >= 1 << 63 else v for v in out]


def _text(value: int | memoryview | None) -> str:
    if value is None:
        return ""
    try:
        return bytes(value).decode("utf-8")  # type: ignore[arg-type]
    except UnicodeDecodeError as e:
        raise WireError(f"a string field is not UTF-8: {e}") from e
