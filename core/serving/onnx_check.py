"""Checking ``model.onnx`` before onnxruntime loads it: :func:`check_model`.

onnxruntime runs what a model asks for. It reads an initializer stored as
external data from the path the model names (resolved against the process's
working directory when the model is given as bytes, as serving gives it), and
it computes every tensor the graph describes, however large, some of them when
the session is created (constant folding: a 400-byte ``ConstantOfShape`` asks
for gigabytes). An export amber wrote holds none of that: its exporter
(``amber.plugins.onnx_export``) writes one self-contained file of
:data:`ALLOWED_OPS` nodes, float32 and int64 initializers stored inside it.
So serving reads the model here first, with :mod:`amber.serving.protobuf`
(serving does not need the onnx package), and refuses before onnxruntime sees
a byte:

- data kept elsewhere: an initializer with external data, sparse
  initializers, model-local functions, training information;
- a node of another operator or domain, an attribute amber's exporter does
  not write, a subgraph;
- a graph whose tensors, their shapes inferred here for one observation, hold
  more than :func:`value_budget` values together (about its weights' count),
  or that would grow faster than the batch: the batch stays every tensor's
  first dimension, never multiplied with itself.

The shape rules follow the ONNX operators' definitions for the attributes
allowed; what they do not cover is refused, not guessed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from amber.errors import CorruptCheckpointError, UnsafeContentError
from amber.serving.protobuf import I32, LEN, Message, WireError

__all__ = ["ALLOWED_OPS", "INPUT_COPIES", "MIN_VALUE_BUDGET", "UnsafeModelError", "check_model",
           "value_budget"]


class UnsafeModelError(UnsafeContentError):
    """A ``model.onnx`` that reads data from other files, runs an operator amber's exporter never
    writes, or computes more than its size allows: refused before onnxruntime loads it."""


#: The operators amber's onnx exporter writes (``amber.plugins.onnx_export``), the only ones served.
ALLOWED_OPS = frozenset({"Add", "Cast", "Concat", "Equal", "Flatten", "Gather", "Gemm", "Identity", "Max",
                         "Min", "ReduceMean", "Relu", "Reshape", "Sub", "Tanh"})
#: The attributes each operator may carry (none for the others).
_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "Cast": frozenset({"to", "saturate"}), "Concat": frozenset({"axis"}), "Flatten": frozenset({"axis"}),
    "Gather": frozenset({"axis"}), "Gemm": frozenset({"alpha", "beta", "transA", "transB"}),
    "ReduceMean": frozenset({"axes", "keepdims", "noop_with_empty_axes"}),
    "Reshape": frozenset({"allowzero"}),
}
#: The default operator set's names.
_DOMAINS = ("", "ai.onnx")
#: ONNX element types: an initializer's (float32, int64, with their sizes) and what Cast may give.
_FLOAT, _INT32, _INT64, _BOOL, _DOUBLE = 1, 6, 7, 9, 11
_INITIALIZER_TYPES = {_FLOAT: 4, _INT64: 8}
_CAST_TYPES = frozenset({_FLOAT, _INT32, _INT64, _BOOL, _DOUBLE})
#: The most nodes a served graph may have (amber's exporter writes about three per layer).
MAX_NODES = 1 << 16
#: The most dimensions a tensor may have.
MAX_RANK = 16
#: The values a graph may compute for one observation however few its weights (64 KiB of float32):
#: only amber's tiniest networks compute more values than their weights (13 for 10).
MIN_VALUE_BUDGET = 1 << 14
#: Per value of one observation, the values a graph may compute besides (it and its copies: Flatten, Cast).
INPUT_COPIES = 4
#: In an inferred shape, the batch dimension (always the first, or absent).
BATCH = -1

# field numbers (onnx.proto)
_M_GRAPH, _M_OPSET, _M_TRAINING, _M_FUNCTIONS = 7, 8, 20, 25
_G_NODE, _G_INITIALIZER, _G_INPUT, _G_SPARSE = 1, 5, 11, 15
_N_INPUT, _N_OUTPUT, _N_OP, _N_ATTRIBUTE, _N_DOMAIN = 1, 2, 4, 5, 7
_A_NAME, _A_F, _A_I, _A_INTS = 1, 2, 3, 8
_A_FORBIDDEN = frozenset({4, 5, 6, 7, 9, 10, 11, 14, 15, 21, 22, 23})  # strings, tensors, graphs, refs...
_T_DIMS, _T_TYPE, _T_NAME, _T_RAW, _T_EXTERNAL, _T_LOCATION = 1, 2, 8, 9, 13, 14
_T_OTHER_DATA = frozenset({3, 4, 5, 6, 7, 10, 11})  # segment, typed value fields

Shape = tuple[int, ...]


class _Refused(Exception):
    """Why a model is refused (the message, without the path)."""


def value_budget(weights: int, input_values: int = 0) -> int:
    """The most values a model may compute for one observation, all its tensors together: its
    ``weights`` (initializers' values: amber's exporter's layers hold more weights than they compute
    values) and :data:`INPUT_COPIES` per value of the observation, at least :data:`MIN_VALUE_BUDGET`.
    A file's other bytes (a doc string) do not raise it."""
    return max(MIN_VALUE_BUDGET, weights + INPUT_COPIES * input_values)


