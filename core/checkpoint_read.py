"""Reading whole checkpoints, verified and migrated in memory, in any registered format.

:func:`read_checkpoint` reads the manifests, refuses formats that can run
code (unless allowed, or signed with the user's key: :mod:`amber.signing`)
before any state file is opened, has the format read each state through a
:class:`amber.verified_io.Source` (every byte checked against its digest;
:mod:`amber.state_read` says why a format fails on one) and upgrades an
older checkpoint through the registered migration steps. A directory that
is another system's checkpoint is read by the plugin that knows it
(``amber_read_foreign_checkpoint``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.async_save import wait_before_reading
from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    MigrationError,
    MissingPluginError,
    NotACheckpointError,
    UnknownFormatError,
    UnknownPolicyError,
    UnsafeContentError,
    warn,
)
from amber.layout import MANIFEST, Manifest, read_manifest, unread_foreign
from amber.migration import CHECKPOINT_VERSION, CheckpointTrees, apply_chain, plan
from amber.registry import FormatRegistry, FormatSpec, first_result, get_registry
from amber.signing import check_trust, containing_algorithm, weak_digest
from amber.state_read import read_state
from amber.storage import is_remote, local_path, reading

if TYPE_CHECKING:
    import pluggy

__all__ = ["Checkpoint", "adopt_trees", "amber_only", "describe_foreign", "migrate_in_memory",
           "pickle_allowed_default", "read_checkpoint"]


@dataclass
class Checkpoint:
    """A checkpoint read into memory.

    For an Algorithm checkpoint ``state`` is the algorithm's own state and
    ``policies`` holds the policies read (all, or the subset asked for); for
    a Policy or State checkpoint ``state`` is the whole state.
    """

    path: Path  # a str for a checkpoint read from a URL
    type: str
    format: str
    checkpoint_version: str
    state: Any
    policies: dict[str, Checkpoint] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    migrations_applied: list[str] = field(default_factory=list)


#: ``AMBER_SAFE_LOAD`` values (any case) that turn safe loading off, and on (anything else: on, warned).
_SAFE_LOAD_OFF = frozenset({"", "0", "false", "no", "off"})
_SAFE_LOAD_ON = frozenset({"1", "true", "yes", "on"})


def pickle_allowed_default() -> bool | None:
    """What ``allow_pickle=None`` means: False if ``AMBER_SAFE_LOAD`` is on, else None (signed only).

    Off: unset, empty, ``0``, ``false``, ``no``, ``off``; on: ``1``, ``true``, ``yes``, ``on``;
    anything else is taken as on (the safe reading of a typo), with a warning.
    """
    value = (raw := os.environ.get("AMBER_SAFE_LOAD", "")).strip().lower()
    if value in _SAFE_LOAD_OFF:
        return None
    if value not in _SAFE_LOAD_ON:
        warn(f"AMBER_SAFE_LOAD={raw!r} is neither on (1, true, yes, on) nor off (0, false, no, off): "
             "taken as on, so checkpoints in a format that can run code are refused")
    return False


def _spec_for(manifest: Manifest, registry: FormatRegistry) -> FormatSpec:
    try:
        return registry.get(manifest.format)
    except UnknownFormatError:
        plugin = manifest.raw.get("format_plugin") or {}
        dist = plugin.get("distribution") if isinstance(plugin, dict) else None
        raise MissingPluginError(
            f"{manifest.directory} was written in format {manifest.format!r}, which no installed "
            f"plugin provides (known: {', '.join(registry.names())})"
            + (f"; install the distribution {dist!r}" if dist else "; install its plugin"),
            path=manifest.directory, format=manifest.format,
        ) from None


def _ways_out(path: Path, registry: FormatRegistry, *, trust: bool = True) -> str:
    safe = [name for name in registry.names() if registry.get(name).capabilities.safe]
    target = containing_algorithm(path) or path
    sign = f"run `amber trust {shlex.quote(str(target))}` to sign it as trusted, or " if trust else ""
    return (f"Load it only if you trust its source: {sign}pass allow_pickle=True (CLI: --trust); "
            f"or have its author convert it with `amber convert SRC DST --format "
            f"{safe[0] if len(safe) == 1 else 'NAME'}`"
            + (f" (safe formats: {', '.join(safe)})" if len(safe) > 1 else ""))


def _check_safe(
    manifest: Manifest, spec: FormatSpec, allow: bool | None, registry: FormatRegistry
) -> tuple[Manifest, bool]:
    """Refuse a format that can run code unless allowed, or signed by the user's key (``allow`` None).

    :return: the manifest to read with (see :func:`amber.signing.check_trust`), and whether trust
        rests on the signature: every manifest read below it must then list only cryptographic
        digests (BLAKE3, sha256).
    """
    if spec.capabilities.safe or allow is True:
        return manifest, False
    if allow is False:
        raise UnsafeContentError(
            f"{manifest.directory} is in format {spec.name!r}, which can run code when read, "
            "and safe loading is on (allow_pickle=False, --safe or AMBER_SAFE_LOAD=1). "
            + _ways_out(manifest.directory, registry, trust=False),
            path=manifest.directory, format=spec.name,
        )
    trusted, problem = check_trust(manifest)
    if problem is not None:
        raise UnsafeContentError(
            f"{manifest.directory} is in format {spec.name!r}, which can run code when read, and "
            f"no signature of yours vouches for it: {problem}. "
            + _ways_out(manifest.directory, registry),
            path=manifest.directory, format=spec.name,
        )
    return trusted, True


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    policy_ids: Iterable[str] | None = None,
    allow_pickle: bool | None = None,
    migrate: bool = True,
    to: str | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Read and verify a checkpoint (Algorithm, Policy or State), migrated in memory.

    An older checkpoint is upgraded through the registered migration steps
    (the files are never rewritten); a directory that is another system's
    checkpoint is read by the plugin that knows it (``amber_read_foreign_checkpoint``).
    This process's background save to ``path`` (or above it) is waited for first (:mod:`amber.async_save`).

    :param path: the checkpoint directory, or an fsspec URL (:mod:`amber.storage`: only
        the files read are downloaded, each verified).
    :param policy_ids: for an Algorithm checkpoint, read only these policies
        (their files alone are opened); None reads all.
    :param allow_pickle: formats that can run code when read: True loads any,
        False none, None (the default) only those signed with the user's key
        (:mod:`amber.signing`), and none if ``AMBER_SAFE_LOAD`` is set. Checked
        before any state file is opened.
    :param migrate: apply migration steps to an older checkpoint.
    :param to: the version to migrate to (default: :data:`CHECKPOINT_VERSION`).
    :param pm: the plugin manager (default: the process's).
    :param storage_options: for a URL, passed to its fsspec file system.
    :raises NotACheckpointError: no checkpoint there (or, at a URL, an upload never committed).
    :raises CorruptCheckpointError: a file is missing, altered or malformed (named).
    :raises UnsupportedVersionError: newer or unknown checkpoint_version.
    :raises UnsafeContentError: a format that can run code, not allowed (named, with the ways out).
    :raises UnknownPolicyError: a requested policy id is not in the checkpoint.
    :raises MissingPluginError: the checkpoint's format is not installed.
    :raises MigrationError: a migration step failed (named).
    :raises TypeError: ``policy_ids`` is a str (pass a list: ``["p1"]``).
    """
    wanted = _wanted(policy_ids)
    wait_before_reading(path)  # a save of this process in flight to it: its checkpoint, not the older
    if is_remote(path):
        with reading(path, storage_options, policy_ids=policy_ids) as local:
            ckpt = read_checkpoint(local, policy_ids=policy_ids, allow_pickle=allow_pickle,
                                   migrate=migrate, to=to, pm=pm)
        return _relocated(ckpt, local, os.fspath(path).rstrip("/"))
    registry = get_registry(pm)
    target = to or CHECKPOINT_VERSION
    root = local_path(path)  # a file:// URL too
    try:
        manifest = read_manifest(root)
    except NotACheckpointError as e:
        ckpt = _read_foreign(root, wanted, pm, e)
        plan(ckpt.checkpoint_version, target, registry.migrations, path=root)
    else:
        plan(manifest.checkpoint_version, target, registry.migrations, path=manifest.directory)
        allow = pickle_allowed_default() if allow_pickle is None else allow_pickle
        ckpt = _read_native(root, manifest, wanted, registry, allow)
    if migrate:
        ckpt.migrations_applied = migrate_in_memory(ckpt, target, registry)
    return ckpt


