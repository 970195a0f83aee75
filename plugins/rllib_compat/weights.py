"""RLlib's torch model weights and Adam state under amber's parameter names.

RLlib 2.10's default torch models are ``FullyConnectedNetwork`` (PPO),
``DQNTorchModel`` (an FCNet trunk with dueling heads) and ``SACTorchModel``
(FCNets for the actor and the critics); each ``SlimFC`` layer's parameters
are ``<path>._model.0.weight``/``bias``. amber's models are
``nn.Sequential`` stacks whose Linear layers sit at every index (no
activation) or every other index (an activation after each). Each tower is
checked layer by layer: its first layer takes the tower's input width,
each layer the previous one's output, the last gives the head's width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from amber.errors import MigrationError

__all__ = ["OptimizerPart", "Tower", "adam_tree", "dqn_towers", "map_weights", "ppo_towers", "sac_towers"]

#: (amber's Sequential name, step between its Linear layers, RLlib's layer paths in order,
#: input width (-1: the trunk's output), output width (-1: any)).
Tower = tuple[str, int, list[str], int, int]
#: One RLlib optimizer ``state_dict()`` and the RLlib weight names of its parameters, in order.
OptimizerPart = tuple[Any, Sequence[str]]


def _fail(where: str, message: str) -> MigrationError:
    return MigrationError(f"{where}: {message}", path=where)


def _numbered(weights: Mapping[str, Any], prefix: str) -> list[str]:
    """``prefix.0``, ``prefix.1``... for as long as RLlib has such a layer."""
    found: list[str] = []
    while f"{prefix}.{len(found)}._model.0.weight" in weights:
        found.append(f"{prefix}.{len(found)}")
    return found


def _step(activation: str | None) -> int:
    return 1 if activation in (None, "linear") else 2


def ppo_towers(weights: Mapping[str, Any], activation: str | None, in_dim: int, out_dim: int) -> list[Tower]:
    """PPO's FCNet: ``_hidden_layers.i`` + ``_logits`` → ``pi``; ``_value_branch_separate.i`` +
    ``_value_branch`` → ``vf``."""
    step = _step(activation)
    return [("pi", step, [*_numbered(weights, "_hidden_layers"), "_logits"], in_dim, out_dim),
            ("vf", step, [*_numbered(weights, "_value_branch_separate"), "_value_branch"], in_dim, 1)]


def dqn_towers(weights: Mapping[str, Any], activation: str | None, in_dim: int, num_actions: int, *,
               dueling: bool, hiddens: Sequence[int]) -> list[Tower]:
    """DQN's model: FCNet ``_hidden_layers.i`` → ``trunk``; ``advantage_module.dueling_A_j`` +
    ``A`` → ``advantage`` (or ``q``), ``value_module.dueling_V_j`` + ``V`` → ``value``.

    With no ``hiddens`` (and no dueling) RLlib's FCNet ends in ``_logits``, the Q head.
    Its value branch (``_value_branch*``) is never used by DQN and is not carried over.
    """
    trunk: Tower = ("trunk", _step(activation), _numbered(weights, "_hidden_layers"), in_dim, -1)
    if not hiddens:
        return [trunk, ("q", 1, ["_logits"], -1, num_actions)]
    adv = [f"advantage_module.dueling_A_{j}" for j in range(len(hiddens))] + ["advantage_module.A"]
    if not dueling:
        return [trunk, ("q", 2, adv, -1, num_actions)]
    val = [f"value_module.dueling_V_{j}" for j in range(len(hiddens))] + ["value_module.V"]
    return [trunk, ("value", 2, val, -1, 1), ("advantage", 2, adv, -1, num_actions)]


def sac_towers(weights: Mapping[str, Any], activation: str | None, in_dim: int, action_dim: int, *,
               twin_q: bool) -> list[Tower]:
    """SAC's model: ``action_model`` → ``pi`` (mean and log_std), ``q_net`` → ``q1`` and
    ``twin_q_net`` → ``q2`` (their input: the observation, then the action).

    The FCNets' value branches (``*._value_branch*``) are never used by SAC and not carried over.
    """
    step = _step(activation)

    def fcnet(prefix: str) -> list[str]:
        return [*_numbered(weights, f"{prefix}._hidden_layers"), f"{prefix}._logits"]

    towers = [("pi", step, fcnet("action_model"), in_dim, 2 * action_dim),
              ("q1", step, fcnet("q_net"), in_dim + action_dim, 1)]
    return towers + ([("q2", step, fcnet("twin_q_net"), in_dim + action_dim, 1)] if twin_q else [])


def _array(weights: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    value = weights.get(key)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise _fail(where, f"weight {key!r} is missing or not a float array")
    return value


def _tower(weights: Mapping[str, Any], tower: Tower, width: int, where: str,
           out: dict[str, np.ndarray], source: dict[str, str]) -> int:
    """Map one tower's layers into ``out``/``source``; return its output width."""
    name, step, layers, in_dim, out_dim = tower
    prev = width if in_dim < 0 else in_dim
    for k, layer in enumerate(layers):
        w = _array(weights, f"{layer}._model.0.weight", where)
        b = _array(weights, f"{layer}._model.0.bias", where)
        if w.ndim != 2 or w.shape[1] != prev or b.shape != (w.shape[0],):
            raise _fail(where, f"layer {layer!r} has weight {w.shape} and bias {b.shape}; "
                               f"expected {prev} inputs")
        for kind, arr in (("weight", w), ("bias", b)):
            out[f"{name}.{k * step}.{kind}"] = np.array(arr, dtype=np.float32)
            source[f"{name}.{k * step}.{kind}"] = f"{layer}._model.0.{kind}"
        prev = w.shape[0]
    if out_dim >= 0 and prev != out_dim:
        raise _fail(where, f"{name}: the last layer gives {prev} outputs, the head needs {out_dim}")
    return prev


