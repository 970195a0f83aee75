"""Serving a policy without torch: :func:`load_policy` reads a checkpoint or an ONNX export and acts in numpy.

``load_policy(path)`` takes a policy checkpoint, an algorithm checkpoint (one
of its policies: ``policy_id``), or a directory written by
``policy.export_model(dir, onnx=OPSET)`` (``model.onnx`` beside
``model.json``), and returns a :class:`~amber.serving.policy.ServedPolicy`
whose ``compute_single_action(obs)`` and ``compute_actions(obs_batch)``
return what the torch policy's return with ``explore=False`` (within float
rounding); ``explore=True`` samples with a numpy generator (``seed=``).
Importing this module, loading and acting never import torch, tensorflow,
gymnasium or cloudpickle.

A checkpoint is read with the engine's own reader
(:func:`amber.checkpoint_read.read_checkpoint`: every file checked against its
digest, older versions migrated in memory, RLlib 2.10 msgpack checkpoints
too), through a plugin manager holding only the plugins that read
(:func:`reading_plugin_manager`); a checkpoint in a format that can run code
when read (pickle) is refused before any state file is opened
(:class:`PickleCheckpointError`). The policy class is never imported: its
registered name (``amber.TorchPolicy``, ``amber.DQNTorchPolicy``,
``amber.SACTorchPolicy``) picks the network, which
:mod:`amber.models.numpy_policy` rebuilds from the weights. An ONNX export
is run with onnxruntime (the ``onnx`` extra, imported only then, see
:mod:`amber.serving.onnx`) once :mod:`amber.serving.onnx_check` has found it
to be what amber's exporter writes, and acted on as its ``model.json`` says.
Sizes a file declares (a space's shape) are bounded before anything of that
size is built; a folder of a checkpoint that is a link is refused.
"""

from __future__ import annotations

import functools
import importlib
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnknownPolicyError,
    UnsafeContentError,
    state_errors,
)
from amber.models.numpy_policy import POLICY_KINDS, action_distribution, build_network
from amber.policy.sample_batch import DEFAULT_POLICY_ID
from amber.serving.onnx_check import UnsafeModelError
from amber.serving.policy import ServedPolicy, describe_space

if TYPE_CHECKING:
    import pluggy

    from amber.layout import Manifest

__all__ = [
    "FOREIGN_PLUGINS",
    "READER_PLUGINS",
    "PickleCheckpointError",
    "PolicyChoiceError",
    "ServedPolicy",
    "UnsafeModelError",
    "UnservablePolicyError",
    "describe_space",
    "load_policy",
    "reading_plugin_manager",
]

#: The in-tree plugins a checkpoint is served with: the msgpack format and amber's migration steps
#: (never the pickle format, whose module imports cloudpickle, nor exporters or state capture).
READER_PLUGINS: tuple[str, ...] = ("amber.plugins.msgpack_fmt", "amber.plugins.migrations")
#: Added for a directory without checkpoint.json: another system's checkpoint (RLlib 2.10 msgpack).
FOREIGN_PLUGINS: tuple[str, ...] = ("amber.plugins.rllib_compat",)
#: The format refused by name before its plugin (and cloudpickle) is imported.
PICKLE = "pickle"
#: What an export directory holds beside its model files.
MODEL_JSON = "model.json"


class PickleCheckpointError(UnsafeContentError):
    """A checkpoint in a format that can run code when read (pickle): serving never reads one."""


class PolicyChoiceError(CheckpointError):
    """The path holds several policies, none of them ``default_policy``, and none was chosen."""


class UnservablePolicyError(CheckpointError):
    """The path holds something intact that :func:`load_policy` cannot act with (its class, its spaces)."""


