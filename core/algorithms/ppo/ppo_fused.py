"""PPO's minibatch step with hand-written gradients: :class:`FusedStep` (the default where it applies).

For the models PPO builds by default (:class:`~amber.models.torch_mlp.PPOTorchModel`:
separate policy and value MLPs of Linear/Tanh/ReLU layers, a Categorical or
diagonal-Gaussian head) and Adam on flat buffers, the step needs no autograd:

* the loss's gradient with respect to the networks' outputs is written out in
  closed form (:func:`categorical_head`, :func:`gaussian_head`, :func:`value_head`:
  the same loss as :func:`~amber.algorithms.ppo.ppo_loss.ppo_loss`, including
  how ``torch.min`` and ``clamp`` pass gradients at their edges);
* each network's backward pass is :class:`~amber.models.mlp_backward.MLPPass`,
  writing straight into :class:`~amber.models.flat_adam.FlatAdam`'s gradient buffer.

The gradients equal autograd's up to float rounding (tested). As in
:class:`~amber.algorithms.ppo.ppo_steps.OverlappedStep`, the value network may
run on a helper thread (picked by timing; the results are bit-identical either
way) and, without gradient clipping, each network's Adam step runs right after
its own backward pass. Other models, distributions or optimizers use the
autograd steps (:meth:`FusedStep.build` returns None).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from amber.algorithms.ppo.ppo_loss import Minibatch, PPOCoefficients, PPOLoss
from amber.algorithms.ppo.ppo_steps import Adam, _ModePicker, _Worker
from amber.models.flat_adam import FlatAdam
from amber.models.mlp_backward import MLPPass
from amber.models.torch_distributions import TorchCategorical, TorchDiagGaussian
from amber.models.torch_mlp import PPOTorchModel, linear_layers

if TYPE_CHECKING:
    from amber.policy.torch_policy import TorchPolicy

__all__ = ["FusedStep", "categorical_head", "gaussian_head", "value_head"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: ``head(dist_inputs, minibatch, coefficients) -> (gradient, (loss, policy_loss, entropy, kl))``.
Head = Callable[[torch.Tensor, Minibatch, PPOCoefficients],
                tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]]


def _surrogate(logp: torch.Tensor, mb: Minibatch, c: PPOCoefficients) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate's ``policy_loss`` and its gradient with respect to ``logp``.

    ``-min(A r, A clip(r))``: the gradient is ``-A r / n`` where ``A r`` is the smaller
    (at a tie both sides pass half of it, which adds up to the same), else 0.
    """
    ratio = logp.sub_(mb.old_logp).exp_()
    surr = mb.advantages * ratio
    clipped = mb.advantages * ratio.clamp_(1.0 - c.clip_param, 1.0 + c.clip_param)
    policy_loss = torch.minimum(surr, clipped).mean().neg_()
    return policy_loss, surr.masked_fill_(surr > clipped, 0.0).mul_(-1.0 / logp.shape[0])


def _total(policy_loss: torch.Tensor, entropy: torch.Tensor, kl: torch.Tensor, c: PPOCoefficients
           ) -> torch.Tensor:
    loss = policy_loss
    if c.entropy_coeff != 0.0:
        loss = loss - c.entropy_coeff * entropy
    if c.kl_coeff > 0.0:
        loss = loss + c.kl_coeff * kl
    return loss


