"""RLlib 2.10's algorithm config (as its msgpack checkpoints hold it) in amber's names.

RLlib writes the whole ``AlgorithmConfig.to_dict()``: hundreds of keys,
most about Ray's resources and logging. Those that decide what amber
builds and how it trains are carried over under amber's names (see
docs/rllib_compat.md); the rest are dropped. Model options amber cannot
build (LSTMs, attention, conv nets, custom models, shared value layers)
are refused, since the weights would not fit.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from amber.errors import MigrationError
from amber.state import Ref, is_reference_type

from .hyper import NotCarriedOverWarning, get, training_settings, warn_unsupported

__all__ = [
    "ALGORITHMS",
    "algorithm_kind",
    "amber_config",
    "model_config",
    "policy_config",
    "policy_kind",
    "sac_model_config",
]

#: RLlib algorithm class → (kind, amber algorithm, amber config, amber policy class), as 1.0 import paths.
ALGORITHMS: dict[str, tuple[str, str, str, str]] = {
    "PPO": ("PPO", "amber.algorithms.ppo.ppo:PPO", "amber.algorithms.ppo.ppo:PPOConfig",
            "amber.policy.torch_policy:TorchPolicy"),
    "DQN": ("DQN", "amber.algorithms.dqn.dqn:DQN", "amber.algorithms.dqn.dqn:DQNConfig",
            "amber.algorithms.dqn.dqn_torch_policy:DQNTorchPolicy"),
    "SAC": ("SAC", "amber.algorithms.sac.sac:SAC", "amber.algorithms.sac.sac:SACConfig",
            "amber.algorithms.sac.sac_torch_policy:SACTorchPolicy"),
}
_POLICY_CLASSES = {"PPOTorchPolicy": "PPO", "DQNTorchPolicy": "DQN", "SACTorchPolicy": "SAC"}
#: SAC's settings a SAC policy is built with (amber.algorithms.sac.sac.POLICY_KEYS).
_SAC_POLICY_KEYS = ("actor_lr", "critic_lr", "alpha_lr", "tau", "initial_alpha", "target_entropy", "twin_q")
_ACTIVATIONS = ("tanh", "relu", "linear", None)
_MULTI_AGENT_CARTPOLE = "amber.envs.multi_agent:MultiAgentCartPole"
_MA_CARTPOLE_PATHS = ("ray.rllib.examples.env.multi_agent.MultiAgentCartPole",
                      "ray.rllib.examples.envs.classes.multi_agent.MultiAgentCartPole")
_MAKE_MULTI_AGENT = "ray.rllib.env.multi_agent_env.make_multi_agent.<locals>.MultiEnv"
_CLASS_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_<>][\w<>]*)+\Z")
_NOT_SERIALIZABLE = "__not_serializable__"


def _fail(where: str, message: str) -> MigrationError:
    return MigrationError(f"{where}: {message}", path=where)


def _last(name: Any) -> str:
    return name.rsplit(".", 1)[-1] if isinstance(name, str) else ""


def algorithm_kind(name: Any, where: str) -> str:
    """``"PPO"``, ``"DQN"`` or ``"SAC"`` for RLlib's algorithm class name.

    :raises MigrationError: another algorithm.
    """
    short = _last(name)
    if short not in ALGORITHMS or (isinstance(name, str) and "." in name
                                   and not name.startswith("ray.rllib.algorithms.")):
        raise _fail(where, f"RLlib algorithm {name!r} is not supported; amber reads RLlib's "
                           f"{', '.join(ALGORITHMS)} checkpoints (torch, old API stack)")
    return short


def policy_kind(name: Any, where: str) -> str:
    """``"PPO"``, ``"DQN"`` or ``"SAC"`` for RLlib's policy class name (torch policies only).

    :raises MigrationError: a TF policy or another algorithm's.
    """
    kind = _POLICY_CLASSES.get(_last(name))
    if kind is None:
        framework = " (a TensorFlow policy: amber reads RLlib's torch policies)" if "TF" in str(name) else ""
        raise _fail(where, f"RLlib policy class {name!r} is not supported{framework}; supported: "
                           f"{', '.join(_POLICY_CLASSES)}")
    return kind


def _activation(model: Mapping[str, Any], where: str) -> str | None:
    act = model.get("fcnet_activation", "tanh") if model.get("fcnet_hiddens") else \
        model.get("post_fcnet_activation", "relu")
    if isinstance(act, str):
        act = act.lower()
    if act not in _ACTIVATIONS:
        raise _fail(where, f"model fcnet_activation {act!r} is not supported (amber's models use "
                           "'tanh', 'relu' or 'linear')")
    return act


def model_config(model: Any, kind: str, where: str) -> dict[str, Any]:
    """amber's model config from RLlib's; refuses what amber's models cannot represent.

    :param model: RLlib's ``model`` config (SAC: its ``policy_model_config``).
    :param kind: ``"PPO"``, ``"DQN"`` or ``"SAC"`` (only PPO uses the value-branch options).
    :param where: the file, for messages.
    :raises MigrationError: an option amber's models do not have, named.
    """
    if not isinstance(model, Mapping):
        raise _fail(where, f"config 'model' is {type(model).__name__}, not a dict")
    refused = {
        "use_lstm": bool(model.get("use_lstm")), "use_attention": bool(model.get("use_attention")),
        "custom_model": model.get("custom_model") not in (None, ""),
        "custom_action_dist": model.get("custom_action_dist") not in (None, ""),
        "custom_preprocessor": model.get("custom_preprocessor") not in (None, ""),
        "free_log_std": bool(model.get("free_log_std")),
        "post_fcnet_hiddens": bool(model.get("post_fcnet_hiddens")),
        "vf_share_layers": kind == "PPO" and bool(model.get("vf_share_layers")),
        "conv_filters": model.get("conv_filters") not in (None, []),
    }
    bad = [key for key, on in refused.items() if on]
    if bad:
        raise _fail(where, f"RLlib model option(s) {', '.join(bad)} are not supported: amber's torch "
                           "models are fully connected with a separate value network")
    hiddens = model.get("fcnet_hiddens", [256, 256])
    if not isinstance(hiddens, list) or not all(isinstance(h, int) and h > 0 for h in hiddens):
        raise _fail(where, f"model fcnet_hiddens {hiddens!r} is not a list of layer sizes")
    return {"fcnet_hiddens": list(hiddens), "fcnet_activation": _activation(model, where)}


def sac_model_config(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """amber's one SAC model config from RLlib's ``policy_model_config`` and ``q_model_config``.

    :raises MigrationError: the actor's and the critics' differ (amber's SAC builds both alike).
    """
    actor = model_config(cfg.get("policy_model_config") or {}, "SAC", where)
    critic = model_config(cfg.get("q_model_config") or {}, "SAC", where)
    if actor != critic:
        raise _fail(where, f"SAC policy_model_config {actor} and q_model_config {critic} differ; amber's SAC "
                           "builds the actor and the critics alike")
    return actor


def policy_config(cfg: Mapping[str, Any], kind: str, index: int, where: str) -> dict[str, Any]:
    """A policy's config as amber's policies hold it (``policy_spec.config``).

    :param cfg: the RLlib policy's config (RLlib's algorithm config with the policy's overrides).
    :param kind: ``"PPO"``, ``"DQN"`` or ``"SAC"``.
    :param index: the policy's position among the algorithm's (amber seeds each policy differently).
    :param where: the file, for messages.
    """
    train = training_settings(cfg, kind, where)
    seed = cfg.get("seed")
    model = sac_model_config(cfg, where) if kind == "SAC" else model_config(cfg.get("model", {}), kind, where)
    out: dict[str, Any] = {
        "model": model, "lr": train["lr"], "gamma": train["gamma"],
        "grad_clip": train["grad_clip"], "checkpoint_format": "msgpack",
        "export_native_model_files": bool(cfg.get("export_native_model_files", False)),
        "seed": None if not isinstance(seed, int) else seed * 1000 + index,
    }
    if kind == "DQN":
        out.update({k: train[k] for k in ("dueling", "double_q", "n_step", "epsilon", "hiddens")})
        if isinstance(cfg.get("adam_epsilon"), float):
            out["adam_epsilon"] = float(cfg["adam_epsilon"])
    if kind == "SAC":
        out.update({k: train[k] for k in _SAC_POLICY_KEYS})
    return out


def _env(env: Any, multi_agent_cartpole: bool) -> tuple[Any, bool]:
    """amber's env value and whether it could not be carried over (a class amber does not know)."""
    if env in _MA_CARTPOLE_PATHS or (env == _MAKE_MULTI_AGENT and multi_agent_cartpole):
        return Ref(_MULTI_AGENT_CARTPOLE), False
    if isinstance(env, str) and not _CLASS_PATH.match(env) and env != _NOT_SERIALIZABLE:
        return env, False  # a gymnasium id, or a name registered with register_env
    return None, True


def _overrides(policy_model: Any, model: Mapping[str, Any]) -> dict[str, Any]:
    """A policy's config overrides: its model where RLlib built it unlike the algorithm's."""
    differs = isinstance(policy_model, Mapping) and policy_model != model
    return {"model": dict(policy_model)} if differs else {}


def amber_config(cfg: Mapping[str, Any], kind: str, policy_ids: list[str], *, multi_agent_cartpole: bool,
                 where: str, models: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """amber's whole algorithm config (``AlgorithmConfig.to_dict()`` form, classes as 1.0 Refs).

    :param cfg: RLlib's algorithm config.
    :param kind: ``"PPO"``, ``"DQN"`` or ``"SAC"``.
    :param policy_ids: every policy of the checkpoint.
    :param multi_agent_cartpole: the policies' spaces are CartPole's (for ``make_multi_agent`` envs).
    :param where: the file, for messages.
    :param models: the model config of each policy read (where it differs, the policy's spec overrides it).
    :return: the config and the keys that could not be stored (``"policy_mapping_fn"``, ``"env"``).
    """
    from amber.algorithms.dqn.dqn import DQNConfig
    from amber.algorithms.ppo.ppo import PPOConfig
    from amber.algorithms.sac.sac import SACConfig

    warn_unsupported(cfg, kind, where)
    _, _, config_path, policy_path = ALGORITHMS[kind]
    out = _with_refs({"PPO": PPOConfig, "DQN": DQNConfig, "SAC": SACConfig}[kind]().to_dict())
    env, env_missing = _env(cfg.get("env"), multi_agent_cartpole)
    multi_agent = policy_ids != ["default_policy"] or env == Ref(_MULTI_AGENT_CARTPOLE)
    env_config = cfg.get("env_config")
    model = sac_model_config(cfg, where) if kind == "SAC" else model_config(cfg.get("model", {}), kind, where)
    out.update(training_settings(cfg, kind, where))
    out.update({
        "env": env, "env_config": dict(env_config) if isinstance(env_config, Mapping) else {},
        "framework_str": "torch", "model": model,
        "num_env_runners": int(get(cfg, "num_env_runners", "num_rollout_workers", "num_workers", default=0)),
        "num_envs_per_env_runner":
            int(get(cfg, "num_envs_per_env_runner", "num_envs_per_worker", default=1)),
        "policies": {pid: {"policy_class": Ref(policy_path),
                           "config": _overrides((models or {}).get(pid), model)} for pid in policy_ids},
        "policy_mapping_fn": None, "policies_to_train": _policies_to_train(cfg.get("policies_to_train")),
        "export_native_model_files": bool(cfg.get("export_native_model_files", False)),
        "checkpoint_format": "msgpack",
        "store_replay_buffer": bool(cfg.get("store_buffer_in_checkpoints", False)),
        "seed": cfg.get("seed") if isinstance(cfg.get("seed"), int) else None,
        "_config_class": Ref(config_path), "multi_agent": bool(multi_agent),
    })
    missing = ["policy_mapping_fn"] if multi_agent and len(policy_ids) > 1 else []
    missing += ["env"] if env_missing else []
    return out, missing


def _with_refs(value: Any) -> Any:
    """``value`` with every class or function in it as its 1.0 Ref (``"module:qualname"``): amber's
    defaults hold live ones (``callbacks_class``), which a 1.0 checkpoint holds as import paths."""
    if is_reference_type(value):
        return Ref.of(value)
    if isinstance(value, Mapping):
        return {k: _with_refs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_with_refs(v) for v in value)
    return value


def _policies_to_train(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if value not in (None, _NOT_SERIALIZABLE):
        warnings.warn(f"RLlib policies_to_train {value!r} is not carried over; every policy trains",
                      NotCarriedOverWarning, stacklevel=3)
    return None