def _relocated(ckpt: Checkpoint, local: Path, url: str) -> Checkpoint:
    """``ckpt``, read from a downloaded copy at ``local``, with the paths of the URL it came from."""
    rel = Path(ckpt.path).relative_to(local).as_posix()
    ckpt.path = url if rel == "." else f"{url}/{rel}"  # type: ignore[assignment]
    for child in ckpt.policies.values():
        _relocated(child, local, url)
    return ckpt


def _wanted(policy_ids: Iterable[str] | None) -> list[str] | None:
    """The policy ids asked for, once each (None: all); a str is refused, not read letter by letter."""
    if isinstance(policy_ids, (str, bytes)):
        raise TypeError(f"policy_ids must be a list of policy ids, not a {type(policy_ids).__name__}: "
                        f"pass [{policy_ids!r}]")
    return None if policy_ids is None else list(dict.fromkeys(policy_ids))


def _read_foreign(
    root: Path, policy_ids: list[str] | None, pm: pluggy.PluginManager | None, error: NotACheckpointError
) -> Checkpoint:
    """Another system's checkpoint at ``root``, read by the plugin that knows it.

    :raises NotACheckpointError: no plugin reads it: ``error`` (why ``root`` is no amber
        checkpoint), or, when ``root`` holds another system's manifest, an error that says so.
    """
    from amber.plugin_manager import default_plugin_manager

    found = None
    if root.is_dir():
        pm = pm if pm is not None else default_plugin_manager()
        found = first_result(pm, "amber_read_foreign_checkpoint", root, policy_ids=policy_ids)
    if isinstance(found, Checkpoint):
        return found
    unread = unread_foreign(root)
    if unread is not None:
        raise unread from None
    raise error


