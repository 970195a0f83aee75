"""RLlib 2.10 names amber does not implement, what to use instead, and the aliases it offers.

Code ported from RLlib by swapping the import prefix (``ray.rllib`` → ``amber``) meets calls amber
lacks. Rather than a bare ``AttributeError``/``TypeError``, each of them is named in one table,
:data:`NOT_IMPLEMENTED` (RLlib attributes of the config and the algorithm) and :data:`KEYWORDS`
(RLlib keyword arguments of config methods amber has), with what to do in amber instead.
Where RLlib's call is harmless in its "off" form (``resources(num_gpus=0)``,
``api_stack(enable_rl_module_and_learner=False)``, ``debugging(log_level=...)``) it is accepted and
does nothing; any other value is a ``ValueError`` saying so. docs/rllib_compat.md lists them all.

:class:`RLlibConfigMixin` and :class:`~amber.algorithms.rllib_algorithm.RLlibAlgorithmMixin`
consult the table from ``__getattr__``, which Python calls only for attributes that do not exist,
and only the table's names get a message: any other missing attribute stays a plain
``AttributeError``, so ``hasattr`` probes, copies and pickles behave as before. A config dict
(``AlgorithmConfig.from_dict``) takes the same settings as the fluent methods
(:func:`rllib_dict_setting`).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from amber.algorithms.config_dict import RLLIB_NAMES  # the one table of RLlib's setting names

__all__ = ["KEYWORDS", "NOT_IMPLEMENTED", "RLlibConfigMixin", "RLlibName", "check_agent_spaces",
           "rllib_dict_setting", "rllib_keywords"]

DOC = "docs/rllib_compat.md"
_F = TypeVar("_F", bound=Callable[..., Any])


def _zero(value: Any) -> bool:
    return value is None or (not isinstance(value, bool) and value == 0)


def _false(value: Any) -> bool:
    return value is False or value is None


def _anything(value: Any) -> bool:
    return True


def _bool(value: Any) -> bool:
    return value is None or isinstance(value, bool)


@dataclass(frozen=True)
class RLlibName:
    """An RLlib name amber does not implement (or implements under another name)."""

    #: What to do in amber instead.
    instead: str
    #: For a config method: its keyword arguments whose value may be RLlib's harmless "off" form,
    #: each with a test of the value and how the off form reads ("num_gpus=0"). None: the
    #: attribute itself raises ``AttributeError``.
    off: Mapping[str, tuple[Callable[[Any], bool], str]] | None = None
    #: For a keyword argument: the amber keyword it is passed on as (an alias).
    alias: str | None = None
    #: For a keyword argument amber has: the values refused (``TypeError``); others pass unchanged.
    refuse: Callable[[Any], bool] | None = field(default=None)


def _when(instead: str, key: str, test: Callable[[Any], bool], values: str) -> RLlibName:
    """A keyword argument accepted and ignored when ``test(value)`` (its ``values``, shown as
    ``key=values``), refused with ``instead`` otherwise."""
    return RLlibName(instead, off={key: (test, f"{key}={values}")})


_OLD_STACK = "amber implements RLlib's old API stack (policies and their losses, no RLModules or Learners)"
_SAMPLING = ("amber's sampling is algo.env_runner (this process, or Ray actors with num_env_runners > 0); "
             "train() sends the policies' weights to it at the start of each iteration, so there is "
             "nothing to sync")
_RESTARTS = ("amber rebuilds a remote env runner whose actor died and samples its share again "
             "(.fault_tolerance(restart_failed_env_runners=True), the default; up to 3 times per call, "
             "with no limit over the run), or raises (False); it never goes on without a runner")
_EVALUATE = ("amber has no evaluation runs: roll a policy out yourself with "
             "algo.get_policy(policy_id).compute_single_action(obs, explore=False) in a loop over an env")

#: RLlib attributes amber's configs and algorithms do not have, by class: name → what instead.
NOT_IMPLEMENTED: dict[str, dict[str, RLlibName]] = {
    "AlgorithmConfig": {
        "resources": RLlibName(
            "amber trains on the CPU in this process; each remote env runner's CPUs are "
            ".env_runners(num_cpus_per_env_runner=...)",
            off={"num_gpus": (_zero, "num_gpus=0"), "num_gpus_per_worker": (_zero, "num_gpus_per_worker=0"),
                 "num_learner_workers": (_zero, "num_learner_workers=0"),
                 "num_gpus_per_learner_worker": (_zero, "num_gpus_per_learner_worker=0")}),
        "evaluation": RLlibName(_EVALUATE, off={
            "evaluation_interval": (_zero, "evaluation_interval=None or 0"),
            "evaluation_num_workers": (_zero, "evaluation_num_workers=0"),
            "evaluation_num_env_runners": (_zero, "evaluation_num_env_runners=0")}),
        "api_stack": RLlibName(_OLD_STACK, off={
            "enable_rl_module_and_learner": (_false, "enable_rl_module_and_learner=False"),
            "enable_env_runner_and_connector_v2": (_false, "enable_env_runner_and_connector_v2=False")}),
        "experimental": RLlibName(_OLD_STACK, off={
            "_enable_new_api_stack": (_false, "_enable_new_api_stack=False")}),
        "exploration": RLlibName(
            "training always samples with exploration (DQN's epsilon schedule: "
            ".training(epsilon=[(0, 1.0), (10000, 0.05)])); for greedy actions call "
            "policy.compute_single_action(obs, explore=False)",
            off={"explore": (lambda v: v is True, "explore=True")}),
        "update_from_dict": RLlibName(
            "set hyperparameters with config.training(**d) and other settings with their fluent "
            "method, or make a whole config with AlgorithmConfig.from_dict(d)"),
        "offline_data": RLlibName("amber learns only from its env runners' own samples"),
        "rl_module": RLlibName(_OLD_STACK + "; the network is .training(model={...})"),
    },
    "Algorithm": {
        "compute_single_action": RLlibName(
            "ask the policy: algo.get_policy(policy_id).compute_single_action(obs, explore=...) "
            "returns (action, state_outs, extra_fetches), the action first"),
        "compute_actions": RLlibName(
            "ask each policy: algo.get_policy(policy_id).compute_actions(obs_batch) returns "
            "(actions, state_outs, extra_fetches)"),
        "evaluate": RLlibName(_EVALUATE),
        "workers": RLlibName(_SAMPLING),
        "env_runner_group": RLlibName(_SAMPLING),
        "evaluation_workers": RLlibName(_EVALUATE),
        "export_policy_model": RLlibName("algo.get_policy(policy_id).export_model(export_dir)"),
        "export_policy_checkpoint": RLlibName("algo.get_policy(policy_id).export_checkpoint(export_dir)"),
    },
}

#: RLlib keyword arguments of config methods amber has: method → keyword → handling.
KEYWORDS: dict[str, dict[str, RLlibName]] = {
    "debugging": {
        key: RLlibName("amber logs through Python's logging and writes no RLlib log files",
                       off={key: (_anything, f"{key}=...")})
        for key in ("log_level", "log_sys_usage", "logger_config", "logger_creator")
    },
    "environment": {
        "disable_env_checking": _when("amber runs no env pre-check; errors surface when sampling",
                                      "disable_env_checking", _anything, "..."),
        "clip_actions": _when("amber always clips Box actions to the action space's bounds before env.step",
                              "clip_actions", _bool, "True or False"),
        "normalize_actions": _when(
            "amber never rescales actions: PPO's Box actions are its distribution's samples, clipped to "
            "the bounds (RLlib's normalize_actions=True squashes them into the bounds), SAC squashes "
            "into the bounds itself, Discrete actions are unaffected", "normalize_actions", _false, "False"),
        "render_env": _when("amber never renders while training: render an env yourself while rolling "
                            "a policy out (compute_single_action(obs, explore=False))", "render_env", _false,
                            "False"),
        **{key: _when("amber takes each policy's spaces from the env (each agent's own); give a policy "
                      "others with PolicySpec(observation_space=..., action_space=...) in "
                      ".multi_agent(policies=...)", key, lambda v: v is None, "None")
           for key in ("observation_space", "action_space")},
        "clip_rewards": _when("amber does not clip rewards: wrap the env (e.g. gymnasium.wrappers."
                              "TransformReward) in a creator registered with amber.envs.register_env",
                              "clip_rewards", _false, "None or False"),
        "env_task_fn": _when("amber has no task curriculum: change the env between train() calls",
                             "env_task_fn", lambda v: v is None, "None"),
    },
    "framework": {
        **{key: _when("amber's tf2 policies and learners always run as compiled tf.function (RLlib's "
                      "eager tracing); torch ignores it", key, _anything, "...")
           for key in ("eager_tracing", "eager_max_retraces")},
        **{key: _when("amber's tf2 runs eagerly (TF2), with no tf1 session", key, _anything, "...")
           for key in ("tf_session_args", "local_tf_session_args")},
    },
    "reporting": {
        "metrics_num_episodes_for_smoothing": _when(
            "episode_return_mean is always over the last 100 episodes (RLlib's default)",
            "metrics_num_episodes_for_smoothing", lambda v: v == 100, "100"),
        **{key: _when("one train() samples a set number of env steps (PPO: train_batch_size; DQN, SAC: at "
                      "least min_sample_timesteps_per_iteration) with no minimum time or training "
                      "steps: call train() until as much has passed as you want", key, _zero, "0 or None")
           for key in ("min_time_s_per_iteration", "min_train_timesteps_per_iteration")},
        "keep_per_episode_custom_metrics": _when(
            "amber reports no custom_metrics: add your own metrics to train()'s result in the callbacks' "
            "on_train_result", "keep_per_episode_custom_metrics", _false, "False"),
    },
    "checkpointing": {
        "checkpoint_trainable_policies_only": _when(
            "amber's checkpoints hold every policy: export one with "
            "algo.get_policy(policy_id).export_checkpoint(dir), or load only some with "
            "Algorithm.from_checkpoint(path, policy_ids=[...])", "checkpoint_trainable_policies_only", _false,
            "False"),
    },
    "env_runners": {  # RLlib's older names: aliases, as config_dict.RLLIB_NAMES reads them
        key: RLlibName("", alias=RLLIB_NAMES[key]) for key in ("num_rollout_workers", "num_envs_per_worker")
    },
    "fault_tolerance": {  # RLlib's names of restart_failed_env_runners: aliases; its other settings
        **{key: RLlibName("", alias=RLLIB_NAMES[key])
           for key in ("recreate_failed_workers", "recreate_failed_env_runners")},
        **{key: RLlibName(_RESTARTS, off=None) for key in ("max_num_env_runner_restarts",
                                                           "max_num_worker_restarts")},
        **{key: RLlibName(_RESTARTS, off={key: (_false, f"{key}=False")})
           for key in ("ignore_env_runner_failures", "ignore_worker_failures")},
    },
    "multi_agent": {
        "policies_to_train": RLlibName(
            "pass the ids of the policies that train (a list or set); amber does not implement "
            "RLlib's callable policies_to_train(policy_id, batch)", refuse=callable),
        "count_steps_by": _when("amber counts env steps (train_batch_size, rollout_fragment_length and "
                                "the step counters; agent steps: num_agent_steps_sampled_lifetime)",
                                "count_steps_by", lambda v: v in (None, "env_steps"), '"env_steps"'),
        **{key: _when("amber keeps every policy in memory", key, _anything, "...")
           for key in ("policy_map_capacity", "policy_states_are_swappable")},
        "observation_fn": _when("amber gives each agent the env's observation of it: build it in the env",
                                "observation_fn", lambda v: v is None, "None"),
    },
}


def _shown(value: Any) -> str:
    return f"<{type(value).__name__}>" if callable(value) else repr(value)[:80]


def _refusal(owner: str, call: str, entry: RLlibName) -> str:
    accepted = ""
    if entry.off:
        accepted = f"; accepted and ignored: {', '.join(text for _, text in entry.off.values())}"
    return f"{owner}.{call}: amber does not implement this RLlib call; {entry.instead}{accepted} (see {DOC})"


def _off_call(config: Any, name: str, entry: RLlibName, /, *args: Any, **kwargs: Any) -> Any:
    """A config method amber lacks, called: ``config`` when every argument is its "off" form."""
    owner = type(config).__name__
    if args:
        raise TypeError(_refusal(owner, f"{name}(...)", entry) + "; give its arguments by keyword")
    off = entry.off or {}
    for key, value in kwargs.items():
        test = off.get(key)
        if test is None or not test[0](value):
            raise ValueError(_refusal(owner, f"{name}({key}={_shown(value)})", entry))
    return config


def _missing(obj: Any, table: Mapping[str, RLlibName], name: str) -> Any:
    """``__getattr__``: the table's names get their message (or their "off" form); others a plain error."""
    entry = table.get(name)
    owner = type(obj).__name__
    if entry is None:  # name and obj: Python's "Did you mean" hint in tracebacks still works
        raise AttributeError(f"{owner!r} object has no attribute {name!r}", name=name, obj=obj)
    if entry.off is None:
        raise AttributeError(f"{owner!r} object has no attribute {name!r}: " + _refusal(owner, name, entry),
                             name=name, obj=obj)
    return functools.partial(_off_call, obj, name, entry)


