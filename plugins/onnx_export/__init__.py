"""The ``onnx`` exporter: ``model.onnx``, built from the policy's :class:`amber.export.ModelGraph`.

The ONNX graph is written node by node with ``onnx.helper`` (Flatten, Gemm,
Tanh, Relu, Gather, ReduceMean, Max/Min, Concat; Cast and Equal for one-hot
observations): no tracing, no torch.onnx, no onnxscript. The weights are
initializers inside the one file: external data is never written, so the
model is one self-contained file and loading it never reads another path.

Input ``obs``: float32 ``[batch, *obs_shape]``, the batch dimension dynamic
(``dim_param "batch"``; an empty batch runs too). Outputs: the graph's, by
name (``action_dist_inputs``, then ``vf_preds`` where the policy has one).
Opsets from :data:`MIN_OPSET` to the installed onnx's newest are written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import amber
from amber.errors import MissingPluginError
from amber.export import ExportError
from amber.registry import ExportedFile, ExporterSpec

if TYPE_CHECKING:
    from amber.export import ModelGraph, Output

__all__ = ["DEFAULT_OPSET", "FILE", "MIN_OPSET", "SPEC", "build_model", "export"]

#: The file this exporter writes.
FILE = "model.onnx"
#: The pip extra of amber that brings onnx (``amber-rl[onnx]``).
EXTRA = "onnx"
#: The oldest opset written.
MIN_OPSET = 11
#: The opset used when none is given (``format="onnx"``).
DEFAULT_OPSET = 17
#: Protobuf cannot serialize a message of 2 GiB or more; bigger models would need external data.
_MAX_BYTES = 2**31 - 1


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise MissingPluginError(f"the onnx exporter needs the onnx package ({e}); {SPEC.install_hint}",
                                 plugin="onnx_export") from e
    return onnx


class _Builder:
    """Nodes and initializers, with fresh internal names."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"_{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, *, out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def reduce_mean(self, x: str, axis: int) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            return self.op("ReduceMean", [x, self.const("axes", np.array([axis], np.int64))], "mean",
                           keepdims=1)
        return self.op("ReduceMean", [x], "mean", axes=[axis], keepdims=1)


def build_model(graph: ModelGraph, opset: int) -> Any:
    """The ``onnx.ModelProto`` computing ``graph``.

    :param graph: the network.
    :param opset: the ONNX opset (default domain).
    :raises ExportError: an opset outside what is supported, or an unknown output kind.
    """
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(f"ONNX opset {opset} is not supported: use {MIN_OPSET} to {newest} "
                         f"(the installed onnx {onnx.__version__} knows up to {newest})")
    b = _Builder(onnx, opset)
    tp = onnx.TensorProto
    pre = graph.preprocess
    if pre.kind == "one_hot":
        idx = b.op("Cast", ["obs"], "obs_int", to=tp.INT64)
        idx = b.op("Reshape", [idx, b.const("shape", np.array([-1, 1], np.int64))], "obs_col")
        cats = b.const("categories", np.arange(pre.start, pre.start + pre.size, dtype=np.int64))
        hit = b.op("Equal", [idx, cats], "one_hot_bool")
        x = b.op("Cast", [hit], "features", to=tp.FLOAT)
    else:
        # Flatten, not Reshape [0, -1]: onnxruntime cannot infer -1 from an empty batch's 0 elements
        x = b.op("Flatten", ["obs"], "features", axis=1)

    towers: dict[str, str] = {}
    for tname, layers in graph.towers.items():
        h = x
        for i, layer in enumerate(layers):
            w = b.const(f"{tname}_{i}_weight", np.asarray(layer.weight, np.float32))
            bias = b.const(f"{tname}_{i}_bias", np.asarray(layer.bias, np.float32))
            h = b.op("Gemm", [h, w, bias], f"{tname}_{i}", transB=1)
            if layer.activation == "tanh":
                h = b.op("Tanh", [h], f"{tname}_{i}_tanh")
            elif layer.activation == "relu":
                h = b.op("Relu", [h], f"{tname}_{i}_relu")
        towers[tname] = h

    outputs = [onnx.helper.make_tensor_value_info(out.name, tp.FLOAT, _output(b, graph, out, towers))
               for out in graph.outputs]

    inputs = [onnx.helper.make_tensor_value_info("obs", tp.FLOAT, ["batch", *graph.obs_shape])]
    onnx_graph = onnx.helper.make_graph(b.nodes, "amber_policy", inputs, outputs, initializer=b.inits)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(
        onnx_graph, opset_imports=opsets, producer_name="amber", producer_version=amber.__version__,
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
    )
    model.doc_string = "policy network exported by amber; see model.json beside it"
    return model


def _output(b: _Builder, graph: ModelGraph, out: Output, towers: Mapping[str, str]) -> list[Any]:
    """Add the nodes computing one output (named ``out.name``); return its shape."""
    t = towers[out.towers[0]]
    width = _width(graph, out.towers[0])
    if out.kind == "identity":
        b.op("Identity", [t], out.name, out=out.name)
        return ["batch", width]
    if out.kind == "squeeze":
        b.op("Gather", [t, b.const("zero", np.array(0, np.int64))], out.name, out=out.name, axis=1)
        return ["batch"]
    if out.kind == "dueling":
        adv = towers[out.towers[1]]
        total = b.op("Add", [t, adv], "v_plus_a")
        b.op("Sub", [total, b.reduce_mean(adv, 1)], out.name, out=out.name)
        return ["batch", _width(graph, out.towers[1])]
    if out.kind == "clip_log_std":
        half = width // 2
        mean = b.op("Gather", [t, b.const("first", np.arange(half, dtype=np.int64))], "mean", axis=1)
        log_std = b.op("Gather", [t, b.const("second", np.arange(half, width, dtype=np.int64))],
                       "log_std", axis=1)
        low = b.const("low", np.array(out.params["low"], np.float32))
        high = b.const("high", np.array(out.params["high"], np.float32))
        clipped = b.op("Min", [b.op("Max", [log_std, low], "log_std_low"), high], "log_std_clipped")
        b.op("Concat", [mean, clipped], out.name, out=out.name, axis=1)
        return ["batch", width]
    raise ExportError(f"the onnx exporter cannot compute outputs of kind {out.kind!r}")


def _width(graph: ModelGraph, tower: str) -> int:
    return int(graph.towers[tower][-1].weight.shape[0])


def export(graph: ModelGraph, directory: Path, options: Mapping[str, Any]) -> list[Path]:
    """Write ``model.onnx`` into ``directory``, checked with ``onnx.checker``.

    :param graph: the network.
    :param directory: where to write (the engine's staging directory).
    :param options: ``opset`` (default :data:`DEFAULT_OPSET`; ``export_model(dir, onnx=OPSET)`` passes it).
    :return: ``[directory / "model.onnx"]``.
    :raises ExportError: an opset that is not a supported int, or a model too big for one ONNX file.
    """
    opset = options.get("opset", DEFAULT_OPSET)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ExportError(f"onnx must be an opset number (an int), not {opset!r}")
    onnx = _onnx()
    model = build_model(graph, int(opset))
    if model.ByteSize() > _MAX_BYTES:
        raise ExportError(f"the model is {model.ByteSize()} bytes: too big for one ONNX file (2 GiB), "
                         "and the onnx exporter never writes external data")
    onnx.checker.check_model(model, full_check=True)
    path = Path(directory) / FILE
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return [path]


#: This exporter, as registered.
SPEC = ExporterSpec(
    name="onnx", export=export, extra=EXTRA,
    description="model.onnx (dynamic batch; loads with onnxruntime alone): "
                "policy.export_model(dir, onnx=OPSET)",
    files=(ExportedFile(FILE, "onnxruntime.InferenceSession(path).run(None, {'obs': obs})", "onnxruntime"),),
    shorthand="onnx", shorthand_option="opset", options=("opset",),
)


@amber.hookimpl
def amber_register_exporters() -> list[ExporterSpec]:
    """Register the ``onnx`` exporter (``export_model(dir, onnx=OPSET)`` or ``format="onnx"``)."""
    return [SPEC]
