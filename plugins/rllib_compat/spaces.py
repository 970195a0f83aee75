"""RLlib's serialized gymnasium spaces as amber's space states (:mod:`amber.policy.spaces`).

RLlib 2.10 writes a space as ``{"space": {"space": "box", "low": ..., "high": ...,
"shape": [...], "dtype": "<f4"}}`` (plus ``"original_space"`` where a
preprocessor changed it), its Box bounds as base64 of zlib-compressed
``.npy`` bytes. Those are decoded with ``numpy.load(allow_pickle=False)``,
the decompression bounded by the size the shape and dtype call for.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from amber.errors import MigrationError

__all__ = ["is_cartpole", "space_state"]

_NPY_HEADER_MAX = 4096
_MAX_ELEMENTS = 1 << 24
_CARTPOLE_HIGH = np.array([4.8, np.finfo(np.float32).max, 0.41887903, np.finfo(np.float32).max],
                          dtype=np.float32)


def _fail(where: str, message: str) -> MigrationError:
    return MigrationError(f"{where}: {message}", path=where)


def _bounds(text: Any, shape: tuple[int, ...], dtype: np.dtype[Any], where: str) -> np.ndarray:
    """One Box bound: base64 → zlib → ``.npy`` (no pickle), checked against shape and dtype."""
    if isinstance(text, (int, float)):
        return np.full(shape, text, dtype=dtype)
    if not isinstance(text, str):
        raise _fail(where, f"a Box bound is {type(text).__name__}, not RLlib's encoded array")
    limit = _NPY_HEADER_MAX + math.prod(shape) * max(dtype.itemsize, 8)
    try:
        packed = base64.b64decode(text.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, limit + 1)
        if len(raw) > limit or not inflater.eof:
            raise ValueError("the encoded array is larger than its shape allows")
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, binascii.Error, zlib.error, UnicodeEncodeError, OSError, EOFError) as e:
        raise _fail(where, f"a Box bound cannot be decoded: {type(e).__name__}: {e}") from e
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise _fail(where, "a Box bound is not a numeric array")
    if array.shape != shape:
        array = np.broadcast_to(array, shape) if array.size == 1 else array
    if array.shape != shape:
        raise _fail(where, f"a Box bound has shape {array.shape}, the space {shape}")
    return np.array(array, dtype=dtype)


def _box(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) \
            or math.prod(shape) > _MAX_ELEMENTS:
        raise _fail(where, f"Box shape {shape!r} is malformed")
    try:
        dtype = np.dtype(str(spec.get("dtype", "<f4")))
    except TypeError as e:
        raise _fail(where, f"Box dtype {spec.get('dtype')!r} is malformed") from e
    if dtype.kind not in "biuf":
        raise _fail(where, f"Box dtype {dtype.str!r} is not numeric")
    low = _bounds(spec.get("low"), tuple(shape), dtype, where)
    high = _bounds(spec.get("high"), tuple(shape), dtype, where)
    return {"type": "Box", "low": low, "high": high, "dtype": dtype.str}


def space_state(value: Any, where: str) -> dict[str, Any]:
    """amber's state of a Box or Discrete space from RLlib's serialized space.

    Where RLlib recorded an ``original_space`` (its preprocessor flattened or
    one-hot encoded the observations), that one is used: amber's models
    preprocess inside.

    :param value: ``policy_spec["observation_space"]`` or ``["action_space"]``.
    :param where: the file, for messages.
    :raises MigrationError: malformed, or a space type amber's policies do not act on.
    """
    if isinstance(value, Mapping) and isinstance(value.get("original_space"), Mapping):
        value = value["original_space"]
    spec = value.get("space") if isinstance(value, Mapping) else None
    if not isinstance(spec, Mapping):
        raise _fail(where, f"a policy space is {type(spec).__name__}, not RLlib's serialized space")
    kind = spec.get("space")
    if kind == "box":
        return _box(spec, where)
    if kind == "discrete":
        n, start = spec.get("n"), spec.get("start", 0)
        if not isinstance(n, int) or n < 1 or not isinstance(start, int):
            raise _fail(where, f"Discrete space n={n!r}, start={start!r} is malformed")
        return {"type": "Discrete", "n": n, "start": start}
    raise _fail(where, f"RLlib space {kind!r} is not supported: amber's policies act on Box and "
                       "Discrete spaces")


def is_cartpole(observation: Mapping[str, Any], action: Mapping[str, Any]) -> bool:
    """Whether two space states are CartPole-v1's (to recognise ``make_multi_agent("CartPole-v1")``)."""
    if observation.get("type") != "Box" or action != {"type": "Discrete", "n": 2, "start": 0}:
        return False
    high = np.asarray(observation["high"])
    return high.shape == (4,) and bool(np.allclose(high, _CARTPOLE_HIGH)) and \
        bool(np.allclose(observation["low"], -_CARTPOLE_HIGH))