def check_model(data: bytes, path: Path, input_name: str, input_shape: Sequence[int]) -> None:
    """Refuse ``data``, the bytes of ``path``, unless serving can run it safely (module docstring).

    :param input_name: the graph's input, as ``model.json`` names it.
    :param input_shape: one observation's shape as the graph takes it (``model.json``'s, without the batch).
    :raises UnsafeModelError: external data, an operator or attribute not allowed, or too large a
        computation (named).
    :raises CorruptCheckpointError: bytes that are not an ONNX model this can read.
    """
    try:
        graph = _graph(Message(data))
        consts = _initializers(graph)
        shapes = _fed(graph, consts, input_name, tuple(input_shape))
        weights = sum(math.prod(shape) for shape, _ in consts.values())
        _infer(graph, shapes, consts, value_budget(weights, _values(shapes[input_name])))
    except WireError as e:
        raise CorruptCheckpointError(f"{path}: not a well-formed ONNX model: {e}", path=path) from e
    except _Refused as e:
        raise UnsafeModelError(f"{path}: refused before onnxruntime loads it: {e} (amber.serve runs only "
                               "what amber's onnx exporter writes)", path=path) from None
    except (ArithmeticError, LookupError, TypeError, ValueError) as e:  # what the rules did not foresee
        raise UnsafeModelError(f"{path}: refused before onnxruntime loads it: it cannot be checked "
                               f"({type(e).__name__}: {e})", path=path) from e


def _graph(model: Message) -> Message:
    for number, what in ((_M_TRAINING, "training information"), (_M_FUNCTIONS, "model-local functions")):
        if model.count(number):
            raise _Refused(f"it holds {what}")
    for opset in model.messages(_M_OPSET):
        if opset.text(1) not in _DOMAINS:
            raise _Refused(f"it imports the operator set {opset.text(1)!r}")
    graph = model.one(_M_GRAPH, LEN)
    if graph is None:
        raise _Refused("it holds no graph")
    return Message(graph)


def _initializers(graph: Message) -> dict[str, tuple[Shape, list[int] | None]]:
    """Each initializer's shape, and its values where it is a short int64 vector (a shape, axes)."""
    if graph.count(_G_SPARSE):
        raise _Refused("it holds sparse initializers")
    out: dict[str, tuple[Shape, list[int] | None]] = {}
    for tensor in graph.messages(_G_INITIALIZER):
        name = tensor.text(_T_NAME)
        if not name or name in out:
            raise _Refused(f"two initializers or an unnamed one ({name!r})")
        out[name] = _initializer(tensor, name)
    return out


