"""AlgorithmConfig: RLlib's fluent configuration API (``ray.rllib.algorithms.algorithm_config``)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar

from amber.algorithms.callbacks import DefaultCallbacks, check_callbacks_class
from amber.algorithms.config_adoption import adopting_config, copy_unless_adopted, is_adopted
from amber.algorithms.config_dict import TRAINING_ALIASES as _ALIASES  # .training()'s 2.10 aliases
from amber.algorithms.config_freeze import FrozenConfigError, FrozenConfigMixin, fluent, set_managed
from amber.algorithms.config_values import _spec_to_dict, matches_type
from amber.algorithms.rllib_api import RLlibConfigMixin, rllib_keywords
from amber.policy.sample_batch import DEFAULT_POLICY_ID
from amber.state import Ref

if TYPE_CHECKING:
    import pluggy

    from amber.algorithms.algorithm import Algorithm

__all__ = ["AlgorithmConfig", "FrozenConfigError", "adopting_config", "copy_unless_adopted", "is_adopted",
           "set_managed"]

FRAMEWORKS = ("torch", "tf2")


#: The hyperparameters every algorithm has, with their types (``.training()`` checks values).
COMMON_HYPERPARAMETERS: dict[str, Any] = {
    "lr": float, "gamma": float, "train_batch_size": int, "grad_clip": float | None, "model": dict,
}


#: :meth:`AlgorithmConfig.hyperparameter_types` of each config class.
_TYPES: dict[type, dict[str, Any]] = {}


class AlgorithmConfig(FrozenConfigMixin, RLlibConfigMixin):
    """Settings of an algorithm; each fluent method returns the config itself.

    Subclasses (PPOConfig, DQNConfig, SACConfig) name their hyperparameters in
    :attr:`hyperparameters`, a dataclass whose typed, documented fields are the
    settings and their defaults; ``.training()`` accepts exactly the common ones
    and theirs, checks each value's type, and names any unknown key. A built algorithm's config
    is frozen (:mod:`~amber.algorithms.config_freeze`): ``algo.config.copy()`` is not.
    """

    algo_class: type[Algorithm] | None = None
    #: The algorithm's own hyperparameters (a dataclass; its fields become attributes of the config).
    hyperparameters: ClassVar[type | None] = None

    def __init__(self, algo_class: type[Algorithm] | None = None) -> None:
        if algo_class is not None:
            self.algo_class = algo_class
        # environment
        self.env: Any = None
        self.env_config: dict[str, Any] = {}
        # framework
        self.framework_str = "torch"
        # training: common to all algorithms
        self.lr = 5e-5
        self.gamma = 0.99
        self.train_batch_size = 4000
        self.grad_clip: float | None = None
        self.model: dict[str, Any] = {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}
        # env runners
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 1
        self.restart_failed_env_runners = True
        self.num_cpus_per_env_runner: float = 1.0  # the CPUs each runner actor reserves in Ray
        # multi-agent
        self.policies: dict[str, Any] = {DEFAULT_POLICY_ID: None}
        self.policy_mapping_fn: Callable[..., str] | None = None
        self.policies_to_train: list[str] | None = None
        self._multi_agent = False
        # checkpointing
        self.export_native_model_files = False
        self.checkpoint_format = "pickle"
        self.store_replay_buffer = False
        # retention of default checkpoints (amber.checkpoint_manager)
        self.num_to_keep: int | None = None
        self.checkpoint_score_attribute: str | None = None
        self.checkpoint_score_order = "max"
        # where default checkpoints go (an fsspec URL or a directory; None: the log dir), and
        # the options of its file system (credentials, maybe: never saved)
        self.storage_path: str | None = None
        self.storage_options: dict[str, Any] | None = None
        # the plugin manager checkpoints go through (None: the process's); never saved
        self.plugin_manager: pluggy.PluginManager | None = None
        # each train() result appended to progress.csv and result.json in the log dir
        self.log_results = True
        # what the algorithm calls after each train() and each committed save()
        self.callbacks_class: type[DefaultCallbacks] = DefaultCallbacks
        # debugging
        self.seed: int | None = None
        if self.hyperparameters is not None:  # a fresh instance: its mutable defaults are its own
            defaults = self.hyperparameters()
            for f in dataclasses.fields(defaults):
                setattr(self, f.name, getattr(defaults, f.name))

    # -- hyperparameters ---------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        with suppress(Exception):  # now, so no restore evaluates annotations (else on first use)
            cls.hyperparameter_types()

    @classmethod
    def hyperparameter_types(cls) -> dict[str, Any]:
        """Every hyperparameter ``.training()`` accepts, with its type (worked out once a class:
        the annotations are evaluated, which a restore would otherwise pay each time)."""
        found = _TYPES.get(cls)
        if found is None:
            own = typing.get_type_hints(cls.hyperparameters) if cls.hyperparameters is not None else {}
            found = _TYPES[cls] = {**COMMON_HYPERPARAMETERS, **own}
        return dict(found)

    # -- fluent setters ------------------------------------------------------------

    @fluent
    @rllib_keywords  # RLlib's disable_env_checking (amber.algorithms.rllib_api)
    def environment(self, env: Any = None, *, env_config: Mapping[str, Any] | None = None) -> AlgorithmConfig:
        """Set the environment: a gymnasium id, an Env or MultiAgentEnv class, or a registered name."""
        if env is not None:
            self.env = env
        if env_config is not None:
            self.env_config = dict(env_config)
        return self

    @fluent
    @rllib_keywords  # RLlib's eager_tracing...
    def framework(self, framework: str = "torch") -> AlgorithmConfig:
        """Set the deep-learning framework.

        :raises ValueError: naming the supported choices.
        """
        if framework not in FRAMEWORKS:
            raise ValueError(
                f"framework {framework!r} is not supported by {type(self).__name__}; "
                f"choices: {', '.join(FRAMEWORKS)}"
            )
        self.framework_str = framework
        return self

    @fluent
    def training(self, **kwargs: Any) -> AlgorithmConfig:
        """Set training hyperparameters.

        :raises ValueError: an unknown key, named, with the closest known ones.
        """
        known = self.hyperparameter_types()
        for key, value in kwargs.items():
            key = _ALIASES.get(key, key)
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(
                    f"unknown hyperparameter {key!r} for {type(self).__name__}{hint} "
                    f"(known: {', '.join(sorted(known))})"
                )
            if not matches_type(value, known[key]):
                kind = getattr(known[key], "__name__", None) or str(known[key])
                raise ValueError(f"{type(self).__name__}: hyperparameter {key!r} must be {kind}, "
                                 f"not {type(value).__name__} {value!r}")
            if key == "model":
                value = {**self.model, **dict(value)}
            setattr(self, key, copy.deepcopy(value) if isinstance(value, (dict, list)) else value)
        return self

    @fluent
    @rllib_keywords  # RLlib's num_rollout_workers, num_envs_per_worker: aliases
    def env_runners(
        self,
        num_env_runners: int | None = None,
        num_envs_per_env_runner: int | None = None,
        rollout_fragment_length: int | str | None = None,
        num_cpus_per_env_runner: float | None = None,
        **kwargs: Any,
    ) -> AlgorithmConfig:
        """Set sampling: ``num_env_runners`` Ray actors (0: sampling in this process; more needs
        ``amber-rl[ray]``, :mod:`amber.envs.ray_runners`), each with ``num_envs_per_env_runner`` env
        copies sampled as one vector. ``rollout_fragment_length`` (DQN, SAC) is the env steps each
        copy takes between two rounds of updates ("auto": the algorithm's default).
        ``num_cpus_per_env_runner`` (default 1) is what each runner actor reserves in Ray.
        """
        if rollout_fragment_length is not None and rollout_fragment_length != "auto":
            if not hasattr(self, "rollout_fragment_length"):
                raise ValueError(f"{type(self).__name__} has no rollout_fragment_length setting")
            if int(rollout_fragment_length) < 1:
                raise ValueError("rollout_fragment_length must be at least 1")
            self.rollout_fragment_length = int(rollout_fragment_length)
        if kwargs:
            raise ValueError(f"unknown env_runners setting(s): {', '.join(sorted(kwargs))}")
        from amber.algorithms.config_checks import check_number, positive_int

        if num_env_runners is not None:  # not rounded: validate() refuses 1.5, "2" or True
            self.num_env_runners = num_env_runners
        name = type(self).__name__
        if num_envs_per_env_runner is not None:
            check_number(name, "num_envs_per_env_runner", num_envs_per_env_runner, positive_int,
                         "a positive integer")
            self.num_envs_per_env_runner = int(num_envs_per_env_runner)
        if num_cpus_per_env_runner is not None:
            check_number(name, "num_cpus_per_env_runner", num_cpus_per_env_runner, lambda v: v >= 0,
                         "a non-negative number")
            self.num_cpus_per_env_runner = float(num_cpus_per_env_runner)
        return self

    rollouts = env_runners  # the name before RLlib 2.10

    @fluent
    @rllib_keywords  # a callable policies_to_train: refused, with what to do
    def multi_agent(
        self,
        *,
        policies: Iterable[str] | Mapping[str, Any] | None = None,
        policy_mapping_fn: Callable[..., str] | None = None,
        policies_to_train: Iterable[str] | None = None,
    ) -> AlgorithmConfig:
        """Set the policies (a set of ids, or a dict of id → PolicySpec/overrides), the mapping
        ``fn(agent_id, episode, worker, **kw) -> policy id`` and which policies train."""
        if policies is not None:
            if isinstance(policies, Mapping):  # RLlib's (cls, obs_space, act_space, config) too
                from amber.algorithms.config_dict import policy_spec

                self.policies = {pid: policy_spec(spec, pid) for pid, spec in policies.items()}
            else:
                self.policies = {pid: None for pid in sorted(policies)}
            self._multi_agent = True
        if policy_mapping_fn is not None:
            self.policy_mapping_fn = policy_mapping_fn
            self._multi_agent = True
        if policies_to_train is not None:
            self.policies_to_train = list(policies_to_train)
        return self

    @fluent
    @rllib_keywords  # RLlib's metrics_num_episodes_for_smoothing
    def reporting(self, *, min_sample_timesteps_per_iteration: int | None = None,
                  log_results: bool | None = None) -> AlgorithmConfig:
        """Set how much one ``train()`` samples at least (DQN, SAC; default 1000 env steps), and
        whether each ``train()`` result is appended to ``progress.csv`` and ``result.json`` in the
        algorithm's log dir (``log_results``, default True; False writes nothing there)."""
        if log_results is not None:
            self.log_results = bool(log_results)
        if min_sample_timesteps_per_iteration is not None:
            if not hasattr(self, "min_sample_timesteps_per_iteration"):
                raise ValueError(f"{type(self).__name__} has no min_sample_timesteps_per_iteration setting")
            self.min_sample_timesteps_per_iteration = int(min_sample_timesteps_per_iteration)
        return self

    @fluent
    @rllib_keywords  # RLlib's checkpoint_trainable_policies_only
    def checkpointing(
        self,
        export_native_model_files: bool | None = None,
        format: str | None = None,
        store_replay_buffer: bool | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        *,
        num_to_keep: int | None = None,
        checkpoint_score_attribute: str | None = None,
        checkpoint_score_order: str | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> AlgorithmConfig:
        """Set what checkpoints hold, their default format, the plugin manager that
        saves, restores and exports go through (default: the process's; e.g. a private one
        holding a third-party format), and the retention of ``algo.save()``'s default checkpoints.

        :param num_to_keep: keep this many checkpoints under the log dir (None: all); the
            newest is always kept too (:class:`amber.CheckpointManager`).
        :param checkpoint_score_attribute: the ``train()`` metric ranking them (None: keep the newest).
        :param checkpoint_score_order: ``"max"`` (default) or ``"min"``.
        :param storage_path: where ``algo.save()`` puts its default checkpoints: a directory or an
            fsspec URL (``s3://bucket/runs``), under which each run gets ``<log dir name>/``.
        :param storage_options: for a URL, passed to its fsspec file system (never saved).
        :raises ValueError: ``num_to_keep`` not None or an int >= 1, or an order not "max"/"min".
        """
        from amber.checkpoint_manager import check_retention

        check_retention(num_to_keep, checkpoint_score_order or "max")
        if checkpoint_score_attribute is not None and not isinstance(checkpoint_score_attribute, str):
            raise ValueError(f"checkpoint_score_attribute must be a str, not {checkpoint_score_attribute!r}")
        if num_to_keep is not None:
            self.num_to_keep = num_to_keep
        if checkpoint_score_attribute is not None:
            self.checkpoint_score_attribute = checkpoint_score_attribute
        if checkpoint_score_order is not None:
            self.checkpoint_score_order = checkpoint_score_order
        if storage_path is not None:
            self.storage_path = os.fspath(storage_path)
        if storage_options is not None:
            self.storage_options = dict(storage_options)
        if export_native_model_files is not None:
            self.export_native_model_files = bool(export_native_model_files)
        if format is not None:
            self.checkpoint_format = format
        if store_replay_buffer is not None:
            self.store_replay_buffer = bool(store_replay_buffer)
        if plugin_manager is not None:
            self.plugin_manager = plugin_manager
        return self

    @fluent
    def callbacks(self, callbacks_class: type[DefaultCallbacks]) -> AlgorithmConfig:
        """Set the callbacks class (a subclass of :class:`~amber.algorithms.callbacks.DefaultCallbacks`)
        whose instance the algorithm calls after each ``train()`` and each committed ``save()``.

        :raises ValueError: it is not such a subclass.
        """
        check_callbacks_class(callbacks_class)
        self.callbacks_class = callbacks_class
        return self

    @fluent
    @rllib_keywords  # RLlib's recreate_failed_workers / _env_runners: aliases; its other settings refused
    def fault_tolerance(self, *, restart_failed_env_runners: bool | None = None) -> AlgorithmConfig:
        """Set whether a remote env runner whose actor died is rebuilt and its share sampled again
        (default True; False: ``train()`` raises)."""
        if restart_failed_env_runners is not None:
            self.restart_failed_env_runners = bool(restart_failed_env_runners)
        return self

    @fluent
    @rllib_keywords  # RLlib's log_level...: ignored
    def debugging(self, *, seed: int | None = None) -> AlgorithmConfig:
        """Set the seed: two runs of the same seeded config give bit-identical weights."""
        self.seed = seed
        return self

    def copy(self) -> AlgorithmConfig:
        """A deep copy (callables, classes and the plugin manager shared), never frozen."""
        new = copy.deepcopy(self, {id(self.plugin_manager): self.plugin_manager})
        vars(new).pop("_frozen", None)
        return new

    def validate(self) -> None:
        """Check the settings together.

        :raises ValueError: no environment, a seed that is not an int, a hyperparameter out of range,
            a model key amber does not know, bad retention settings, or policies_to_train names
            unknown policies.
        """
        from amber.algorithms.config_checks import check_config

        check_config(self)

    def build(self, env: Any = None) -> Algorithm:
        """Build the algorithm."""
        if env is not None:
            self.environment(env)
        if self.algo_class is None:
            raise ValueError(f"{type(self).__name__} has no algorithm class")
        return self.algo_class(config=self)

    build_algo = build

    # -- dict form ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every setting as a plain dict (classes and functions kept as objects)."""
        live = ("algo_class", "plugin_manager", "storage_options", "_frozen")
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if k not in live}
        out["_config_class"] = type(self)
        out["policies"] = {pid: _spec_to_dict(spec) for pid, spec in self.policies.items()}
        out["multi_agent"] = out.pop("_multi_agent")
        return out

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, strict: bool = True) -> AlgorithmConfig:
        """A config from :meth:`to_dict`'s output (of this class, or the subclass it names), or from
        RLlib's config dicts (:func:`~amber.algorithms.config_dict.apply_dict`).

        :param strict: False (a checkpoint's saved config): keys amber no longer has are skipped.
        :raises ValueError: (strict) a key amber does not have, named; a value of the wrong type.
        """
        from amber.algorithms.config_dict import apply_dict

        data = dict(config)
        target = data.pop("_config_class", None)
        if isinstance(target, Ref):
            target = target.resolve()
        target = target if isinstance(target, type) and issubclass(target, cls) else cls
        new = target()
        apply_dict(new, data, strict=strict)
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env={self.env!r}, policies={sorted(self.policies)})"
