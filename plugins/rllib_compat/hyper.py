"""RLlib 2.10's training hyperparameters in amber's names, per algorithm.

RLlib 2.10 still writes some settings under their old names
(``num_workers``, ``sgd_minibatch_size``, ``lambda``); both old and new are
read. Settings amber does not implement are listed in a
:class:`NotCarriedOverWarning` when they were set.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from amber.errors import MigrationError

__all__ = ["NotCarriedOverWarning", "dqn_epsilon", "get", "training_settings", "warn_unsupported"]

_NOT_SERIALIZABLE = "__not_serializable__"
_PPO_FLOATS = ("clip_param", "vf_clip_param", "vf_loss_coeff", "entropy_coeff", "kl_coeff", "kl_target")


class NotCarriedOverWarning(UserWarning):
    """An RLlib setting that amber does not implement was set; it is not carried over."""


def _fail(where: str, message: str) -> MigrationError:
    return MigrationError(f"{where}: {message}", path=where)


def get(cfg: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` that ``cfg`` holds with a usable value (RLlib's old and new names;
    RLlib marks a deprecated key with -1)."""
    for name in names:
        value = cfg.get(name)
        if value is not None and value != -1 and value != _NOT_SERIALIZABLE:
            return value
    return default


def dqn_epsilon(exploration: Any, where: str) -> list[tuple[int, float]]:
    """amber's epsilon schedule from RLlib's ``EpsilonGreedy`` exploration config.

    RLlib's schedule is ``initial_epsilon`` until ``warmup_timesteps``, then linear to
    ``final_epsilon`` over ``epsilon_timesteps``; amber's is the same piecewise-linear
    list of ``(timestep, epsilon)`` points. Another exploration type keeps RLlib's default
    schedule and warns.
    """
    cfg = exploration if isinstance(exploration, Mapping) else {}
    kind = cfg.get("type")
    short = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else None
    if short not in ("EpsilonGreedy", "PerWorkerEpsilonGreedy"):
        warnings.warn(f"{where}: RLlib exploration {kind!r} is not carried over; amber's DQN explores "
                      "epsilon-greedily with RLlib's default schedule", NotCarriedOverWarning, stacklevel=2)
        cfg = {}
    start, end = float(cfg.get("initial_epsilon", 1.0)), float(cfg.get("final_epsilon", 0.02))
    warmup, span = int(cfg.get("warmup_timesteps", 0)), int(cfg.get("epsilon_timesteps", 10_000))
    points = [(0, start)] + ([(warmup, start)] if warmup > 0 else [])
    return points + [(warmup + span, end)] if span > 0 else [(0, end)]


def warn_unsupported(cfg: Mapping[str, Any], kind: str, where: str) -> None:
    """Warn about set RLlib training settings that amber does not implement."""
    checks = {
        "lr_schedule": cfg.get("lr_schedule") not in (None, []),
        "observation_filter": cfg.get("observation_filter", "NoFilter") != "NoFilter",
        "clip_rewards": cfg.get("clip_rewards") not in (None, False),
        "grad_clip_by": cfg.get("grad_clip_by", "global_norm") != "global_norm",
    }
    if kind == "PPO":
        checks.update({"entropy_coeff_schedule": cfg.get("entropy_coeff_schedule") not in (None, []),
                       "use_gae": cfg.get("use_gae") is False, "use_critic": cfg.get("use_critic") is False,
                       "use_kl_loss": cfg.get("use_kl_loss") is False})
    elif kind == "DQN":
        checks.update({"td_error_loss_fn": cfg.get("td_error_loss_fn", "huber") != "huber",
                       "tau": float(cfg.get("tau", 1.0)) != 1.0})
    else:
        checks.update({"n_step": cfg.get("n_step", 1) != 1, "target_network_update_freq":
                       int(cfg.get("target_network_update_freq") or 0) > 1})
    bad = [key for key, on in checks.items() if on]
    if bad:
        warnings.warn(f"{where}: RLlib setting(s) {', '.join(bad)} are not implemented by amber and are not "
                      "carried over (see docs/rllib_compat.md)", NotCarriedOverWarning, stacklevel=3)


def _replay(cfg: Mapping[str, Any], default: int) -> dict[str, Any]:
    rb = cfg.get("replay_buffer_config")
    capacity = rb.get("capacity", default) if isinstance(rb, Mapping) else default
    # amber's replay buffer is uniform: RLlib's prioritized replay is not carried over.
    return {"capacity": int(capacity), "type": "MultiAgentReplayBuffer"}


