"""Range checks of hyperparameters and of the ``model`` config, for the configs' ``validate()``.

A value out of range is a ``ValueError`` naming the setting and the value (``amber train``
turns it into a usage error, exit 2), raised when the algorithm is built: not a failure deep
in the first ``train()`` (``num_epochs=0``), a run that never ends (``train_batch_size=0``) or
a silent wrong result (a negative ``grad_clip`` flips the gradients; a typo in a ``model``
key builds the default network). Imports no framework.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ALGORITHM_WIDE_KEYS", "COMMON_RULES", "MODEL_KEYS", "POLICY_ONLY_KEYS", "check_common",
           "check_config", "check_model", "check_number", "check_numbers", "check_policy_spec",
           "positive_int"]

#: The ``model`` keys amber's networks read: fully connected layers, and their activation.
MODEL_KEYS = ("fcnet_hiddens", "fcnet_activation")
#: RLlib model options amber's networks do not have, accepted only off or empty (RLlib's defaults:
#: a separate value network, no LSTM...), so that RLlib configs that spell them out port unchanged.
_RLLIB_OFF = ("vf_share_layers", "free_log_std", "use_lstm", "use_attention", "post_fcnet_hiddens",
              "conv_filters", "custom_model")


def check_number(owner: str, key: str, value: Any, ok: Callable[[float], bool], what: str) -> None:
    """Refuse ``value`` of setting ``key`` unless it is a finite real number (not a bool) that
    ``ok`` accepts.

    :param owner: the config's class name, for the message.
    :param what: what the value must be ("a positive number"), for the message.
    :raises ValueError: ``"<owner>: <key> must be <what>, got <value>"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not ok(float(value)):
        raise ValueError(f"{owner}: {key} must be {what}, got {value!r}")


def positive_int(v: float) -> bool:
    """Whether ``v`` is a whole number >= 1."""
    return v >= 1 and v == int(v)


def check_numbers(config: Any, rules: Mapping[str, tuple[Callable[[float], bool], str]]) -> None:
    """:func:`check_number` for each setting of ``config`` that ``rules`` names (None is skipped
    where the rule's text allows it: ``"None or ..."``)."""
    owner = type(config).__name__
    for key, (ok, what) in rules.items():
        value = getattr(config, key)
        if value is None and what.startswith("None or"):
            continue
        check_number(owner, key, value, ok, what)


#: The settings every algorithm has, and what each must be.
COMMON_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "a positive number"),
    "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train_batch_size": (positive_int, "a positive integer"),
    "grad_clip": (lambda v: v > 0, "None or a positive number"),
}


def check_model(model: Any, owner: str, where: str = "model") -> None:
    """Refuse a ``model`` config amber would not build as written: an unknown key (named, with
    the closest known ones), ``fcnet_hiddens`` that is not a list of positive ints, an unknown
    ``fcnet_activation``, or an RLlib option at a value amber's networks do not have.

    :param where: the setting, for the message (``model``, ``policies['p0'] model``).
    :raises ValueError: naming the key and its value.
    """
    if not isinstance(model, Mapping):
        raise ValueError(f"{owner}: {where} must be a dict, not {type(model).__name__} {model!r}")
    for key, value in model.items():
        if key in _RLLIB_OFF:
            if value:
                raise ValueError(f"{owner}: {where} option {key}={value!r} is not supported: amber's "
                                 "networks are fully connected, with a separate value network (it may only "
                                 "be off)")
        elif key not in MODEL_KEYS:
            close = difflib.get_close_matches(str(key), MODEL_KEYS, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{owner}: unknown {where} key {key!r}{hint} (known: {', '.join(MODEL_KEYS)})")
    hiddens = model.get("fcnet_hiddens", [])
    if not isinstance(hiddens, (list, tuple)) or not all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in hiddens):
        raise ValueError(f"{owner}: {where} fcnet_hiddens must be a list of layer sizes (positive ints), "
                         f"e.g. [64, 64], not {hiddens!r}")
    from amber.models.numpy_mlp import activation_name  # numpy only: the names every framework takes

    activation = model.get("fcnet_activation")
    try:
        activation_name(activation)
    except ValueError:
        raise ValueError(f"{owner}: {where} fcnet_activation must be one of 'tanh', 'relu', 'linear' or "
                         f"None, not {activation!r}") from None


