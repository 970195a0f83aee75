"""The ``pickle`` format: cloudpickle, holds any Python object.

Not portable across Python versions and not safe to read from strangers
(unpickling runs code); amber refuses it under safe loading. Arrays are
pickled out of band (protocol 5): their bytes follow the pickle stream in
the same file, 64-byte aligned, and are read back without a copy.

File layout of ``<stem>.pkl``: the pickle stream, then each out-of-band
buffer (aligned), then a trailer: ``<Q pickle length>``, one ``<QQ offset,
length>`` per buffer, ``<Q buffer count>`` and the 8 bytes ``AMBRPKL1``.
A state without arrays is thus also a plain pickle file.

Pickle stores a class or function of an importable module by its module and
name. Reading one where that module cannot be imported, or no longer defines
that name, is an :class:`~amber.errors.IncompatibleCodeError` naming the
file, the module and the name, and the amber and Python versions that wrote
the checkpoint (from its ``checkpoint.json``): the file is intact, written by
other code.

A function or class without an importable name (a lambda, a local function,
one of ``__main__``) is pickled by value, as bytecode, which only the Python
version (major.minor) that wrote it runs: another one may crash on it or run
something else. A pickle that another Python version wrote is therefore
scanned, opcode by opcode and without unpickling, for code objects; one that
holds any is an :class:`~amber.errors.IncompatibleCodeError` naming both
versions and the way out. The scan costs nothing when the versions match.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

import amber
from amber.errors import IncompatibleCodeError
from amber.registry import Capabilities, FormatSpec, StateSink, StateSource
from amber.state_read import other_python, running, written_by

MAGIC = b"AMBRPKL1"
ALIGN = 64
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
#: Opcodes that push a str (the arguments of the globals a stream names).
_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                      "SHORT_BINSTRING"})
#: Opcodes that push no value and leave the last ones as they were (framing, marks, the memo's writes).
_PASSING = frozenset({"PROTO", "FRAME", "MARK", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})


@functools.cache
def _pickler() -> type:
    """cloudpickle's pickler, with arrays that are neither C- nor Fortran-contiguous pickled as a
    contiguous copy: numpy 2.4 pickles such an array of non-native byte order with the native one
    (``>f4`` comes back ``<f4``). cloudpickle is imported here, by the first save, not with the
    plugin: loading every plugin (to know the names they register) leaves it out of a process that
    only serves policies."""
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is np.ndarray and not (obj.flags.c_contiguous or obj.flags.f_contiguous):
                return np.ascontiguousarray(obj).__reduce_ex__(5)
            return super().reducer_override(obj)

    return Pickler


def write(state: Any, sink: StateSink) -> None:
    """Pickle ``state`` with its arrays' buffers out of band, in one file."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _pickler()(out, protocol=5, buffer_callback=buffers.append).dump(state)
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
    writer = other_python(getattr(source, "python_version", None))  # (an older engine's source lacks it)
    if writer is not None and _code_in(buf[:payload_len]) is not None:
        raise _foreign_code(source, writer)
    try:
        return pickle.loads(buf[:payload_len], buffers=views)  # (C throughout: the common case)
    except (ImportError, AttributeError):
        pass  # which code is missing? read again, looking at each class and function named
    unpickler = _Unpickler(io.BytesIO(buf[:payload_len]), buffers=views)
    try:
        return unpickler.load()
    except _MissingCode as e:
        raise _incompatible(source, e.module, e.name, e.reason) from e.__cause__
    except ImportError as e:  # a reducer the file names imports a module (cloudpickle's subimport)
        if not e.name:
            raise
        raise _incompatible(source, e.name, None, str(e)) from e


