"""amber's own migration steps between checkpoint versions, shipped as a plugin.

They use the same hook a third party's steps would (``amber_register_migrations``);
the engine (:mod:`amber.migration`) chains them. Each step is a pure
function of a checkpoint's manifest and state trees.

- ``1.0 -> 2.0``: classes and functions are named by registered name, never
  by import path (:mod:`amber.names`).
"""

from __future__ import annotations

from typing import Any

import amber
from amber.migration import CheckpointTrees, Migration
from amber.names import PLACEHOLDER, is_nameable, legacy_name, name_of
from amber.state import Ref, walk_replace

__all__ = ["V1_TO_V2"]


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


@amber.hookimpl
def amber_register_migrations() -> list[Migration]:
    """amber's own steps."""
    return [V1_TO_V2]