def check_common(config: Any) -> None:
    """The checks every algorithm's config passes: :data:`COMMON_RULES`, the ``model`` of the
    config, and each policy's spec (:func:`check_policy_spec`).

    :raises ValueError: naming the setting and its value.
    """
    check_numbers(config, COMMON_RULES)
    check_model(config.model, type(config).__name__)
    for pid, spec in (config.policies or {}).items():
        check_policy_spec(config, pid, spec)


#: The keys of a policy's config overrides beside the algorithm's hyperparameters: what each
#: policy's config holds of its own (its seed, its checkpoints' settings, DQN's Adam epsilon).
POLICY_ONLY_KEYS = ("seed", "checkpoint_format", "export_native_model_files", "adam_epsilon")
#: Hyperparameters of the whole algorithm (its sampling, replay and target syncs), which a
#: policy's overrides cannot change: refused there rather than silently ignored.
ALGORITHM_WIDE_KEYS = ("train_batch_size", "replay_buffer_config", "num_steps_sampled_before_learning_starts",
                       "training_intensity", "rollout_fragment_length", "min_sample_timesteps_per_iteration",
                       "target_network_update_freq")


def check_policy_spec(config: Any, pid: str, spec: Any) -> None:
    """Refuse a policy spec amber would not build as written: one that is not None, a
    ``PolicySpec`` or a dict of config overrides; or overrides naming a key the algorithm does
    not have (a typo would be ignored), of the wrong type, or out of the range the algorithm's
    own setting must be in. A ``model`` override replaces the config's and is checked whole.

    :raises ValueError: naming the policy, the key and its value.
    """
    from amber.algorithms.algorithm_config import _ALIASES
    from amber.policy.policy import PolicySpec

    owner = type(config).__name__
    if spec is None:
        return
    own = spec.config if isinstance(spec, PolicySpec) else spec
    if not isinstance(own, Mapping):
        raise ValueError(f"{owner}: policies[{pid!r}] must be None, a PolicySpec, a dict of config "
                         "overrides or a (policy_class, observation_space, action_space, config) tuple "
                         f"given to .multi_agent(), not {type(spec).__name__} {spec!r}")
    if "model" in own:
        check_model(own["model"], owner, f"policies[{pid!r}] model")
    settings = {_ALIASES.get(k, k): v for k, v in own.items() if k not in POLICY_ONLY_KEYS and k != "model"}
    if not settings:
        return
    wide = sorted(k for k in settings if k in ALGORITHM_WIDE_KEYS and k in vars(config))
    if wide:
        raise ValueError(f"{owner}: policies[{pid!r}] config: {', '.join(wide)}: a setting of the whole "
                         "algorithm (its sampling, replay or target syncs), not of one policy; set it on "
                         "the algorithm's config")
    trial = config.copy()  # the algorithm's config with the policy's settings: checked as a whole
    trial.policies, trial.policies_to_train = {pid: None}, None
    try:
        trial.training(**settings)
        trial.validate()
    except ValueError as e:
        raise ValueError(f"{owner}: policies[{pid!r}] config: {e}") from None


def check_config(config: Any) -> None:
    """Check an algorithm config's settings together (its ``validate()``).

    :raises ValueError: no environment, a seed that is not an int, a hyperparameter out of range,
        a model key amber does not know, bad retention settings, or policies_to_train names
        unknown policies.
    """
    if config.env is None:
        raise ValueError(f"{type(config).__name__} has no environment: call .environment(env=...)")
    seed = config.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an int or None, not {type(config.seed).__name__}")
    from amber.checkpoint_manager import check_retention
    from amber.envs.ray_runners import check_env_runners

    check_env_runners(config.num_env_runners)
    check_common(config)  # lr, gamma, train_batch_size, grad_clip; the model's keys and sizes

    check_retention(config.num_to_keep, config.checkpoint_score_order)  # also what a checkpoint set
    score = config.checkpoint_score_attribute
    if score is not None and not isinstance(score, str):
        raise ValueError("checkpoint_score_attribute must be a str or None")
    if config.policies_to_train is not None:
        unknown = set(config.policies_to_train) - set(config.policies)
        if unknown:
            raise ValueError(
                f"policies_to_train names unknown policies {sorted(unknown)}; "
                f"policies: {sorted(config.policies)}"
            )
