"""One SGD step of PPO on a minibatch: :func:`plain_step`, or :class:`OverlappedStep` (faster, same bits).

:func:`plain_step` is the textbook step: forward both networks, one backward
pass of :func:`~amber.algorithms.ppo.ppo_loss.ppo_loss`, one Adam step.
:class:`OverlappedStep` computes exactly the same thing, faster on small
networks, by using that the policy and value networks share no parameter:

* the value network's forward and backward pass run on a helper thread while
  the policy network's run on this one (when torch was allowed more than one
  thread; tried both ways on the first minibatches, the faster is kept);
* without gradient clipping (a global norm, which needs every gradient), each
  network's Adam step runs right after its own backward pass, in the thread
  that ran it (:meth:`~amber.models.flat_adam.FlatAdam.apply` on its span).
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from amber.algorithms.ppo.ppo_loss import (
    Minibatch,
    PPOCoefficients,
    PPOLoss,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
)
from amber.models.flat_adam import FlatAdam, flat_adam
from amber.models.torch_mlp import train_forward

if TYPE_CHECKING:
    from amber.policy.torch_policy import TorchPolicy

__all__ = ["Adam", "OverlappedStep", "Step", "plain_step"]


class Adam:
    """The policy's Adam, stepped on flat buffers when it can be (:class:`~amber.models.flat_adam.FlatAdam`,
    the same update in a few ops), with gradient clipping by global norm when ``grad_clip`` is set."""

    def __init__(self, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
        self.optimizer = optimizer
        self.flat = flat_adam(optimizer)
        self.grad_clip = grad_clip
        self._params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    def zero_grad(self) -> None:
        """Zero (flat buffers) or drop (torch) every gradient."""
        if self.flat is not None:
            self.flat.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Clip the gradients (with ``grad_clip``), then one Adam step of every parameter."""
        if self.flat is not None:
            if self.grad_clip is not None:
                self.flat.clip_grad_norm_(float(self.grad_clip))
            self.flat.step()
            return
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params, float(self.grad_clip), foreach=True)
        self.optimizer.step()


#: A minibatch step: ``step(policy, adam, minibatch, coefficients) -> (loss, value predictions)``.
Step = Callable[["TorchPolicy", Adam, Minibatch, PPOCoefficients], tuple[PPOLoss, torch.Tensor]]


def plain_step(policy: TorchPolicy, adam: Adam, mb: Minibatch, c: PPOCoefficients
               ) -> tuple[PPOLoss, torch.Tensor]:
    """One minibatch: forward both networks, one backward pass of :func:`ppo_loss`, one Adam step.

    :return: the loss and the value predictions (detached).
    """
    model = policy.model
    x = model.preprocessor(mb.obs)
    adam.zero_grad()
    vf = train_forward(model.vf, x).squeeze(-1)
    loss = ppo_loss(policy.dist_class, train_forward(model.pi, x), vf, mb, c)
    loss.total.backward()
    adam.step()
    return loss, vf.detach()


