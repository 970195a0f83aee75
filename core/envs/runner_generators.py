"""The action generators of a remote env runner's policy copies: found, seeded per runner,
saved and restored, for torch policies (torch generators) and tf2 ones (numpy PCG64)."""

from __future__ import annotations

from typing import Any

import numpy as np

from amber.errors import InvalidStateError
from amber.policy.numpy_generators import generator_from_bytes, generator_to_bytes

__all__ = ["generator_state", "policy_generators", "reseed", "set_generator_state"]


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


def set_generator_state(gen: Any, raw: Any, where: str) -> None:
    """Put a state from :func:`generator_state` back into ``gen``, in place."""
    arr = np.ascontiguousarray(np.asarray(raw, dtype=np.uint8)).copy()
    if isinstance(gen, np.random.Generator):
        saved = generator_from_bytes(arr)
        if saved is None:
            raise InvalidStateError(f"{where}: not the state of a numpy generator")
        gen.bit_generator.state = saved.bit_generator.state
        return
    import torch

    gen.set_state(torch.from_numpy(arr))
