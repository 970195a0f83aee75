"""Adam over one flat buffer: the update of ``torch.optim.Adam`` in one kernel call.

A small network's parameters are many small tensors; ``torch.optim.Adam``
spends more time organising them than computing (about 0.7 ms a step for two
[256, 256] MLPs on one CPU core). :class:`FlatAdam` lays a plain Adam
optimizer's parameters, gradients and moments out in contiguous buffers and
makes every parameter, gradient and optimizer-state tensor a *view* into
them, so one step is one call of torch's fused Adam kernel (the one
``torch.optim.Adam(fused=True)`` runs, so the numbers are the same; six
vectorised ops where torch lacks it), and the optimizer's ``state_dict()``
(and so every checkpoint) stays exactly torch's.
"""

from __future__ import annotations

import math

import torch

from amber.snapshots import wait_for_snapshot

__all__ = ["FlatAdam", "flat_adam"]

_ALIGN = 16  # floats: 64 bytes

#: torch's fused Adam kernel (reads the step count, updates parameters and moments in one pass).
_FUSED_KERNEL = getattr(torch, "_fused_adam_", None)


def _supported(optimizer: torch.optim.Optimizer) -> bool:
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"] or group.get("capturable") \
            or group.get("differentiable") or isinstance(group["lr"], torch.Tensor):
        return False
    params = group["params"]
    if not params or any(p.dtype != torch.float32 or p.device.type != "cpu" or p.is_sparse
                         or not p.requires_grad for p in params):
        return False
    states = [optimizer.state.get(p) for p in params]
    if any(s for s in states) and not all(s for s in states):
        return False  # some parameters were stepped and others not: leave it to torch
    return all(not s or _fits(s, p) for s, p in zip(states, params, strict=True))


def _fits(state: dict[str, object], param: torch.Tensor) -> bool:
    """Whether a parameter's Adam state is what :class:`FlatAdam` lays out: a step and two float
    moments shaped as the parameter (anything else is left to torch, which names what is wrong;
    a restore checks saved states before: :mod:`amber.policy.optimizer_trees`)."""
    if set(state) != {"step", "exp_avg", "exp_avg_sq"}:
        return False
    step = state["step"]
    if not (isinstance(step, (int, float)) or (isinstance(step, torch.Tensor) and step.numel() == 1)):
        return False
    return all(isinstance(m, torch.Tensor) and m.shape == param.shape and m.is_floating_point()
               for m in (state["exp_avg"], state["exp_avg_sq"]))


