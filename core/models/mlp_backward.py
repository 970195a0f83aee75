"""A Linear/Tanh/ReLU MLP's forward and backward pass by hand, for training loops that step it often.

Autograd costs a few microseconds per operation and allocates every
intermediate; on the small networks of RL (two [256, 256] layers, minibatches
of 128 rows) that is as much time as the arithmetic. :class:`MLPPass` runs the
same computation in the fewest torch ops: ``addmm`` per layer into
preallocated buffers, activations and their derivatives in place, and each
gradient written straight into a given tensor (a view of a flat gradient
buffer such as :class:`~amber.models.flat_adam.FlatAdam`'s), so nothing is
accumulated, zeroed or gathered afterwards.

Tanh is computed as ``2 sigmoid(2x) - 1``, as
:func:`~amber.models.torch_mlp.train_forward` does (within about 2e-7 of
``torch.tanh``, and several times faster on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLPPass"]

_ACTS = ("tanh", "relu", None)
_NARROW = 32  # input widths up to this take the transposed route for the first layer's weight gradient


class MLPPass:
    """Forward and backward passes of one MLP, with the gradients written into given tensors.

    :param layers: ``[(linear, activation after it)]`` as
        :func:`~amber.models.torch_mlp.linear_layers` returns them; the activation is
        ``"tanh"``, ``"relu"`` or None.
    :param grads: ``[(weight_grad, bias_grad)]``, one pair per layer, shaped as the
        layer's weight and bias: :meth:`backward` overwrites them.
    :param max_rows: the largest batch :meth:`forward` will see (buffers are this tall).
    :raises ValueError: an unknown activation, or gradients not shaped as the weights.
    """

    def __init__(self, layers: Sequence[tuple[nn.Linear, str | None]],
                 grads: Sequence[tuple[torch.Tensor, torch.Tensor]], max_rows: int) -> None:
        if len(grads) != len(layers) or not layers:
            raise ValueError("one (weight_grad, bias_grad) pair per layer is needed")
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        for (linear, act), (gw, gb) in zip(layers, grads, strict=True):
            if act not in _ACTS:
                raise ValueError(f"unknown activation {act!r}")
            if gw.shape != linear.weight.shape or linear.bias is None or gb.shape != linear.bias.shape:
                raise ValueError("gradients must be shaped as the layer's weight and bias")
            # detached aliases: the pass never records autograd history, and sees in-place updates
            self.weights.append((linear.weight.detach(), linear.bias.detach()))
        self.acts = tuple(act for _, act in layers)
        self.grads = [(gw, gb) for gw, gb in grads]
        dtype = self.weights[0][0].dtype
        rows = int(max_rows)
        self._outs = [torch.empty(rows, w.shape[0], dtype=dtype) for w, _ in self.weights]
        self._back = [torch.empty(rows, w.shape[1], dtype=dtype) for w, _ in self.weights[1:]]
        # a narrow input (e.g. 4 observation features): ``x.t() @ g`` then a transposed copy is
        # several times faster than ``g.t() @ x`` straight into the weight's layout
        first = self.weights[0][0]
        self._narrow = (torch.empty(first.shape[1], first.shape[0], dtype=dtype) if first.shape[1] <= _NARROW
                        else None)
        self._x: torch.Tensor | None = None
        self._one = torch.ones((), dtype=dtype)
        self._wt = [w.t() for w, _ in self.weights]
        self._views: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    @property
    def out_features(self) -> int:
        """The width of the output."""
        return int(self.weights[-1][0].shape[0])

    def _rows(self, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The buffers' first ``n`` rows (views made once per batch size)."""
        views = self._views.get(n)
        if views is None:
            views = self._views[n] = ([buf[:n] for buf in self._outs], [buf[:n] for buf in self._back])
        return views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output on ``x`` ``[n, in]`` (a view of a buffer the next call overwrites).

        Remembers ``x`` and the activations for :meth:`backward`.
        """
        outs, _ = self._rows(x.shape[0])
        h = x
        for (_, b), wt, act, out in zip(self.weights, self._wt, self.acts, outs, strict=True):
            if act == "tanh":  # tanh(z) = 2 sigmoid(2z) - 1, the 2z from addmm's scaling (exact)
                torch.addmm(b, h, wt, beta=2.0, alpha=2.0, out=out)
                torch.sigmoid(out, out=out)
                out.add_(out).sub_(self._one)  # a tensor, not a Python number: no conversion per call
            else:
                torch.addmm(b, h, wt, out=out)
                if act == "relu":
                    out.relu_()
            h = out
        self._x = x
        return h

    def backward(self, grad: torch.Tensor) -> None:
        """Write the gradients of ``sum(grad * output)`` into the gradient tensors.

        :param grad: the loss's gradient with respect to the last :meth:`forward`'s output,
            ``[n, out]``; it may be overwritten.
        """
        x = self._x
        if x is None:
            raise RuntimeError("backward() needs a forward() first")
        outs, backs = self._rows(grad.shape[0])
        g = grad
        for i in range(len(self.weights) - 1, -1, -1):
            if self.acts[i] == "tanh":
                torch.ops.aten.tanh_backward.grad_input(g, outs[i], grad_input=g)
            elif self.acts[i] == "relu":
                torch.ops.aten.threshold_backward.grad_input(g, outs[i], 0.0, grad_input=g)
            gw, gb = self.grads[i]
            if i > 0:
                torch.mm(g.t(), outs[i - 1], out=gw)
            elif self._narrow is not None:
                gw.copy_(torch.mm(x.t(), g, out=self._narrow).t())
            else:
                torch.mm(g.t(), x, out=gw)
            torch.sum(g, 0, out=gb)
            if i > 0:
                g = torch.mm(g, self.weights[i][0], out=backs[i - 1])