def describe_foreign(root: Path, pm: pluggy.PluginManager | None = None) -> dict[str, Any] | None:
    """What a plugin says the directory ``root``, another system's checkpoint, is
    (``amber_describe_foreign_checkpoint``), checked; None when no plugin recognises it.

    :raises CheckpointError: the plugin's description is malformed (the plugin's answer, named).
    """
    from amber.plugin_manager import default_plugin_manager

    if not root.is_dir():
        return None
    pm = pm if pm is not None else default_plugin_manager()
    found = first_result(pm, "amber_describe_foreign_checkpoint", root)
    if found is None:
        return None
    return _checked_description(found, root)


def amber_only(root: Path, why: str) -> NotACheckpointError | None:
    """The error of a command that works on amber checkpoints alone, when ``root`` is another
    system's checkpoint that a plugin knows: it names that checkpoint, says ``why``, and how to get
    an amber one (or the description's ``unreadable``: why no amber reads it); None when ``root`` is none."""
    if (found := describe_foreign(root)) is None:
        return None
    how = (f"amber does not read it either: {found['unreadable']}" if found.get("unreadable") is not None
           else f"`amber migrate {shlex.quote(str(root))} DST` writes an amber checkpoint of it")
    return NotACheckpointError(
        f"{root} is another system's {found['type']} checkpoint ({found['system']}, version "
        f"{found['checkpoint_version']}, format {found['format']}): {why}; {how}", path=root)


