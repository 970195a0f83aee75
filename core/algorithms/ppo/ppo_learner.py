"""PPO's learner as pure functions: GAE postprocessing and the minibatch SGD update.

The loss is RLlib's (old API stack) PPO loss: the clipped surrogate on
advantages standardized over the whole batch, the squared value error
clipped to ``[0, vf_clip_param]``, an entropy bonus, and an adaptive KL
penalty ``kl_coeff * mean KL(old || new)``.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amber.models.flat_adam import flat_adam
from amber.models.torch_mlp import train_forward
from amber.policy import sample_batch as sb
from amber.policy.torch_policy import intra_op_threads

if TYPE_CHECKING:
    from amber.policy.torch_policy import TorchPolicy

__all__ = ["compute_gae", "discount_cumsum", "explained_variance", "postprocess_fragments", "ppo_update",
           "update_kl_coeff"]

_STAT_NAMES = ("total_loss", "policy_loss", "vf_loss", "kl", "entropy")


def discount_cumsum(x: np.ndarray, discount: float) -> np.ndarray:
    """``y[t] = x[t] + discount * y[t + 1]`` (float64)."""
    values = np.asarray(x, dtype=np.float64).tolist()
    acc = 0.0
    for i in range(len(values) - 1, -1, -1):
        acc = values[i] + discount * acc
        values[i] = acc
    return np.asarray(values, dtype=np.float64)


def compute_gae(
    fragment: dict[str, np.ndarray], last_value: float, gamma: float, lambda_: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation over one trajectory fragment.

    :param fragment: holds ``rewards`` and ``vf_preds``, one per step.
    :param last_value: the value after the last step: 0.0 when the fragment
        ended with termination, ``V(new_obs[-1])`` otherwise.
    :return: ``(advantages, value_targets)``, float32.
    """
    rewards = np.asarray(fragment[sb.REWARDS], dtype=np.float64)
    values = np.asarray(fragment[sb.VF_PREDS], dtype=np.float64)
    next_values = np.append(values[1:], float(last_value))
    deltas = rewards + gamma * next_values - values
    advantages = discount_cumsum(deltas, gamma * lambda_)
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)


def postprocess_fragments(
    policy: TorchPolicy, fragments: Sequence[dict[str, np.ndarray]], gamma: float, lambda_: float
) -> dict[str, np.ndarray]:
    """GAE per fragment, then one batch of all fragments with ``advantages`` and ``value_targets``.

    The bootstrap values of fragments that did not end with termination come
    from one batched :meth:`~amber.policy.torch_policy.TorchPolicy.compute_values` call.
    Columns present in every fragment are concatenated.
    """
    frags = [f for f in fragments if len(f[sb.REWARDS])]
    if not frags:
        return {}
    open_ends = [i for i, f in enumerate(frags) if not bool(np.asarray(f[sb.TERMINATEDS])[-1])]
    last_values = np.zeros(len(frags), dtype=np.float64)
    if open_ends:
        obs = np.stack([np.asarray(frags[i][sb.NEW_OBS])[-1] for i in open_ends])
        last_values[open_ends] = policy.compute_values(obs)
    keys = [k for k in frags[0] if all(k in f for f in frags[1:])]
    batch = {k: np.concatenate([np.asarray(f[k]) for f in frags]) for k in keys}
    gae = [compute_gae(f, last_values[i], gamma, lambda_) for i, f in enumerate(frags)]
    batch[sb.ADVANTAGES] = np.concatenate([a for a, _ in gae])
    batch[sb.VALUE_TARGETS] = np.concatenate([v for _, v in gae])
    return batch


