"""Writing and reading whole checkpoints, in any registered format.

This is the engine: it knows the layout (api.md section 6), atomicity,
digests, safety and versions, and reaches formats only through the
registry built from the plugins' hooks.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber import __version__
from amber.atomic import commit, describe, fsync_on_close, staging
from amber.digest import format_digest, new_hasher
from amber.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    MigrationError,
    MissingPluginError,
    NotACheckpointError,
    UnknownFormatError,
    UnknownPolicyError,
    UnsafeContentError,
)
from amber.layout import (
    MANIFEST,
    FileEntry,
    Manifest,
    Sink,
    Source,
    check_id,
    read_manifest,
    write_manifest,
)
from amber.migration import CHECKPOINT_VERSION, CheckpointTrees, apply_chain, plan
from amber.names import to_names
from amber.registry import FormatRegistry, FormatSpec, get_registry
from amber.state import StateTree, validate_tree

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "detect_format",
    "load",
    "read_checkpoint",
    "pickle_allowed_default",
    "save",
    "write_checkpoint",
]

STATE_STEMS = {"Algorithm": "algorithm_state", "Policy": "policy_state", "State": "state"}
Attachment = Callable[[Path], None]


@dataclass
class Checkpoint:
    """A checkpoint read into memory.

    For an Algorithm checkpoint ``state`` is the algorithm's own state and
    ``policies`` holds the policies read (all, or the subset asked for); for
    a Policy or State checkpoint ``state`` is the whole state.
    """

    path: Path
    type: str
    format: str
    checkpoint_version: str
    state: Any
    policies: dict[str, Checkpoint] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    migrations_applied: list[str] = field(default_factory=list)


def pickle_allowed_default() -> bool:
    """Whether pickle is allowed when the caller does not say: not if ``AMBER_SAFE_LOAD`` is set."""
    return os.environ.get("AMBER_SAFE_LOAD", "").strip().lower() in ("", "0", "false", "no")


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _header(
    type_: str, spec: FormatSpec, registry: FormatRegistry, metadata: Mapping[str, str] | None,
    version: str,
) -> dict[str, Any]:
    provider = registry.provider(spec.name)
    return {
        "type": type_,
        "checkpoint_version": version,
        "format": spec.name,
        "amber_version": __version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "format_plugin": {"name": provider.plugin, "distribution": provider.distribution},
        "metadata": dict(metadata or {}),
    }


def _write_level(
    directory: Path,
    *,
    type_: str,
    state: Any,
    spec: FormatSpec,
    registry: FormatRegistry,
    metadata: Mapping[str, str] | None,
    extra: Mapping[str, Any] | None = None,
    children: Mapping[str, FileEntry] | None = None,
    attachment: Attachment | None = None,
    shown: Path,
    version: str = CHECKPOINT_VERSION,
) -> FileEntry:
    stem = STATE_STEMS[type_]
    if not spec.capabilities.arbitrary_objects:
        validate_tree(state, format=spec.name, where=str(shown / f"{stem}{spec.extension}"))
    files: dict[str, FileEntry] = {}
    sink = Sink(directory, stem, spec.extension, files)
    spec.write(state, sink)
    sink.finish()
    if attachment is not None:
        attachment(directory)
        _record_untracked(directory, files, children)
    files.update(children or {})
    content = _header(type_, spec, registry, metadata, version)
    content.update(extra or {})
    content["state_file"] = f"{stem}{spec.extension}"
    content["files"] = {rel: {"size": e.size, "digest": e.digest} for rel, e in files.items()}
    return write_manifest(directory, content)


def _record_untracked(
    directory: Path, files: dict[str, FileEntry], children: Mapping[str, FileEntry] | None
) -> None:
    """Hash files an attachment wrote (e.g. exported model files) into ``files``."""
    skip_dirs = {"policies"} if children else set()
    for dirpath, dirnames, filenames in os.walk(directory):
        rel_dir = Path(dirpath).relative_to(directory)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in files or rel == MANIFEST or name == ".amber-staging":
                continue
            h = new_hasher()
            size = 0
            with open(Path(dirpath) / name, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    size += len(chunk)
                if fsync_on_close():
                    os.fsync(f.fileno())
            files[rel] = FileEntry(size, format_digest(h))


def write_checkpoint(
    path: str | os.PathLike[str],
    *,
    type: str,
    state: Any,
    format: str,
    policies: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    attachments: Mapping[str, Attachment] | None = None,
    placeholders: bool = False,
    checkpoint_version: str = CHECKPOINT_VERSION,
    pm: pluggy.PluginManager | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    Classes and functions in the trees are written as their registered
    names (:mod:`amber.names`); a format that holds any object (pickle)
    keeps those that have none.

    :param path: the checkpoint directory; an existing amber checkpoint or empty
        directory there is replaced as a whole, in one atomic step.
    :param type: ``"Algorithm"``, ``"Policy"`` or ``"State"``.
    :param state: the state tree (for an Algorithm, without its policies).
    :param format: a registered format name.
    :param policies: for an Algorithm, each policy's state tree by policy id.
    :param metadata: strings recorded in every checkpoint.json.
    :param attachments: by policy id (or ``""`` for the top level), a function
        that writes extra files (exported models) into that level's directory;
        they are listed and verified like the rest.
    :param placeholders: in a portable format, write a class or function that
        has no registered name as a placeholder (the loader asks for it)
        instead of failing.
    :param checkpoint_version: the version to label it with (``amber migrate --to``); trees
        of an older version are written as they are.
    :param pm: the plugin manager (default: the process's).
    :raises UnknownFormatError: no such format.
    :raises UnserializableStateError: the state holds something the format cannot write.
    :raises CheckpointWriteError: the disk is full or read-only; nothing was left behind.
    """
    registry = get_registry(pm)
    spec = registry.get(format)
    target = Path(path)
    policies = dict(policies or {})
    attachments = attachments or {}
    if type != "Algorithm" and policies:
        raise ValueError("only Algorithm checkpoints hold policies")
    for pid in policies:
        check_id(pid, path=target)
    if checkpoint_version == CHECKPOINT_VERSION:
        portable = not spec.capabilities.arbitrary_objects
        state = to_names(state, portable=portable, placeholders=placeholders, format=format,
                         where=str(target), pm=pm)
        policies = {pid: to_names(p, portable=portable, placeholders=placeholders, format=format,
                                  where=str(target / "policies" / pid), pm=pm)
                    for pid, p in policies.items()}
    try:
        with staging(target) as tmp:
            children: dict[str, FileEntry] = {}
            for pid, pstate in policies.items():
                pdir = tmp / "policies" / pid
                pdir.mkdir(parents=True)
                children[f"policies/{pid}/{MANIFEST}"] = _write_level(
                    pdir, type_="Policy", state=pstate, spec=spec, registry=registry,
                    metadata=metadata, extra={"policy_id": pid}, attachment=attachments.get(pid),
                    shown=target / "policies" / pid, version=checkpoint_version,
                )
            extra = {"policy_ids": list(policies)} if type == "Algorithm" else {}
            _write_level(
                tmp, type_=type, state=state, spec=spec, registry=registry, metadata=metadata,
                extra=extra, children=children, attachment=attachments.get(""), shown=target,
                version=checkpoint_version,
            )
            commit(tmp, target)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointWriteError(
            f"saving {target} failed: {describe(e)}; "
            "nothing was written and any previous checkpoint there is intact",
            path=target, format=format,
        ) from e
    return target


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


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