def _initializer(tensor: Message, name: str) -> tuple[Shape, list[int] | None]:
    if tensor.count(_T_EXTERNAL) or tensor.integer(_T_LOCATION) != 0:
        where = [_entry(e) for e in tensor.messages(_T_EXTERNAL)]
        location = next((v for k, v in where if k == "location"), None)
        raise _Refused(f"its initializer {name!r} keeps its data outside the file (external data at "
                       f"{location!r}); amber's exporter never writes external data")
    dtype = tensor.integer(_T_TYPE)
    itemsize = _INITIALIZER_TYPES.get(dtype)
    if itemsize is None:
        raise _Refused(f"its initializer {name!r} has element type {dtype} (float32 and int64 are written)")
    if tensor.numbers() & _T_OTHER_DATA:
        raise _Refused(f"its initializer {name!r} keeps its values elsewhere than in raw_data")
    dims = tuple(tensor.integers(_T_DIMS, MAX_RANK))
    raw = tensor.one(_T_RAW, LEN)
    size = len(raw) if isinstance(raw, memoryview) else 0
    if any(d < 0 for d in dims) or size != math.prod(dims) * itemsize:
        raise _Refused(f"its initializer {name!r} holds {size} bytes, not the {itemsize}-byte values "
                       f"of its shape {list(dims)}")
    if dtype != _INT64 or len(dims) > 1 or size > 8 * MAX_RANK or not isinstance(raw, memoryview):
        return dims, None
    return dims, [int.from_bytes(raw[i:i + 8], "little", signed=True) for i in range(0, size, 8)]


def _entry(entry: Message) -> tuple[str, str]:
    """A ``StringStringEntryProto``'s key and value."""
    return entry.text(1), entry.text(2)


def _fed(graph: Message, consts: Mapping[str, tuple[Shape, Any]], input_name: str,
         input_shape: Shape) -> dict[str, Shape]:
    """The shapes known before the first node: the initializers', and the fed input's."""
    fed = [name for name in (v.text(1) for v in graph.messages(_G_INPUT)) if name not in consts]
    if fed != [input_name]:
        raise _Refused(f"its graph takes {fed}, model.json says it takes {input_name!r} alone")
    if len(input_shape) >= MAX_RANK or any(d < 0 for d in input_shape):
        raise _Refused(f"model.json gives its input the shape {list(input_shape)}")
    shapes = {name: shape for name, (shape, _) in consts.items()}
    shapes[input_name] = (BATCH, *input_shape)
    return shapes


def _values(shape: Shape) -> int:
    """How many values a tensor of ``shape`` holds for one observation."""
    return math.prod(d for d in shape if d != BATCH)


def _infer(graph: Message, shapes: dict[str, Shape], consts: Mapping[str, tuple[Shape, list[int] | None]],
           budget: int) -> None:
    """Infer each node's output shape in turn, refusing what is not allowed or exceeds ``budget``."""
    if graph.count(_G_NODE) > MAX_NODES:
        raise _Refused(f"its graph has {graph.count(_G_NODE)} nodes, more than {MAX_NODES}")
    total = sum(_values(shape) for name, shape in shapes.items() if name not in consts)
    for node in graph.each(_G_NODE):
        op, domain = node.text(_N_OP), node.text(_N_DOMAIN)
        if op not in ALLOWED_OPS or domain not in _DOMAINS:
            raise _Refused(f"its graph has a {op!r} node{f' of domain {domain!r}' if domain else ''}, an "
                           "operator amber's exporter never writes")
        outputs = node.texts(_N_OUTPUT)
        if len(outputs) != 1 or not outputs[0] or outputs[0] in shapes:
            raise _Refused(f"its {op} node's outputs {outputs} are not one new tensor")
        inputs: list[tuple[Shape, list[int] | None] | None] = []
        for name in node.texts(_N_INPUT):
            if name and name not in shapes:
                raise _Refused(f"its {op} node uses {name!r} before any node computes it")
            inputs.append((shapes[name], consts[name][1] if name in consts else None) if name else None)
        shape = _RULES[op](inputs, _attributes(node, op))
        if len(shape) > MAX_RANK or BATCH in shape[1:]:
            raise _Refused(f"its {op} node gives {outputs[0]!r} the shape {_show(shape)}")
        total += _values(shape)
        if total > budget:
            raise _Refused(f"its graph computes more than {budget} values for one observation "
                           f"(at its {op} node giving {outputs[0]!r} the shape {_show(shape)})")
        shapes[outputs[0]] = shape


