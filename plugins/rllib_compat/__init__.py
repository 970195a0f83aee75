"""Reads RLlib 2.10's own msgpack checkpoints, without Ray, as amber's oldest checkpoint versions.

An RLlib checkpoint directory (``rllib_checkpoint.json``, ``algorithm_state.msgpck``,
``policies/<id>/policy_state.msgpck``, or a policy checkpoint's
``policy_state.msgpck``) is read through ``amber_read_foreign_checkpoint``
as checkpoint_version ``"rllib-1.0"`` or ``"rllib-1.1"``; this plugin's
migration steps turn it into amber's 1.0 trees and amber's own steps take it
on from there. So ``Algorithm.from_checkpoint``, ``Policy.from_checkpoint``
and ``amber migrate`` read RLlib's PPO, DQN and SAC checkpoints (torch, old
API stack). Nothing is unpickled: RLlib pickle checkpoints are refused with how
to convert them. See docs/rllib_compat.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import amber

from .hyper import NotCarriedOverWarning
from .reader import FORMAT, MalformedRLlibCheckpointError, describe_rllib_checkpoint, read_rllib_checkpoint
from .steps import RLLIB_1_0_TO_1_1, RLLIB_1_1_TO_AMBER_1_0

if TYPE_CHECKING:
    from amber.checkpoint import Checkpoint
    from amber.migration import Migration

__all__ = ["FORMAT", "MalformedRLlibCheckpointError", "NotCarriedOverWarning"]


@amber.hookimpl
def amber_read_foreign_checkpoint(path: Path, policy_ids: Sequence[str] | None) -> Checkpoint | None:
    """Read ``path`` if it is an RLlib checkpoint (it has ``rllib_checkpoint.json``).

    :param path: the directory.
    :param policy_ids: for an algorithm checkpoint, the policies to read (None: all).
    :return: the checkpoint, version ``"rllib-1.x"``, or None for any other directory.
    """
    return read_rllib_checkpoint(path, policy_ids)


@amber.hookimpl
def amber_describe_foreign_checkpoint(path: Path) -> dict[str, Any] | None:
    """Describe ``path`` if it is an RLlib checkpoint, from its ``rllib_checkpoint.json`` alone.

    :param path: the directory.
    :return: what it is (see the hook's spec), or None for any other directory.
    """
    return describe_rllib_checkpoint(path)


@amber.hookimpl
def amber_register_migrations() -> list[Migration]:
    """``rllib-1.0 -> rllib-1.1`` (no change) and ``rllib-1.1 -> 1.0`` (RLlib's trees as amber's)."""
    return [RLLIB_1_0_TO_1_1, RLLIB_1_1_TO_AMBER_1_0]