def _check_safe(manifest: Manifest, spec: FormatSpec, allow_pickle: bool) -> None:
    if not spec.capabilities.safe and not allow_pickle:
        raise UnsafeContentError(
            f"{manifest.directory} is in format {spec.name!r}, which can run code when read, "
            "and safe loading is on (allow_pickle=False or AMBER_SAFE_LOAD=1). Load it only if "
            "you trust its source: pass allow_pickle=True, or have its author convert it with "
            "`amber convert SRC DST --format msgpack`",
            path=manifest.directory, format=spec.name,
        )


def _read_state(manifest: Manifest, spec: FormatSpec) -> Any:
    stem = STATE_STEMS[manifest.type]
    if manifest.state_file != f"{stem}{spec.extension}":
        raise CorruptCheckpointError(
            f"{manifest.path}: state_file {manifest.state_file!r} does not match format "
            f"{spec.name!r} (expected {stem}{spec.extension})",
            path=manifest.path,
        )
    source = Source(manifest, stem, spec.extension)
    try:
        return spec.read(source)
    except CheckpointError:
        raise
    except Exception as e:  # any failure of a format on bytes that passed the digest
        raise CorruptCheckpointError(
            f"{source.path}: cannot be read as {spec.name!r}: {type(e).__name__}: {e}",
            path=source.path, format=spec.name,
        ) from e


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    policy_ids: Iterable[str] | None = None,
    allow_pickle: bool | None = None,
    migrate: bool = True,
    to: str | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Checkpoint:
    """Read and verify a checkpoint (Algorithm, Policy or State), migrated in memory.

    An older checkpoint is upgraded through the registered migration steps
    (the files are never rewritten); a directory that is another system's
    checkpoint is read by the plugin that knows it (``amber_read_foreign_checkpoint``).

    :param path: the checkpoint directory.
    :param policy_ids: for an Algorithm checkpoint, read only these policies
        (their files alone are opened); None reads all.
    :param allow_pickle: allow formats that can run code; None: yes unless
        ``AMBER_SAFE_LOAD`` is set. Checked before any state file is opened.
    :param migrate: apply migration steps to an older checkpoint.
    :param to: the version to migrate to (default: :data:`CHECKPOINT_VERSION`).
    :param pm: the plugin manager (default: the process's).
    :raises NotACheckpointError: no checkpoint there.
    :raises CorruptCheckpointError: a file is missing, altered or malformed (named).
    :raises UnsupportedVersionError: newer or unknown checkpoint_version.
    :raises UnsafeContentError: pickle refused.
    :raises UnknownPolicyError: a requested policy id is not in the checkpoint.
    :raises MissingPluginError: the checkpoint's format is not installed.
    :raises MigrationError: a migration step failed (named).
    """
    registry = get_registry(pm)
    target = to or CHECKPOINT_VERSION
    root = Path(path)
    wanted = None if policy_ids is None else list(dict.fromkeys(policy_ids))
    try:
        manifest = read_manifest(root)
    except NotACheckpointError:
        ckpt = _read_foreign(root, wanted, pm)
        if ckpt is None:
            raise
        plan(ckpt.checkpoint_version, target, registry.migrations, path=root)
    else:
        plan(manifest.checkpoint_version, target, registry.migrations, path=manifest.directory)
        allow = pickle_allowed_default() if allow_pickle is None else allow_pickle
        ckpt = _read_native(root, manifest, wanted, registry, allow)
    if migrate:
        ckpt.migrations_applied = migrate_in_memory(ckpt, target, registry)
    return ckpt