def map_weights(weights: Mapping[str, Any], towers: Sequence[Tower], where: str, *,
                unused: Sequence[str] = ("_value_branch",), extra: Sequence[str] = (),
                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """amber's weights (float32 copies, in amber's parameter order) and RLlib's name of each.

    :param weights: RLlib's ``policy_state["weights"]``.
    :param towers: where each RLlib layer goes (see :func:`ppo_towers`, :func:`dqn_towers`,
        :func:`sac_towers`).
    :param where: the file, for messages.
    :param unused: RLlib weights containing one of these are dropped (parts the algorithm never uses).
    :param extra: RLlib weights the caller maps itself (SAC's ``log_alpha``).
    :raises MigrationError: a layer missing, a shape that does not chain, or a weight amber has
        no place for (LayerNorm...), named.
    """
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    width = -1
    for tower in towers:
        last = _tower(weights, tower, width, where, out, source)
        width = last if tower[0] == "trunk" else width
    used = set(source.values()) | set(extra)
    left = [k for k in weights if k not in used and not any(u in k for u in unused)]
    if left:
        raise _fail(where, f"weights {left[:5]} have no place in amber's model (an RLlib model option "
                           "amber does not build?)")
    return out, source


def _group(group: Mapping[str, Any], count: int) -> dict[str, Any]:
    betas = group.get("betas", [0.9, 0.999])
    return {"lr": float(group.get("lr", 1e-3)), "betas": [float(b) for b in betas],
            "eps": float(group.get("eps", 1e-8)), "weight_decay": float(group.get("weight_decay", 0)),
            "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
            "differentiable": False, "fused": True, "decoupled_weight_decay": False,
            "params": list(range(count))}


def _entries(parts: Sequence[OptimizerPart]) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
    """Each RLlib parameter's Adam state entry (None where it has none) and the first param group."""
    found: dict[str, Any] = {}
    first: Mapping[str, Any] | None = None
    for variables, names in parts:
        if not isinstance(variables, Mapping):
            return None
        state, groups = variables.get("state"), variables.get("param_groups")
        if not isinstance(state, Mapping) or not isinstance(groups, list) or len(groups) != 1 \
                or not isinstance(groups[0], Mapping) or groups[0].get("amsgrad"):
            return None
        params = groups[0].get("params")
        if not isinstance(params, list) or len(params) != len(names):
            return None
        for key, name in zip(params, names, strict=True):
            found[name] = state.get(key, state.get(str(key)))
        first = first or groups[0]
    return (found, first) if first is not None else None


def adam_tree(parts: Sequence[OptimizerPart], amber: Mapping[str, np.ndarray],
              source: Mapping[str, str]) -> dict[str, Any] | None:
    """amber's Adam state tree (as :func:`amber.policy.torch_policy.optimizer_state_to_tree`
    gives it) for the parameters ``amber`` from RLlib's optimizers, or None when it cannot be
    mapped exactly (then the restored policy starts a fresh optimizer).

    :param parts: the RLlib optimizers that held these parameters (SAC's two critics: two).
    :param amber: amber's weights of this optimizer, in its parameter order.
    :param source: RLlib's name of each amber weight.
    """
    found = _entries(parts)
    if found is None:
        return None
    entries, group = found
    out: dict[int, Any] = {}
    for j, name in enumerate(amber):
        entry = entries.get(source[name])
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            return None
        shape = amber[name].shape
        moments = [entry["exp_avg"], entry["exp_avg_sq"]]
        if not all(isinstance(m, np.ndarray) and m.size == amber[name].size and m.dtype.kind == "f"
                   for m in moments):
            return None
        out[j] = {"step": np.array(float(np.asarray(entry["step"])), dtype=np.float32),
                  "exp_avg": np.array(moments[0], dtype=np.float32).reshape(shape),
                  "exp_avg_sq": np.array(moments[1], dtype=np.float32).reshape(shape)}
    if out and len(out) != len(amber):
        return None  # some parameters stepped and others not: not what amber's optimizer holds
    return {"state": out, "param_groups": [_group(group, len(amber))]}
