"""Helpers every torch policy shares: seeds, weights and optimizer states as state trees, threads, configs.

Pure functions, no policy class: :mod:`amber.policy.torch_policy_base` builds on them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import torch

from amber.models.build_budget import adopting, adopting_state
from amber.models.torch_mlp import weights_will_be_loaded
from amber.names import is_nameable, name_of
from amber.policy.spaces import space_from_state
from amber.scoped import scoped
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


def policy_seeds(seed: int | None, n: int, *, salt: tuple[int, ...] = ()) -> tuple[int, ...]:
    """``n`` independent 64-bit seeds from one user seed (fresh random ones when it is None).

    :param salt: mixed into the seed (``SeedSequence([seed, *salt])``), so that two policy
        classes draw different seeds from the same user seed.
    """
    if seed is None:
        return tuple(torch.Generator().seed() for _ in range(n))
    entropy = [int(seed), *salt] if salt else int(seed)
    return tuple(int(s) for s in np.random.SeedSequence(entropy).generate_state(n, dtype=np.uint64))


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


_VIEWS: ContextVar[bool] = ContextVar("amber_state_views", default=False)


def state_views() -> AbstractContextManager[None]:
    """Inside the block, policies' :meth:`get_state` hands out numpy *views* of their CPU tensors
    (weights, optimizer moments) instead of copies.

    For a caller that uses the state before anything changes the policy: a synchronous save
    writes them as they are, a background save copies them once (:mod:`amber.async_save`).
    """
    return scoped(_VIEWS, True)


def _array_of(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy: a view inside :func:`state_views` (for a CPU tensor), else a copy.

    A view is noted as live memory (:func:`amber.snapshots.live_view`, with the tensor's version
    counter), so that a background save may copy it after its caller has gone on.
    """
    arr = tensor.detach().cpu().numpy()
    if not (_VIEWS.get() and tensor.device.type == "cpu"):
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


# -- configs and specs ---------------------------------------------------------------------

_DROP = object()


def portable_config(value: Any) -> Any:
    """The parts of a config a portable format can store.

    Keeps dicts (str/int keys), lists, tuples (as lists), scalars, strings,
    bytes, numpy numeric arrays, and classes/functions with a registered
    name; drops the rest (lambdas, live objects), which cannot be restored
    from a portable checkpoint anyway.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return value if value.dtype.kind in "biufc" else _DROP
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                pv = portable_config(v)
                if pv is not _DROP:
                    out[k] = pv
        return out
    if isinstance(value, (list, tuple)):
        items = [portable_config(v) for v in value]
        return [v for v in items if v is not _DROP]
    if is_nameable(value) and name_of(value) is not None:
        return value
    return _DROP


def build_from_spec(cls: type[T], spec: Mapping[str, Any]) -> T:
    """``cls(observation_space, action_space, config)`` from a ``policy_spec`` state, without
    initialising weights (a saved state is about to replace them)."""
    obs_space, act_space = spec["observation_space"], spec["action_space"]
    if isinstance(obs_space, Mapping):
        obs_space = space_from_state(dict(obs_space))
    if isinstance(act_space, Mapping):
        act_space = space_from_state(dict(act_space))
    with weights_will_be_loaded():
        return cls(obs_space, act_space, dict(spec.get("config") or {}))  # type: ignore[call-arg]


def action_info(observation_space: Any, action_space: Any, *, squashed: bool = False,
                q_values: bool = False) -> dict[str, Any]:
    """What ``model.json`` says about the spaces and how to act from ``action_dist_inputs``.

    :param squashed: Box actions are ``low + (tanh(mean) + 1) / 2 * (high - low)`` (SAC).
    :param q_values: the outputs are Q-values (DQN): act by argmax.
    """
    import gymnasium as gym

    def space(s: Any) -> dict[str, Any]:
        if isinstance(s, gym.spaces.Discrete):
            return {"type": "Discrete", "n": int(s.n), "start": int(s.start)}
        return {"type": "Box", "shape": list(s.shape), "dtype": np.dtype(s.dtype).name,
                "low": np.asarray(s.low, dtype=np.float64).tolist(),
                "high": np.asarray(s.high, dtype=np.float64).tolist()}

    if isinstance(action_space, gym.spaces.Discrete):
        dist = "q_values" if q_values else "categorical"
        act = f"argmax(action_dist_inputs, axis=-1) + {int(action_space.start)}"
    elif squashed:
        dist = "squashed_gaussian"
        act = ("mean = action_dist_inputs[:, :d]; action = low + (tanh(mean) + 1) / 2 * (high - low), "
               "reshaped to the action shape")
    else:
        dist = "diag_gaussian"
        act = "mean = action_dist_inputs[:, :d]; action = clip(mean, low, high), reshaped to the action shape"
    return {"observation_space": space(observation_space), "action_space": space(action_space),
            "action_distribution": dist, "greedy_action": act}
