"""amber's own migration steps between checkpoint versions, shipped as a plugin.

They use the same hook a third party's steps would (``amber_register_migrations``);
the engine (:mod:`amber.migration`) chains them. Each step is a pure
function of a checkpoint's manifest and state trees.

- ``1.0 -> 2.0``: classes and functions are named by registered name, never
  by import path (:mod:`amber.names`).
- ``2.0 -> 2.1``: an algorithm's own state is its class, its config and the
  states of the components it declares (``checkpoint_components``), all
  under ``components``.
- ``2.1 -> 2.2``: no change to the state; checkpoints in a format that can
  run code when read (pickle) record BLAKE3 digests instead of sha256 (both
  are read), which is why older amber must refuse them by version.
"""

from __future__ import annotations

from typing import Any

import amber
from amber.migration import CheckpointTrees, Migration
from amber.names import PLACEHOLDER, is_nameable, legacy_name, name_of
from amber.state import Ref, walk_replace

__all__ = ["V1_TO_V2", "V2_1_TO_V2_2", "V2_TO_V2_1"]


def _named(keypath: str, value: Any) -> Any:
    if isinstance(value, Ref) and not value.is_placeholder:
        return Ref(legacy_name(value.target))  # 1.0 held "module:qualname"
    if is_nameable(value):  # a pickle checkpoint holds the object itself
        name = name_of(value)
        return value if name is None else Ref(name)
    return value


def _v1_to_v2(trees: CheckpointTrees) -> CheckpointTrees:
    state = walk_replace(trees.state, _named)
    if trees.type == "Algorithm" and isinstance(state, dict) and state.get("missing"):
        # 1.0 stored a mapping function it could not name as None plus a "missing" list.
        state = dict(state)
        config = dict(state["config"])
        for key in state.pop("missing"):
            config[key] = Ref(PLACEHOLDER + str(key))
        state["config"] = config
    policies = {pid: walk_replace(p, _named) for pid, p in trees.policies.items()}
    return trees.replace(state=state, policies=policies)


V1_TO_V2 = Migration(
    "1.0", "2.0", _v1_to_v2,
    description=(
        "classes and functions stored by import path ('module:qualname') are stored by registered "
        "name instead ('amber.PPO', 'amber.TorchPolicy', 'user:<qualname>' for users' own);\n"
        "a mapping function that 1.0 could not store (listed under 'missing') becomes a placeholder "
        "that the loader asks for"
    ),
)


#: 2.0's learner keys and the components that hold them in 2.1.
_LEARNER_COMPONENTS = {"kl_coeffs": "kl_coeffs", "replay_buffers": "replay_buffers",
                       "last_target_update": "last_target_update"}


def _v2_to_v2_1(trees: CheckpointTrees) -> CheckpointTrees:
    if trees.type != "Algorithm":
        return trees
    old = dict(trees.state)
    comps = dict(old.get("components") or {})
    progress = {key: old[key] for key in ("iteration", "counters", "recent_returns", "recent_policy_returns")
                if key in old}
    if progress:
        comps["progress"] = progress
    if old.get("torch_rng") is not None:
        comps["rng.torch"] = old["torch_rng"]
    learner = dict(old.get("learner") or {})
    for key, component in _LEARNER_COMPONENTS.items():
        if key in learner:
            comps[component] = learner[key]
    if "num_updates" in learner or "update_credit" in learner:
        comps["updates"] = {"num_updates": learner.get("num_updates", 0),
                            "update_credit": learner.get("update_credit", 0.0)}
    moved = {"iteration", "counters", "recent_returns", "recent_policy_returns", "torch_rng", "learner"}
    state = {k: v for k, v in old.items() if k not in moved and k != "components"}
    state["components"] = comps
    return trees.replace(state=state)


V2_TO_V2_1 = Migration(
    "2.0", "2.1", _v2_to_v2_1,
    description=(
        "an algorithm's iteration, counters and recent returns move to components.progress;\n"
        "torch_rng moves to components['rng.torch'];\n"
        "the learner's kl_coeffs, replay_buffers and last_target_update become components of their own,\n"
        "its num_updates and update_credit become components.updates"
    ),
)


def _v2_1_to_v2_2(trees: CheckpointTrees) -> CheckpointTrees:
    return trees  # what changed is how files are hashed, not what they hold


V2_1_TO_V2_2 = Migration(
    "2.1", "2.2", _v2_1_to_v2_2,
    description="no change to the state: pickle checkpoints record BLAKE3 digests instead of sha256",
)


@amber.hookimpl
def amber_register_migrations() -> list[Migration]:
    """amber's own steps."""
    return [V1_TO_V2, V2_TO_V2_1, V2_1_TO_V2_2]