class _Worker:
    """One helper thread that runs submitted calls in order (torch ops release the GIL)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="amber-ppo-value", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._results.put((True, job()))
            except BaseException as e:  # handed to the caller, re-raised there
                self._results.put((False, e))

    def submit(self, job: Callable[[], Any]) -> None:
        self._jobs.put(job)

    def result(self) -> Any:
        ok, value = self._results.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


class _ModePicker:
    """Whether the value network runs on the helper thread: tried both ways on the first
    minibatches, then the faster is kept, and tried again every :attr:`RECHECK` minibatches
    (the load of a shared machine changes). With both cores free the thread wins; when other
    processes share the cores, the two threads only fight over one core and the GIL.
    Either way the results are the same (the networks share nothing)."""

    TRIALS = 6
    RECHECK = 300

    def __init__(self) -> None:
        self._times: dict[bool, list[float]] = {True: [], False: []}
        self._choice: bool | None = None
        self._kept = 0  # minibatches since the choice

    def threaded(self) -> bool:
        if self._choice is not None:
            return self._choice
        return len(self._times[True]) < self.TRIALS or len(self._times[False]) >= self.TRIALS

    def record(self, threaded: bool, seconds: float) -> None:
        if self._choice is not None:
            self._kept += 1
            if self._kept >= self.RECHECK:  # try both ways again
                self._times, self._choice, self._kept = {True: [], False: []}, None, 0
            return
        self._times[threaded].append(seconds)
        if len(self._times[True]) >= self.TRIALS and len(self._times[False]) >= self.TRIALS:
            # the first of each is a warm-up; the median of the rest decides
            on, off = (statistics.median(self._times[mode][1:]) for mode in (True, False))
            self._choice = on <= off


def _value_step(vf_net: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, c: PPOCoefficients,
                adam: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The value loss and its backward pass (touching the value network's gradients only), then
    ``adam()``: the value network's own Adam step, when given."""
    vf = train_forward(vf_net, x).squeeze(-1)
    vf_loss = ppo_value_loss(vf, targets, c.vf_clip_param)
    (c.vf_loss_coeff * vf_loss).backward()
    if adam is not None:
        adam()
    return vf_loss.detach(), vf.detach()


def _split_adam(policy: TorchPolicy, adam: Adam) -> tuple[FlatAdam, slice, slice] | None:
    """The flat Adam and the policy's and the value network's ranges of its buffers, or None when
    each network cannot take its own Adam step (torch's Adam, gradient clipping, other parameters)."""
    flat = adam.flat
    pi_params, vf_params = list(policy.model.pi.parameters()), list(policy.model.vf.parameters())
    if flat is None or adam.grad_clip is not None or len(pi_params) + len(vf_params) != len(flat.params):
        return None
    try:
        return flat, flat.span(pi_params), flat.span(vf_params)
    except ValueError:
        return None


class OverlappedStep:
    """:func:`plain_step`, bit for bit, with the value network overlapped (see the module docstring).

    A context manager: leaving it (or :meth:`close`) stops the helper thread.
    """

    def __init__(self, policy: TorchPolicy, adam: Adam) -> None:
        self._worker = _Worker() if torch.get_num_threads() > 1 else None
        self._picker = _ModePicker()
        self._split = _split_adam(policy, adam)

    def __call__(self, policy: TorchPolicy, adam: Adam, mb: Minibatch, c: PPOCoefficients
                 ) -> tuple[PPOLoss, torch.Tensor]:
        """One minibatch, as :func:`plain_step`."""
        model = policy.model
        x = model.preprocessor(mb.obs)
        adam.zero_grad()
        pi_adam = vf_adam = None
        if self._split is not None:  # one Adam step, each network's part applied by its own thread
            flat, pi_span, vf_span = self._split
            coefficients = flat.begin_step()
            pi_adam = partial(flat.apply, coefficients, pi_span)
            vf_adam = partial(flat.apply, coefficients, vf_span)
        value_job = partial(_value_step, model.vf, x, mb.value_targets, c, vf_adam)
        worker = self._worker if self._worker is not None and self._picker.threaded() else None
        tick = time.perf_counter()
        if worker is not None:
            worker.submit(value_job)
        dist_inputs = train_forward(model.pi, x)
        pi_loss, policy_loss, entropy, kl = ppo_policy_loss(policy.dist_class, dist_inputs, mb, c)
        pi_loss.backward()
        if pi_adam is not None:
            pi_adam()
        vf_loss, vf = worker.result() if worker is not None else value_job()
        self._picker.record(worker is not None, time.perf_counter() - tick)
        if pi_adam is None:
            adam.step()
        with torch.no_grad():
            total = pi_loss + c.vf_loss_coeff * vf_loss
        return PPOLoss(total, policy_loss, vf_loss, kl, entropy), vf

    def close(self) -> None:
        """Stop the helper thread."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> OverlappedStep:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
