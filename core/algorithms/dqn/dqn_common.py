"""DQN's framework-free parts, shared by its torch and tf2 policies and learners: the epsilon
schedule, epsilon-greedy acting and the n-step replay rows. Importing this module imports neither
torch nor tensorflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amber.policy import sample_batch as sb

__all__ = ["DEFAULT_EPSILON", "REPLAY_COLUMNS", "dqn_epsilon_schedule", "epsilon_at", "epsilon_greedy",
           "nstep_transitions", "q_actions_result", "validate_epsilon_schedule"]

#: RLlib's default epsilon schedule: from 1.0 to 0.05 over the first 10,000 sampled timesteps.
DEFAULT_EPSILON: list[tuple[int, float]] = [(0, 1.0), (10_000, 0.05)]


def dqn_epsilon_schedule(action_space: Any, config: Mapping[str, Any]) -> list[tuple[float, float]]:
    """A DQN policy's epsilon schedule (``config["epsilon"]``, checked), for any framework.

    :raises ValueError: an action space that is not Discrete, or a malformed schedule.
    """
    import gymnasium as gym

    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"DQN needs a Discrete action space, not {action_space} "
                         "(for continuous actions use SAC or PPO)")
    return validate_epsilon_schedule(dict(config).get("epsilon", DEFAULT_EPSILON))


def validate_epsilon_schedule(schedule: Any) -> list[tuple[float, float]]:
    """``[(timestep, epsilon), ...]`` checked: at least one point, timesteps increasing, epsilons in [0, 1].

    :raises ValueError: naming what is wrong.
    """
    try:
        points = [(float(t), float(e)) for t, e in schedule]
    except (TypeError, ValueError):
        raise ValueError(f"epsilon must be a list of (timestep, epsilon) pairs, got {schedule!r}") from None
    if not points:
        raise ValueError("epsilon needs at least one (timestep, epsilon) pair")
    ts = [t for t, _ in points]
    if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"epsilon's timesteps must increase, got {ts}")
    if any(not 0.0 <= e <= 1.0 for _, e in points):
        raise ValueError(f"epsilon values must lie in [0, 1], got {[e for _, e in points]}")
    return points


def epsilon_greedy(policy: Any, greedy: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Epsilon-greedy actions from the greedy ones and two uniform draws per observation (one
    deciding whether to act at random with the policy's current epsilon, one picking the random
    action); advances the policy's ``global_timestep`` (the epsilon schedule's clock)."""
    n = int(policy.action_space.n)
    random_actions = np.minimum((uniforms[:, 1] * n).astype(np.int64), n - 1)
    actions = np.where(uniforms[:, 0] < policy.cur_epsilon, random_actions, greedy)
    policy.global_timestep += len(actions)
    return actions


def q_actions_result(policy: Any, actions: np.ndarray,
                     q: np.ndarray) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
    """``compute_actions``' result: the actions in the action space's numbering (its ``start``
    added), no RNN state, and the Q-values as ``q_values`` and ``action_dist_inputs``."""
    if policy._action_offset:
        actions = actions + policy._action_offset
    return actions, [], {"q_values": q, sb.ACTION_DIST_INPUTS: q}


def epsilon_at(schedule: Sequence[tuple[float, float]], timestep: int) -> float:
    """Epsilon at ``timestep``, linear between points (the first value before them, the last after)."""
    t0, e0 = schedule[0]
    if timestep <= t0:
        return float(e0)
    for t1, e1 in schedule[1:]:
        if timestep < t1:
            return float(e0 + (e1 - e0) * (timestep - t0) / (t1 - t0))
        t0, e0 = t1, e1
    return float(e0)


#: The columns DQN keeps in its replay buffers.
REPLAY_COLUMNS = sb.NSTEP_COLUMNS


def nstep_transitions(fragment: Mapping[str, np.ndarray], n_step: int, gamma: float) -> dict[str, np.ndarray]:
    """One trajectory fragment's replay rows with n-step returns.

    Row ``t`` sums ``k = min(n_step, steps to the fragment's end or to the
    first terminated/truncated step)`` rewards, ``R = sum_i gamma**i * r[t+i]``,
    takes ``new_obs`` and ``terminateds`` of step ``t+k-1`` and the discount
    ``gamma**k`` to bootstrap with. ``n_step=1`` gives the plain transitions
    with discount ``gamma``.

    :return: the columns of :data:`REPLAY_COLUMNS` (rewards and discounts float32).
    """
    n_step = int(n_step)
    if n_step < 1:
        raise ValueError(f"n_step must be at least 1, got {n_step}")
    rewards = np.asarray(fragment[sb.REWARDS], dtype=np.float64)
    ends = np.asarray(fragment[sb.TERMINATEDS], dtype=bool) | np.asarray(fragment[sb.TRUNCATEDS], dtype=bool)
    length = len(rewards)
    rows = np.arange(length)
    ret = np.zeros(length, dtype=np.float64)
    disc = np.ones(length, dtype=np.float64)
    last = rows.copy()
    alive = np.ones(length, dtype=bool)
    for k in range(n_step):
        idx = rows + k
        valid = alive & (idx < length)
        if not valid.any():
            break
        ret[valid] += disc[valid] * rewards[idx[valid]]
        disc[valid] *= gamma
        last[valid] = idx[valid]
        alive = valid & ~ends[np.minimum(idx, length - 1)]
    new_obs = np.asarray(fragment[sb.NEW_OBS])
    return {
        sb.OBS: np.asarray(fragment[sb.OBS]),
        sb.ACTIONS: np.asarray(fragment[sb.ACTIONS]),
        sb.REWARDS: ret.astype(np.float32),
        sb.NEW_OBS: new_obs if n_step == 1 else new_obs[last],
        sb.TERMINATEDS: np.asarray(fragment[sb.TERMINATEDS], dtype=bool)[last],
        sb.DISCOUNTS: disc.astype(np.float32),
    }