def _checked_description(found: Any, root: Path) -> dict[str, Any]:
    where = f"a plugin's description of {root} (amber_describe_foreign_checkpoint)"
    if not isinstance(found, Mapping):
        raise CheckpointError(f"{where} is a {type(found).__name__}, not a map", path=root)
    for key, kind in (("system", str), ("type", str), ("checkpoint_version", str), ("format", str),
                      ("state_file", str), ("policy_ids", list), ("files", Mapping)):
        if not isinstance(found.get(key), kind):
            raise CheckpointError(f"{where}: {key!r} must be a {kind.__name__}", path=root)
    files = found["files"]
    if not all(isinstance(rel, str) and isinstance(e, Mapping) and type(e.get("size")) is int
               for rel, e in files.items()) or not all(isinstance(p, str) for p in found["policy_ids"]) \
            or not isinstance(found.get("unreadable"), (str, type(None))):  # optional: why none reads it
        raise CheckpointError(f"{where}: malformed 'files', 'policy_ids' or 'unreadable'", path=root)
    checked = {rel: {"size": e["size"], "digest": e.get("digest")} for rel, e in files.items()}
    return {**found, "files": checked}


def _read_native(
    root: Path, manifest: Manifest, policy_ids: list[str] | None, registry: FormatRegistry,
    allow: bool | None,
) -> Checkpoint:
    spec = _spec_for(manifest, registry)
    manifest, signed = _check_safe(manifest, spec, allow, registry)
    wanted: list[str] = []
    if manifest.type == "Algorithm":
        present = manifest.policy_ids
        wanted = present if policy_ids is None else policy_ids
        listed = set(present)
        for pid in wanted:
            if pid not in listed:
                raise UnknownPolicyError(pid, present, path=root)
    policy_manifests = {}
    for pid in wanted:
        pdir = root.joinpath("policies", pid)
        pman = read_manifest(pdir, expected=manifest.files[f"policies/{pid}/{MANIFEST}"], root=root)
        if pman.type != "Policy" or pman.format != manifest.format:
            raise CorruptCheckpointError(
                f"{pman.path}: expected a Policy checkpoint in format {manifest.format!r}",
                path=pman.path,
            )
        if signed and (weak := weak_digest(pman)):
            raise UnsafeContentError(f"{root}: its signature does not pin every file: {weak}",
                                     path=root, format=spec.name)
        policy_manifests[pid] = pman
    ckpt = _make(manifest, read_state(manifest, spec))
    for pid, pman in policy_manifests.items():
        ckpt.policies[pid] = _make(pman, read_state(pman, spec))
    return ckpt


def _make(manifest: Manifest, state: Any) -> Checkpoint:
    meta = manifest.raw.get("metadata") or {}
    return Checkpoint(
        path=manifest.directory, type=manifest.type, format=manifest.format,
        checkpoint_version=manifest.checkpoint_version, state=state,
        metadata=dict(meta), manifest=manifest.raw,
    )


def migrate_in_memory(ckpt: Checkpoint, to: str, registry: FormatRegistry) -> list[str]:
    """Upgrade a checkpoint read into memory to version ``to``; return the steps applied.

    :raises UnsupportedVersionError: no chain of steps leads there.
    :raises MigrationError: a step failed (named).
    """
    chain = plan(ckpt.checkpoint_version, to, registry.migrations, path=ckpt.path)
    if not chain:
        return []
    trees = CheckpointTrees(ckpt.type, dict(ckpt.manifest), ckpt.state,
                            {pid: p.state for pid, p in ckpt.policies.items()})
    out = apply_chain(trees, chain, path=ckpt.path)
    if set(out.policies) != set(ckpt.policies):
        raise MigrationError(f"migration {chain[-1].name} changed the set of policies of {ckpt.path}",
                             path=ckpt.path)
    adopt_trees(ckpt, out, to)
    return [step.name for step in chain]


def adopt_trees(ckpt: Checkpoint, trees: CheckpointTrees, version: str) -> None:
    """Put migrated ``trees`` (the same policies) into ``ckpt``, now at ``version``."""
    ckpt.state = trees.state
    ckpt.checkpoint_version = version
    for pid, policy in ckpt.policies.items():
        policy.state = trees.policies[pid]
        policy.checkpoint_version = version
