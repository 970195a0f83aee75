"""Proximal Policy Optimization with RLlib's configuration names and defaults' spirit.

One ``train()`` samples ``train_batch_size`` env steps, computes GAE
advantages per trajectory fragment, and runs ``num_epochs`` epochs of
minibatch SGD on the clipped surrogate, clipped value loss, entropy bonus
and adaptive KL penalty, for every policy in ``policies_to_train``.
``num_env_steps_trained_lifetime`` grows by the batch's env steps when some
policy trained on it (as RLlib's ``num_env_steps_trained``), and
``num_agent_steps_trained_lifetime`` by the rows the policies trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.algorithm_config import AlgorithmConfig
from amber.algorithms.training_state import PerPolicyValues

__all__ = ["PPO", "PPOConfig"]


@dataclass
class PPOHyperparameters:
    """PPO's own settings (RLlib's names; ``sgd_minibatch_size`` and ``num_sgd_iter`` are accepted too)."""

    minibatch_size: int = 128
    """Rows per SGD minibatch."""
    num_epochs: int = 30
    """Passes over each train batch."""
    lambda_: float = 0.95
    """GAE's lambda."""
    clip_param: float = 0.2
    """The surrogate's probability-ratio clip."""
    vf_clip_param: float = 10.0
    """The value loss clips each sample's squared error ``(V(s) - value_target) ** 2`` to
    ``[0, vf_clip_param]``: a sample whose error is larger adds a constant and no gradient."""
    vf_loss_coeff: float = 1.0
    """Weight of the value loss."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus."""
    kl_coeff: float = 0.2
    """The adaptive KL penalty's starting coefficient."""
    kl_target: float = 0.01
    """The KL the adaptive coefficient steers toward."""


class PPOConfig(AlgorithmConfig):
    """PPO's settings: the common ones (``lr`` 3e-4 here) and :class:`PPOHyperparameters`."""

    hyperparameters = PPOHyperparameters

    def __init__(self, algo_class: type[Algorithm] | None = None) -> None:
        super().__init__(algo_class=algo_class or PPO)
        self.lr = 3e-4

    def validate(self) -> None:
        """Check the settings together.

        :raises ValueError: naming the setting and its value when it is out of range.
        """
        from amber.algorithms.config_checks import check_numbers, positive_int

        super().validate()
        check_numbers(self, {
            "minibatch_size": (positive_int, "a positive integer"),
            "num_epochs": (positive_int, "a positive integer"),
            "lambda_": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "clip_param": (lambda v: v > 0, "a positive number"),
            "vf_clip_param": (lambda v: v > 0, "a positive number"),
            "vf_loss_coeff": (lambda v: v >= 0, "a non-negative number"),
            "entropy_coeff": (lambda v: v >= 0, "a non-negative number"),
            "kl_coeff": (lambda v: v >= 0, "a non-negative number"),
            "kl_target": (lambda v: v > 0, "a positive number"),
        })


class PPO(Algorithm):
    """PPO on one process: vectorised sampling, then minibatch SGD per trained policy."""

    _default_config_class = PPOConfig

    def setup(self) -> None:
        """Start every policy's adaptive KL coefficient at its ``kl_coeff``."""
        self.kl_coeffs = PerPolicyValues({pid: float(self._settings(pid)["kl_coeff"])
                                          for pid in self.policies})

    def policy_config(self, policy_id: str, overrides: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The common policy config plus PPO's hyperparameters (a policy's overrides win; RLlib's
        ``lambda``, ``sgd_minibatch_size`` and ``num_sgd_iter`` are read as amber's names)."""
        from amber.algorithms.algorithm_config import _ALIASES

        cfg = super().policy_config(policy_id, {}, index)
        cfg.update({f.name: getattr(self.config, f.name) for f in fields(PPOHyperparameters)})
        cfg.update({_ALIASES.get(k, k): v for k, v in overrides.items()})
        return cfg

    def _settings(self, policy_id: str) -> dict[str, Any]:
        """The settings a policy trains with: its own config's (``PolicySpec(config=...)``), else the
        algorithm's (a policy given to ``add_policy`` ready-made may lack them)."""
        own = self.policies[policy_id].config
        keys = ("gamma", "grad_clip", *(f.name for f in fields(PPOHyperparameters)))
        return {k: own[k] if k in own else getattr(self.config, k) for k in keys}

    def checkpoint_components(self) -> dict[str, object]:
        """A PPO checkpoint holds :meth:`Algorithm.checkpoint_components` and each policy's
        adaptive KL coefficient (``kl_coeffs``); the policies hold their weights and Adam states."""
        return {**super().checkpoint_components(), "kl_coeffs": self.kl_coeffs}

    def training_step(self) -> dict[str, Any]:
        """Sample ``train_batch_size`` env steps and update each trained policy."""
        from amber.algorithms.ppo.ppo_common import postprocess_fragments

        cfg = self.config
        # exactly train_batch_size: env copies and runners share out the remainder, and an episode
        # a copy did not step on goes on in the next iteration
        fragments, metrics = self.env_runner.sample(cfg.train_batch_size, explore=True, exact=True)
        self._record(metrics)
        learner: dict[str, Any] = {}
        for pid in self.policies_to_train:
            frags = fragments.get(pid)
            if not frags:
                continue
            policy, own = self.policies[pid], self._settings(pid)
            batch = postprocess_fragments(policy, frags, own["gamma"], own["lambda_"])
            if getattr(policy, "framework", "torch") == "tf2":  # only this framework's learner is imported
                from amber.algorithms.ppo.ppo_tf_learner import ppo_tf_update as update
            else:
                from amber.algorithms.ppo.ppo_learner import ppo_update as update
            kl_coeff = self.kl_coeffs.setdefault(pid, float(own["kl_coeff"]))
            stats = update(
                policy, batch, num_epochs=own["num_epochs"], minibatch_size=own["minibatch_size"],
                clip_param=own["clip_param"], vf_clip_param=own["vf_clip_param"],
                vf_loss_coeff=own["vf_loss_coeff"], entropy_coeff=own["entropy_coeff"],
                kl_coeff=kl_coeff, kl_target=own["kl_target"], grad_clip=own["grad_clip"], rng=self.np_rng,
            )
            # kept: the adapted coefficient, for the next iteration; reported (as RLlib 2.10 does,
            # whose stats are taken before its update_kl): the one this iteration's loss used
            self.kl_coeffs[pid], stats["cur_kl_coeff"] = float(stats["cur_kl_coeff"]), kl_coeff
            self.counters["num_agent_steps_trained_lifetime"] += len(batch["obs"])
            learner[pid] = {"learner_stats": stats, "num_agent_steps_trained": len(batch["obs"])}
        if learner:  # as RLlib counts them: the env steps of the batch trained on, once
            self.counters["num_env_steps_trained_lifetime"] += int(metrics["num_env_steps"])
        return {"info": {"learner": learner}}