class FlatAdam:
    """Steps a ``torch.optim.Adam`` (one param group, float32 CPU, no amsgrad/weight decay) on flat buffers.

    Construct it, then call :meth:`zero_grad`, run the backward pass, and
    :meth:`step`, instead of the optimizer's own methods. The optimizer object
    keeps working (its state entries are views of the buffers), so it can be
    saved, loaded or stepped by torch afterwards.

    :raises ValueError: an optimizer :class:`FlatAdam` cannot step (see :func:`flat_adam`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not _supported(optimizer):
            raise ValueError("FlatAdam steps a plain single-group float32 CPU torch.optim.Adam only")
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.params: list[torch.nn.Parameter] = list(group["params"])
        # Every tensor starts on a 64-byte boundary, as a freshly allocated one does: BLAS
        # results can depend on alignment, and a restored model must compute bit-identically.
        self._slices: list[slice] = []
        offset = 0
        for p in self.params:
            self._slices.append(slice(offset, offset + p.numel()))
            offset += -(-p.numel() // _ALIGN) * _ALIGN
        total = offset
        self.flat_param = torch.zeros(total)
        self.flat_grad = torch.zeros(total)
        self.exp_avg = torch.zeros(total)
        self.exp_avg_sq = torch.zeros(total)
        self._denom = torch.empty(total)
        self._kernel_cache: dict[tuple[int, int] | None, tuple[list[torch.Tensor], ...]] = {}
        first = optimizer.state.get(self.params[0])
        steps = float(first["step"]) if first else 0.0
        # one shared step tensor: every parameter is always stepped together
        self.step_tensor = torch.tensor(steps, dtype=torch.float32)
        with torch.no_grad():
            for p, view in zip(self.params, self._slices, strict=True):
                self.flat_param[view].copy_(p.reshape(-1))
                old = optimizer.state.get(p)
                if old:
                    self.exp_avg[view].copy_(old["exp_avg"].reshape(-1))
                    self.exp_avg_sq[view].copy_(old["exp_avg_sq"].reshape(-1))
                p.data = self.flat_param[view].view_as(p)
                p.grad = self.flat_grad[view].view_as(p)
                optimizer.state[p] = {"step": self.step_tensor, "exp_avg": self.exp_avg[view].view_as(p),
                                      "exp_avg_sq": self.exp_avg_sq[view].view_as(p)}

    def grads_in_place(self) -> bool:
        """Whether every parameter's gradient is still a view of the flat buffer (autograd kept it)."""
        lo = self.flat_grad.data_ptr()
        hi = lo + self.flat_grad.numel() * 4
        return all(p.grad is not None and lo <= p.grad.data_ptr() < hi for p in self.params)

    def zero_grad(self) -> None:
        """Zero every gradient (one op)."""
        if not self.grads_in_place():
            self._reattach_grads()
        self.flat_grad.zero_()

    def _reattach_grads(self) -> None:
        for p, view in zip(self.params, self._slices, strict=True):
            p.grad = self.flat_grad[view].view_as(p)

    def clip_grad_norm_(self, max_norm: float, *, gather: bool = True) -> float:
        """Scale the gradients so their global L2 norm is at most ``max_norm`` (as torch's
        ``clip_grad_norm_`` does); return the norm before clipping (``gather`` as in :meth:`apply`)."""
        if gather:
            self._gather_grads()
        norm = float(torch.linalg.vector_norm(self.flat_grad))
        coef = float(max_norm) / (norm + 1e-6)
        if coef < 1.0:
            self.flat_grad.mul_(coef)
        return norm

    def span(self, params: list[torch.nn.Parameter]) -> slice:
        """The range of the flat buffers that holds exactly ``params`` (for :meth:`apply` on a part).

        :raises ValueError: they are not one contiguous run of this optimizer's parameters.
        """
        index = {id(p): i for i, p in enumerate(self.params)}
        positions = sorted(index[id(p)] for p in params if id(p) in index)
        if len(positions) != len(params) or positions != list(range(positions[0], positions[-1] + 1)):
            raise ValueError("the parameters are not one contiguous run of this optimizer's parameters")
        return slice(self._slices[positions[0]].start, self._slices[positions[-1]].stop)

    def grad_view(self, param: torch.nn.Parameter) -> torch.Tensor:
        """``param``'s gradient in the flat buffer (shaped as ``param``), for code that writes
        gradients itself and then calls :meth:`apply` with ``gather=False``.

        :raises ValueError: ``param`` is not one of this optimizer's parameters.
        """
        for p, view in zip(self.params, self._slices, strict=True):
            if p is param:
                return self.flat_grad[view].view_as(p)
        raise ValueError("not a parameter of this optimizer")

    def _gather_grads(self, span: slice | None = None) -> None:
        """Copy gradients autograd put elsewhere (when something else held the old one) into the buffer."""
        lo = self.flat_grad.data_ptr()
        hi = lo + self.flat_grad.numel() * 4
        with torch.no_grad():
            for p, view in zip(self.params, self._slices, strict=True):
                if span is not None and not (span.start <= view.start and view.stop <= span.stop):
                    continue
                if p.grad is None:
                    self.flat_grad[view].zero_()
                    p.grad = self.flat_grad[view].view_as(p)
                elif not lo <= p.grad.data_ptr() < hi:
                    self.flat_grad[view].copy_(p.grad.reshape(-1))
                    p.grad = self.flat_grad[view].view_as(p)

    def begin_step(self) -> tuple[float, ...]:
        """Count one step; return the coefficients :meth:`apply` needs for it."""
        group = self.optimizer.param_groups[0]
        lr, (beta1, beta2), eps = float(group["lr"]), group["betas"], float(group["eps"])
        wait_for_snapshot()  # the step count, parameters and moments change from here on
        self.step_tensor.add_(1.0)
        t = float(self.step_tensor)
        return -lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t), float(beta1), float(beta2), eps, lr

    def _kernel_lists(self, span: slice | None) -> tuple[list[torch.Tensor], ...]:
        """Per-parameter views (parameters, gradients, moments) of ``span`` for the fused kernel:
        one tensor per parameter, as torch's fused Adam passes them, so every element is updated
        by the same code path whichever span it is applied in (bit-identical results)."""
        key = (span.start, span.stop) if span is not None else None
        lists = self._kernel_cache.get(key)
        if lists is None:
            views = [v for v in self._slices
                     if span is None or (span.start <= v.start and v.stop <= span.stop)]
            lists = tuple([buf[v] for v in views]
                          for buf in (self.flat_param, self.flat_grad, self.exp_avg, self.exp_avg_sq))
            self._kernel_cache[key] = lists
        return lists

    @torch.no_grad()
    def apply(self, coefficients: tuple[float, ...], span: slice | None = None, *,
              gather: bool = True) -> None:
        """The Adam update of the parameters in ``span`` (all when None), with :meth:`begin_step`'s
        coefficients. Disjoint spans may be applied from different threads.

        One pass of torch's fused Adam kernel (what ``torch.optim.Adam(fused=True)`` runs) where this
        torch has it, else the same update in five vectorised ops.

        :param gather: first collect gradients autograd left outside the flat buffer (False:
            the caller wrote them into it, e.g. through :meth:`grad_view`).
        """
        if gather:
            self._gather_grads(span)
        step_size, bias2_sqrt, beta1, beta2, eps, lr = coefficients
        view = span or slice(None)
        if _FUSED_KERNEL is not None:
            params, grads, avgs, avg_sqs = self._kernel_lists(span)
            _FUSED_KERNEL(params, grads, avgs, avg_sqs, [], [self.step_tensor] * len(params), lr=lr,
                          beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
            return
        param, grad, avg, avg_sq = (self.flat_param[view], self.flat_grad[view], self.exp_avg[view],
                                    self.exp_avg_sq[view])
        denom = self._denom[view]
        avg.lerp_(grad, 1.0 - beta1)
        avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        torch.sqrt(avg_sq, out=denom)
        denom.div_(bias2_sqrt).add_(eps)
        param.addcdiv_(avg, denom, value=step_size)

    def step(self) -> None:
        """One Adam step of every parameter: torch's update (bias-corrected moments, eps after the sqrt)."""
        self.apply(self.begin_step())


def flat_adam(optimizer: torch.optim.Optimizer) -> FlatAdam | None:
    """A :class:`FlatAdam` for ``optimizer``, or None when it cannot step it (use the optimizer then)."""
    return FlatAdam(optimizer) if _supported(optimizer) else None
