"""The Policy interface and policy checkpoints (RLlib's ``ray.rllib.policy.policy``).

Importing this module imports neither torch nor gymnasium; a torch policy
imports torch when it is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.errors import CheckpointError, state_errors
from amber.models.numpy_mlp import check_obs_range
from amber.policy.obs_errors import obs_batch_error, single_obs_error
from amber.state import Ref

if TYPE_CHECKING:
    import pluggy

    from amber.export import ModelGraph

__all__ = ["BATCH_EXTRAS", "SINGLE_ACTION_EXTRAS", "Policy", "PolicySpec", "check_extra_kwargs"]


class PolicySpec:
    """What to build a policy from: its class, spaces and config overrides (RLlib's PolicySpec)."""

    def __init__(
        self,
        policy_class: type | None = None,
        observation_space: Any = None,
        action_space: Any = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy_class = policy_class
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return (f"PolicySpec({self.policy_class!r}, {self.observation_space!r}, "
                f"{self.action_space!r}, {self.config!r})")


class Policy:
    """A policy: acts on observations, and saves and restores its whole state.

    Subclasses implement :meth:`compute_actions`, :meth:`get_weights`,
    :meth:`set_weights`, and may implement :meth:`get_state` and :meth:`set_state`
    (default: the weights and counters, as RLlib's). The state is a state tree
    holding ``policy_spec`` (class, spaces, config), so that :meth:`from_checkpoint`
    can rebuild the policy without an algorithm or an environment.
    """

    observation_space: Any
    action_space: Any
    config: dict[str, Any]

    # -- acting --------------------------------------------------------------

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Actions for a batch of observations: ``(actions, state_outs, extra_fetches)``."""
        raise NotImplementedError

    def compute_single_action(
        self, obs: Any = None, state: Any = None, *, explore: bool | None = None, clip_actions: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, list[Any], dict[str, Any]]:
        """The action for one observation: ``(action, state_outs, extra_fetches)``.

        :param obs: one observation (not batched), of the observation space's shape.
        :param explore: sample (True) or act greedily (False); None: the policy's default.
        :param clip_actions: clip a Box action to the action space's bounds (as an environment
            runner does; a Gaussian's sample or mean may lie outside them). ``clip_action``
            (RLlib's ``Algorithm.compute_single_action`` name) is the same.
        :param kwargs: RLlib's other arguments (:data:`SINGLE_ACTION_EXTRAS`: ``prev_action``,
            ``episode``...), accepted and unused.
        :raises TypeError: any other keyword (named, with the closest known one).
        :raises ValueError: ``obs`` is not one observation (:func:`single_obs_error`).
        """
        clip_actions = bool(kwargs.pop("clip_action", False)) or bool(clip_actions)
        check_extra_kwargs(type(self).__name__, "compute_single_action", kwargs, SINGLE_ACTION_EXTRAS,
                           ("obs", "state", "explore", "clip_actions", "clip_action"))
        if obs is None and isinstance(kwargs.get("input_dict"), Mapping):  # RLlib's other way to give it
            obs = kwargs["input_dict"].get("obs")
        actions, state_outs, extra = self.compute_actions(checked_single_obs(self, obs), explore=explore)
        action = actions[0]
        if clip_actions and hasattr(self.action_space, "low") and hasattr(self.action_space, "high"):
            action = np.clip(action, self.action_space.low, self.action_space.high).astype(
                np.asarray(action).dtype, copy=False)
        if isinstance(action, np.generic):
            action = action.item()
        return action, state_outs, {k: v[0] for k, v in extra.items()}

    # -- state ---------------------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """The model's weights as numpy arrays, by parameter name."""
        raise NotImplementedError

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Load weights returned by :meth:`get_weights`."""
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        """The policy's whole state (weights, optimizer, counters, RNG, spec) as a state tree; by
        default RLlib's: spec, weights and counters (:func:`amber.policy.default_state.default_state`)."""
        from amber.policy.default_state import default_state

        return default_state(self)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply a state returned by :meth:`get_state` (this default: :meth:`set_weights` and counters)."""
        from amber.policy.default_state import apply_default_state

        apply_default_state(self, state)

    # -- exported models -------------------------------------------------------

    def export_graph(self) -> ModelGraph:
        """This policy's inference network as an :class:`amber.export.ModelGraph` (what exporters read).

        :raises NotImplementedError: the policy class does not describe its network.
        """
        raise NotImplementedError(f"{type(self).__name__} does not describe its network for export "
                                  "(it has no export_graph())")

    def export_model(
        self,
        export_dir: str | os.PathLike[str],
        onnx: int | None = None,
        *,
        format: str | None = None,
        pm: pluggy.PluginManager | None = None,
        storage_options: Mapping[str, Any] | None = None,
        policy_id: str | None = None,
        **options: Any,
    ) -> list[str]:
        """Write this policy's network as files that load with their own runtime alone (no amber).

        As in RLlib: ``export_model(dir)`` (or ``onnx=None``, ``False`` or
        ``0``) writes the native files of the policy's framework (``model.pt2``
        for torch policies); ``onnx=OPSET`` writes ``model.onnx`` with that
        opset instead. ``format=NAME`` names any registered exporter (``"keras"``:
        ``saved_model/`` and ``model.keras``; ``amber formats`` lists them).
        ``model.json`` is always written: the architecture, the spaces, the
        outputs and how to act from them. See docs/export.md.

        :param export_dir: the directory to write into (created if missing; other files there are
            kept), or an fsspec URL (exported locally, then uploaded).
        :param storage_options: for a URL, passed to its fsspec file system.
        :param onnx: an ONNX opset number (the ``onnx`` exporter's keyword shorthand).
        :param format: an exporter name.
        :param policy_id: the policy's id, recorded in ``model.json`` (``load_policy`` of the export uses it).
        :param options: an exporter's keyword shorthand (``csv_precision=3``: docs/plugins.md), or with
            ``format``, options of that exporter (:func:`amber.export.export_model`).
        :return: the paths written, ``model.json`` last.
        :raises MissingPluginError: the exporter's extra (``amber-rl[onnx]``, ``[keras]``) is missing.
        :raises UnknownExporterError: no exporter of that name, or of that keyword (without ``format``).
        :raises ExportError: the directory was refused (a symbolic link), writing failed, or the
            exporter took no such option.
        """
        from amber.policy.policy_export import export_policy_model

        return export_policy_model(self, export_dir, format=format, pm=pm, storage_options=storage_options,
                                   policy_id=policy_id, shorthands={"onnx": onnx} if onnx else {}, **options)

    # -- checkpoints ---------------------------------------------------------

    def export_checkpoint(
        self,
        export_dir: str | os.PathLike[str],
        *,
        format: str | None = None,
        policy_id: str | None = None,
        pm: pluggy.PluginManager | None = None,
        storage_options: Mapping[str, Any] | None = None,
        checkpoint_format: str | None = None,
    ) -> str:
        """Write this policy as a policy checkpoint (atomic, verified); return the directory.

        :param export_dir: the checkpoint directory, or an fsspec URL.
        :param storage_options: for a URL, passed to its fsspec file system.
        :param format: a registered format name (default: the policy's
            ``checkpoint_format`` config, else ``"pickle"``).
        :param checkpoint_format: RLlib 2.10's name of ``format``: ``"msgpack"``, or ``"cloudpickle"``
            (amber's ``"pickle"``).
        :raises TypeError: both ``format`` and ``checkpoint_format``, differing.
        """
        from amber.checkpoint import write_checkpoint

        if checkpoint_format is not None:
            given = {"cloudpickle": "pickle"}.get(checkpoint_format, checkpoint_format)
            if format is not None and format != given:
                raise TypeError(f"export_checkpoint() got format={format!r} and checkpoint_format="
                                f"{checkpoint_format!r} (RLlib's name of format): give one")
            format = given
        fmt = format or self.config.get("checkpoint_format") or "pickle"
        attachments = {}
        if self.config.get("export_native_model_files"):
            attachments[""] = lambda d: self.export_model(d / "model", pm=pm, policy_id=policy_id)
        write_checkpoint(export_dir, type="Policy", state=self.get_state(), format=fmt,
                         metadata={"policy_id": policy_id} if policy_id else None,
                         attachments=attachments, pm=pm, storage_options=storage_options)
        return os.fspath(export_dir)

    @staticmethod
    def from_state(state: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None,
                   pm: pluggy.PluginManager | None = None) -> Policy:
        """Build a policy from a state returned by :meth:`get_state`.

        The policy class is looked up by its registered name (never imported by path).

        :param path: the checkpoint it came from, for messages.
        :raises UnregisteredNameError: the policy class's name is not registered here.
        :raises CheckpointError: the state names no Policy class.
        """
        with state_errors(path, "its policy state"):
            spec = state["policy_spec"]
            cls = spec["policy_class"]
            if isinstance(cls, Ref):
                cls = cls.resolve(what="policy class", path=path, pm=pm)
            if not (isinstance(cls, type) and issubclass(cls, Policy)):
                raise CheckpointError(f"{path}: the policy class {cls!r} is not a Policy class", path=path)
            from amber.models.build_budget import state_size, weights_will_be_loaded

            with weights_will_be_loaded(state_size(state)):  # sizes bounded by the saved weights
                policy = cls.build_from_spec(spec)
            policy.set_state(state)
        return policy

    @classmethod
    def build_from_spec(cls, spec: Mapping[str, Any]) -> Policy:
        """An untrained policy from a ``policy_spec`` state (default: ``cls(obs, act, config)``)."""
        from amber.policy.policy_helpers import build_from_spec

        return build_from_spec(cls, spec)

    @staticmethod
    def from_checkpoint(
        checkpoint: str | os.PathLike[str] | Any,
        policy_ids: Iterable[str] | None = None,
        *,
        allow_pickle: bool | None = None,
        pm: pluggy.PluginManager | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Policy | dict[str, Policy]:
        """Restore a policy from a policy checkpoint, or a dict of policies from an algorithm one.

        Builds no algorithm and no environment; from an algorithm checkpoint,
        only the policies in ``policy_ids`` are read (all when None).

        :param checkpoint: a checkpoint directory, or an fsspec URL (only the policies asked
            for are downloaded), or a Ray Tune/Train ``Checkpoint`` (its path or URL).
        :param policy_ids: for an algorithm checkpoint, the policies to restore.
        :param allow_pickle: see :func:`amber.checkpoint.read_checkpoint`.
        :param storage_options: for a URL, passed to its fsspec file system.
        """
        from amber.checkpoint import read_checkpoint
        from amber.models.build_budget import adopting_state

        if not isinstance(checkpoint, (str, PurePath)):  # a Ray Tune/Train Checkpoint, as RLlib's takes
            from amber.algorithms.algorithm_checkpoints import checkpoint_location

            checkpoint = checkpoint_location(checkpoint)
        ckpt = read_checkpoint(checkpoint, policy_ids=policy_ids, allow_pickle=allow_pickle, pm=pm,
                               storage_options=storage_options)
        with adopting_state():  # the state read is this restore's: arrays are kept, not copied
            if ckpt.type == "Policy":
                return Policy.from_state(ckpt.state, path=checkpoint, pm=pm)
            if ckpt.type == "Algorithm":
                return {pid: Policy.from_state(p.state, path=p.path, pm=pm)
                        for pid, p in ckpt.policies.items()}
        raise CheckpointError(f"{ckpt.path} holds a {ckpt.type} checkpoint, not a policy or algorithm",
                              path=checkpoint)


def optimizer_entries(names: Sequence[str], tree_of: Callable[[str], Any]) -> dict[str, Any]:
    """The optimizer part of a policy's state: ``optimizer`` for one optimizer, else
    ``optimizers`` by name (each tree from ``tree_of(name)``), in every framework's layout."""
    if len(names) == 1:
        return {"optimizer": tree_of(names[0])}
    return {"optimizers": {name: tree_of(name) for name in names}}


def saved_optimizers(state: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The optimizer trees a policy state holds (see :func:`optimizer_entries`), by name: only
    those of ``names`` that it has."""
    saved = {names[0]: state.get("optimizer")} if len(names) == 1 else dict(state.get("optimizers") or {})
    return {name: tree for name, tree in saved.items() if tree is not None and name in names}


def init_action_facts(policy: Any, observation_space: Any, action_space: Any) -> None:
    """Set what every framework's policy keeps about its spaces and counters: ``global_timestep``,
    ``num_grad_updates``, whether observations and actions are Discrete, the Discrete actions'
    ``start`` (``_action_offset``) and the actions' shape."""
    import gymnasium as gym

    policy.global_timestep = 0
    policy.num_grad_updates = 0
    policy._discrete_obs = isinstance(observation_space, gym.spaces.Discrete)
    policy._discrete_actions = isinstance(action_space, gym.spaces.Discrete)
    policy._action_offset = int(action_space.start) if policy._discrete_actions else 0
    policy._action_shape = tuple(action_space.shape or ())
    #: One observation's shape (Discrete: ``()``), which ``obs_array`` checks every batch against.
    policy._obs_shape = () if policy._discrete_obs else tuple(observation_space.shape or ())
    #: A Discrete observation space's values, [low, high) (None for a Box).
    start = int(observation_space.start) if policy._discrete_obs else 0
    policy._obs_range = (start, start + int(observation_space.n)) if policy._discrete_obs else None


def checked_obs_batch(policy: Any, obs_batch: Any) -> np.ndarray:
    """``obs_batch`` as a policy's model takes it (int64 for a Discrete space, else float32), for a
    policy that :func:`init_action_facts` set up.

    :raises ValueError: not ``[batch, *obs_shape]`` exactly (:func:`obs_batch_error`; the same
        numbers in another shape too), or a Discrete value outside the space
        (:func:`amber.models.numpy_mlp.check_obs_range`).
    """
    arr = np.asarray(obs_batch, dtype=np.int64 if policy._discrete_obs else np.float32)
    if arr.ndim == 0 or arr.shape[1:] != policy._obs_shape:
        raise obs_batch_error(policy, arr)
    check_obs_range(type(policy).__name__, arr, policy._obs_range)
    return arr


def checked_single_obs(policy: Any, obs: Any) -> np.ndarray:
    """``obs`` as a batch of one, for a policy that :func:`init_action_facts` set up (one that did
    not is given it unchecked, as ``np.asarray(obs)[None]``).

    :raises ValueError: ``obs`` does not have one observation's shape (:func:`single_obs_error`).
    """
    arr = np.asarray(obs)
    want = getattr(policy, "_obs_shape", None)
    if want is not None and arr.shape != want:
        raise single_obs_error(arr, want, type(policy).__name__)
    return arr[None]


#: RLlib 2.10's other arguments of ``Policy.compute_single_action``, accepted and unused (amber's
#: policies keep no RNN state and act on the observation alone; their actions are already in the
#: action space's units, so ``unsquash_action`` changes nothing).
SINGLE_ACTION_EXTRAS = frozenset({"prev_action", "prev_reward", "info", "input_dict", "episode", "timestep",
                                  "unsquash_action", "unsquash_actions"})
#: RLlib 2.10's other arguments of ``Policy.compute_actions``, accepted and unused.
BATCH_EXTRAS = frozenset({"prev_action_batch", "prev_reward_batch", "info_batch", "episodes", "timestep"})


def check_extra_kwargs(owner: str, method: str, kwargs: Mapping[str, Any], accepted: Iterable[str],
                       own: Iterable[str] = ()) -> None:
    """Refuse a keyword argument that is none of RLlib's (``accepted``), naming it and the closest
    of those and of the method's ``own`` parameters (a typo such as ``clip_acitons`` would
    otherwise be ignored silently).

    :raises TypeError: a keyword is unknown.
    """
    import difflib

    accepted = set(accepted)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        names = sorted({*accepted, *own})
        close = difflib.get_close_matches(unknown[0], names, n=1)
        mean = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{owner}.{method}() got an unexpected keyword argument {unknown[0]!r}{mean} "
                        f"(it takes {', '.join(names)})")
