"""Recognising and reading an RLlib 2.10 checkpoint directory (without Ray).

An RLlib checkpoint has ``rllib_checkpoint.json`` (type, checkpoint_version,
format, state_file, policy_ids) and ``algorithm_state.msgpck`` with one
``policies/<id>/`` directory per policy, or, for a policy checkpoint,
``policy_state.msgpck``. Pickle checkpoints (format ``cloudpickle``) are
refused before any state file is opened: unpickling them needs Ray's
classes and can run code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amber.checkpoint import Checkpoint
from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnknownPolicyError,
    UnsafeContentError,
    UnsupportedVersionError,
)
from amber.layout import check_id

from .decode import decode_msgpack, read_json

__all__ = ["FORMAT", "MANIFEST", "MalformedRLlibCheckpointError", "describe_rllib_checkpoint",
           "read_rllib_checkpoint"]

MANIFEST = "rllib_checkpoint.json"
#: The format name of the checkpoints this plugin reads (not a writable format).
FORMAT = "rllib-msgpack"
_STEMS = {"Algorithm": "algorithm_state", "Policy": "policy_state"}
_VERSIONS = ("1.0", "1.1")


class MalformedRLlibCheckpointError(CorruptCheckpointError, NotACheckpointError):
    """An ``rllib_checkpoint.json`` that does not describe a checkpoint RLlib could have written.

    It is corrupt, and it is no checkpoint that can be read: both error kinds apply.
    """


def _malformed(path: Path, why: str) -> MalformedRLlibCheckpointError:
    return MalformedRLlibCheckpointError(f"{path} is not a valid RLlib checkpoint manifest: {why}",
                                         path=path, format=FORMAT)


def _pickle_advice(type_: str) -> str:
    """Why a pickle checkpoint is not read, and how to convert it (as refusing it and describing it say)."""
    convert = ("convert_to_msgpack_checkpoint(SRC, DST)" if type_ == "Algorithm"
               else "convert_to_msgpack_policy_checkpoint(SRC, DST)")
    return ("reading it would unpickle Ray's classes, which needs Ray and can run code. Convert it first, "
            f"where Ray is installed: `from ray.rllib.utils.checkpoints import {convert.split('(')[0]}; "
            f"{convert}`, then load the msgpack copy (DST) with amber")


def _pickle_refused(directory: Path, type_: str) -> UnsafeContentError:
    return UnsafeContentError(
        f"{directory} is an RLlib {type_} checkpoint in format 'cloudpickle': {_pickle_advice(type_)}",
        path=directory, format="cloudpickle",
    )


def _format(raw: Mapping[str, Any], directory: Path, type_: str, path: Path) -> str:
    """``"msgpack"`` or ``"cloudpickle"``: the manifest's ``format`` (1.1), else the state file's type."""
    fmt = raw.get("format")
    if fmt is None:
        stem = _STEMS[type_]
        if os.path.lexists(directory / f"{stem}.msgpck"):
            return "msgpack"
        if os.path.lexists(directory / f"{stem}.pkl"):
            return "cloudpickle"
        raise _malformed(path, f"no format given and neither {stem}.msgpck nor {stem}.pkl is there")
    if fmt not in ("msgpack", "cloudpickle"):
        raise _malformed(path, f"format {fmt!r} is neither 'msgpack' nor 'cloudpickle'")
    return str(fmt)


def _manifest(directory: Path, expected_type: str | None = None, *,
              refuse_pickle: bool = True) -> dict[str, Any]:
    """The checked content of ``directory/rllib_checkpoint.json`` (type, version, format normalised;
    ``refuse_pickle`` False: a cloudpickle checkpoint is described, its ``state_file`` the ``.pkl``)."""
    path = directory / MANIFEST
    raw = read_json(path)
    type_ = raw.get("type")
    if type_ not in _STEMS or (expected_type is not None and type_ != expected_type):
        want = expected_type or "'Algorithm' or 'Policy'"
        raise _malformed(path, f"type {type_!r} (expected {want})")
    version = raw.get("checkpoint_version")
    if not isinstance(version, str) or not version.replace(".", "").isdigit():
        raise _malformed(path, f"checkpoint_version {version!r} is not a version string")
    if version not in _VERSIONS:
        raise UnsupportedVersionError(
            f"{path}: RLlib checkpoint_version {version!r} is not supported; amber reads RLlib's old API "
            f"stack checkpoints of versions {', '.join(_VERSIONS)} (Ray 2.1 to 2.10)",
            path=path, format=FORMAT)
    fmt = _format(raw, directory, type_, path)
    if fmt == "cloudpickle" and refuse_pickle:
        raise _pickle_refused(directory, type_)
    name = f"{_STEMS[type_]}.{'pkl' if fmt == 'cloudpickle' else 'msgpck'}"
    state_file = raw.get("state_file", name)
    # RLlib writes the algorithm's state_file as an absolute path of the machine that saved it.
    if not isinstance(state_file, str) or Path(state_file).name != name:
        raise _malformed(path, f"state_file {state_file!r} is not {name}")
    out = dict(raw)
    out.update({"format": fmt, "checkpoint_dir": str(directory), "state_file": name})
    return out


def _policies_root(directory: Path) -> Path:
    """``directory/policies``, refused if it is a symbolic link: readers never follow one (every file
    under it would be read from wherever the link points)."""
    root = directory / "policies"
    if os.path.islink(root):
        raise CorruptCheckpointError(f"{root} is a symbolic link; checkpoints may not contain links",
                                     path=root, format=FORMAT)
    return root


def _policy_ids(raw: dict[str, Any], directory: Path) -> list[str]:
    """The policy ids the manifest lists (1.1), else the ``policies/`` sub-directories (1.0).

    :raises CorruptCheckpointError: ``policies/`` is a symbolic link.
    """
    pdir = _policies_root(directory)
    ids = raw.get("policy_ids")
    if ids is None:
        ids = sorted(p.name for p in pdir.iterdir() if p.is_dir()) if pdir.is_dir() else []
    if not isinstance(ids, list):
        raise _malformed(directory / MANIFEST, f"policy_ids is {type(ids).__name__}, not a list")
    for pid in ids:
        try:
            check_id(pid, path=directory / MANIFEST)
        except CheckpointError as e:
            raise _malformed(directory / MANIFEST, f"policy id {pid!r}: {e.message}") from e
    if len(set(ids)) != len(ids):
        raise _malformed(directory / MANIFEST, f"policy_ids {ids!r} repeats an id")
    return list(ids)


def _check_tree(tree: Any, path: Path, required: Mapping[str, type]) -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(f"{path} holds {type(tree).__name__}, not RLlib's state dict",
                                     path=path, format=FORMAT)
    for key, kind in required.items():
        if not isinstance(tree.get(key), kind):
            raise CorruptCheckpointError(f"{path}: {key!r} is missing or not a {kind.__name__}",
                                         path=path, format=FORMAT)
    return tree


def _read_policy(directory: Path) -> dict[str, Any]:
    """A policy directory's decoded, checked ``policy_state.msgpck``."""
    path = directory / "policy_state.msgpck"
    state = _check_tree(decode_msgpack(path), path, {"weights": dict, "policy_spec": dict})
    spec = state["policy_spec"]
    for key in ("observation_space", "action_space"):
        if not isinstance(spec.get(key), dict):
            raise CorruptCheckpointError(f"{path}: policy_spec {key!r} is missing or malformed",
                                         path=path, format=FORMAT)
    if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state["weights"].items()):
        raise CorruptCheckpointError(f"{path}: 'weights' must map names to arrays", path=path, format=FORMAT)
    return state


