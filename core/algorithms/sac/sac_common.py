"""SAC's framework-free parts, shared by its torch and tf2 policies and learners: the actor's
log_std bounds, the default model, the learner's stat names and the action space check.
Importing this module imports neither torch nor tensorflow."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LOG_STD_MAX", "LOG_STD_MIN", "SAC_MODEL_DEFAULTS", "STAT_NAMES", "box_dim"]

#: The log_std of the actor's Gaussian is clipped to these bounds (RLlib's SquashedGaussian).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
#: RLlib's SAC model: [256, 256] relu, for the actor and the critics.
SAC_MODEL_DEFAULTS: dict[str, Any] = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
#: The learner stats a SAC update returns (besides ``num_grad_updates``).
STAT_NAMES = ("critic_loss", "actor_loss", "alpha_loss", "alpha_value", "log_alpha_value",
              "mean_q", "max_q", "min_q", "entropy")


def box_dim(action_space: Any) -> int:
    """The number of action dimensions of SAC's Box action space.

    :raises ValueError: the space is not a Box, or its bounds are not finite with high > low.
    """
    import gymnasium as gym

    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(
            f"SAC needs a Box (continuous) action space, got {action_space!r}; "
            "for Discrete actions use DQN or PPO")
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"SAC squashes actions into the Box's bounds, which must be finite with "
                         f"high > low; got low={low.tolist()}, high={high.tolist()}")
    return int(np.prod(action_space.shape, dtype=np.int64))