def _show(shape: Shape) -> str:
    return "[" + ", ".join("batch" if d == BATCH else str(d) for d in shape) + "]"


def _attributes(node: Message, op: str) -> dict[str, Any]:
    """A node's attributes by name (ints, floats, lists of ints), only those ``op`` may carry."""
    out: dict[str, Any] = {}
    for attr in node.messages(_N_ATTRIBUTE):
        name = attr.text(_A_NAME)
        if name not in _ATTRIBUTES.get(op, ()) or name in out or attr.numbers() & _A_FORBIDDEN:
            raise _Refused(f"its {op} node has an attribute {name!r} amber's exporter never writes")
        if sum(map(attr.count, (_A_F, _A_I, _A_INTS))) != 1:
            raise _Refused(f"its {op} node's attribute {name!r} has no value, or several")
        if attr.count(_A_INTS):
            out[name] = attr.integers(_A_INTS, MAX_RANK)
        elif attr.count(_A_F):
            bits = attr.one(_A_F, I32)
            out[name] = struct.unpack("<f", int(bits or 0).to_bytes(4, "little"))[0]
        else:
            out[name] = attr.integer(_A_I)
    return out


# -- the shape of each operator's output ----------------------------------------------------------

_Input = tuple[Shape, list[int] | None] | None