def _policy_dir(directory: Path, pid: str) -> tuple[Path, dict[str, Any]]:
    """A policy's directory and what its own ``rllib_checkpoint.json`` says (1.0 may have none)."""
    pdir = _policies_root(directory) / pid
    if os.path.islink(pdir) or not pdir.is_dir():
        raise CorruptCheckpointError(f"{pdir}: the policy's directory is missing or a symbolic link",
                                     path=pdir, format=FORMAT)
    raw = _manifest(pdir, "Policy") if os.path.lexists(pdir / MANIFEST) else {"type": "Policy"}
    return pdir, {**raw, "policy_id": pid}


def _read_algorithm(directory: Path, raw: dict[str, Any], policy_ids: Sequence[str] | None) -> Checkpoint:
    present = _policy_ids(raw, directory)
    wanted = present if policy_ids is None else list(dict.fromkeys(policy_ids))
    for pid in wanted:
        if pid not in present:
            raise UnknownPolicyError(pid, present, path=directory)
    pdirs = {pid: _policy_dir(directory, pid) for pid in wanted}
    path = directory / raw["state_file"]
    state = _check_tree(decode_msgpack(path), path, {"config": dict, "algorithm_class": str})
    policies = {}
    for pid, (pdir, pmanifest) in pdirs.items():
        policies[pid] = Checkpoint(path=pdir, type="Policy", format=FORMAT, state=_read_policy(pdir),
                                   checkpoint_version=f"rllib-{raw['checkpoint_version']}",
                                   manifest=pmanifest)
    raw["policy_ids"] = present
    return Checkpoint(path=directory, type="Algorithm", format=FORMAT, state=state, policies=policies,
                      checkpoint_version=f"rllib-{raw['checkpoint_version']}", manifest=raw)


