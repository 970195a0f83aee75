"""numpy action generators (PCG64) as plain bytes, for states and checkpoints: the tf2
policies' generators, and remote env runners' copies of them (:mod:`amber.envs.ray_runners`)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GENERATOR_BYTES", "generator_from_bytes", "generator_to_bytes"]

#: Bytes of a PCG64 generator's saved state: state and increment (128 bits each), has_uint32, uinteger.
GENERATOR_BYTES = 40


def generator_to_bytes(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's whole state as uint8[40] (little-endian)."""
    s = rng.bit_generator.state
    raw = (int(s["state"]["state"]).to_bytes(16, "little") + int(s["state"]["inc"]).to_bytes(16, "little")
           + int(s["has_uint32"]).to_bytes(4, "little") + int(s["uinteger"]).to_bytes(4, "little"))
    return np.frombuffer(raw, dtype=np.uint8).copy()


def generator_from_bytes(raw: Any) -> np.random.Generator | None:
    """The generator :func:`generator_to_bytes` saved, or None when ``raw`` is not 40 bytes
    (another framework's generator state: a torch policy's is torch's)."""
    arr = np.asarray(raw)
    if arr.dtype != np.uint8 or arr.shape != (GENERATOR_BYTES,):
        return None
    b = arr.tobytes()
    bits = np.random.PCG64()
    word = {"state": int.from_bytes(b[:16], "little"), "inc": int.from_bytes(b[16:32], "little")}
    bits.state = {"bit_generator": "PCG64", "state": word, "has_uint32": int.from_bytes(b[32:36], "little"),
                  "uinteger": int.from_bytes(b[36:], "little")}
    return np.random.Generator(bits)
