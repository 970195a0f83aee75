"""The ``torch`` exporter: ``model.pt2``, a ``torch.export`` program of the policy's network.

It loads with torch alone: ``torch.export.load(path).module()`` is a callable
that takes ``obs`` (float32 ``[batch, *obs_shape]``, any batch size, 0
included) and returns a dict of the outputs by name (``action_dist_inputs``,
then ``vf_preds`` where the policy has one). The program is rebuilt from the
:class:`amber.export.ModelGraph` alone, as plain ATen operations: no amber
class is needed to load it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import amber
from amber.errors import MissingPluginError
from amber.export import ExportError
from amber.registry import ExportedFile, ExporterSpec

if TYPE_CHECKING:
    from amber.export import ModelGraph

__all__ = ["FILE", "SPEC", "export", "graph_module"]

#: The file this exporter writes.
FILE = "model.pt2"


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise MissingPluginError(
            f"the torch exporter needs torch ({e}); install it with: pip install torch",
            plugin="torch_export",
        ) from e
    return torch


def graph_module(graph: ModelGraph) -> Any:
    """An ``nn.Module`` computing ``graph``: ``forward(obs) -> {output name: tensor}``.

    :param graph: the network.
    :return: a torch module in eval mode, float32, on the CPU, its parameters not requiring grad.
    """
    torch = _torch()
    nn = torch.nn
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU}

    def tower(layers: Any) -> Any:
        modules: list[Any] = []
        for layer in layers:
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(layer.weight, dtype=torch.float32))
                linear.bias.copy_(torch.as_tensor(layer.bias, dtype=torch.float32))
            modules.append(linear)
            if layer.activation is not None:
                modules.append(acts[layer.activation]())
        return nn.Sequential(*modules)

    names = list(graph.towers)
    index = {name: i for i, name in enumerate(names)}
    pre = graph.preprocess
    outputs = [(o.name, o.kind, tuple(index[t] for t in o.towers), dict(o.params)) for o in graph.outputs]

    class GraphModule(nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        def __init__(self) -> None:
            super().__init__()
            self.towers = nn.ModuleList([tower(graph.towers[n]) for n in names])
            self.register_buffer("categories", torch.arange(pre.start, pre.start + pre.size))

        def forward(self, obs: Any) -> dict[str, Any]:
            if pre.kind == "one_hot":
                idx = obs.reshape(obs.shape[0], 1).to(torch.int64)
                x = (idx == self.categories).to(torch.float32)
            else:
                x = obs.reshape(obs.shape[0], math.prod(graph.obs_shape)).float()  # -1 fails on empty batches
            t = [net(x) for net in self.towers]
            result = {}
            for name, kind, towers, params in outputs:
                value = t[towers[0]]
                if kind == "squeeze":
                    value = value[:, 0]
                elif kind == "dueling":
                    adv = t[towers[1]]
                    value = value + adv - adv.mean(dim=1, keepdim=True)
                elif kind == "clip_log_std":
                    mean, log_std = value.chunk(2, dim=-1)
                    value = torch.cat([mean, log_std.clamp(params["low"], params["high"])], dim=-1)
                elif kind != "identity":
                    raise ExportError(f"the torch exporter cannot compute outputs of kind {kind!r}")
                result[name] = value
            return result

    module = GraphModule().eval()
    for param in module.parameters():  # for serving: outputs need no grad (.numpy() works on them)
        param.requires_grad_(False)
    return module


def export(graph: ModelGraph, directory: Path, options: Mapping[str, Any]) -> list[Path]:
    """Write ``model.pt2`` (``torch.export``, batch dimension dynamic) into ``directory``.

    :param graph: the network.
    :param directory: where to write (the engine's staging directory).
    :param options: none are read (it declares none).
    :return: ``[directory / "model.pt2"]``.
    """
    torch = _torch()
    module = graph_module(graph)
    example = torch.zeros((2, *graph.obs_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=0)  # an empty batch runs too
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes={"obs": {0: batch}}, strict=False)
    path = Path(directory) / FILE
    buffer = io.BytesIO()  # written by us: torch's own file writer aborts the process when the disk
    torch.export.save(program, buffer)  # fills (a C++ exception in its cleanup), not an OSError
    with open(path, "xb") as f:
        f.write(buffer.getbuffer())
    return [path]


#: This exporter, as registered: the native files of torch policies (``export_model(dir)``).
SPEC = ExporterSpec(
    name="torch", export=export, extra=None,
    description="model.pt2 (torch.export; loads with torch alone), the native files of torch policies",
    files=(ExportedFile(FILE, "torch.export.load(path).module()(obs) -> dict of outputs", "torch"),),
    native_for=("torch",),
)


@amber.hookimpl
def amber_register_exporters() -> list[ExporterSpec]:
    """Register the ``torch`` exporter (the native files of torch policies)."""
    return [SPEC]