def _off_policy(cfg: Mapping[str, Any], capacity: int, learning_starts: int,
                min_steps: int) -> dict[str, Any]:
    """What DQN and SAC share: replay, learning start, training intensity, sampling per iteration."""
    out: dict[str, Any] = {
        "replay_buffer_config": _replay(cfg, capacity),
        "num_steps_sampled_before_learning_starts":
            int(cfg.get("num_steps_sampled_before_learning_starts", learning_starts)),
        "training_intensity":
            None if cfg.get("training_intensity") is None else float(cfg["training_intensity"]),
        "min_sample_timesteps_per_iteration": int(cfg.get("min_sample_timesteps_per_iteration") or min_steps),
    }
    fragment = cfg.get("rollout_fragment_length")
    if isinstance(fragment, int):
        out["rollout_fragment_length"] = fragment
    elif fragment == "auto":  # RLlib's DQN and SAC sample n_step steps per round ("auto")
        n_step = cfg.get("n_step", 1)
        out["rollout_fragment_length"] = int(n_step[1] if isinstance(n_step, (list, tuple)) else n_step)
    return out


def _dqn(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    n_step = cfg.get("n_step", 1)
    if not isinstance(n_step, int) or n_step < 1:
        raise _fail(where, f"DQN n_step {n_step!r} is not supported (amber takes one integer)")
    if int(cfg.get("num_atoms", 1)) > 1 or cfg.get("noisy"):
        raise _fail(where, "distributional (num_atoms > 1) and noisy DQN are not supported by amber's DQN")
    hiddens = cfg.get("hiddens", [256])
    if not isinstance(hiddens, list) or not all(isinstance(h, int) and h > 0 for h in hiddens):
        raise _fail(where, f"DQN hiddens {hiddens!r} is not a list of layer sizes")
    if cfg.get("dueling", True) and not hiddens:
        raise _fail(where, "RLlib's dueling DQN without hiddens is not supported (its value head is the "
                           "identity); amber's dueling heads each end in a linear layer")
    return {
        **_off_policy(cfg, 50_000, 1000, 1000), "n_step": n_step, "hiddens": list(hiddens),
        "target_network_update_freq": int(cfg.get("target_network_update_freq", 500)),
        "double_q": bool(cfg.get("double_q", True)), "dueling": bool(cfg.get("dueling", True)),
        "epsilon": dqn_epsilon(cfg.get("exploration_config"), where),
    }


def _sac(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    found = cfg.get("optimization")
    opt: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    target = cfg.get("target_entropy", "auto")
    if target not in (None, "auto") and not isinstance(target, (int, float)):
        raise _fail(where, f"SAC target_entropy {target!r} is neither 'auto' nor a number")
    return {
        **_off_policy(cfg, 1_000_000, 1500, 100),
        "actor_lr": float(opt.get("actor_learning_rate", 3e-4)),
        "critic_lr": float(opt.get("critic_learning_rate", 3e-4)),
        "alpha_lr": float(opt.get("entropy_learning_rate", 3e-4)),
        "tau": float(cfg.get("tau", 5e-3)), "initial_alpha": float(cfg.get("initial_alpha", 1.0)),
        "target_entropy": "auto" if target in (None, "auto") else float(target),
        "twin_q": bool(cfg.get("twin_q", True)),
    }


def training_settings(cfg: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    """The algorithm's hyperparameters in amber's names (RLlib 2.10's old and new names read).

    :param cfg: RLlib's algorithm (or policy) config.
    :param kind: ``"PPO"``, ``"DQN"`` or ``"SAC"``.
    :param where: the file, for messages.
    :raises MigrationError: a value amber cannot use (a non-integer ``n_step``...).
    """
    defaults = {"PPO": (5e-5, 4000), "DQN": (5e-4, 32), "SAC": (3e-4, 256)}[kind]
    out: dict[str, Any] = {
        "lr": float(cfg.get("lr") or defaults[0]), "gamma": float(cfg.get("gamma", 0.99)),
        "train_batch_size": int(cfg.get("train_batch_size", defaults[1])),
        "grad_clip": None if cfg.get("grad_clip") is None else float(cfg["grad_clip"]),
    }
    if kind == "DQN":
        return {**out, **_dqn(cfg, where)}
    if kind == "SAC":
        return {**out, **_sac(cfg, where)}
    return {
        **out,
        "minibatch_size": int(get(cfg, "sgd_minibatch_size", "minibatch_size", default=128)),
        "num_epochs": int(get(cfg, "num_sgd_iter", "num_epochs", default=30)),
        "lambda_": float(get(cfg, "lambda", "lambda_", default=1.0)),
        **{k: float(cfg[k]) for k in _PPO_FLOATS if isinstance(cfg.get(k), (int, float))},
    }