def _code_in(stream: memoryview) -> str | None:
    """The global a pickle stream rebuilds a function or code object with (``module.name``), found
    by reading its opcodes: nothing is unpickled; None when the stream holds no code object.

    A function pickled by value is rebuilt by one of cloudpickle's function builders
    (:data:`_CODE_BUILDERS`), whatever its arguments; a bare code object by ``types.CodeType`` or by
    ``_builtin_type`` called with ``"CodeType"``. A stream names a global by two strings and
    ``STACK_GLOBAL`` (or by ``GLOBAL``), and any str it pushes may be one read back from the memo
    (a str written earlier in the state is); so the memo is followed for strs and globals alike.
    """
    raw = bytes(stream)
    if not any(word in raw for word in _CODE_WORDS):  # a Pickler writes each name literally once
        return None
    memo: dict[int, Any] = {}
    last: list[Any] = [None, None]  # the two values pushed last: a str, a global (module, name) or None
    for op, arg, _ in pickletools.genops(io.BytesIO(stream)):
        name = op.name
        if name in _PASSING:
            if name not in ("PROTO", "FRAME", "MARK"):
                memo[len(memo) if name == "MEMOIZE" else arg] = last[-1]
            continue
        pushed: Any = None
        if name in _STRINGS:
            pushed = arg
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, qualname = arg.split(" ", 1) if name == "GLOBAL" else last
            if not isinstance(module, str) or not isinstance(qualname, str):
                raise ValueError("STACK_GLOBAL without its module and name")  # (never written by a Pickler)
            pushed = (module, qualname)
            if _builds_code(module, qualname):
                return f"{module}.{qualname}"
        caller = last[-1]  # _builtin_type("CodeType"): the str (pushed or from the memo) follows the global
        if _is_builtin_type(caller) and (not isinstance(pushed, str) or pushed == "CodeType"):
            return f"{caller[0]}._builtin_type({pushed!r})"
        last = [last[-1], pushed]
    return None


#: cloudpickle's globals (of any of its versions) that rebuild a function from bytecode.
_CODE_BUILDERS = frozenset({"_make_function", "_make_skel_func", "_fill_function", "_function_setstate"})
#: The names one of which any stream holding a code object spells out (the scan's quick exit).
_CODE_WORDS = tuple(w.encode() for w in (*_CODE_BUILDERS, "CodeType", "_builtin_type"))


def _builds_code(module: str, qualname: str) -> bool:
    """Whether the global ``module.qualname`` rebuilds a function or code object by itself."""
    if (module, qualname) == ("types", "CodeType"):
        return True
    return "cloudpickle" in module and qualname in _CODE_BUILDERS


def _is_builtin_type(value: Any) -> bool:
    """Whether ``value`` (as :func:`_code_in` tracks values) is cloudpickle's ``_builtin_type``,
    which returns the ``types`` member it is called with (``"CodeType"`` among them)."""
    return isinstance(value, tuple) and value[1] == "_builtin_type" and "cloudpickle" in value[0]


def _foreign_code(source: StateSource, writer: str) -> IncompatibleCodeError:
    """The refusal of a pickle holding code objects that the Python ``writer`` (major.minor) wrote,
    made before anything is unpickled."""
    return IncompatibleCodeError(
        f"{source.path} holds Python bytecode (a lambda, or a function without an importable name, "
        f"pickled by value), written by {written_by(source)}; this is {running()}. Bytecode runs "
        "only on the Python version that compiled it (here it could crash the interpreter or compute "
        f"something else), so nothing was unpickled; the file is intact. Load it with Python {writer} "
        "and convert it there (`amber convert CKPT DST --format msgpack`: a function without a "
        "registered name becomes a placeholder that loading asks for again, as "
        "Algorithm.from_checkpoint(path, policy_mapping_fn=...)), or register the function by name "
        "with amber.register_class before saving (see docs/checkpoints.md)",
        path=source.path, format="pickle",
    )


class _MissingCode(Exception):
    """A module or name the stream refers to that the installed code lacks (raised inside the unpickler)."""

    def __init__(self, module: str, name: str | None, reason: str) -> None:
        super().__init__(module, name, reason)
        self.module, self.name, self.reason = module, name, reason


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that says which module or name a stream refers to is missing."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except ImportError as e:
            raise _MissingCode(module, None, str(e)) from e
        except AttributeError as e:
            if module not in sys.modules:  # raised by the module's own code as it was imported
                raise
            raise _MissingCode(module, name, str(e)) from e


def _incompatible(source: StateSource, module: str, name: str | None, reason: str) -> IncompatibleCodeError:
    """The error for a module (``name`` None) or a name in it that the installed code lacks."""
    path = source.path
    versions = f"{written_by(source)}; this is {running()}"
    if name is None:
        message = (f"{path} holds a class, function or object defined in the module {module!r}, which "
                   f"cannot be imported here ({reason}): the file is intact, written where that module "
                   f"was importable ({versions}). Make that module importable (install it, or put its "
                   "directory on sys.path) and load again")
    else:
        message = (f"{path} holds {module + '.' + name!r}, but the installed module {module!r} does not "
                   f"define {name!r}: the file is intact, written by other code ({versions}). Load it "
                   f"where the version of {module!r} that wrote it is installed, or define {name!r} in "
                   f"{module!r} again (an alias of what replaced it, say) and load again")
    message += (". A checkpoint saved after amber.register_class of those classes and functions refers "
                "to them by registered name instead")
    return IncompatibleCodeError(message, module=module, name=name, path=path, format="pickle")


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