def _keyword(owner: str, method: str, key: str, value: Any, entry: RLlibName) -> tuple[str | None, Any]:
    """One RLlib keyword argument: ``(amber keyword, value)`` to pass on, or ``(None, None)`` to drop."""
    if entry.alias is not None:
        return entry.alias, value
    if entry.refuse is not None:
        if entry.refuse(value):
            raise TypeError(_refusal(owner, f"{method}({key}={_shown(value)})", entry))
        return key, value
    test = (entry.off or {}).get(key)
    if test is None or not test[0](value):
        raise ValueError(_refusal(owner, f"{method}({key}={_shown(value)})", entry))
    return None, None


def rllib_keywords(method: _F) -> _F:
    """Decorate a config method so it takes RLlib's keyword arguments named in :data:`KEYWORDS`
    for it: aliases are passed on under amber's name, "off" forms are ignored (the method is not
    called when nothing else was given), anything else is refused with what to do instead."""
    table = KEYWORDS[method.__name__]

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        rest: dict[str, Any] = {}
        for key, value in kwargs.items():
            entry = table.get(key)
            if entry is None:
                rest[key] = value
                continue
            target, value = _keyword(type(self).__name__, method.__name__, key, value, entry)
            if target is not None:
                if target != key and target in kwargs:
                    raise TypeError(f"{method.__name__}() got both {key!r} and its amber name "
                                    f"{target!r}")
                rest[target] = value
        if kwargs and not args and not rest:  # only ignored RLlib keywords
            return self
        return method(self, *args, **rest)

    return wrapper  # type: ignore[return-value]


