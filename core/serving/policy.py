"""A policy that acts in numpy (or onnxruntime) without torch: what :func:`amber.serve.load_policy` returns.

A :class:`ServedPolicy` is a network (observations → ``action_dist_inputs``
and, for PPO, ``vf_preds``: :mod:`amber.models.numpy_policy`'s, or an ONNX
session's) and the action distribution that turns its outputs into actions
(:mod:`amber.models.numpy_distributions`), with the spaces as plain dicts
(:func:`describe_space`). Its methods return what amber's torch policies
return. Importing this module imports numpy only.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amber.errors import InvalidStateError
from amber.models.numpy_distributions import DISTRIBUTIONS, NumpySquashedGaussian, epsilon_greedy
from amber.models.numpy_mlp import check_obs_range
from amber.policy.policy import (
    BATCH_EXTRAS,
    SINGLE_ACTION_EXTRAS,
    check_extra_kwargs,
    obs_batch_error,
    single_obs_error,
)
from amber.policy.sample_batch import ACTION_DIST_INPUTS, ACTION_LOGP, Q_VALUES, VF_PREDS

__all__ = ["MAX_SPACE_ELEMENTS", "Network", "ServedPolicy", "describe_space"]

#: A network: observations ``[batch, ...]`` → its outputs by name (``action_dist_inputs``, ``vf_preds``).
Network = Callable[[np.ndarray], dict[str, np.ndarray]]


#: The most values a served space may describe (a Box's elements, a Discrete's ``n``), the bound RLlib's
#: spaces have when read (``amber.plugins.rllib_compat``); a caller bounds it further by what the
#: network holds (``max_elements``).
MAX_SPACE_ELEMENTS = 1 << 24
#: The most dimensions a Box may have.
MAX_SPACE_RANK = 32
#: The numpy kinds of a Box's dtype: bool, signed and unsigned integers, floats.
BOX_DTYPE_KINDS = "biuf"
_INT64 = np.iinfo(np.int64)


def describe_space(state: Mapping[str, Any], *, max_elements: int = MAX_SPACE_ELEMENTS) -> dict[str, Any]:
    """A Discrete or Box space as a plain dict, from a policy state's description of it
    (:func:`amber.policy.spaces.space_to_state`) or from ``model.json``'s.

    Discrete: ``{"type", "n", "start"}``; Box: ``{"type", "shape", "dtype", "low", "high"}`` with
    ``low``/``high`` arrays of ``shape`` and ``dtype`` (a numpy dtype name). The size, the shape and
    the dtype are checked before any array is made, so that a small description cannot ask for a
    large one (a scalar bound is broadcast to the shape).

    :param max_elements: the most values the space may describe (a Box's elements, a Discrete's
        ``n``), at most :data:`MAX_SPACE_ELEMENTS`.
    :raises ValueError: another type of space, or a malformed description (not a mapping, a shape
        or ``n`` out of bounds, a dtype that is not a numpy bool, integer or float type).
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a space is described by a mapping, not {type(state).__name__}")
    limit = min(max_elements, MAX_SPACE_ELEMENTS)
    kind = state.get("type")
    if kind == "Discrete":
        n, start = _integer(state["n"], "n"), _integer(state.get("start", 0), "start")
        if not 1 <= n <= limit:
            raise ValueError(f"a Discrete space of n={n}: n must be from 1 to {limit} here")
        if start < _INT64.min or start + n - 1 > _INT64.max:
            raise ValueError(f"a Discrete space from {start}: its values do not fit in int64")
        return {"type": "Discrete", "n": n, "start": start}
    if kind == "Box":
        dtype = _box_dtype(state.get("dtype", "float32"))
        shape = _box_shape(state["shape"], limit) if "shape" in state else None
        low, high = np.asarray(state["low"], dtype=dtype), np.asarray(state["high"], dtype=dtype)
        shape = _box_shape(low.shape, limit) if shape is None else shape
        return {"type": "Box", "shape": shape, "dtype": dtype.name,
                "low": np.broadcast_to(low, shape).copy(), "high": np.broadcast_to(high, shape).copy()}
    raise ValueError(f"spaces of type {kind!r} are not supported (Box and Discrete are)")


