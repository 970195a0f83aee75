"""DQN's learner as pure functions: n-step transitions and one TD update.

The loss is RLlib's (old API stack) DQN loss without prioritized replay: the
Huber loss (delta 1) of the TD error ``Q(s, a) - (R + d * (1 - terminated) *
Q_target(s', a*))``, where ``R`` is the n-step discounted reward sum, ``d``
the row's own discount ``gamma ** k`` (``k`` the steps actually summed, fewer
than ``n_step`` where the fragment or episode ended sooner), and ``a*`` the
argmax of the online network at ``s'`` (double Q) or of the target network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from amber.algorithms.dqn.dqn_common import REPLAY_COLUMNS, nstep_transitions
from amber.policy import sample_batch as sb
from amber.policy.torch_utils import intra_op_threads

if TYPE_CHECKING:
    from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy

__all__ = ["REPLAY_COLUMNS", "dqn_update", "nstep_transitions"]

def dqn_update(policy: DQNTorchPolicy, batch: Mapping[str, np.ndarray], *, double_q: bool,
               grad_clip: float | None) -> dict[str, Any]:
    """One gradient step of the policy's Q network on a replayed batch (:data:`REPLAY_COLUMNS`).

    Torch runs single-threaded inside (small matrices: threads cost more
    than they give). With double Q, the online network evaluates ``obs`` and
    ``new_obs`` in one forward pass; only the ``obs`` half gets gradients.

    :return: learner stats: ``loss`` (mean Huber), ``mean_q``, ``mean_td_error``,
        ``max_abs_td_error``, ``grad_gnorm`` (before clipping; 0.0 without clipping), ``cur_epsilon``.
    """
    model, target = policy.model, policy.target_model
    obs = policy.obs_to_tensor(batch[sb.OBS])
    new_obs = policy.obs_to_tensor(batch[sb.NEW_OBS])
    actions = policy.actions_to_tensor(batch[sb.ACTIONS])
    rewards = torch.from_numpy(np.asarray(batch[sb.REWARDS], dtype=np.float32).copy())
    discounts = torch.from_numpy(np.asarray(batch[sb.DISCOUNTS], dtype=np.float32).copy())
    not_done = torch.from_numpy(~np.asarray(batch[sb.TERMINATEDS], dtype=bool)).to(torch.float32)
    n = obs.shape[0]
    flat = policy.flat_adam()  # Adam's update in a few ops over flat buffers (None: torch's own)
    optimizer = policy.optimizer
    with intra_op_threads(1):
        with torch.no_grad():
            q_next_target = target.train_q(new_obs)
        with torch.enable_grad():
            if double_q:
                q_all = model.train_q(torch.cat([obs, new_obs]))
                q, q_next_online = q_all[:n], q_all[n:].detach()
                best = q_next_online.argmax(dim=1, keepdim=True)
            else:
                q = model.train_q(obs)
                best = q_next_target.argmax(dim=1, keepdim=True)
            q_next = q_next_target.gather(1, best).squeeze(1)
            targets = rewards + discounts * not_done * q_next
            q_taken = q.gather(1, actions.unsqueeze(1)).squeeze(1)
            td = q_taken - targets
            loss = torch.nn.functional.huber_loss(q_taken, targets, delta=1.0)
            if flat is not None:
                flat.zero_grad()
            else:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
        gnorm = 0.0
        if flat is not None:
            if grad_clip is not None:
                gnorm = flat.clip_grad_norm_(float(grad_clip))
            flat.step()
        else:
            if grad_clip is not None:
                params = [p for p in model.parameters() if p.requires_grad]
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, float(grad_clip), foreach=True))
            optimizer.step()
    policy.num_grad_updates += 1
    td = td.detach()
    return {"loss": float(loss.detach()), "mean_q": float(q_taken.detach().mean()),
            "mean_td_error": float(td.mean()), "max_abs_td_error": float(td.abs().max()),
            "grad_gnorm": gnorm, "cur_epsilon": policy.cur_epsilon}
