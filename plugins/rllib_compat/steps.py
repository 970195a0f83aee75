"""The migration steps from RLlib's checkpoint versions to amber's checkpoint_version 1.0.

- ``rllib-1.0 -> rllib-1.1``: RLlib 1.1 only added ``format`` to
  rllib_checkpoint.json; the state trees are the same, so nothing changes.
- ``rllib-1.1 -> 1.0``: RLlib's algorithm and policy state trees become
  amber's: classes as import paths (1.0's :class:`~amber.state.Ref`), the
  config in amber's names, weights and Adam moments under amber's parameter
  names, counters and iteration carried over. amber's own ``1.0 -> 2.0``
  step follows.

Both are pure functions of :class:`~amber.migration.CheckpointTrees`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.errors import MigrationError
from amber.migration import CheckpointTrees, Migration
from amber.state import Ref

from .config import ALGORITHMS, algorithm_kind, amber_config, policy_config, policy_kind
from .spaces import is_cartpole, space_state
from .weights import adam_tree, dqn_towers, map_weights, ppo_towers, sac_towers

__all__ = ["RLLIB_1_0_TO_1_1", "RLLIB_1_1_TO_AMBER_1_0", "algorithm_tree", "policy_tree"]

_COUNTERS = {"num_env_steps_sampled": "num_env_steps_sampled_lifetime",
             "num_agent_steps_sampled": "num_agent_steps_sampled_lifetime",
             "num_env_steps_trained": "num_env_steps_trained_lifetime"}


def _fail(where: str, message: str) -> MigrationError:
    return MigrationError(f"{where}: {message}", path=where)


def _dims(obs: Mapping[str, Any], act: Mapping[str, Any], where: str) -> tuple[int, int]:
    """The model's input width and the action head's output width (logits, or mean and log_std)."""
    if obs["type"] == "Box" and np.asarray(obs["low"]).ndim >= 3:
        raise _fail(where, f"image observations {np.asarray(obs['low']).shape} are not supported "
                           "(RLlib builds a conv net for them; amber's models are fully connected)")
    in_dim = obs["n"] if obs["type"] == "Discrete" else int(np.asarray(obs["low"]).size)
    out_dim = act["n"] if act["type"] == "Discrete" else 2 * int(np.asarray(act["low"]).size)
    return in_dim, out_dim


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else default


def _prefixed(weights: Mapping[str, Any], prefix: str) -> list[str]:
    return [k for k in weights if k.startswith(prefix)]


def _sac_parts(state: Mapping[str, Any], rweights: Mapping[str, Any], weights: dict[str, np.ndarray],
               source: dict[str, str], twin_q: bool, where: str) -> dict[str, Any]:
    """SAC's weights completed (targets, ``log_alpha``) and its three Adam states, in place."""
    for q in ("q1", "q2") if twin_q else ("q1",):  # RLlib syncs the targets on restore, too
        weights.update({k.replace(q, f"{q}_target", 1): v.copy() for k, v in list(weights.items())
                        if k.startswith(f"{q}.")})
    log_alpha = rweights.get("log_alpha")
    if not isinstance(log_alpha, np.ndarray) or log_alpha.size != 1:
        raise _fail(where, "SAC weight 'log_alpha' is missing or not one number")
    weights["log_alpha"] = np.array(log_alpha, dtype=np.float32).reshape(())
    source["log_alpha"] = "log_alpha"
    opts = state.get("_optimizer_variables")
    if not isinstance(opts, list) or len(opts) != (4 if twin_q else 3):
        return {}
    critics = [(opts[1], _prefixed(rweights, "q_net."))] + ([(opts[2], _prefixed(rweights, "twin_q_net."))]
                                                           if twin_q else [])
    found = {
        "actor": adam_tree([(opts[0], _prefixed(rweights, "action_model."))],
                           {k: v for k, v in weights.items() if k.startswith("pi.")}, source),
        "critic": adam_tree(critics, {k: v for k, v in weights.items() if k.startswith(("q1.", "q2."))},
                            source),
        "alpha": adam_tree([(opts[-1], ["log_alpha"])], {"log_alpha": weights["log_alpha"]}, source),
    }
    return {name: tree for name, tree in found.items() if tree is not None}


