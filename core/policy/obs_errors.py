"""The errors of a policy given observations of the wrong shape (one observation as a batch, or a
batch as one observation), with how to pass them; amber's policies and served policies share them."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["obs_batch_error", "single_obs_error"]


def _shape_words(shape: tuple[int, ...]) -> str:
    return "shape () (a scalar)" if shape == () else f"shape {shape}"


def obs_batch_error(policy: Any, arr: np.ndarray, *, owner: str | None = None,
                    shape: tuple[int, ...] | None = None) -> ValueError:
    """The error of ``compute_actions`` for a batch of observations ``arr`` whose shape is not
    ``[batch, *obs_shape]`` (one observation passed as a batch: use ``compute_single_action``, or
    add a batch axis). ``owner``: what to call the policy (its class); ``shape``: one observation's
    shape (the policy's ``_obs_shape``)."""
    want = policy._obs_shape if shape is None else shape
    owner = owner or type(policy).__name__
    one = "one integer" if want == () else f"shape {want}"
    n = arr.size // max(int(np.prod(want)), 1)
    if arr.shape == want:
        hint = "; for one observation use compute_single_action(obs), or add a batch axis (obs[None])"
    elif n and arr.size % max(int(np.prod(want)), 1) == 0 and (
            arr.ndim == len(want) > 0 or (want == () and arr.ndim > 1)):
        hint = f"; if it holds {n} observation{'s' * (n > 1)}, reshape it to {(n, *want)}"
    else:
        hint = ""
    return ValueError(f"{owner}.compute_actions takes a batch of observations of {one} each, not an "
                      f"array of shape {arr.shape}{hint}")


def single_obs_error(arr: np.ndarray, want: tuple[int, ...], owner: str) -> ValueError:
    """The error of ``compute_single_action`` for an observation ``arr`` whose shape is not the
    space's, ``want`` (``()`` for a Discrete space): a batch, or the right values in another shape."""
    hints = []
    if arr.size == int(np.prod(want)):
        hints.append("pass the integer itself" if want == () else f"reshape it to {want}")
    if arr.ndim == len(want) + 1 and arr.shape[1:] == want:
        hints.append("for a batch of observations use compute_actions(obs_batch)")
    hint = f"; {', or '.join(hints)}" if hints else ""
    one = ", an integer (shape ())" if want == () else f" of {_shape_words(want)}"
    return ValueError(f"{owner}.compute_single_action takes one observation{one}, not one of "
                      f"{_shape_words(arr.shape)}{hint}")
