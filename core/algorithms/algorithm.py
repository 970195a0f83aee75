"""Algorithm: training, policies and checkpoints (RLlib's ``ray.rllib.algorithms.algorithm``).

What a checkpoint holds is declared in one place per algorithm,
:meth:`Algorithm.checkpoint_components` (PPO, DQN and SAC extend it): every
component there goes through the plugins' capture/restore hooks. The
algorithm's own state tree is its class and config plus those components'
states; each policy's state is another tree; :func:`amber.checkpoint.write_checkpoint`
lays them out, atomically and verified, in any registered format.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np

from amber import components
from amber.algorithms.algorithm_checkpoints import (
    CheckpointMixin,
    SaveResult,
    TrainingCheckpoint,
    results_dir,
)
from amber.algorithms.algorithm_config import AlgorithmConfig
from amber.algorithms.callbacks import DefaultCallbacks, check_callbacks_class
from amber.algorithms.config_dict import algorithm_config_for
from amber.algorithms.config_freeze import freeze
from amber.algorithms.config_values import without_spec_spaces
from amber.algorithms.policy_map import PolicyMapMixin, spaces_by_mapping
from amber.algorithms.result_log import ResultLogger
from amber.algorithms.rllib_algorithm import RLlibAlgorithmMixin, rllib_result_keys
from amber.algorithms.training_state import RNGMixin, TorchGlobalRNG, TrainingProgress
from amber.errors import missing_module
from amber.policy.frameworks import ClassOrInstanceMethod
from amber.policy.policy import Policy, PolicySpec
from amber.policy.spaces import saved_policy_spaces

__all__ = ["Algorithm", "AlgorithmStoppedError", "SaveResult", "TrainingCheckpoint", "results_dir"]


class AlgorithmStoppedError(RuntimeError):
    """The algorithm was stopped; build a new one (or restore from a checkpoint)."""


def _has_accelerator() -> bool:
    """Whether torch sees an accelerator (asked once: the answer does not change in a process)."""
    global _accelerator
    if _accelerator is None:
        import torch

        _accelerator = bool(torch.accelerator.is_available())
    return _accelerator


_accelerator: bool | None = None


class Algorithm(CheckpointMixin, PolicyMapMixin, RNGMixin, RLlibAlgorithmMixin):
    """Base of PPO, DQN and SAC: builds policies and sampling from a config, trains, saves
    (the checkpoint methods: :class:`~amber.algorithms.algorithm_checkpoints.CheckpointMixin`;
    adding and removing policies: :class:`~amber.algorithms.policy_map.PolicyMapMixin`;
    its numpy and Python generators: :class:`~amber.algorithms.training_state.RNGMixin`)."""

    _default_config_class: type[AlgorithmConfig] = AlgorithmConfig

    @classmethod
    def get_default_config(cls) -> AlgorithmConfig:
        """A fresh config of this algorithm's class."""
        return cls._default_config_class(algo_class=cls)

    def __init__(self, config: AlgorithmConfig | Mapping[str, Any] | None = None, env: Any = None) -> None:
        from amber.envs.env_runner import EnvRunner
        from amber.envs.ray_runners import RemoteEnvRunners, build_env_runners
        from amber.envs.registry import EnvProbe
        from amber.plugin_manager import default_plugin_manager

        # a copy of it, or of RLlib's dict form made into this algorithm's config class; validated
        self.config = config = algorithm_config_for(type(self), config, env)
        self.pm = config.plugin_manager if config.plugin_manager is not None else default_plugin_manager()
        self._stopped = False
        self._logdir: Path | None = None
        self._last_result: dict[str, Any] | None = None  # the score of managed checkpoints
        self.callbacks = self._build_callbacks()  # checked before any env is built
        self._seed_everything(config.seed)
        self._env_probe = EnvProbe(config.env, config.env_config,  # built only if spaces are needed
                                   num_workers=config.num_env_runners)
        self.policies: dict[str, Policy] = {}
        try:
            for index, (pid, spec) in enumerate(self.config.policies.items()):
                self.policies[pid] = self._build_policy(pid, spec, index)
            mapping_fn = self._mapping_fn()
        except BaseException:
            self._env_probe.close()
            raise
        self.env_runner: EnvRunner | RemoteEnvRunners = build_env_runners(  # N > 0: N Ray actors
            config, self.policies, mapping_fn, self.pm, self._env_probe.take_env())  # probed: copy 0
        self.progress = TrainingProgress()
        self.results_logger = ResultLogger(lambda: self.logdir)
        self.setup()
        freeze(config)  # as RLlib's: changes would be half applied (amber.algorithms.config_freeze)
        self.callbacks.on_algorithm_init(algorithm=self)

    # -- building ------------------------------------------------------------------

    def setup(self) -> None:
        """Algorithm-specific setup after policies and sampling exist (subclasses)."""

    def _build_callbacks(self) -> DefaultCallbacks:
        """An instance of the config's callbacks class (``callbacks_class``; default: none)."""
        from amber.algorithms.algorithm_config import is_adopted
        from amber.algorithms.callbacks import make_multi_callbacks

        cls = getattr(self.config, "callbacks_class", None) or DefaultCallbacks
        # a restore's class loaded before amber refused hooks it never calls: warned, not refused
        check_callbacks_class(cls, strict=not is_adopted(self.config))
        return make_multi_callbacks(list(cls))() if isinstance(cls, (list, tuple)) else cls()

    @property
    def _uses_torch(self) -> bool:
        """Whether this algorithm's framework is torch (a tf2 one never imports it)."""
        return self.config.framework_str != "tf2"

    def _seed_everything(self, seed: int | None) -> None:
        self._seed_rngs(seed)  # the numpy and Python generators, made on first use
        if not self._uses_torch:
            return  # a tf2 algorithm: torch is neither imported nor seeded (api.md)
        try:  # the first import of torch by a build: where a serving install (no torch) is told so
            import torch
        except ImportError as e:
            raise missing_module(e, f"building the algorithm {type(self).__name__}") from e
        if seed is not None:
            if _has_accelerator():
                torch.manual_seed(seed)  # every device's generator
            else:  # the CPU's alone: torch.manual_seed queues seeds for absent devices (about 1 ms)
                torch.default_generator.manual_seed(seed)
            if not (torch.are_deterministic_algorithms_enabled()  # checking is quicker than setting
                    and torch.is_deterministic_algorithms_warn_only_enabled()):
                torch.use_deterministic_algorithms(True, warn_only=True)

    def policy_config(self, policy_id: str, overrides: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The config a policy is built with (subclasses add their own keys)."""
        cfg = {"model": dict(self.config.model), "lr": self.config.lr, "gamma": self.config.gamma,
               "grad_clip": self.config.grad_clip, "checkpoint_format": self.config.checkpoint_format,
               "export_native_model_files": self.config.export_native_model_files,
               "seed": None if self.config.seed is None else self.config.seed * 1000 + index}
        cfg.update(overrides)
        return cfg

    @property
    def _multi_agent_env(self) -> bool:
        return self._probed("multi_agent")

    @property
    def _agent_spaces(self) -> dict[Any, tuple[Any, Any]]:
        return self._probed("spaces")

    def _probed(self, what: str) -> Any:
        """What the env probe learnt (building the env if needed). An AttributeError raised while
        the env is built (a creator's typo, or a creator returning None) would leave a property as
        "no attribute '_multi_agent_env'": it is raised as the env's own error instead."""
        try:
            return getattr(self._env_probe, what)
        except AttributeError as e:
            raise RuntimeError(f"building the env {self.config.env!r} failed: {type(e).__name__}: {e}") from e

    def _spaces_for(self, policy_id: str, mapping_fn: Callable[..., str] | None = None) -> tuple[Any, Any]:
        """A policy's spaces: those saved when restoring, else an agent's that the mapping
        (``mapping_fn``, default: the config's) sends to it
        (:func:`~amber.algorithms.policy_map.spaces_by_mapping`)."""
        saved = saved_policy_spaces().get(policy_id)
        if saved is not None:  # restoring: the spaces the saved weights were trained on
            return saved
        if not self._multi_agent_env:
            return next(iter(self._agent_spaces.values()))
        fn = mapping_fn or self._mapping_fn()
        if fn is None:
            return next(iter(self._agent_spaces.values()))
        return spaces_by_mapping(policy_id, fn, self._agent_spaces)

    #: The ``"module:name"`` of the torch policy class built for a spec that names none; another
    #: framework's is its pair in :data:`~amber.policy.frameworks.FRAMEWORK_PAIRS` (subclasses set it).
    default_policy_class_path = "amber.policy.torch_policy:TorchPolicy"

    @ClassOrInstanceMethod
    def get_default_policy_class(self, config: Any = None) -> type[Policy]:
        """The policy class built for a policy whose spec names none, in ``config``'s framework
        (default: this algorithm's config): only that framework's module is imported. RLlib's
        classmethod form works too: ``PPO.get_default_policy_class(config)``."""
        from amber.policy.frameworks import default_policy_class

        return default_policy_class(self.default_policy_class_path,
                                    config if config is not None else getattr(self, "config", None))

    def _build_policy(self, policy_id: str, spec: Any, index: int, observation_space: Any = None,
                      action_space: Any = None, *, mapping_fn: Callable[..., str] | None = None) -> Policy:
        from amber.policy.frameworks import policy_class_for

        method = self.get_default_policy_class  # an override of amber's old form takes no config
        default = method(self.config) if signature(method).parameters else method()
        default = policy_class_for(default, self.config.framework_str)
        cls, overrides = default, {}
        if isinstance(spec, PolicySpec):
            cls = spec.policy_class or default
            observation_space = observation_space or spec.observation_space
            action_space = action_space or spec.action_space
            overrides = spec.config
        elif isinstance(spec, Mapping):
            overrides = spec
        if observation_space is None or action_space is None:
            obs_space, act_space = self._spaces_for(policy_id, mapping_fn)
            observation_space = observation_space or obs_space
            action_space = action_space or act_space
        return cls(observation_space, action_space, self.policy_config(policy_id, overrides, index))

    def _mapping_fn(self) -> Callable[..., str] | None:
        multi = self._multi_agent_env  # first: the env built to learn it is the runner's first copy
        if self.config.policy_mapping_fn is not None:  # a single-agent env's too (its agent: "agent0")
            return self.config.policy_mapping_fn
        if not multi:
            return None
        only = list(self.config.policies)
        if len(only) == 1:
            return lambda agent_id, episode, worker, **kw: only[0]
        raise ValueError("a multi-agent config with several policies needs a policy_mapping_fn")

    # -- training ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise AlgorithmStoppedError(
                f"this {type(self).__name__} was stopped; build a new one or use "
                f"{type(self).__name__}.from_checkpoint(...)"
            )

    @property
    def policies_to_train(self) -> list[str]:
        """The ids of the policies that learn (all when the config says None)."""
        wanted = self.config.policies_to_train
        return [pid for pid in self.policies if wanted is None or pid in wanted]

    def train(self) -> dict[str, Any]:
        """Run one training iteration; return its results.

        The result goes to the callbacks' ``on_train_result`` (which may add metrics), then
        is appended to ``progress.csv`` and ``result.json`` in :attr:`logdir` (made on the first
        call; :mod:`amber.algorithms.result_log`), unless ``.reporting(log_results=False)``.

        :raises AlgorithmStoppedError: after :meth:`stop`.
        """
        self._check_running()
        start = time.perf_counter()
        self.env_runner.sync_weights()  # remote runners: the weights go out once per iteration
        episodes_before = self.progress.episodes_total
        results = self.training_step()
        self.iteration += 1
        elapsed = time.perf_counter() - start
        self.counters["time_total_s"] += elapsed
        returns = self.progress.recent_returns
        out = {
            "training_iteration": self.iteration,
            **self.counters,
            "episode_return_mean": self.progress.return_mean(),
            "episode_return_max": float(np.max(returns)) if returns else float("nan"),
            "episode_return_min": float(np.min(returns)) if returns else float("nan"),
            "episodes_total": self.progress.episodes_total,  # lifetime (the returns: the last 100)
            "episodes_this_iter": self.progress.episodes_total - episodes_before,
            "policy_return_mean": {
                pid: float(np.mean(r)) for pid, r in self.progress.recent_policy_returns.items() if r
            },
            "time_this_iter_s": elapsed,
        }
        out.update(results)
        out.update(rllib_result_keys(out))  # RLlib 2.10's names too (episode_reward_mean...)
        self._last_result = out
        self.callbacks.on_train_result(algorithm=self, result=out)  # which may add metrics
        if self.config.log_results:
            self.results_logger.log(out, list(self.policies) if self._multi_agent_env else ())
        return out

    def training_step(self) -> dict[str, Any]:
        """One iteration of the algorithm (subclasses)."""
        raise NotImplementedError

    def _record(self, metrics: Mapping[str, Any]) -> None:
        """Count sampled steps and remember finished episodes' returns."""
        self.progress.record(metrics)

    @property
    def iteration(self) -> int:
        """Training iterations done."""
        return self.progress.iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        self.progress.iteration = int(value)

    @property
    def counters(self) -> dict[str, Any]:
        """Lifetime step counters and total training time (``num_env_steps_sampled_lifetime``...)."""
        return self.progress.counters

    # -- state -----------------------------------------------------------------------

    def checkpoint_components(self) -> dict[str, object]:
        """What this algorithm's checkpoint holds beside its class, config and policies, by name.

        Each component is captured and restored through the plugins' hooks; an
        algorithm adds its learner's state by extending this mapping. Every
        algorithm has: ``progress`` (iterations, step counters, recent returns),
        the numpy and Python RNGs (and torch's, in a torch algorithm), and ``env_runner`` (the environments
        and their running episodes).
        """
        torch_rng = {"rng.torch": TorchGlobalRNG()} if self._uses_torch else {}
        return {"progress": self.progress, "rng.numpy": self._np_rng, "rng.python": self._py_rng,
                **torch_rng, "env_runner": self.env_runner}

    def get_state(self) -> dict[str, Any]:
        """The whole state: ``{"algorithm": ..., "policies": {id: policy state}}``."""
        own = {
            "algorithm_class": type(self),
            "config": without_spec_spaces(self.config.to_dict()),
            "components": components.capture(self, self.checkpoint_components(), pm=self.pm),
        }
        return {"algorithm": own, "policies": {pid: p.get_state() for pid, p in self.policies.items()}}

    def set_state(self, state: Mapping[str, Any], *, restore_episodes: bool = True,
                  rollback: bool = True, add_policies: bool = False) -> None:
        """Apply :meth:`get_state`'s output; policies absent from the algorithm are skipped, unless
        ``add_policies``.

        All or nothing: if any part fails, the state from before the call is put back (and the
        policies added are removed again).

        :param restore_episodes: also continue the environments' running episodes
            (False: they restart, as when the policies changed).
        :param rollback: keep a copy of the current state to put back on failure
            (False for a freshly built algorithm, which is discarded on failure anyway).
        :param add_policies: first build the policies the state holds and this algorithm lacks,
            from the specs its config saved, and use its mapping and training list
            (:meth:`restore`; see :meth:`~amber.algorithms.policy_map.PolicyMapMixin._adopt_saved_policies`).
        """
        undo = self._adopt_saved_policies(state) if add_policies else (lambda: None)
        if not rollback:
            self._apply_state(state, restore_episodes, rollback=False)
            return
        before = self.get_state()
        try:
            self._apply_state(state, restore_episodes)
        except Exception:
            try:
                self._apply_state(before, True)
            finally:
                undo()
            raise

    def _apply_state(self, state: Mapping[str, Any], restore_episodes: bool, rollback: bool = True) -> None:
        """Apply a state; components it lacks (another system's checkpoint has no RNG or env
        state) keep their current values (``rollback``: see :func:`amber.components.restore`)."""
        own = state["algorithm"]
        for pid, pstate in state["policies"].items():
            if pid in self.policies:
                self.policies[pid].set_state(pstate)
        saved = dict(own.get("components") or {})
        from amber.envs.ray_runners import runner_state_fits

        if not restore_episodes or not runner_state_fits(self.env_runner, saved.get("env_runner")):
            saved.pop("env_runner", None)
        components.restore(self, self.checkpoint_components(), saved, pm=self.pm, rollback=rollback)

    def stop(self) -> None:
        """Release the environments; afterwards :meth:`train` raises.

        A background save in flight (``save(block=False)``) is waited for first.

        :raises CheckpointError: that save failed and nobody retrieved its error
            (``handle.result()``); the environments are released all the same.
        """
        from amber.async_save import wait_for_saves

        try:
            wait_for_saves()
        finally:
            if not self._stopped:
                try:
                    self.env_runner.stop()
                finally:
                    self._stopped = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env={self.config.env!r}, policies={sorted(self.policies)})"
