"""Helpers every torch policy shares: seeds, weights and optimizer states as state trees, threads, configs.

Pure functions, no policy class: :mod:`amber.policy.torch_policy_base` builds on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import numpy as np
import torch

from amber.models.build_budget import adopting, adopting_state
from amber.policy.policy_helpers import (
    action_info,
    build_from_spec,
    policy_seeds,
    portable_config,
    state_views,
    views_wanted,
)
from amber.snapshots import live_view, wait_for_snapshot

__all__ = [
    "SMALL_BATCH",
    "action_info",
    "adopting",
    "adopting_state",
    "build_from_spec",
    "checked_weights",
    "copy_weights",
    "intra_op_threads",
    "optimizer_state_from_tree",
    "optimizer_state_to_tree",
    "policy_seeds",
    "portable_config",
    "state_views",
    "threads_for_batch",
    "weights_of",
]

T = TypeVar("T")

#: Batches up to this size are computed with one torch intra-op thread (OpenMP threads
#: cost far more than they give on tiny matrices, and stall when other processes share the cores).
SMALL_BATCH = 64


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with torch limited to ``n`` intra-op threads, then restore the setting."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def threads_for_batch(n: int) -> AbstractContextManager[None]:
    """One intra-op thread for a batch of at most :data:`SMALL_BATCH` rows, else torch's setting."""
    return intra_op_threads(1) if n <= SMALL_BATCH else nullcontext()


# -- weights and optimizer states ----------------------------------------------------------


def _array_of(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy: a view inside :func:`state_views` (for a CPU tensor), else a copy.

    A view is noted as live memory (:func:`amber.snapshots.live_view`, with the tensor's version
    counter), so that a background save may copy it after its caller has gone on.
    """
    arr = tensor.detach().cpu().numpy()
    if not (views_wanted() and tensor.device.type == "cpu"):
        return arr.copy()
    if not tensor.is_inference():  # an inference tensor counts no versions: copied at the save
        _wait_before_optimizer_steps()
        live_view(arr, lambda: tensor._version)
    return arr


_STEP_HOOK: list[Any] = []


def _wait_before_optimizer_steps() -> None:
    """Have every torch optimizer's ``step()`` (amber's and the user's) wait for a background
    save's copy first (:func:`amber.snapshots.wait_for_snapshot`); installed once."""
    if not _STEP_HOOK:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _STEP_HOOK.append(register_optimizer_step_pre_hook(lambda opt, args, kwargs: wait_for_snapshot()))


def weights_of(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """A module's ``state_dict()`` as numpy copies (views inside :func:`state_views`), by name."""
    return {k: _array_of(v) for k, v in module.state_dict().items()}


def checked_weights(module: torch.nn.Module, weights: Mapping[str, Any],
                    what: str = "weights") -> list[tuple[torch.Tensor, np.ndarray]]:
    """``(tensor, new value)`` for every entry of ``module``'s state dict, checked: nothing is copied
    yet (:func:`copy_weights` does), so a wrong set of weights changes nothing.

    :raises KeyError: a weight is missing.
    :raises ValueError: a weight's shape differs (never broadcast).
    """
    own = module.state_dict()
    missing = set(own) - set(weights)
    if missing:
        raise KeyError(f"{what} are missing {sorted(missing)}")
    new = {name: np.asarray(weights[name], dtype=np.float32) for name in own}
    wrong = {n: (tuple(a.shape), tuple(own[n].shape)) for n, a in new.items() if a.shape != own[n].shape}
    if wrong:
        raise ValueError(f"{what}: shapes differ (given, expected): {wrong}")
    return [(tensor, new[name]) for name, tensor in own.items()]


def copy_weights(pairs: list[tuple[torch.Tensor, np.ndarray]]) -> None:
    """Copy :func:`checked_weights`'s values into their tensors, in place (one copy each: a CPU
    tensor's memory is written by numpy directly, a read-only array is never copied first)."""
    wait_for_snapshot()  # a background save may not have copied the old values yet
    with torch.no_grad():
        for tensor, value in pairs:
            if tensor.device.type == "cpu" and tensor.is_contiguous():
                np.copyto(tensor.detach().numpy(), value, casting="same_kind")
            else:
                tensor.copy_(torch.from_numpy(np.array(value, copy=not value.flags.writeable)))



def optimizer_state_to_tree(value: Any) -> Any:
    """An optimizer ``state_dict()`` as a state tree: tensors become numpy copies (views inside
    :func:`state_views`)."""
    if isinstance(value, torch.Tensor):
        return _array_of(value)
    if isinstance(value, Mapping):
        return {k: optimizer_state_to_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [optimizer_state_to_tree(v) for v in value]
    return value


def optimizer_state_from_tree(value: Any, *, _key: Any = None) -> Any:
    """The inverse of :func:`optimizer_state_to_tree`: arrays become tensors again."""
    if isinstance(value, (np.ndarray, np.generic)):
        # torch keeps the array's memory: a copy unless this restore owns a writable array
        own = adopting() and isinstance(value, np.ndarray) and value.flags.writeable
        return torch.from_numpy(value if own else np.array(value, copy=True))
    if isinstance(value, Mapping):
        # msgpack may hand back the per-parameter keys as ints or str: torch wants ints.
        return {(int(k) if _key == "state" and isinstance(k, str) and k.isdigit() else k):
                optimizer_state_from_tree(v, _key=k) for k, v in value.items()}
    if isinstance(value, list):
        items = [optimizer_state_from_tree(v) for v in value]
        return tuple(items) if _key == "betas" else items
    return value
