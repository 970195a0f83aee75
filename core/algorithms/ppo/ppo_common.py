"""PPO's framework-free parts, shared by its torch and tf2 learners: GAE postprocessing, the
explained variance and the adaptive KL rule. Importing this module imports neither torch nor
tensorflow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from amber.policy import sample_batch as sb

__all__ = ["compute_gae", "discount_cumsum", "explained_variance", "postprocess_fragments", "update_kl_coeff"]


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
    policy: Any, fragments: Sequence[dict[str, np.ndarray]], gamma: float, lambda_: float
) -> dict[str, np.ndarray]:
    """GAE per fragment, then one batch of all fragments with ``advantages`` and ``value_targets``.

    The bootstrap values of fragments that did not end with termination come
    from one batched ``policy.compute_values`` call (a torch or tf2 policy).
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