def _model(state: Mapping[str, Any], kind: str, config: dict[str, Any], dims: tuple[int, int, int],
           where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """amber's weights and optimizer state(s) of one policy (``{"optimizer": ...}`` or
    ``{"optimizers": {...}}``, SAC's, plus its target networks)."""
    rweights = state["weights"]
    act_name = config["model"]["fcnet_activation"]
    in_dim, out_dim, action_dim = dims
    if kind == "SAC":
        towers = sac_towers(rweights, act_name, in_dim, action_dim, twin_q=config["twin_q"])
        weights, source = map_weights(rweights, towers, where, extra=("log_alpha", "target_entropy"))
        return weights, {"optimizers": _sac_parts(state, rweights, weights, source, config["twin_q"], where)}
    towers = (ppo_towers(rweights, act_name, in_dim, out_dim) if kind == "PPO" else
              dqn_towers(rweights, act_name, in_dim, out_dim, dueling=config["dueling"],
                         hiddens=config["hiddens"]))
    weights, source = map_weights(rweights, towers, where)
    optimizer = None
    opts = state.get("_optimizer_variables")
    if isinstance(opts, list) and len(opts) == 1:
        optimizer = adam_tree([(opts[0], list(rweights))], weights, source)
    extra: dict[str, Any] = {} if optimizer is None else {"optimizer": optimizer}
    if kind == "DQN":  # RLlib syncs the target network to the Q network when it restores weights
        extra["target_weights"] = {k: v.copy() for k, v in weights.items()}
    return weights, extra


def policy_tree(state: Mapping[str, Any], *, index: int, where: str) -> tuple[dict[str, Any], str]:
    """amber's 1.0 policy state from RLlib's, and the policy's algorithm (``"PPO"``, ``"DQN"``, ``"SAC"``).

    :param state: RLlib's decoded ``policy_state.msgpck``.
    :param index: the policy's position among the algorithm's (amber seeds each differently).
    :param where: the file, for messages.
    :raises MigrationError: what amber cannot represent, named.
    """
    spec = state["policy_spec"]
    kind = policy_kind(spec.get("policy_class"), where)
    obs = space_state(spec.get("observation_space"), where)
    act = space_state(spec.get("action_space"), where)
    needs = {"DQN": "Discrete", "SAC": "Box"}.get(kind, act["type"])
    if act["type"] != needs:
        raise _fail(where, f"a {kind} policy with a {act['type']} action space is not supported")
    in_dim, out_dim = _dims(obs, act, where)
    rcfg = spec.get("config") if isinstance(spec.get("config"), Mapping) else {}
    config = policy_config(rcfg, kind, index, where)
    weights, extra = _model(state, kind, config, (in_dim, out_dim, out_dim // 2), where)
    layers = [w.shape[0] for k, w in weights.items()
              if k.startswith(("trunk.", "pi.")) and k.endswith(".weight")]
    layers = layers if kind == "DQN" else layers[:-1]
    said = list(config["model"]["fcnet_hiddens"])
    # RLlib's DQN with Q-head hiddens but no fcnet_hiddens builds one 256-wide layer in the FCNet.
    if layers != said and not (kind == "DQN" and not said and config["hiddens"] and layers == [256]):
        raise _fail(where, f"the weights' hidden layers {layers} do not match the config's "
                           f"fcnet_hiddens {said}")
    config["model"]["fcnet_hiddens"] = layers
    _, _, _, policy_path = ALGORITHMS[kind]
    return {
        "policy_spec": {"policy_class": Ref(policy_path), "observation_space": obs, "action_space": act,
                        "config": config},
        "weights": weights, **extra,
        "global_timestep": _int(state.get("global_timestep")),
        "num_grad_updates": _int(state.get("num_grad_updates")),
    }, kind


def _counters(counters: Any) -> dict[str, int]:
    counters = counters if isinstance(counters, Mapping) else {}
    return {amber: _int(counters[rllib]) for rllib, amber in _COUNTERS.items() if rllib in counters}


def _learner(kind: str, counters: Any, policies: Mapping[str, Any]) -> dict[str, Any]:
    """PPO's adaptive KL coefficients (RLlib keeps them in the policies); DQN's last target sync."""
    if kind == "PPO":
        kl = {pid: float(p["current_kl_coeff"]) for pid, p in policies.items()
              if isinstance(p.get("current_kl_coeff"), (int, float, np.floating))}
        return {"kl_coeffs": kl} if kl else {}
    ts = counters.get("last_target_update_ts") if isinstance(counters, Mapping) else None
    if kind != "DQN" or not isinstance(ts, int):
        return {}  # amber's SAC moves its targets after every update: it keeps no clock
    return {"last_target_update": {pid: ts for pid in policies}}


def algorithm_tree(state: Mapping[str, Any], policies: Mapping[str, Any], policy_ids: list[str], *,
                   where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """amber's 1.0 algorithm state and policy states from RLlib's.

    :param state: RLlib's decoded ``algorithm_state.msgpck``.
    :param policies: RLlib's decoded policy states, by id (those read).
    :param policy_ids: every policy id of the checkpoint, in RLlib's order.
    :param where: the checkpoint, for messages.
    """
    kind = algorithm_kind(state.get("algorithm_class"), where)
    trees: dict[str, Any] = {}
    for pid, pstate in policies.items():
        index = policy_ids.index(pid) if pid in policy_ids else len(policy_ids)
        trees[pid], pkind = policy_tree(pstate, index=index, where=f"{where}/policies/{pid}")
        if pkind != kind:
            raise _fail(where, f"policy {pid!r} is a {pkind} policy in a {kind} checkpoint")
    cartpole = any(is_cartpole(t["policy_spec"]["observation_space"], t["policy_spec"]["action_space"])
                   for t in trees.values())
    models = {pid: t["policy_spec"]["config"]["model"] for pid, t in trees.items()}
    config, missing = amber_config(state["config"], kind, policy_ids, multi_agent_cartpole=cartpole,
                                   where=where, models=models)
    _, algo_path, _, _ = ALGORITHMS[kind]
    own: dict[str, Any] = {"algorithm_class": Ref(algo_path), "config": config,
                           "iteration": _int(state.get("training_iteration")),
                           "counters": _counters(state.get("counters"))}
    learner = _learner(kind, state.get("counters"), policies)
    if learner:
        own["learner"] = learner
    if missing:
        config.update({key: None for key in missing})
        own["missing"] = missing
    return own, trees


def _policy_ids(trees: CheckpointTrees) -> list[str]:
    ids = trees.manifest.get("policy_ids")
    return [str(p) for p in ids] if isinstance(ids, list) else sorted(trees.policies)


def _to_amber_1_0(trees: CheckpointTrees) -> CheckpointTrees:
    where = str(trees.manifest.get("checkpoint_dir") or "the RLlib checkpoint")
    if trees.type == "Policy":
        state, _ = policy_tree(trees.state, index=0, where=where)
        return trees.replace(state=state)
    state, policies = algorithm_tree(trees.state, trees.policies, _policy_ids(trees), where=where)
    return trees.replace(state=state, policies=policies)


def _rllib_1_0_to_1_1(trees: CheckpointTrees) -> CheckpointTrees:
    return trees


RLLIB_1_0_TO_1_1 = Migration(
    "rllib-1.0", "rllib-1.1", _rllib_1_0_to_1_1,
    description="no change: RLlib's checkpoint_version 1.1 only added 'format' to rllib_checkpoint.json; "
                "the state trees are the same",
)

RLLIB_1_1_TO_AMBER_1_0 = Migration(
    "rllib-1.1", "1.0", _to_amber_1_0,
    description=(
        "RLlib's algorithm and policy state become amber's (checkpoint_version 1.0): "
        "algorithm and policy classes as amber's (PPO, DQN, SAC; TorchPolicy, DQNTorchPolicy, "
        "SACTorchPolicy);\n"
        "the config in amber's names (sgd_minibatch_size -> minibatch_size, num_sgd_iter -> num_epochs, "
        "lambda -> lambda_, num_rollout_workers -> num_env_runners, num_envs_per_worker -> "
        "num_envs_per_env_runner, exploration_config -> epsilon, ...), Ray's own settings dropped;\n"
        "weights renamed (_hidden_layers/_logits/_value_branch* -> pi/vf; DQN: trunk/value/advantage; SAC: "
        "action_model/q_net/twin_q_net -> pi/q1/q2), Adam moments likewise, target networks set to the "
        "Q networks (as RLlib does on restore);\n"
        "training_iteration and the env-step counters carried over; PPO's KL coefficients into the learner "
        "state;\na multi-agent mapping function (which RLlib's msgpack does not store) listed as missing"
    ),
)
