"""PPO's learner as pure functions: GAE postprocessing, the loss, and the minibatch SGD update.

The loss (:func:`ppo_loss`) is RLlib's (old API stack) PPO loss: the clipped
surrogate on advantages standardized over the whole batch, the squared value
error clipped to ``[0, vf_clip_param]``, an entropy bonus, and an adaptive KL
penalty ``kl_coeff * mean KL(old || new)``.

:func:`ppo_update` steps through the minibatches with, by default, the fused
step of :mod:`amber.algorithms.ppo.ppo_fused` (the loss's gradients written
out by hand, no autograd; for PPO's own MLP models with Adam on flat buffers).
Otherwise, or with ``fused=False``, it uses autograd in one of two ways with
bit-identical results: the plain step (one backward pass of :func:`ppo_loss`,
one Adam step), or the overlapped step of :mod:`amber.algorithms.ppo.ppo_steps`
(the value network on a helper thread, each network's Adam step right after
its own backward pass). The loss itself is in
:mod:`amber.algorithms.ppo.ppo_loss` (re-exported here).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amber.algorithms.ppo.ppo_common import (
    compute_gae,
    discount_cumsum,
    explained_variance,
    postprocess_fragments,
    update_kl_coeff,
)
from amber.algorithms.ppo.ppo_fused import FusedStep
from amber.algorithms.ppo.ppo_loss import (
    Minibatch,
    PPOCoefficients,
    PPOLoss,
    ppo_loss,
    ppo_policy_loss,
    ppo_value_loss,
)
from amber.algorithms.ppo.ppo_steps import Adam, OverlappedStep, Step, plain_step
from amber.policy import sample_batch as sb
from amber.policy.torch_utils import intra_op_threads

if TYPE_CHECKING:
    from amber.policy.torch_policy import TorchPolicy

__all__ = ["Minibatch", "PPOCoefficients", "PPOLoss", "compute_gae", "discount_cumsum", "explained_variance",
           "postprocess_fragments", "ppo_loss", "ppo_policy_loss", "ppo_update", "ppo_value_loss",
           "update_kl_coeff"]

#: The learner stats of :class:`~amber.algorithms.ppo.ppo_loss.PPOLoss`'s fields, in their order.
_STAT_NAMES = ("total_loss", "policy_loss", "vf_loss", "kl", "entropy")


# -- the update ------------------------------------------------------------------------------


def _batch_tensors(policy: TorchPolicy, batch: dict[str, np.ndarray]) -> Minibatch:
    """The batch's columns as tensors, advantages standardized over the whole batch."""
    adv = np.asarray(batch[sb.ADVANTAGES], dtype=np.float64)
    adv = ((adv - adv.mean()) / max(1e-4, float(adv.std()))).astype(np.float32)

    def f32(key: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(batch[key], dtype=np.float32).copy())

    return Minibatch(policy.obs_to_tensor(batch[sb.OBS]), policy.actions_to_tensor(batch[sb.ACTIONS]),
                     f32(sb.ACTION_LOGP), f32(sb.ACTION_DIST_INPUTS), torch.from_numpy(adv),
                     f32(sb.VALUE_TARGETS))


def ppo_update(
    policy: TorchPolicy,
    batch: dict[str, np.ndarray],
    *,
    num_epochs: int,
    minibatch_size: int,
    clip_param: float,
    vf_clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    kl_coeff: float,
    kl_target: float,
    grad_clip: float | None,
    rng: np.random.Generator,
    overlap: bool = True,
    fused: bool = True,
) -> dict[str, Any]:
    """Run ``num_epochs`` epochs of minibatch SGD on a postprocessed batch.

    Each epoch shuffles the sample indices with ``rng`` and steps through
    minibatches of ``minibatch_size`` (the last one may be smaller). Torch runs
    single-threaded inside (many small ops: OpenMP threads cost more than they
    give, and stall badly when other processes share the cores).

    :param overlap: allow the value network on a helper thread (when torch was allowed more
        than one thread and it is faster); False: :func:`~amber.algorithms.ppo.ppo_steps.plain_step`
        (autograd) or the fused step inline. The results are bit-identical either way.
    :param fused: step with :class:`~amber.algorithms.ppo.ppo_fused.FusedStep` (hand-written
        gradients, equal to autograd's up to float rounding) where the model allows it;
        False, or another model: the autograd steps.
    :return: learner stats averaged over all minibatch updates (``total_loss``,
        ``policy_loss``, ``vf_loss``, ``kl``, ``entropy``), ``vf_explained_var``
        of the last epoch's value predictions, ``cur_kl_coeff`` (the adapted
        coefficient, for the caller to keep) and ``num_grad_updates``.
    """
    n = len(batch[sb.ADVANTAGES])
    if n == 0:
        return {"cur_kl_coeff": float(kl_coeff), "num_grad_updates": 0}
    c = PPOCoefficients(clip_param, vf_clip_param, vf_loss_coeff, entropy_coeff, kl_coeff)
    columns = _batch_tensors(policy, batch)
    mb = max(1, min(int(minibatch_size), n))
    adam = Adam(policy.optimizer, grad_clip)
    stepper = _stepper(policy, adam, mb, overlap=overlap, fused=fused)
    stats: list[torch.Tensor] = []
    last_vf, last_targets = torch.empty(n), columns.value_targets  # for vf_explained_var
    with stepper as step, intra_op_threads(1), torch.enable_grad():
        if isinstance(step, FusedStep):
            columns = step.prepare(policy, columns)
        for epoch in range(int(num_epochs)):
            perm = torch.from_numpy(rng.permutation(n))
            shuffled = [col[perm] for col in columns]
            final, last_targets = epoch == num_epochs - 1, shuffled[-1]
            minibatches = zip(*(col.split(mb) for col in shuffled), strict=True)
            for start, parts in zip(range(0, n, mb), minibatches, strict=True):
                loss, vf = step(policy, adam, Minibatch(*parts), c)
                with torch.no_grad():
                    stats.append(torch.stack(loss))  # in the order of _STAT_NAMES
                    if final:
                        last_vf[start:start + mb] = vf
    return _results(policy, stats, last_targets, last_vf, kl_coeff, kl_target)


def _stepper(policy: TorchPolicy, adam: Adam, minibatch_size: int, *, overlap: bool, fused: bool
             ) -> AbstractContextManager[Step]:
    """The minibatch step :func:`ppo_update` uses, as a context manager."""
    step = FusedStep.build(policy, adam, minibatch_size, threads=overlap) if fused else None
    if step is not None:
        return step
    return OverlappedStep(policy, adam) if overlap else nullcontext(plain_step)


def _results(policy: TorchPolicy, stats: list[torch.Tensor], targets: torch.Tensor, vf: torch.Tensor,
             kl_coeff: float, kl_target: float) -> dict[str, Any]:
    """:func:`ppo_update`'s stats; counts the updates on the policy."""
    means = torch.stack(stats).mean(0).tolist()
    result: dict[str, Any] = dict(zip(_STAT_NAMES, (float(v) for v in means), strict=True))
    result["vf_explained_var"] = explained_variance(targets.numpy(), vf.numpy())
    result["cur_kl_coeff"] = float(update_kl_coeff(float(kl_coeff), result["kl"], kl_target))
    result["num_grad_updates"] = len(stats)
    policy.num_grad_updates += len(stats)
    return result
