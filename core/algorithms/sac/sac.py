"""Soft Actor-Critic with RLlib's configuration names and defaults.

Box actions only: a tanh-squashed Gaussian actor scaled to the action
bounds, twin Q critics with Polyak-averaged targets (``tau``), and a learned
entropy temperature driven toward ``target_entropy`` ("auto":
``-prod(action shape)``). Sampling and replay are
:class:`~amber.algorithms.off_policy.OffPolicyAlgorithm`'s: one ``train()``
samples at least ``min_sample_timesteps_per_iteration`` env steps, one step
per env copy at a time (``rollout_fragment_length`` 1), each followed by one
update once ``num_steps_sampled_before_learning_starts`` of the policy's
transitions went into its buffer and the buffer holds that many (or is full:
see :meth:`~amber.algorithms.off_policy.OffPolicyAlgorithm.ready_to_learn`),
or as many updates as ``training_intensity`` asks.

Checkpoints always hold the actor, critics, target critics, ``log_alpha``,
the three optimizers, the RNGs and the counters; the replay buffer's rows
only with ``.checkpointing(store_replay_buffer=True)`` (see
:mod:`amber.algorithms.off_policy` for what resuming without them means).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.algorithm_config import AlgorithmConfig
from amber.algorithms.off_policy import (
    OffPolicyAlgorithm,
    OffPolicyHyperparameters,
    check_replay_buffer_config,
)
from amber.algorithms.sac.sac_common import SAC_MODEL_DEFAULTS

__all__ = ["SAC", "SACConfig"]

#: The settings a SAC policy is built with (read by the policy and the learner).
POLICY_KEYS = ("actor_lr", "critic_lr", "alpha_lr", "tau", "initial_alpha", "target_entropy", "twin_q")


@dataclass
class SACHyperparameters(OffPolicyHyperparameters):
    """SAC's own settings (RLlib's names and defaults) beside the off-policy ones."""

    replay_buffer_config: dict[str, Any] = field(default_factory=lambda: {"capacity": 1_000_000})
    """The replay buffer, one per policy: ``{"capacity": N}`` transitions."""
    num_steps_sampled_before_learning_starts: int = 1500
    """A policy learns once this many of its sampled transitions went into its buffer and the buffer
    holds this many rows (or is full, when its capacity is smaller)."""
    rollout_fragment_length: int = 1
    """Env steps each env copy (of every env runner) takes per sampling round."""
    actor_lr: float = 3e-4
    """The actor's Adam learning rate."""
    critic_lr: float = 3e-4
    """The critics' Adam learning rate."""
    alpha_lr: float = 3e-4
    """The entropy temperature's Adam learning rate."""
    tau: float = 5e-3
    """Polyak averaging rate of the target critics."""
    initial_alpha: float = 1.0
    """The entropy temperature to start from."""
    target_entropy: float | str = "auto"
    """The entropy the temperature steers toward ("auto": minus the action dimensions)."""
    twin_q: bool = True
    """Two critics, the smaller value taken."""


class SACConfig(AlgorithmConfig):
    """SAC's settings (RLlib's names): the common ones and :class:`SACHyperparameters`; besides them
    ``train_batch_size`` 256, ``gamma`` 0.99 and ``model`` [256, 256] relu for the actor and
    the critics. ``lr`` is not used: SAC has ``actor_lr``, ``critic_lr`` and ``alpha_lr``."""

    hyperparameters = SACHyperparameters

    def __init__(self, algo_class: type[Algorithm] | None = None) -> None:
        super().__init__(algo_class=algo_class or SAC)
        self.lr = 3e-4
        self.train_batch_size = 256
        self.model = dict(SAC_MODEL_DEFAULTS)

    def validate(self) -> None:
        """Check the settings together.

        :raises ValueError: naming the setting and the value that is out of range.
        """
        from amber.algorithms.config_checks import check_numbers

        super().validate()  # lr, gamma, train_batch_size, grad_clip, the model
        positive = (lambda v: v > 0, "a positive number")
        check_numbers(self, {
            "actor_lr": positive, "critic_lr": positive, "alpha_lr": positive, "initial_alpha": positive,
            "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
            "num_steps_sampled_before_learning_starts": (lambda v: v >= 0 and v == int(v),
                                                         "a non-negative integer"),
            "training_intensity": (lambda v: v > 0, "None or a positive number"),
        })
        if self.target_entropy not in (None, "auto"):
            check_numbers(self, {"target_entropy": (lambda v: True, '"auto" or a finite number')})
        if not isinstance(self.twin_q, bool):
            raise ValueError(f"SACConfig: twin_q must be True or False, got {self.twin_q!r}")
        check_replay_buffer_config(type(self).__name__, self.replay_buffer_config, capacity_required=True)


class SAC(OffPolicyAlgorithm):
    """SAC on one process: sampling into one replay buffer per policy, one update per env step."""

    _default_config_class = SACConfig
    #: :class:`~amber.algorithms.sac.sac_torch_policy.SACTorchPolicy` (tf2: ``SACTFPolicy``).
    default_policy_class_path = "amber.algorithms.sac.sac_torch_policy:SACTorchPolicy"

    def policy_config(self, policy_id: str, overrides: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The common policy config plus SAC's settings (a policy's overrides win)."""
        cfg = super().policy_config(policy_id, {}, index)
        cfg.update({key: getattr(self.config, key) for key in POLICY_KEYS})
        cfg.update(overrides)
        return cfg

    def update_policy(self, policy_id: str, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """One SAC update (critics, actor, temperature, targets) of a policy from a replayed batch."""
        policy = self.policies[policy_id]
        if getattr(policy, "framework", "torch") == "tf2":  # only this framework's learner is imported
            from amber.algorithms.sac.sac_tf_learner import sac_tf_update

            return sac_tf_update(policy, batch)  # type: ignore[arg-type]
        from amber.algorithms.sac.sac_learner import sac_update

        return sac_update(policy, batch)