def read_rllib_checkpoint(path: Path, policy_ids: Sequence[str] | None) -> Checkpoint | None:
    """Read an RLlib msgpack checkpoint directory, or return None if ``path`` is not one.

    :param path: the directory.
    :param policy_ids: for an algorithm checkpoint, the policies to read (None: all); only their
        files are opened.
    :return: a :class:`~amber.checkpoint.Checkpoint` of version ``"rllib-1.0"`` or ``"rllib-1.1"``
        holding RLlib's decoded state trees (the plugin's migration steps make them amber's).
    :raises UnsafeContentError: a pickle (cloudpickle) checkpoint, with how to convert it.
    :raises CorruptCheckpointError: a malformed manifest or state file, named.
    :raises UnsupportedVersionError: an RLlib checkpoint_version other than 1.0 and 1.1.
    :raises UnknownPolicyError: a requested policy id is not in the checkpoint.
    """
    directory = Path(path)
    if not os.path.lexists(directory / MANIFEST):
        return None
    raw = _manifest(directory)
    if raw["type"] == "Policy":
        state = _read_policy(directory)
        return Checkpoint(path=directory, type="Policy", format=FORMAT, state=state,
                          checkpoint_version=f"rllib-{raw['checkpoint_version']}", manifest=raw)
    return _read_algorithm(directory, raw, policy_ids)


def _sizes(directory: Path, rels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{rel: {"size": bytes, "digest": None}}`` for each of ``rels`` that is a regular file (no link
    followed); the others are left out."""
    out = {}
    for rel in rels:
        try:
            st = os.lstat(directory / rel)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out[rel] = {"size": st.st_size, "digest": None}
    return out


def describe_rllib_checkpoint(path: Path) -> dict[str, Any] | None:
    """What an RLlib checkpoint directory is, from its ``rllib_checkpoint.json`` alone (no state file
    is read, so a pickle checkpoint is described too, its ``unreadable`` saying why amber does not
    read it and how to convert it); None if ``path`` is not one.

    :raises CorruptCheckpointError: a malformed manifest (named).
    :raises UnsupportedVersionError: an RLlib checkpoint_version other than 1.0 and 1.1.
    """
    directory = Path(path)
    if not os.path.lexists(directory / MANIFEST):
        return None
    raw = _manifest(directory, refuse_pickle=False)
    ray = raw.get("ray_version")
    rels = [MANIFEST, raw["state_file"]]
    ids = _policy_ids(raw, directory) if raw["type"] == "Algorithm" else []
    leaf = _STEMS["Policy"] + Path(raw["state_file"]).suffix  # each policy's state, in the same format
    for pid in ids:
        rels += [f"policies/{pid}/{MANIFEST}", f"policies/{pid}/{leaf}"]
    out: dict[str, Any] = {
        "system": f"RLlib (Ray {ray})" if isinstance(ray, str) and len(ray) <= 64 else "RLlib",
        "type": raw["type"],
        "checkpoint_version": f"rllib-{raw['checkpoint_version']}",
        "format": raw["format"],
        "state_file": raw["state_file"],
        "policy_ids": ids,
        "files": _sizes(directory, rels),
    }
    if raw["format"] == "cloudpickle":
        out["unreadable"] = f"it is in format 'cloudpickle': {_pickle_advice(raw['type'])}"
    return out