def _read_foreign(root: Path, policy_ids: list[str] | None, pm: pluggy.PluginManager | None) -> Checkpoint | None:
    from amber.plugin_manager import default_plugin_manager

    if not root.is_dir():
        return None
    pm = pm if pm is not None else default_plugin_manager()
    found = pm.hook.amber_read_foreign_checkpoint(path=root, policy_ids=policy_ids)
    return found if isinstance(found, Checkpoint) else None


def _read_native(
    root: Path, manifest: Manifest, policy_ids: list[str] | None, registry: FormatRegistry, allow: bool
) -> Checkpoint:
    spec = _spec_for(manifest, registry)
    _check_safe(manifest, spec, allow)
    wanted: list[str] = []
    if manifest.type == "Algorithm":
        present = manifest.policy_ids
        wanted = present if policy_ids is None else policy_ids
        for pid in wanted:
            if pid not in present:
                raise UnknownPolicyError(pid, present, path=root)
    policy_manifests = {}
    for pid in wanted:
        pdir = root / "policies" / pid
        pman = read_manifest(pdir, expected=manifest.files[f"policies/{pid}/{MANIFEST}"], root=root)
        if pman.type != "Policy" or pman.format != manifest.format:
            raise CorruptCheckpointError(
                f"{pman.path}: expected a Policy checkpoint in format {manifest.format!r}",
                path=pman.path,
            )
        policy_manifests[pid] = pman
    ckpt = _make(manifest, _read_state(manifest, spec))
    for pid, pman in policy_manifests.items():
        ckpt.policies[pid] = _make(pman, _read_state(pman, spec))
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
    ckpt.state = out.state
    ckpt.checkpoint_version = to
    for pid, policy in ckpt.policies.items():
        policy.state = out.policies[pid]
        policy.checkpoint_version = to
    return [step.name for step in chain]


# --------------------------------------------------------------------------
# the symmetric user API for plain state trees
# --------------------------------------------------------------------------


def save(
    state: StateTree,
    path: str | os.PathLike[str],
    *,
    format: str = "msgpack",
    metadata: Mapping[str, str] | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Path:
    """Save a state tree as a checkpoint of type ``"State"``, atomically.

    :param state: a state tree (see :mod:`amber.state`).
    :param path: the checkpoint directory to create or replace.
    :param format: a registered format name.
    :param metadata: strings to record in checkpoint.json.
    :return: the checkpoint's path.

    Example::

        import numpy as np, amber
        amber.save({"w": np.zeros(3), "step": 7}, "/tmp/amber-example")
        assert amber.load("/tmp/amber-example")["step"] == 7
    """
    return write_checkpoint(path, type="State", state=state, format=format, metadata=metadata, pm=pm)


def load(
    path: str | os.PathLike[str],
    *,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
) -> Any:
    """Load the state tree of a checkpoint written by :func:`save` (or a Policy checkpoint).

    :param path: the checkpoint directory.
    :param allow_pickle: see :func:`read_checkpoint`.
    :return: the state tree.
    """
    return read_checkpoint(path, allow_pickle=allow_pickle, pm=pm).state


def detect_format(path: str | os.PathLike[str], *, pm: pluggy.PluginManager | None = None) -> str | None:
    """Which registered format a single state file is in, asked of the plugins.

    :param path: a state file (e.g. ``policy_state.pkl``).
    :return: the format name, or None if no plugin recognises it.
    """
    from amber.plugin_manager import default_plugin_manager

    pm = pm if pm is not None else default_plugin_manager()
    p = Path(path)
    with open(p, "rb") as f:
        header = f.read(64)
    found = pm.hook.amber_detect_format(path=p, header=header)
    return found if isinstance(found, str) else None
