"""Ray Tune: an amber algorithm as a ``ray.tune.Trainable`` whose checkpoints are amber checkpoints.

``trainable("PPO")`` (or an Algorithm class) is a Trainable for
``tune.Tuner``: its config is ``AlgorithmConfig.to_dict()`` (any of those keys,
Tune search spaces allowed: Tune resolves them), each ``step()`` is one
``algo.train()`` and returns its result dict, and Tune's saves and restores
write and read amber checkpoints (in the config's checkpoint format) in the
trial's checkpoint directory, so ``result.checkpoint.path`` opens with
``Algorithm.from_checkpoint``, ``amber verify`` and ``amber inspect``.
``Tuner.restore`` and PopulationBasedTraining go through the same checkpoints.
Tune writes each trial's ``progress.csv`` and ``result.json`` itself, so the
algorithm's own result log is off inside Tune.

Ray (``amber-rl[ray]``) is imported when :func:`trainable` is called, not before.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.algorithm_config import AlgorithmConfig

__all__ = ["algorithm_config", "config_optimizer_settings", "trainable"]

#: The algorithms ``trainable`` knows by name.
ALGORITHMS = {"PPO": "amber.algorithms.ppo", "DQN": "amber.algorithms.dqn", "SAC": "amber.algorithms.sac"}


def _algorithm_class(algorithm: str | type[Algorithm]) -> type[Algorithm]:
    from amber.algorithms.algorithm import Algorithm

    if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
        return algorithm
    module = ALGORITHMS.get(str(algorithm).upper()) if isinstance(algorithm, str) else None
    if module is None:
        raise ValueError(f"unknown algorithm {algorithm!r}: give one of {', '.join(ALGORITHMS)} "
                         "or an Algorithm subclass")
    return getattr(importlib.import_module(module), str(algorithm).upper())


def algorithm_config(algorithm: str | type[Algorithm], config: Mapping[str, Any]) -> AlgorithmConfig:
    """The algorithm's config from a (Tune-resolved) ``to_dict()`` dict, read as
    ``AlgorithmConfig.from_dict`` reads it (RLlib's names too); keys it lacks keep their defaults.

    :raises ValueError: an unknown algorithm, or a key that is no setting of its config (named).
    """
    algo_cls = _algorithm_class(algorithm)
    try:
        new = algo_cls.get_default_config().from_dict(config)
    except ValueError as e:
        raise ValueError(f"{e} (a Tune param_space is config.to_dict(), or some of its keys)") from None
    new.algo_class = algo_cls
    return new


def config_optimizer_settings(algo: Algorithm) -> None:
    """Give every policy's optimizers the learning rate (and other settings) of the algorithm's config
    rather than the checkpoint's: after PBT's exploit, the trial's mutated config wins."""
    for policy in algo.policies.values():
        for name in getattr(policy, "OPTIMIZERS", ()):
            current, fresh = policy.get_optimizer(name), policy.make_optimizer(name)
            for group, new in zip(getattr(current, "param_groups", ()), getattr(fresh, "param_groups", ()),
                                  strict=False):
                group.update({k: v for k, v in new.items() if k != "params"})


class TrainableMixin:
    """The methods of :func:`trainable`'s class (mixed with ``ray.tune.Trainable`` there)."""

    algorithm_class: type[Algorithm]
    #: The envs registered with ``amber.envs.register_env`` when the class was made: registered
    #: again in the trial's process (a Tune trial runs in a Ray actor, which has its own registry).
    env_creators: Mapping[str, Any] = {}
    algo: Algorithm
    logdir: str

    def setup(self, config: dict[str, Any]) -> None:
        """Register the driver's envs, then build the algorithm from the trial's config."""
        from amber.envs.registry import register_env

        for name, creator in self.env_creators.items():
            register_env(name, creator)
        self.algo = self._build(config)

    def _build(self, config: Mapping[str, Any]) -> Algorithm:
        cfg = algorithm_config(self.algorithm_class, config)
        cfg.log_results = False  # Tune logs every result in the trial directory
        algo = cfg.build()
        algo.logdir = Path(self.logdir) / "amber"
        return algo

    def step(self) -> dict[str, Any]:
        """One ``algo.train()``; its result."""
        return self.algo.train()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Write an amber checkpoint (the config's format) into Tune's checkpoint directory."""
        self.algo.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint: str | dict[str, Any] | None) -> None:
        """Restore the algorithm's whole state from an amber checkpoint directory."""
        if not isinstance(checkpoint, (str, Path)):
            raise ValueError(f"an amber trainable restores from a checkpoint directory, not {checkpoint!r}")
        self.algo.restore(checkpoint)
        config_optimizer_settings(self.algo)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Rebuild the algorithm with a new config (PBT; Tune restores a checkpoint into it next)."""
        self.algo.stop()
        self.algo = self._build(new_config)
        return True

    def cleanup(self) -> None:
        """Stop the algorithm (its env runners too)."""
        self.algo.stop()

    @classmethod
    def default_resource_request(cls, config: dict[str, Any]) -> Any:
        """One CPU for the trial, plus ``num_cpus_per_env_runner`` for each remote env runner, the
        config read as :meth:`setup` reads it (RLlib's ``num_workers`` too). Runners of 0 CPUs
        reserve nothing (Ray refuses a bundle of 0 CPUs), as outside Tune."""
        try:
            cfg = algorithm_config(cls.algorithm_class, config)
        except ValueError:
            return None  # setup raises it, named, in the trial
        runners = int(cfg.num_env_runners or 0)
        cpus = float(getattr(cfg, "num_cpus_per_env_runner", 1.0))
        if not runners or cpus <= 0:
            return None
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory([{"CPU": 1.0}] + [{"CPU": cpus}] * runners)


def trainable(algorithm: str | type[Algorithm]) -> type:
    """A ``ray.tune.Trainable`` subclass training ``algorithm`` ("PPO", "DQN", "SAC" or an Algorithm class).

    The envs registered with ``amber.envs.register_env`` by then go with the class to every
    trial (register an env before calling this).

    Example::

        from ray import tune
        from amber.algorithms.ppo import PPOConfig
        from amber.tune import trainable

        space = PPOConfig().environment("CartPole-v1").to_dict()
        space["lr"] = tune.grid_search([1e-3, 1e-4])
        tune.Tuner(trainable("PPO"), param_space=space,
                   run_config=tune.RunConfig(stop={"training_iteration": 5})).fit()

    :raises ValueError: ray is not installed (naming the extra), or an unknown algorithm.
    """
    from amber.envs.ray_runners import import_ray

    import_ray()
    from ray import tune

    from amber.envs.ray_setup import registered_creators

    algo_cls = _algorithm_class(algorithm)
    return type(f"{algo_cls.__name__}Trainable", (TrainableMixin, tune.Trainable),
                {"algorithm_class": algo_cls, "env_creators": registered_creators(), "__module__": __name__})