def categorical_head(logits: torch.Tensor, mb: Minibatch, c: PPOCoefficients
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`~amber.algorithms.ppo.ppo_loss.ppo_policy_loss` for a Categorical over ``logits``
    ``[n, k]``, and its gradient with respect to ``logits``.

    :return: ``(gradient, (loss, policy_loss, entropy, kl))``.
    """
    n = logits.shape[0]
    logp_all = torch.log_softmax(logits, 1)
    p = logp_all.exp()
    idx = mb.actions.long().unsqueeze(1)
    policy_loss, g_logp = _surrogate(logp_all.gather(1, idx).squeeze(1), mb, c)
    # d logp(a) / d logits = onehot(a) - p
    grad = p * g_logp.neg().unsqueeze(1)
    grad.scatter_add_(1, idx, g_logp.unsqueeze(1))
    old_logp_all = torch.log_softmax(mb.old_dist_inputs, 1)
    q = old_logp_all.exp()
    kl = (q * (old_logp_all - logp_all)).sum(-1).mean()
    if c.kl_coeff > 0.0:  # d KL(q || p) / d logits = p - q
        grad.add_(p, alpha=c.kl_coeff / n).sub_(q, alpha=c.kl_coeff / n)
    row_entropy = (p * logp_all).sum(-1).neg_()
    entropy = row_entropy.mean()
    if c.entropy_coeff != 0.0:  # d (-H) / d logits = p (log p + H)
        grad.addcmul_(p, logp_all.add_(row_entropy.unsqueeze(1)), value=c.entropy_coeff / n)
    return grad, (_total(policy_loss, entropy, kl, c), policy_loss, entropy, kl)


def gaussian_head(inputs: torch.Tensor, mb: Minibatch, c: PPOCoefficients
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`~amber.algorithms.ppo.ppo_loss.ppo_policy_loss` for a diagonal Gaussian over ``inputs``
    ``[n, 2d]`` (mean, log_std), and its gradient with respect to ``inputs``.

    :return: ``(gradient, (loss, policy_loss, entropy, kl))``.
    """
    n, d = inputs.shape[0], inputs.shape[1] // 2
    mean, log_std = inputs[:, :d], inputs[:, d:]
    std = log_std.exp()
    z = (mb.actions.reshape(mean.shape) - mean) / std
    logp = (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)
    policy_loss, g_logp = _surrogate(logp, mb, c)
    g = g_logp.unsqueeze(1)
    grad = torch.empty_like(inputs)
    g_mean, g_log_std = grad[:, :d], grad[:, d:]
    torch.mul(z / std, g, out=g_mean)  # d logp / d mean = z / std
    torch.mul(z.square().sub_(1.0), g, out=g_log_std)  # d logp / d log_std = z^2 - 1
    entropy = (log_std + (_HALF_LOG_2PI + 0.5)).sum(-1).mean()
    if c.entropy_coeff != 0.0:
        g_log_std.sub_(c.entropy_coeff / n)
    old_mean, old_log_std = mb.old_dist_inputs[:, :d], mb.old_dist_inputs[:, d:]
    var = std.square()
    num = old_log_std.exp().square() + (old_mean - mean).square()
    kl = (log_std - old_log_std + num / (2.0 * var) - 0.5).sum(-1).mean()
    if c.kl_coeff > 0.0:
        k = c.kl_coeff / n
        g_mean.add_((mean - old_mean).div_(var), alpha=k)  # d KL / d mean = (mean - old_mean) / var
        g_log_std.add_(k).sub_(num.div_(var), alpha=k)  # d KL / d log_std = 1 - num / var
    return grad, (_total(policy_loss, entropy, kl, c), policy_loss, entropy, kl)


def value_head(vf: torch.Tensor, targets: torch.Tensor, c: PPOCoefficients
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~amber.algorithms.ppo.ppo_loss.ppo_value_loss` of ``vf`` ``[n, 1]`` and the gradient of
    ``vf_loss_coeff * vf_loss`` with respect to ``vf``.

    :return: ``(gradient [n, 1], vf_loss)``.
    """
    diff = vf.squeeze(1) - targets
    sq = diff.square()
    vf_loss = sq.clamp(0.0, c.vf_clip_param).mean()
    grad = diff.mul_(2.0 * c.vf_loss_coeff / vf.shape[0]).masked_fill_(sq > c.vf_clip_param, 0.0)
    return grad.unsqueeze(1), vf_loss


_HEADS: dict[type, Head] = {TorchCategorical: categorical_head, TorchDiagGaussian: gaussian_head}


def _passes(policy: TorchPolicy, flat: FlatAdam, max_rows: int) -> tuple[MLPPass, MLPPass] | None:
    """The two networks' passes, or None when the model is not two plain MLPs owning every
    parameter the optimizer steps (or a parameter has hooks autograd would run)."""
    model = policy.model
    if type(model) is not PPOTorchModel:
        return None
    layers = [linear_layers(model.pi), linear_layers(model.vf)]
    if not layers[0] or not layers[1]:
        return None
    params = [p for net in layers for linear, _ in net for p in (linear.weight, linear.bias)]
    if len(params) != len(flat.params) or {id(p) for p in params} != {id(p) for p in flat.params}:
        return None
    if any(getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None)
           for p in params):
        return None
    grads = [[(flat.grad_view(lin.weight), flat.grad_view(lin.bias)) for lin, _ in net] for net in layers]
    return MLPPass(layers[0], grads[0], max_rows), MLPPass(layers[1], grads[1], max_rows)


class FusedStep:
    """One PPO minibatch step without autograd (see the module docstring); build it with :meth:`build`.

    A context manager: leaving it (or :meth:`close`) stops the helper thread.
    """

    def __init__(self, passes: tuple[MLPPass, MLPPass], head: Head, adam: Adam, flat: FlatAdam,
                 spans: tuple[slice, slice] | None, threads: bool) -> None:
        self.pi, self.vf = passes
        self._head = head
        self._adam, self._flat, self._spans = adam, flat, spans
        self._threads = threads and torch.get_num_threads() > 1
        self._worker: _Worker | None = None  # started on first use
        self._picker = _ModePicker()
        self._prepared = False

    @classmethod
    def build(cls, policy: TorchPolicy, adam: Adam, max_rows: int, *,
              threads: bool = True) -> FusedStep | None:
        """The fused step for ``policy``, or None when it does not apply (use the autograd steps).

        :param max_rows: the largest minibatch.
        :param threads: allow the value network on a helper thread (picked by timing).
        """
        flat, head = adam.flat, _HEADS.get(policy.dist_class)
        if flat is None or head is None:
            return None
        passes = _passes(policy, flat, max_rows)
        if passes is None:
            return None
        spans = None
        if adam.grad_clip is None:
            pi = [p for lin, _ in linear_layers(policy.model.pi) or [] for p in (lin.weight, lin.bias)]
            vf = [p for lin, _ in linear_layers(policy.model.vf) or [] for p in (lin.weight, lin.bias)]
            try:
                spans = flat.span(pi), flat.span(vf)
            except ValueError:
                spans = None
        if spans is None and adam.grad_clip is None:
            return None
        return cls(passes, head, adam, flat, spans, threads)

    def prepare(self, policy: TorchPolicy, columns: Minibatch) -> Minibatch:
        """The whole batch's columns as every later call takes them: observations preprocessed once
        (not per minibatch) and actions as int64 indices for a Categorical."""
        self._prepared = True
        with torch.no_grad():
            obs = policy.model.preprocessor(columns.obs)
        actions = columns.actions.long() if self._head is categorical_head else columns.actions
        return columns._replace(obs=obs, actions=actions)

    def _value(self, x: torch.Tensor, targets: torch.Tensor, c: PPOCoefficients,
               adam: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            vf = self.vf.forward(x)
            grad, vf_loss = value_head(vf, targets, c)
            out = vf.squeeze(1).clone()
            self.vf.backward(grad)
            if adam is not None:
                adam()
        return vf_loss, out

    def __call__(self, policy: TorchPolicy, adam: Adam, mb: Minibatch, c: PPOCoefficients
                 ) -> tuple[PPOLoss, torch.Tensor]:
        """One minibatch, as :func:`~amber.algorithms.ppo.ppo_steps.plain_step`.

        :return: the loss and the value predictions.
        """
        flat = self._flat
        with torch.no_grad():
            x = mb.obs if self._prepared else policy.model.preprocessor(mb.obs)
            pi_adam = vf_adam = None
            if self._spans is not None:  # one Adam step, each network's part applied by its own thread
                coefficients = flat.begin_step()
                pi_adam = partial(flat.apply, coefficients, self._spans[0], gather=False)
                vf_adam = partial(flat.apply, coefficients, self._spans[1], gather=False)
            value_job = partial(self._value, x, mb.value_targets, c, vf_adam)
            worker = self._helper() if self._threads and self._picker.threaded() else None
            tick = time.perf_counter()
            if worker is not None:
                worker.submit(value_job)
            grad, (pi_loss, policy_loss, entropy, kl) = self._head(self.pi.forward(x), mb, c)
            self.pi.backward(grad)
            if pi_adam is not None:
                pi_adam()
            vf_loss, vf = worker.result() if worker is not None else value_job()
            self._picker.record(worker is not None, time.perf_counter() - tick)
            if pi_adam is None:
                flat.clip_grad_norm_(float(self._adam.grad_clip or 0.0), gather=False)
                flat.apply(flat.begin_step(), gather=False)
            total = pi_loss + c.vf_loss_coeff * vf_loss
        return PPOLoss(total, policy_loss, vf_loss, kl, entropy), vf

    def _helper(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker()
        return self._worker

    def close(self) -> None:
        """Stop the helper thread (if it was started); the step runs inline afterwards."""
        self._threads = False
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> FusedStep:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