def _dict_settings() -> dict[str, tuple[str, RLlibName]]:
    """RLlib's settings amber lacks, as a config dict's keys: key → (RLlib's method, entry)."""
    found: dict[str, tuple[str, RLlibName]] = {}
    for method, entry in NOT_IMPLEMENTED["AlgorithmConfig"].items():
        found.update((key, (method, entry)) for key in entry.off or ())
    for method, table in KEYWORDS.items():
        found.update((key, (method, entry)) for key, entry in table.items()
                     if entry.alias is None and entry.refuse is None)
    return found


def rllib_dict_setting(owner: str, key: str, value: Any) -> bool:
    """Whether ``key: value`` of a config dict (``from_dict``) is an RLlib setting amber lacks, in
    the form its fluent method accepts and ignores (``{"num_gpus": 0}`` as ``.resources(num_gpus=0)``);
    False: no such RLlib setting.

    :raises ValueError: such a setting in another form, with the fluent method's message.
    """
    found = _DICT_SETTINGS.get(key)
    if found is None:
        return False
    method, entry = found
    test = (entry.off or {}).get(key)
    if test is None or not test[0](value):
        call = f"{method}({key}={_shown(value)}) (the config dict's {key!r})"
        raise ValueError(_refusal(owner, call, entry))
    return True