def explained_variance(y: np.ndarray, pred: np.ndarray) -> float:
    """``max(-1, 1 - Var(y - pred) / Var(y))`` (-1 when ``Var(y)`` is 0)."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    var_y = float(np.var(y))
    if var_y == 0.0:
        return -1.0
    return max(-1.0, 1.0 - float(np.var(y - pred)) / var_y)


def update_kl_coeff(kl_coeff: float, kl: float, kl_target: float) -> float:
    """RLlib's adaptive KL rule: ×1.5 above twice the target, ×0.5 below half of it."""
    if kl > 2.0 * kl_target:
        return kl_coeff * 1.5
    if kl < 0.5 * kl_target:
        return kl_coeff * 0.5
    return kl_coeff


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
    minibatches, then the faster is kept. With both cores free the thread wins; when other
    processes share the cores, the two threads only fight over one core and the GIL.
    Either way the results are the same (the networks share nothing)."""

    TRIALS = 6

    def __init__(self) -> None:
        self._times: dict[bool, list[float]] = {True: [], False: []}
        self._choice: bool | None = None

    def threaded(self) -> bool:
        if self._choice is not None:
            return self._choice
        return len(self._times[True]) < self.TRIALS or len(self._times[False]) >= self.TRIALS

    def record(self, threaded: bool, seconds: float) -> None:
        if self._choice is not None:
            return
        self._times[threaded].append(seconds)
        if len(self._times[True]) >= self.TRIALS and len(self._times[False]) >= self.TRIALS:
            # the first of each is a warm-up; the median of the rest decides
            on, off = (statistics.median(self._times[mode][1:]) for mode in (True, False))
            self._choice = on <= off


def _value_step(
    vf_net: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, vf_clip_param: float,
    vf_loss_coeff: float, adam: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value loss and its backward pass (touching the value network's gradients only), then
    ``adam()``: the value network's own optimizer step, when given."""
    vf = train_forward(vf_net, x).squeeze(-1)
    vf_loss = (vf - targets).square().clamp(0.0, vf_clip_param).mean()
    (vf_loss_coeff * vf_loss).backward()
    if adam is not None:
        adam()
    return vf_loss.detach(), vf.detach()


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
) -> dict[str, Any]:
    """Run ``num_epochs`` epochs of minibatch SGD on a postprocessed batch.

    Each epoch shuffles the sample indices with ``rng`` and steps through
    minibatches of ``minibatch_size`` (the last one may be smaller).

    Speed: torch runs single-threaded inside the update (many small ops:
    OpenMP threads cost more than they give, and stall badly when other
    processes share the cores); when torch was allowed more than one
    thread, the value network's forward and backward pass run on a helper
    thread while the policy network's run on this one. The two networks
    share no parameters, so the gradients, and the results, are the same
    either way.

    :return: learner stats averaged over all minibatch updates (``total_loss``,
        ``policy_loss``, ``vf_loss``, ``kl``, ``entropy``), ``vf_explained_var``
        of the last epoch's value predictions, ``cur_kl_coeff`` (the adapted
        coefficient, for the caller to keep) and ``num_grad_updates``.
    """
    n = len(batch[sb.ADVANTAGES])
    if n == 0:
        return {"cur_kl_coeff": float(kl_coeff), "num_grad_updates": 0}
    model, optimizer, dist_class = policy.model, policy.optimizer, policy.dist_class
    params = [p for p in model.parameters() if p.requires_grad]

    adv = np.asarray(batch[sb.ADVANTAGES], dtype=np.float64)
    adv = ((adv - adv.mean()) / max(1e-4, float(adv.std()))).astype(np.float32)
    columns = [
        policy.obs_to_tensor(batch[sb.OBS]),
        policy.actions_to_tensor(batch[sb.ACTIONS]),
        torch.from_numpy(np.asarray(batch[sb.ACTION_LOGP], dtype=np.float32).copy()),
        torch.from_numpy(np.asarray(batch[sb.ACTION_DIST_INPUTS], dtype=np.float32).copy()),
        torch.from_numpy(adv),
        torch.from_numpy(np.asarray(batch[sb.VALUE_TARGETS], dtype=np.float32).copy()),
    ]
    mb = max(1, min(int(minibatch_size), n))
    lo, hi = 1.0 - clip_param, 1.0 + clip_param
    use_kl, use_entropy = kl_coeff > 0.0, entropy_coeff != 0.0
    stats: list[torch.Tensor] = []
    last_vf = torch.empty(n)  # the last epoch's value predictions, for vf_explained_var
    last_targets = columns[-1]
    worker = _Worker() if torch.get_num_threads() > 1 else None
    picker = _ModePicker()
    flat = flat_adam(optimizer)  # the same Adam update, in a few ops over flat buffers
    # Without gradient clipping (a global norm), each network's Adam step runs right after its
    # own backward pass, in the thread that ran it.
    split = None
    pi_params, vf_params = list(model.pi.parameters()), list(model.vf.parameters())
    if flat is not None and grad_clip is None and len(pi_params) + len(vf_params) == len(flat.params):
        try:
            split = flat.span(pi_params), flat.span(vf_params)
        except ValueError:
            split = None

    try:
        with intra_op_threads(1), torch.enable_grad():
            for epoch in range(int(num_epochs)):
                perm = torch.from_numpy(rng.permutation(n))
                shuffled = [c[perm] for c in columns]
                final = epoch == num_epochs - 1
                if final:
                    last_targets = shuffled[-1]
                for start in range(0, n, mb):
                    obs, actions, old_logp, old_inputs, advantages, targets = (
                        c[start:start + mb] for c in shuffled)
                    x = model.preprocessor(obs)
                    if flat is not None:
                        flat.zero_grad()
                    else:
                        optimizer.zero_grad(set_to_none=True)
                    coefficients = flat.begin_step() if split is not None else None
                    vf_adam = partial(flat.apply, coefficients, split[1]) if split is not None else None
                    value_job = partial(_value_step, model.vf, x, targets, vf_clip_param, vf_loss_coeff,
                                        vf_adam)
                    threaded = worker is not None and picker.threaded()
                    tick = time.perf_counter()
                    if threaded:
                        worker.submit(value_job)
                    dist = dist_class(train_forward(model.pi, x))
                    ratio = torch.exp(dist.logp(actions) - old_logp)
                    policy_loss = -torch.min(advantages * ratio, advantages * ratio.clamp(lo, hi)).mean()
                    pi_total = policy_loss
                    with torch.set_grad_enabled(use_entropy):  # only a stat when its coefficient is 0
                        entropy = dist.entropy().mean()
                    if use_entropy:
                        pi_total = pi_total - entropy_coeff * entropy
                    with torch.set_grad_enabled(use_kl):
                        kl = dist_class(old_inputs).kl(dist).mean()
                    if use_kl:
                        pi_total = pi_total + kl_coeff * kl
                    pi_total.backward()
                    if split is not None:
                        flat.apply(coefficients, split[0])
                    vf_loss, vf = worker.result() if threaded else value_job()
                    picker.record(threaded, time.perf_counter() - tick)
                    if split is None and flat is not None:
                        if grad_clip is not None:
                            flat.clip_grad_norm_(float(grad_clip))
                        flat.step()
                    elif split is None:
                        if grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(params, float(grad_clip), foreach=True)
                        optimizer.step()
                    with torch.no_grad():
                        total = pi_total + vf_loss_coeff * vf_loss
                        stats.append(torch.stack([total, policy_loss, vf_loss, kl, entropy]))
                        if final:
                            last_vf[start:start + mb] = vf
    finally:
        if worker is not None:
            worker.close()

    means = torch.stack(stats).mean(0).tolist()
    result: dict[str, Any] = dict(zip(_STAT_NAMES, (float(v) for v in means), strict=True))
    result["vf_explained_var"] = explained_variance(last_targets.numpy(), last_vf.numpy())
    result["cur_kl_coeff"] = float(update_kl_coeff(float(kl_coeff), result["kl"], kl_target))
    result["num_grad_updates"] = len(stats)
    policy.num_grad_updates += len(stats)
    return result