def _integer(value: Any, what: str) -> int:
    """``value`` as an int (a Python or numpy integer, not a bool or a float)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} is {value!r}, not an integer")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} is {type(value).__name__}, not an integer") from None


def _box_dtype(value: Any) -> np.dtype[Any]:
    """A Box's dtype from its name, checked to be a plain bool, integer or float type."""
    if not isinstance(value, (str, np.dtype)) or len(str(value)) > 32:
        raise ValueError(f"a Box's dtype must be a numpy type name, not {str(value)[:40]!r}")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a Box's dtype {value!r} is not a numpy type: {e}") from None
    if dtype.kind not in BOX_DTYPE_KINDS or dtype.shape or dtype.names is not None:
        raise ValueError(f"a Box's dtype {value!r} is not a bool, integer or float type")
    return dtype


def _box_shape(value: Any, limit: int) -> tuple[int, ...]:
    """A Box's shape, checked: at most :data:`MAX_SPACE_RANK` dimensions of at most ``limit`` values."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SPACE_RANK:
        raise ValueError(f"a Box's shape must be a list of at most {MAX_SPACE_RANK} sizes, not "
                         f"{str(value)[:80]}")
    shape = tuple(_integer(d, "a Box's dimension") for d in value)
    if any(d < 0 or d > limit for d in shape) or math.prod(shape) > limit:
        raise ValueError(f"a Box of shape {list(shape)}: it may hold at most {limit} values here")
    return shape


#: The action space each action distribution acts in.
DISTRIBUTION_SPACES = {"categorical": "Discrete", "q_values": "Discrete", "diag_gaussian": "Box",
                       "squashed_gaussian": "Box"}


def distribution_misfit(action_distribution: str, action_space: Mapping[str, Any]) -> str | None:
    """Why ``action_distribution`` cannot act in ``action_space`` (a :func:`describe_space` dict),
    or None when it can (or is not one of :data:`DISTRIBUTION_SPACES`)."""
    want = DISTRIBUTION_SPACES.get(action_distribution)
    if want is None or action_space.get("type") == want:
        return None
    return (f"action_distribution {action_distribution!r} acts in a {want} action space, not the "
            f"{action_space.get('type')} one it gives")


class ServedPolicy:
    """A policy that acts in numpy (or onnxruntime), as :func:`amber.serve.load_policy` returns it.

    :meth:`compute_actions` and :meth:`compute_single_action` return what amber's torch
    policy's return with ``explore=False``: the greedy action (argmax; a Gaussian's mean, not
    clipped unless ``clip_actions``; SAC's squashed mean), and the same ``info`` keys
    (``action_dist_inputs`` always; ``action_logp`` for PPO and SAC; ``vf_preds`` for PPO;
    ``q_values`` for DQN). ``explore=True`` samples with :attr:`rng` (not the torch policy's
    draws): PPO and SAC from their distribution, DQN epsilon-greedy with :attr:`epsilon`.
    ``explore=None`` means what it means to the torch policy, the algorithm's default
    exploration, which for PPO, DQN and SAC is ``explore=True``. An empty batch gives empty
    actions and info columns.

    :param network: observations → outputs by name (``action_dist_inputs``, ``vf_preds``).
    :param action_distribution: ``categorical``, ``diag_gaussian``, ``q_values`` or ``squashed_gaussian``.
    :raises InvalidStateError: the action distribution or the network's outputs do not fit the spaces.
    """

    def __init__(self, policy_id: str, observation_space: Mapping[str, Any], action_space: Mapping[str, Any],
                 action_distribution: str, network: Network, *, source: str | os.PathLike[str],
                 seed: int | None = None, epsilon: float = 0.0) -> None:
        self.policy_id = policy_id
        self.observation_space = dict(observation_space)
        self.action_space = dict(action_space)
        self.action_distribution = action_distribution
        self.network = network
        #: The checkpoint or export directory it was loaded from (the URL, a str, for one
        #: :func:`~amber.serving.load.load_policy` downloaded).
        self.source: Path | str = Path(source)
        #: What ``explore=True`` samples with.
        self.rng = np.random.default_rng(seed)
        #: DQN's exploration rate with ``explore=True`` (from a checkpoint: the rate it had reached).
        self.epsilon = float(epsilon)
        misfit = distribution_misfit(action_distribution, self.action_space)
        if misfit is not None:
            raise InvalidStateError(f"{self.source}: {misfit}", path=self.source)
        self._check_outputs()

    def __repr__(self) -> str:
        return f"ServedPolicy({self.policy_id!r}, {self.action_distribution}, source={str(self.source)!r})"

    def _probe(self) -> dict[str, np.ndarray]:
        """The network's outputs for one observation of the space (its first value, or zeros)."""
        space = self.observation_space
        probe = (np.full((1,), space["start"]) if space["type"] == "Discrete"
                 else np.zeros((1, *space["shape"]), np.float32))
        return self.network(self._obs_array(probe))

    def _check_outputs(self) -> None:
        """Run one observation through the network: weights that do not fit fail here, named."""
        act_space = self.action_space
        try:
            out = self._probe()[ACTION_DIST_INPUTS]
        except (KeyError, ValueError, TypeError) as e:
            raise InvalidStateError(f"{self.source}: its network does not run: {type(e).__name__}: {e}",
                                    path=self.source) from e
        # logits or Q-values per action; a Gaussian's mean and log_std per action dimension
        n = act_space["n"] if act_space["type"] == "Discrete" else 2 * int(np.prod(act_space["shape"]))
        if out.shape != (1, n):
            raise InvalidStateError(f"{self.source}: its network gives action_dist_inputs of shape "
                                    f"{out.shape[1:]}, its action space needs ({n},)", path=self.source)
        if act_space["type"] == "Box":
            low = act_space["low"].astype(np.float32).reshape(-1)
            high = act_space["high"].astype(np.float32).reshape(-1)
            self._low, self._half_range = low, ((high - low) / np.float32(2.0)).astype(np.float32)

    def _obs_array(self, obs_batch: Any) -> np.ndarray:
        """A batch of observations as the network takes them: int64 (Discrete) or float32 (Box)."""
        space = self.observation_space
        discrete = space["type"] == "Discrete"
        arr = np.asarray(obs_batch, dtype=np.int64 if discrete else np.float32)
        if arr.ndim == 0 or arr.shape[1:] != self._obs_shape:
            raise obs_batch_error(self, arr, owner=f"policy {self.policy_id!r}", shape=self._obs_shape)
        if discrete:
            check_obs_range(f"policy {self.policy_id!r}", arr, (space["start"], space["start"] + space["n"]))
        return arr

    @property
    def _obs_shape(self) -> tuple[int, ...]:
        """One observation's shape (Discrete: ``()``)."""
        space = self.observation_space
        return () if space["type"] == "Discrete" else tuple(int(d) for d in space["shape"])

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = False,
        clip_actions: bool = False, **kwargs: Any,
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, [], info)``.

        :param obs_batch: observations ``[batch, *obs_shape]`` exactly (Discrete: ``[batch]``
            integers); an empty batch gives empty actions and info columns.
        :param explore: True samples with :attr:`rng` (DQN: epsilon-greedy) instead of acting
            greedily (False); None is the algorithm's default exploration, as for the torch
            policy: for PPO, DQN and SAC, the same as True.
        :param clip_actions: clip Box actions to the action space's bounds (as an environment runner does).
        :param kwargs: RLlib's other arguments (:data:`amber.policy.policy.BATCH_EXTRAS`:
            ``prev_action_batch``, ``episodes``, ``timestep``...), accepted and unused, as amber's
            torch policy does; ``clip_action`` is ``clip_actions``.
        :return: int64 ``[batch]`` (Discrete) or float32 ``[batch, *action_shape]`` (Box) actions,
            ``[]``, and the info columns ``[batch, ...]``.
        :raises TypeError: any other keyword (named, with the closest known one).
        :raises ValueError: observations of the wrong shape, or a Discrete one outside its space.
        """
        clip_actions = bool(kwargs.pop("clip_action", False)) or bool(clip_actions)
        check_extra_kwargs(f"policy {self.policy_id!r}", "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore", "clip_actions", "clip_action"))
        arr = self._obs_array(obs_batch)
        # a network may not take an empty batch (the ONNX graph of an older export reshapes to
        # [0, -1], which fails on it): one observation's outputs, cut to none, give the columns
        # their shapes and dtypes
        outputs = self.network(arr) if len(arr) else {k: v[:0] for k, v in self._probe().items()}
        actions, info = self._act(outputs, True if explore is None else bool(explore))
        space = self.action_space
        if space["type"] == "Discrete":
            return (actions + space["start"] if space["start"] else actions), [], info
        actions = actions.astype(np.float32, copy=False).reshape((actions.shape[0], *space["shape"]))
        if clip_actions:
            actions = np.clip(actions, space["low"], space["high"]).astype(np.float32, copy=False)
        return actions, [], info

    def _act(self, outputs: Mapping[str, np.ndarray], explore: bool
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (indices from 0, or flat floats) and the info columns, from the network's outputs."""
        inputs = np.asarray(outputs[ACTION_DIST_INPUTS], dtype=np.float32)
        if self.action_distribution == "q_values":
            greedy = inputs.argmax(-1).astype(np.int64)
            actions = epsilon_greedy(inputs, self.epsilon, self.rng) if explore else greedy
            return actions, {Q_VALUES: inputs, ACTION_DIST_INPUTS: inputs}
        dist = DISTRIBUTIONS[self.action_distribution](inputs)
        actions = dist.sample(self.rng) if explore else dist.deterministic_sample()
        logp = dist.logp(actions)
        if isinstance(dist, NumpySquashedGaussian):
            actions = self._low + (dist.squash(actions) + np.float32(1.0)) * self._half_range
            return actions, {ACTION_DIST_INPUTS: inputs, ACTION_LOGP: logp}
        info = {ACTION_LOGP: logp, ACTION_DIST_INPUTS: inputs}
        if VF_PREDS in outputs:
            info[VF_PREDS] = np.asarray(outputs[VF_PREDS], dtype=np.float32)
        return actions, info

    def compute_single_action(
        self, obs: Any = None, state: Any = None, *, explore: bool | None = False, clip_actions: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, list[Any], dict[str, Any]]:
        """The action for one observation: ``(action, [], info)``, as :meth:`compute_actions` for a batch
        of one (a Discrete action as a Python int, a Box action as a float32 array; ``explore=None``
        as True, the algorithm's default exploration). ``obs`` has the observation space's shape
        exactly. RLlib's other arguments (:data:`amber.policy.policy.SINGLE_ACTION_EXTRAS`:
        ``prev_action``, ``prev_reward``, ``info``, ``episode``, ``timestep``...) are accepted and
        unused, as amber's torch policy does; ``clip_action`` is ``clip_actions``; any other
        keyword is a TypeError naming it."""
        clip_actions = bool(kwargs.pop("clip_action", False)) or bool(clip_actions)
        owner = f"policy {self.policy_id!r}"
        check_extra_kwargs(owner, "compute_single_action", kwargs, SINGLE_ACTION_EXTRAS,
                           ("obs", "state", "explore", "clip_actions", "clip_action"))
        if obs is None and isinstance(kwargs.get("input_dict"), Mapping):  # RLlib's other way to give it
            obs = kwargs["input_dict"].get("obs")
        arr = np.asarray(obs)
        if arr.shape != self._obs_shape:
            raise single_obs_error(arr, self._obs_shape, owner)
        batch = arr[None]
        actions, _, info = self.compute_actions(batch, explore=explore, clip_actions=clip_actions)
        action = actions[0]
        if isinstance(action, np.generic):
            action = action.item()
        return action, [], {k: v[0] for k, v in info.items()}
