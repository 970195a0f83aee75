"""The action generators of a remote env runner's policy copies: found, seeded per runner,
saved and restored, for torch policies (torch generators) and tf2 ones (numpy PCG64).

A saved state of the other framework's generator (a checkpoint of the other framework, or
one converted to this framework) is left out, as a policy's own is
(:mod:`amber.policy.frameworks`): the runner's generator keeps its state, seeded from the
policy's seed and the runner index. A state of no generator's kind is an
:class:`~amber.errors.InvalidStateError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from amber.errors import InvalidStateError
from amber.policy.numpy_generators import GENERATOR_BYTES, generator_from_bytes, generator_to_bytes

__all__ = ["checked_runner_states", "generator_state", "policy_generators", "reseed", "set_generator_state",
           "set_policy_generators", "without_runner_generators"]


def policy_generators(policy: Any) -> dict[str, Any]:
    """The policy's action generators by name: torch generators (torch policies) and numpy
    generators (tf2 policies)."""
    gens = {name: getattr(policy, name, None) for name in getattr(policy, "GENERATORS", ())}
    return {name: g for name, g in gens.items()
            if isinstance(g, np.random.Generator) or (hasattr(g, "manual_seed") and hasattr(g, "get_state"))}


def reseed(policy: Any, index: int) -> None:
    """Seed a runner's copy of a policy from the policy's seed and the runner index (in place, so
    that whatever holds the generator keeps drawing from it)."""
    seed = policy.config.get("seed")
    if seed is None:
        return
    for k, (_, gen) in enumerate(sorted(policy_generators(policy).items())):
        state = int(np.random.SeedSequence([int(seed) % 2**63, index, k]).generate_state(1, np.uint64)[0])
        if isinstance(gen, np.random.Generator):
            gen.bit_generator.state = np.random.PCG64(state).state
        else:
            gen.manual_seed(state)


def generator_state(gen: Any) -> np.ndarray:
    """A generator's state as bytes (uint8)."""
    if isinstance(gen, np.random.Generator):
        return generator_to_bytes(gen)
    return gen.get_state().numpy().copy()


def _state_bytes(raw: Any, where: str) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise InvalidStateError(f"{where}: a generator state is a uint8 vector, not {arr.dtype} of shape "
                                f"{arr.shape}")
    return np.ascontiguousarray(arr).copy()


def _is_foreign(gen: Any, arr: np.ndarray) -> bool:
    """Whether ``arr`` is the other framework's generator state: a numpy generator's is
    PCG64's 40 bytes, any other a torch generator's."""
    return (arr.shape != (GENERATOR_BYTES,)) == isinstance(gen, np.random.Generator)


def _torch_state(gen: Any, arr: np.ndarray, where: str) -> Any:
    """``arr`` as the tensor a torch generator restores, checked on a scratch generator."""
    import torch

    raw = torch.from_numpy(arr)
    try:
        type(gen)().set_state(raw)
    except RuntimeError as e:
        raise InvalidStateError(f"{where}: not a valid torch generator state ({e})") from e
    return raw


def set_generator_state(gen: Any, raw: Any, where: str) -> bool:
    """Put a state from :func:`generator_state` back into ``gen``, in place.

    :return: False (nothing changed) when it is the other framework's generator's state.
    :raises InvalidStateError: a state of neither kind, or not a valid one (named by ``where``).
    """
    arr = _state_bytes(raw, where)
    if _is_foreign(gen, arr):
        return False
    if isinstance(gen, np.random.Generator):
        saved = generator_from_bytes(arr)
        if saved is None:
            raise InvalidStateError(f"{where}: not the state of a numpy generator")
        gen.bit_generator.state = saved.bit_generator.state
    else:
        gen.set_state(_torch_state(gen, arr, where))
    return True


def set_policy_generators(policies: Mapping[str, Any], gens: Any, where: str) -> None:
    """Apply a runner's saved ``generators`` (``{policy id: {name: state}}``) to its policies
    (those of policies absent here, and the other framework's, are skipped)."""
    if not isinstance(gens, Mapping):
        raise InvalidStateError(f"{where} state: 'generators' must be a map")
    for pid, saved in gens.items():
        policy = policies.get(pid)
        own = policy_generators(policy) if policy is not None else {}
        for name, raw in (saved or {}).items():
            if name in own:
                set_generator_state(own[name], raw, f"{where}, policy {pid}, {name}")


def checked_runner_states(policies: Mapping[str, Any], runners: list[Any]) -> tuple[list[Any], list[str]]:
    """The saved runners' states, checked against the algorithm's ``policies`` (of the runners'
    classes) before any runner takes one, without the other framework's generator states.

    :return: the states to apply, and the ids of the policies whose saved generators were left out.
    :raises InvalidStateError: a generator state of neither kind, or not a valid one.
    """
    out, foreign = [], []
    for i, state in enumerate(runners, start=1):
        gens = state.get("generators") if isinstance(state, Mapping) else None
        if not isinstance(gens, Mapping):
            raise InvalidStateError(f"env runner {i} state: 'generators' must be a map")
        kept = {}
        for pid, saved in gens.items():
            own = policy_generators(policies[pid]) if pid in policies else {}
            kept[pid] = {}
            for name, raw in (saved or {}).items():
                where = f"env runner {i}, policy {pid}, {name}"
                if name in own and _is_foreign(own[name], _state_bytes(raw, where)):
                    foreign += [] if pid in foreign else [pid]
                    continue
                if name in own and not isinstance(own[name], np.random.Generator):
                    _torch_state(own[name], _state_bytes(raw, where), where)
                kept[pid][name] = raw
        out.append({**state, "generators": kept})
    return out, foreign


def without_runner_generators(own: Mapping[str, Any], policy_ids: Iterable[str]) -> dict[str, Any]:
    """An algorithm's own state without the remote runners' saved generator states of
    ``policy_ids`` (policies moved to the other framework): each runner keeps its own, seeded
    from the policy's seed, as the policy itself does."""
    drop = set(policy_ids)
    components = own.get("components")
    runner = components.get("env_runner") if isinstance(components, Mapping) else None
    runners = runner.get("remote_runners") if isinstance(runner, Mapping) else None
    if not drop or not isinstance(runners, list):
        return dict(own)
    new = [{**r, "generators": {pid: g for pid, g in r["generators"].items() if pid not in drop}}
           if isinstance(r, Mapping) and isinstance(r.get("generators"), Mapping) else r for r in runners]
    return {**own, "components": {**components, "env_runner": {**runner, "remote_runners": new}}}