def load_policy(
    path: str | os.PathLike[str],
    policy_id: str | None = None,
    *,
    allow_pickle: bool | None = None,
    seed: int | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ServedPolicy:
    """Load a policy to act with, in numpy (or onnxruntime), without torch.

    :param path: a policy checkpoint, an algorithm checkpoint, or an export directory holding
        ``model.onnx`` and ``model.json`` (or ``<policy id>/`` folders of them, as
        ``amber export`` writes for several policies); or any of those at an fsspec URL
        (downloaded first, digests checked).
    :param policy_id: the policy of an algorithm checkpoint (or export directory) to serve;
        default: ``default_policy`` if present, else the only one. For a policy checkpoint or one
        export, a label (default: the id recorded when it was written, else ``default_policy``).
    :param allow_pickle: True reads a pickle checkpoint anyway (only one you trust: unpickling runs
        code, and the pickle format imports cloudpickle); None and False refuse it.
    :param seed: seeds the numpy generator that ``explore=True`` samples with.
    :param pm: a plugin manager to read the checkpoint with (default: :func:`reading_plugin_manager`).
    :param storage_options: for a URL, passed to its fsspec file system.
    :return: the policy.
    :raises PickleCheckpointError: a pickle checkpoint, not allowed (the message says how to convert it).
    :raises PolicyChoiceError: several policies and no ``policy_id``; or an export directory mixing
        two exports (its top-level ``model.json`` of another policy, and a ``<policy_id>/`` folder).
    :raises UnknownPolicyError: ``policy_id`` is not there (the message lists the ids present).
    :raises UnservablePolicyError: a policy class or space that serving does not know.
    :raises MissingPluginError: an ONNX export, and onnxruntime is not installed (the ``onnx`` extra).
    :raises UnsafeModelError: an ONNX export whose ``model.onnx`` keeps data in other files, has an
        operator amber's exporter never writes, or computes more than its size allows.
    :raises CheckpointError: no checkpoint there, a damaged file, a state that does not fit (all named).

    Example::

        from amber.serving.load import load_policy

        policy = load_policy("runs/cartpole/checkpoint_000005")
        action, _, info = policy.compute_single_action([0.0, 0.1, 0.0, -0.1])
    """
    from amber.storage import is_remote, local_path, reading

    if is_remote(path):
        with reading(path, storage_options) as local:
            served = load_policy(local, policy_id, allow_pickle=allow_pickle, seed=seed, pm=pm)
        served.source = _remote_source(served.source, local, os.fspath(path))
        return served
    root = local_path(path)  # a file:// URL too
    export = _export_dir(root, policy_id)
    if export is not None:
        from amber.serving.onnx import load_onnx

        return load_onnx(export[0], export[1], seed=seed)
    pid, state, where = _read_policy_state(root, policy_id, allow_pickle, pm)
    return policy_from_state(state, pid, path=where, seed=seed)


# -- reading ---------------------------------------------------------------------------------


@functools.cache
def reading_plugin_manager(foreign: bool = False) -> pluggy.PluginManager:
    """A plugin manager with only the plugins serving reads with, built once per process.

    :data:`READER_PLUGINS`, and with ``foreign`` :data:`FOREIGN_PLUGINS`. The process's plugin
    manager (:func:`amber.plugin_manager.get_plugin_manager`) registers every in-tree plugin, the
    pickle format's too, whose module imports cloudpickle; serving needs none of that.
    """
    import pluggy

    from amber import hookspecs

    pm = pluggy.PluginManager(hookspecs.hookimpl.project_name)
    pm.add_hookspecs(hookspecs)
    for modname in READER_PLUGINS + (FOREIGN_PLUGINS if foreign else ()):
        pm.register(importlib.import_module(modname), name=modname.rsplit(".", 1)[-1])
    pm.check_pending()
    return pm


def _copy_of(ckpt: Path) -> str:
    """Where to convert ``ckpt``: beside it, or beside its run (out of the run's retention)."""
    run = ckpt.parent if ckpt.parent.name else Path(os.path.abspath(ckpt)).parent
    if not (ckpt.name.startswith("checkpoint_") and ckpt.name[11:].isdigit()) or not run.name:
        return f"{ckpt}-msgpack"
    return str(run.with_name(f"{run.name}-{ckpt.name}-msgpack"))


def _pickle_refused(root: Path, fmt: str) -> PickleCheckpointError:
    from amber.layout import enclosing_checkpoint

    outer = enclosing_checkpoint(root)  # a policy of an algorithm checkpoint: convert all of it,
    src, copy = str(outer or root), _copy_of(Path(outer or root))  # beside it (not inside: damaged)
    how, serve = f"`amber convert {shlex.quote(src)} {shlex.quote(copy)} --format msgpack`", "the copy"
    if outer is not None:
        inner = Path(os.path.abspath(root))
        inner = inner if inner.is_relative_to(outer) else Path(os.path.realpath(root))  # (through a link)
        serve = shlex.quote(f"{copy}/{inner.relative_to(outer).as_posix()}")
    return PickleCheckpointError(
        f"{root} is a {fmt!r} checkpoint, which can run code when read: amber.serve never reads one. "
        f"Convert it once, where you trust it: {how}, and serve {serve} (or pass allow_pickle=True "
        "for a checkpoint you trust)",
        path=root, format=fmt,
    )


def _plugin_manager(
    root: Path, manifest: Manifest | None, allow_pickle: bool | None, pm: pluggy.PluginManager | None
) -> pluggy.PluginManager:
    """The plugin manager to read ``root`` with (``pm`` if given); refuses a format that can run code
    when read, unless allowed, before its state is opened."""
    from amber.registry import get_registry

    fmt = manifest.format if manifest is not None else None
    if fmt == PICKLE and allow_pickle is not True:  # refused before its plugin (and cloudpickle) is imported
        raise _pickle_refused(root, fmt)
    if pm is None:
        pm = reading_plugin_manager(foreign=manifest is None)
        if fmt is None or fmt in get_registry(pm).names():
            return pm
        from amber.plugin_manager import default_plugin_manager

        pm = default_plugin_manager()  # another format: a third-party plugin's
    registry = get_registry(pm)
    if fmt in registry.names() and not registry.get(fmt).capabilities.safe and allow_pickle is not True:
        raise _pickle_refused(root, fmt)
    return pm


def _remote_source(source: Path | str, local: Path, url: str) -> str:
    """``source``, a path below ``local`` (the downloaded copy of ``url``, now removed), as a URL."""
    url = url.rstrip("/")
    try:
        rel = Path(source).relative_to(local).as_posix()
    except ValueError:
        return url
    return url if rel == "." else f"{url}/{rel}"


def _choose(present: Sequence[str], wanted: str | None, path: Path) -> str:
    """The policy to serve among ``present``: ``wanted``, else ``default_policy``, else the only one."""
    if wanted is not None:
        if wanted not in present:
            raise UnknownPolicyError(wanted, present, path=path)
        return wanted
    if DEFAULT_POLICY_ID in present:
        return DEFAULT_POLICY_ID
    if len(present) == 1:
        return present[0]
    raise PolicyChoiceError(
        f"{path} holds several policies and none is {DEFAULT_POLICY_ID!r}: choose one with "
        f"load_policy(path, policy_id=...) among {', '.join(sorted(present)) or '(none)'}",
        path=path,
    )


def _read_policy_state(
    root: Path, policy_id: str | None, allow_pickle: bool | None, pm: pluggy.PluginManager | None
) -> tuple[str, Mapping[str, Any], Path]:
    """``(policy id, policy state, its directory)`` from a policy or an algorithm checkpoint."""
    from amber.checkpoint_read import read_checkpoint
    from amber.layout import read_manifest

    try:
        manifest: Manifest | None = read_manifest(root)
    except NotACheckpointError:
        if not root.is_dir():
            raise
        manifest = None  # another system's checkpoint, perhaps: the engine asks the plugins
    pm = _plugin_manager(root, manifest, allow_pickle, pm)
    wanted = None
    if manifest is not None and manifest.type == "Algorithm":
        wanted = [_choose(manifest.policy_ids, policy_id, root)]
    elif manifest is None and (root / "policies").is_dir():
        # Another system's algorithm checkpoint (RLlib's): read as a whole, its algorithm config is
        # migrated too, which imports amber's algorithm classes (SAC's imports torch); each of its
        # policies/<id>/ folders is a policy checkpoint of its own, never reached through a link.
        _refuse_link(root / "policies")
        present = sorted(p.name for p in (root / "policies").iterdir() if p.is_symlink() or p.is_dir())
        pid = _choose(present, policy_id, root)
        _refuse_link(root / "policies" / pid)
        sub = _read_policy_state(root / "policies" / pid, None, allow_pickle, pm)
        return pid, sub[1], sub[2]
    ckpt = read_checkpoint(root, policy_ids=wanted, allow_pickle=allow_pickle is True, pm=pm)
    if ckpt.type == "Policy":
        return policy_id or ckpt.metadata.get("policy_id") or _id_by_place(root), ckpt.state, ckpt.path
    if ckpt.type == "Algorithm":
        pid = _choose(list(ckpt.policies), policy_id, root)
        return pid, ckpt.policies[pid].state, ckpt.policies[pid].path
    raise UnservablePolicyError(f"{root} holds a {ckpt.type} checkpoint, not a policy or an algorithm",
                                path=root)


def _refuse_link(folder: Path) -> None:
    """Refuse ``folder`` of a checkpoint if it is a symbolic link (to a directory).

    :raises CorruptCheckpointError: naming it.
    """
    if folder.is_symlink():
        raise CorruptCheckpointError(f"{folder}: is a symbolic link; checkpoints may not contain links "
                                     "(serve the folder it points to)", path=folder)


def _id_by_place(root: Path) -> str:
    """A policy checkpoint's id when it records none: its folder's name for ``.../policies/ID``
    (an algorithm's policies, amber's or RLlib's, record theirs by place), else the default one."""
    where = Path(os.path.abspath(root))
    return where.name if where.parent.name == "policies" else DEFAULT_POLICY_ID


def _export_dir(root: Path, policy_id: str | None) -> tuple[Path, str | None] | None:
    """``(directory, policy id)`` when ``root`` is an export (``model.json``, not a checkpoint), else None;
    the id is None for one export and no ``policy_id``: its ``model.json``'s then.

    :raises PolicyChoiceError: ``root`` holds one export and a ``<policy_id>/`` folder of another.
    :raises CorruptCheckpointError: the chosen ``<policy id>/`` folder is a symbolic link.
    """
    if root.suffix == ".onnx" and root.is_file():
        root = root.parent
    if not root.is_dir() or (root / "checkpoint.json").exists():
        return None
    exported = sorted(p.name for p in root.iterdir() if _holds_export(p))
    if os.path.lexists(root / MODEL_JSON):  # a link or a FIFO there is refused when it is read
        if policy_id is not None and policy_id in exported:
            _refuse_mixed(root, policy_id)
        return root, policy_id
    if not exported:
        return None
    pid = _choose(exported, policy_id, root)
    if (root / pid).is_symlink():
        raise CorruptCheckpointError(f"{root / pid}: is a symbolic link; an export's folders may not be "
                                     "links (serve the folder it points to)", path=root / pid)
    return root / pid, pid


def _holds_export(folder: Path) -> bool:
    """Whether ``folder`` is a ``<policy id>/`` folder of an export (one that is a link too)."""
    return os.path.lexists(folder / MODEL_JSON) and (folder.is_symlink() or folder.is_dir())


def _refuse_mixed(root: Path, policy_id: str) -> None:
    """Refuse ``policy_id`` when the export at ``root``'s top level is another policy's (or records
    none) and ``root/<policy_id>/`` holds an export too: the two are from different exports."""
    from amber.serving.onnx import read_model_json

    recorded = read_model_json(root).get("policy_id")
    if recorded == policy_id:
        return
    its = f"policy {recorded!r}'s" if isinstance(recorded, str) else "of a policy it does not name"
    raise PolicyChoiceError(
        f"{root} mixes two exports: its {MODEL_JSON} is {its}, and {root / policy_id} holds an export of "
        f"{policy_id!r}; serve {root / policy_id} itself, or export again into an empty directory",
        path=root)


# -- from a policy state -----------------------------------------------------------------------


def _class_name(cls: Any) -> str:
    """The registered name a policy state gives its class (a :class:`amber.state.Ref`'s target)."""
    target = getattr(cls, "target", None)
    if isinstance(target, str):
        return target
    return str(getattr(cls, "__qualname__", None) or cls)


def policy_from_state(
    state: Mapping[str, Any], policy_id: str, *, path: str | os.PathLike[str], seed: int | None = None
) -> ServedPolicy:
    """A :class:`ServedPolicy` from a policy state (what ``policy.get_state()`` returns, as read).

    :param path: the checkpoint it came from, for messages.
    :raises UnservablePolicyError: a policy class or action space serving does not know.
    :raises InvalidStateError: a state whose weights or spaces do not fit.
    """
    with state_errors(path, "its policy state"):
        spec = state["policy_spec"]
        name = _class_name(spec["policy_class"])
        kind = POLICY_KINDS.get(name)
        if kind is None:
            raise UnservablePolicyError(
                f"{path}: its policy class {name!r} has no numpy network here; amber.serve serves "
                f"{', '.join(sorted(POLICY_KINDS))} (use amber.policy.policy.Policy.from_checkpoint)",
                path=path)
        # a space describes no more values than the weights hold: the first layer takes each observation
        # value (or one-hot column) and the last gives each action's logit (or mean and log_std)
        limit = _weight_values(state["weights"])
        obs_space = describe_space(spec["observation_space"], max_elements=limit)
        act_space = describe_space(spec["action_space"], max_elements=limit)
        try:
            dist = action_distribution(kind, act_space)
        except ValueError as e:
            raise UnservablePolicyError(f"{path}: {e}", path=path) from e
        network = build_network(kind, state["weights"], spec.get("config") or {}, obs_space)
        epsilon = float(state.get("cur_epsilon") or 0.0) if kind == "dqn" else 0.0
        return ServedPolicy(policy_id, obs_space, act_space, dist, network, source=path, seed=seed,
                            epsilon=epsilon)


def _weight_values(weights: Any) -> int:
    """How many values a policy state's weights hold."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"its weights are {type(weights).__name__}, not a mapping of names to arrays")
    return sum(int(np.size(v)) for v in weights.values())
