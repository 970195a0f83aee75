"""Deep Q-Networks with RLlib's configuration names and defaults.

One ``train()`` samples at least ``min_sample_timesteps_per_iteration`` env
steps in rounds of ``rollout_fragment_length`` steps per env copy (see
:mod:`amber.algorithms.off_policy`). Each round's trajectory fragments become
n-step transitions in the policy's replay buffer; once
``num_steps_sampled_before_learning_starts`` of a policy's transitions went
into its buffer and the buffer holds that many rows (or is full, when its
capacity is smaller), each round makes one update of ``train_batch_size``
replayed rows per trained policy (or as many as ``training_intensity``
asks), and a policy's target network is synced to its Q network whenever
``target_network_update_freq`` env steps were sampled since its last sync.

State: every policy's Q and target weights, Adam state, exploration RNG and
``global_timestep`` (the epsilon schedule's clock) are in its policy state;
the algorithm's holds the counters, every buffer's cursor and RNG (the rows
too with ``.checkpointing(store_replay_buffer=True)``) and each policy's
last target sync.
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
from amber.algorithms.training_state import PerPolicyCounts

__all__ = ["DQN", "DQNConfig"]

@dataclass
class DQNHyperparameters(OffPolicyHyperparameters):
    """DQN's own settings (RLlib's names and defaults) beside the off-policy ones."""

    target_network_update_freq: int = 500
    """Env steps sampled between two syncs of the target network."""
    double_q: bool = True
    """Pick the next action with the online network, value it with the target one."""
    dueling: bool = True
    """Separate value and advantage heads."""
    hiddens: list[int] = field(default_factory=list)
    """Sizes of the relu layers of each Q head after the model's layers (RLlib's default: [256])."""
    n_step: int = 1
    """Steps of the n-step return."""
    epsilon: list[Any] = field(default_factory=lambda: [(0, 1.0), (10_000, 0.05)])
    """The exploration schedule: ``(timestep, epsilon)`` points, linear in between."""


class DQNConfig(AlgorithmConfig):
    """DQN's settings: the common ones and :class:`DQNHyperparameters` (RLlib's names and defaults).

    Common settings that differ from :class:`AlgorithmConfig`'s: ``lr`` 5e-4,
    ``train_batch_size`` 32, ``grad_clip`` 40, ``model`` ``[256, 256]`` relu.

    ``hiddens`` (RLlib's name) are the sizes of the relu layers of the Q head
    after the ``model``'s layers: each of the dueling value and advantage
    heads (or the plain Q head) gets them. amber's default is ``[]`` (one
    linear layer per head); RLlib's is ``[256]`` (a checkpoint read from
    RLlib sets it).
    """

    hyperparameters = DQNHyperparameters

    def __init__(self, algo_class: type[Algorithm] | None = None) -> None:
        super().__init__(algo_class=algo_class or DQN)
        self.lr = 5e-4
        self.train_batch_size = 32
        self.grad_clip = 40.0
        self.model = {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}

    def validate(self) -> None:
        """Check the settings together.

        :raises ValueError: naming the setting that is out of range.
        """
        from amber.algorithms.dqn.dqn_common import validate_epsilon_schedule

        super().validate()
        rb = self.replay_buffer_config
        check_replay_buffer_config(type(self).__name__, {} if rb is None else rb)
        checks = {
            "train_batch_size": int(self.train_batch_size) >= 1,
            "n_step": int(self.n_step) >= 1,
            "hiddens": all(int(h) >= 1 for h in self.hiddens or []),
            "target_network_update_freq": int(self.target_network_update_freq) >= 0,
            "num_steps_sampled_before_learning_starts":
                int(self.num_steps_sampled_before_learning_starts) >= 0,
            "training_intensity": self.training_intensity is None or float(self.training_intensity) > 0,
            "rollout_fragment_length": int(self.rollout_fragment_length) >= 1,
            "min_sample_timesteps_per_iteration": int(self.min_sample_timesteps_per_iteration) >= 1,
            "gamma": 0.0 <= float(self.gamma) <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{type(self).__name__}: out of range: "
                             + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))
        try:
            validate_epsilon_schedule(self.epsilon)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None


class DQN(OffPolicyAlgorithm):
    """DQN on one process: vectorised sampling into per-policy replay buffers, TD updates from them."""

    _default_config_class = DQNConfig
    #: :class:`~amber.algorithms.dqn.dqn_torch_policy.DQNTorchPolicy` (tf2: ``DQNTFPolicy``).
    default_policy_class_path = "amber.algorithms.dqn.dqn_torch_policy:DQNTorchPolicy"

    def setup(self) -> None:
        """Replay buffers (see :class:`OffPolicyAlgorithm`) and each policy's last target sync."""
        super().setup()
        self.last_target_update = PerPolicyCounts({pid: 0 for pid in self.policies})

    def policy_config(self, policy_id: str, overrides: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The common policy config plus DQN's dueling, hiddens, double_q, n_step, epsilon (overrides win)."""
        cfg = super().policy_config(policy_id, {}, index)
        cfg.update({"dueling": bool(self.config.dueling), "double_q": bool(self.config.double_q),
                    "n_step": int(self.config.n_step),
                    "hiddens": [int(h) for h in self.config.hiddens or []],
                    "epsilon": [(int(t), float(e)) for t, e in self.config.epsilon]})
        cfg.update(overrides)
        return cfg

    def transitions(self, policy_id: str, fragment: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The fragment's n-step replay rows (the policy's ``n_step`` and ``gamma``)."""
        from amber.algorithms.dqn.dqn_common import nstep_transitions

        cfg = self.policies[policy_id].config
        return nstep_transitions(fragment, int(cfg.get("n_step", 1)), float(cfg.get("gamma", 0.99)))

    def update_policy(self, policy_id: str, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """One TD update, then a target sync if ``target_network_update_freq`` env steps have passed."""
        policy = self.policies[policy_id]
        cfg = policy.config
        grad_clip = cfg.get("grad_clip")
        if getattr(policy, "framework", "torch") == "tf2":  # only this framework's learner is imported
            from amber.algorithms.dqn.dqn_tf_learner import dqn_tf_update as update
        else:
            from amber.algorithms.dqn.dqn_learner import dqn_update as update
        stats = update(policy, batch, double_q=bool(cfg.get("double_q", True)),
                       grad_clip=None if grad_clip is None else float(grad_clip))
        now = int(self.counters["num_env_steps_sampled_lifetime"])
        if now - self.last_target_update.get(policy_id, 0) >= int(self.config.target_network_update_freq):
            policy.update_target()
            self.last_target_update[policy_id] = now
        stats["last_target_update_ts"] = self.last_target_update.get(policy_id, 0)
        return stats

    def add_policy(self, policy_id: str, *args: Any, **kwargs: Any) -> Any:
        """Add a policy (see :meth:`Algorithm.add_policy`) with its own replay buffer and target clock."""
        policy = super().add_policy(policy_id, *args, **kwargs)
        self.last_target_update[policy_id] = 0
        return policy

    def remove_policy(self, policy_id: str = "default_policy", **kwargs: Any) -> None:
        """Remove a policy, its replay buffer and its target clock."""
        super().remove_policy(policy_id, **kwargs)
        self.last_target_update.pop(policy_id, None)

    def checkpoint_components(self) -> dict[str, object]:
        """A DQN checkpoint holds :meth:`OffPolicyAlgorithm.checkpoint_components` and each policy's
        last target sync (env steps); the policies hold their Q and target networks and Adam states."""
        return {**super().checkpoint_components(), "last_target_update": self.last_target_update}