def _int(attrs: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = attrs.get(name, default)
    if not isinstance(value, int):
        raise _Refused(f"attribute {name!r} is {value!r}, not an int")
    return value


def _shapes(inputs: Sequence[_Input], low: int, high: int) -> list[Shape]:
    """The inputs' shapes: from ``low`` to ``high`` of them, none left out."""
    if not low <= len(inputs) <= high or any(i is None for i in inputs):
        raise _Refused(f"a node takes {len(inputs)} inputs (or leaves one out)")
    return [i[0] for i in inputs if i is not None]


def _axis(axis: int, rank: int, *, end: bool = False) -> int:
    top = rank if end else rank - 1
    if not -rank <= axis <= top:
        raise _Refused(f"axis {axis} is outside a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis


def _broadcast(shapes: Sequence[Shape]) -> Shape:
    """ONNX's multidirectional broadcasting; the batch dimension meets only itself or 1."""
    rank = max(map(len, shapes))
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0} - {1}
        if len(dims) > 1:
            raise _Refused(f"shapes {', '.join(map(_show, shapes))} do not broadcast together")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _unary(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    if "to" in attrs and _int(attrs, "to") not in _CAST_TYPES:
        raise _Refused(f"Cast to element type {attrs['to']}")
    return _shapes(inputs, 1, 1)[0]


def _flatten(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    shape = _shapes(inputs, 1, 1)[0]
    axis = _axis(_int(attrs, "axis", 1), len(shape), end=True)
    head, tail = shape[:axis], shape[axis:]
    if BATCH in tail or (BATCH in head and _values(head) != 1):
        raise _Refused(f"Flatten at axis {axis} folds the batch of {_show(shape)} into another dimension")
    return (BATCH if BATCH in head else math.prod(head), math.prod(tail))


def _reshape(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    data = _shapes(inputs, 2, 2)[0]
    target = inputs[1][1] if inputs[1] is not None else None
    refused = _Refused(f"a Reshape of {_show(data)} to {target}")
    if target is None:
        raise _Refused("a Reshape to a shape that is not a constant int64 vector")
    copy = not _int(attrs, "allowzero", 0)  # 0 copies the input's dimension, -1 is inferred
    if any(s < -1 for s in target) or target.count(-1) > 1 or \
            (copy and any(s == 0 and i >= len(data) for i, s in enumerate(target))):
        raise refused
    out: list[int | None] = [None if s == -1 else data[i] if s == 0 and copy else s
                             for i, s in enumerate(target)]
    whole = _values(data)
    known = math.prod(d for d in out if d is not None and d != BATCH)
    if BATCH in data and BATCH not in out:
        if out[:1] != [None] or known != whole:  # the batch must be the inferred dimension, first
            raise _Refused(f"a Reshape of {_show(data)} to {target} moves its batch")
        out[0] = BATCH
    elif None in out:
        if known == 0 or whole % known:
            raise refused
        out[out.index(None)] = whole // known
    shape = tuple(d for d in out if d is not None)
    if _values(shape) != whole:
        raise refused
    return shape


def _gemm(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    if len(inputs) > 3:
        raise _Refused(f"a Gemm of {len(inputs)} inputs")
    a, w = _shapes(inputs[:2], 2, 2)
    bias = [i[0] for i in inputs[2:] if i is not None]  # (optional)
    if len(a) != 2 or len(w) != 2 or BATCH in w:
        raise _Refused(f"a Gemm of {_show(a)} by {_show(w)}")
    m, k = (a[1], a[0]) if _int(attrs, "transA", 0) else a
    k2, n = (w[1], w[0]) if _int(attrs, "transB", 0) else w
    if k == BATCH or k != k2:
        raise _Refused(f"a Gemm of {_show(a)} by {_show(w)}")
    if bias and _broadcast([(m, n), bias[0]]) != (m, n):
        raise _Refused(f"a Gemm's bias of shape {_show(bias[0])} for its output {_show((m, n))}")
    return (m, n)


def _gather(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    data, indices = _shapes(inputs, 2, 2)
    axis = _axis(_int(attrs, "axis", 0), len(data))
    if BATCH in indices or (axis == 0 and BATCH in data):
        raise _Refused(f"a Gather from {_show(data)} at {_show(indices)} across the batch")
    return data[:axis] + indices + data[axis + 1:]


def _elementwise(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    return _broadcast(_shapes(inputs, 2, 2))


def _variadic(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    return _broadcast(_shapes(inputs, 1, MAX_RANK))


def _reduce_mean(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    data = _shapes(inputs[:1], 1, 1)[0]
    axes = attrs.get("axes")
    if axes is not None and not isinstance(axes, list):
        raise _Refused(f"a ReduceMean over axes {axes!r}")
    if len(inputs) > 2 or (len(inputs) == 2 and inputs[1] is not None and axes is not None):
        raise _Refused("a ReduceMean with two lists of axes")
    if len(inputs) == 2 and inputs[1] is not None:
        axes = inputs[1][1]
        if axes is None:
            raise _Refused("a ReduceMean over axes that are not a constant int64 vector")
    if not axes and _int(attrs, "noop_with_empty_axes", 0):
        return data
    reduced = {_axis(a, len(data)) for a in axes} if axes else set(range(len(data)))
    if any(data[a] == BATCH for a in reduced):
        raise _Refused(f"a ReduceMean of {_show(data)} across the batch")
    if _int(attrs, "keepdims", 1):
        return tuple(1 if i in reduced else d for i, d in enumerate(data))
    return tuple(d for i, d in enumerate(data) if i not in reduced)


def _concat(inputs: Sequence[_Input], attrs: Mapping[str, Any]) -> Shape:
    shapes = _shapes(inputs, 1, MAX_RANK)
    rank = len(shapes[0])
    axis = _axis(_int(attrs, "axis"), rank) if rank else -1
    batched = {BATCH in s for s in shapes}
    if any(len(s) != rank for s in shapes) or axis < 0 or batched == {True, False} or \
            (True in batched and axis == 0):
        raise _Refused(f"a Concat of {', '.join(map(_show, shapes))} at axis {attrs.get('axis')}")
    if any(len({s[i] for s in shapes}) > 1 for i in range(rank) if i != axis):
        raise _Refused(f"a Concat of {', '.join(map(_show, shapes))} at axis {axis}")
    return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]


_RULES: Mapping[str, Callable[[Sequence[_Input], Mapping[str, Any]], Shape]] = {
    "Identity": _unary, "Tanh": _unary, "Relu": _unary, "Cast": _unary, "Flatten": _flatten,
    "Reshape": _reshape, "Gemm": _gemm, "Gather": _gather, "Add": _elementwise, "Sub": _elementwise,
    "Equal": _elementwise, "Max": _variadic, "Min": _variadic, "ReduceMean": _reduce_mean, "Concat": _concat,
}