class RLlibConfigMixin:
    """RLlib's names on :class:`~amber.algorithms.algorithm_config.AlgorithmConfig`: the table's
    methods (refused, or ignored in their off form) and read-only item access ``config["lr"]``."""

    __iter__ = None  # item access makes no config iterable: use to_dict()

    def __getattr__(self, name: str) -> Any:
        return _missing(self, NOT_IMPLEMENTED["AlgorithmConfig"], name)

    def __getitem__(self, key: str) -> Any:
        """A setting by its (RLlib) name, as RLlib 2.10's ``config["lr"]``; read only.

        :raises KeyError: no such setting (the closest names suggested).
        """
        name = RLLIB_NAMES.get(key, key) if isinstance(key, str) else key
        settings = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if name not in settings:
            close = difflib.get_close_matches(str(key), list(settings), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"{type(self).__name__} has no setting {key!r}{hint}")
        return settings[name]

    def __contains__(self, key: object) -> bool:
        """Whether ``config[key]`` reads a setting (``"lr" in config``)."""
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True


_DICT_SETTINGS = _dict_settings()


def check_agent_spaces(env: Any, spaces: Mapping[Any, tuple[Any, Any]]) -> None:
    """Refuse RLlib 2.10's "preferred format" of multi-agent spaces: a gymnasium ``Dict`` keyed by
    agent id found where each agent's own space belongs.

    :param spaces: ``{agent_id: (observation_space, action_space)}`` as the env gives them.
    :raises ValueError: naming the space and how to give per-agent spaces.
    """
    agents = set(spaces)
    for pair in spaces.values():
        for kind, space in zip(("observation", "action"), pair, strict=True):
            keys = getattr(space, "spaces", None)
            if agents and isinstance(keys, Mapping) and agents <= set(keys):
                raise ValueError(
                    f"{type(env).__name__}'s {kind} space is a Dict keyed by agent id "
                    f"({sorted(map(str, keys))}): "
                    f"RLlib 2.10's \"preferred format\" of multi-agent spaces, which amber does not "
                    f"implement (it would take the Dict as each agent's own {kind} space). Give each "
                    f"agent its space: set self.{kind}_spaces = {{agent_id: space}} in the env, or "
                    f"override get_{kind}_space(agent_id) (see {DOC})")
