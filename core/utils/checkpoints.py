"""Checkpoint utilities, under RLlib's import path.

``get_checkpoint_info`` and ``verify`` read manifests and hash files only:
they never deserialize state, so they are safe on any checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.atomic import is_temporary
from amber.checkpoint import CHECKPOINT_VERSION, Checkpoint, read_checkpoint, write_checkpoint
from amber.errors import CheckpointError, CorruptCheckpointError
from amber.layout import MANIFEST, check_file, read_manifest
from amber.registry import get_registry

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "MigrationResult",
    "VerifyReport",
    "convert_checkpoint",
    "convert_to_msgpack_checkpoint",
    "get_checkpoint_info",
    "find_checkpoints",
    "migrate",
    "migrate_all",
    "migrate_checkpoint",
    "verify",
]

Progress = Callable[[str], None]


def get_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint is, from its manifests alone (never unpickles).

    No link inside the checkpoint is followed (``path`` itself may be one): a
    symlinked ``policies/`` or policy directory is reported as that policy's
    error; a manifest that is a link, FIFO, socket or device is never opened.

    :param path: a checkpoint directory.
    :return: ``type``, ``checkpoint_version``, ``format``, ``checkpoint_dir``,
        ``state_file``, ``policy_ids``, ``amber_version``, ``python_version``,
        ``created``, ``metadata``, ``files`` (relative path → size and digest)
        and, for an Algorithm, ``policies``: by id, ``{"files": ...}`` or
        ``{"error": message}`` when that policy's manifest cannot be read.
    :raises NotACheckpointError: no checkpoint there.
    :raises CorruptCheckpointError: a manifest is malformed.
    """
    manifest = read_manifest(Path(path))
    raw = manifest.raw
    info: dict[str, Any] = {
        "type": manifest.type,
        "checkpoint_version": manifest.checkpoint_version,
        "format": manifest.format,
        "checkpoint_dir": str(manifest.directory),
        "state_file": str(manifest.directory / manifest.state_file),
        "policy_ids": manifest.policy_ids
        if manifest.type == "Algorithm"
        else [raw["policy_id"]] if isinstance(raw.get("policy_id"), str) else [],
        "amber_version": raw.get("amber_version"),
        "python_version": raw.get("python_version"),
        "created": raw.get("created"),
        "metadata": raw.get("metadata", {}),
        "files": {rel: {"size": e.size, "digest": e.digest} for rel, e in manifest.files.items()},
    }
    if manifest.type == "Algorithm":
        info["policies"] = {}
        for pid in manifest.policy_ids:
            try:
                pman = read_manifest(manifest.directory / "policies" / pid, root=manifest.directory)
                info["policies"][pid] = {
                    "files": {rel: {"size": e.size, "digest": e.digest} for rel, e in pman.files.items()}
                }
            except CheckpointError as e:
                info["policies"][pid] = {"error": str(e)}
    return info


@dataclass
class VerifyReport:
    """What :func:`verify` found."""

    path: Path
    checked: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every file matched and nothing unexpected was found."""
        return not self.problems


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every file of a checkpoint against its manifests (never deserializes).

    Reports, each naming the file: missing, truncated, altered or linked
    files, FIFOs, sockets and devices (never opened), malformed manifests, and
    files or directories no manifest lists. No link is followed.

    :param path: a checkpoint directory.
    :return: a :class:`VerifyReport`; ``report.ok`` is True when all is well.
    :raises NotACheckpointError: no checkpoint there.
    :raises UnsupportedVersionError: a checkpoint of a newer amber.
    """
    root = Path(path)
    report = VerifyReport(root)
    try:
        read_manifest(root)  # not a checkpoint at all: raise, as documented
    except CorruptCheckpointError:
        pass  # reported below, as a problem
    pending: list[tuple[Path, Any]] = [(root, None)]
    listed: set[Path] = set()
    broken: list[Path] = []
    while pending:
        directory, expected = pending.pop()
        try:
            manifest = read_manifest(directory, expected=expected, root=root)
        except CheckpointError as e:
            report.problems.append(str(e))
            broken.append(directory)
            continue
        listed.add(manifest.path)
        report.checked.append(manifest.path)
        for rel, entry in manifest.files.items():
            listed.add(directory / rel)
            if rel.endswith("/" + MANIFEST):
                pending.append((directory / rel[: -len(MANIFEST) - 1], entry))
                continue
            problem = check_file(directory, rel, entry)
            report.checked.append(directory / rel)
            if problem:
                report.problems.append(problem)
    for dirpath, dirnames, filenames in os.walk(root):
        if any(Path(dirpath) == b or b in Path(dirpath).parents for b in broken):
            continue  # already reported through its manifest
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            if p not in listed:
                report.problems.append(f"{p}: is not listed in any checkpoint.json")
        for d in dirnames:
            p = Path(dirpath) / d
            if not any(q == p or p in q.parents for q in listed):
                report.problems.append(f"{p}: directory is not part of the checkpoint")
    return report


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str,
    allow_pickle: bool | None = None,
    progress: Progress | None = None,
    pm: pluggy.PluginManager | None = None,
) -> str:
    """Rewrite a checkpoint in another registered format; return ``dst``.

    The source is read and verified whole first, then ``dst`` is written
    atomically; the source is never modified.

    :param src: the checkpoint to read (any registered format).
    :param dst: where to write the converted checkpoint.
    :param format: the format to write.
    :param allow_pickle: see :func:`amber.checkpoint.read_checkpoint`.
    :param progress: called with each phase: ``"reading"``, ``"writing"``, ``"done"``.
    :raises UnknownFormatError: before anything is read.
    """
    get_registry(pm).get(format)  # an unknown name fails before anything is read
    report = progress or (lambda phase: None)
    report("reading")
    ckpt = read_checkpoint(src, allow_pickle=allow_pickle, pm=pm)
    report("writing")
    _rewrite(ckpt, dst, format=format, pm=pm)
    report("done")
    return os.fspath(dst)


def _carried_files(ckpt: Checkpoint) -> Callable[[Path], None] | None:
    """Copy, verified, the files of a checkpoint level that are not its state (exported ``model/``
    folders): they do not depend on the format, so a rewrite keeps them."""
    from amber.checkpoint import STATE_STEMS
    from amber.layout import FileEntry, read_verified

    stem = STATE_STEMS.get(ckpt.type, "")
    files = {rel: entry for rel, entry in (ckpt.manifest.get("files") or {}).items()
             if rel != MANIFEST and not rel.startswith("policies/")
             and not (("/" not in rel) and rel.startswith(f"{stem}."))}
    if not files:
        return None
    root = Path(ckpt.path)

    def copy(directory: Path) -> None:
        for rel, entry in files.items():
            data = read_verified(root, rel, FileEntry(int(entry["size"]), str(entry["digest"])))
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as f:
                f.write(data)

    return copy


def _rewrite(
    ckpt: Checkpoint, dst: str | os.PathLike[str], *, format: str, pm: pluggy.PluginManager | None,
    version: str | None = None,
) -> None:
    attachments = {pid: fn for pid, p in ckpt.policies.items() if (fn := _carried_files(p)) is not None}
    if (own := _carried_files(ckpt)) is not None:
        attachments[""] = own
    write_checkpoint(
        dst,
        type=ckpt.type,
        state=ckpt.state,
        format=format,
        policies={pid: p.state for pid, p in ckpt.policies.items()},
        metadata=ckpt.metadata,
        attachments=attachments,
        # a lambda that pickle held cannot be written portably: the loader asks for it instead
        placeholders=True,
        checkpoint_version=version or CHECKPOINT_VERSION,
        pm=pm,
    )


def convert_to_msgpack_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, allow_pickle: bool | None = None
) -> str:
    """Rewrite a checkpoint in the portable msgpack format; return ``dst``."""
    return convert_checkpoint(src, dst, format="msgpack", allow_pickle=allow_pickle)


@dataclass
class MigrationResult:
    """What :func:`migrate` did, or would do with ``dry_run``.

    :param path: the checkpoint read.
    :param dst: where the result was (or would be) written.
    :param from_version: its checkpoint_version.
    :param to_version: the version migrated to.
    :param steps: each step's name (``"1.0 -> 2.0"``), description and the changes it made
        (``"key.path: old -> new"`` lines, per state tree).
    :param written: whether anything was written.
    :param error: with :func:`migrate_all`, why this checkpoint failed (it was left untouched).
    """

    path: Path
    dst: Path
    from_version: str
    to_version: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    written: bool = False
    error: str | None = None


def _planned_steps(ckpt: Checkpoint, to: str, pm: pluggy.PluginManager | None) -> list[dict[str, Any]]:
    """Apply the chain step by step in memory, recording what each changes."""
    from amber.migration import CheckpointTrees, apply_chain, changes, plan

    chain = plan(ckpt.checkpoint_version, to, get_registry(pm).migrations, path=ckpt.path)
    trees = CheckpointTrees(ckpt.type, dict(ckpt.manifest), ckpt.state,
                            {pid: p.state for pid, p in ckpt.policies.items()})
    steps = []
    for step in chain:
        after = apply_chain(trees, [step], path=ckpt.path)
        changed = {"state": changes(trees.state, after.state)}
        for pid in trees.policies:
            changed[f"policies/{pid}"] = changes(trees.policies[pid], after.policies.get(pid))
        steps.append({"name": step.name, "description": step.description,
                      "changes": {k: v for k, v in changed.items() if v}})
        trees = after
    return steps


def migrate(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    to: str | None = None,
    dry_run: bool = False,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
) -> MigrationResult:
    """Upgrade a checkpoint to the current checkpoint_version (or ``to``), in place or into ``dst``.

    The source is read and verified whole and migrated in memory; the result
    is written atomically, in place only after it was written whole, so a
    failure leaves the source untouched. Another system's checkpoint (RLlib)
    needs a ``dst``: its directory is never replaced.

    :param src: the checkpoint (or another system's, which a plugin reads).
    :param dst: where to write the result (default: replace ``src``).
    :param to: the version to stop at (default: the current one).
    :param dry_run: only plan: read, apply the steps in memory, report each step and what it
        changes; nothing is written.
    :return: a :class:`MigrationResult`.
    :raises UnsupportedVersionError: no chain of steps leads from its version to ``to``.
    :raises MigrationError: a step failed (named), or ``src`` cannot be replaced in place.

    Example::

        result = amber.migrate("old_checkpoint", dry_run=True)
        for step in result.steps:
            print(step["name"], step["description"])
    """
    from amber.errors import MigrationError
    from amber.migration import CHECKPOINT_VERSION

    target = to or CHECKPOINT_VERSION
    ckpt = read_checkpoint(src, allow_pickle=allow_pickle, migrate=False, pm=pm)
    out = Path(dst) if dst is not None else Path(src)
    result = MigrationResult(Path(src), out, ckpt.checkpoint_version, target,
                             _planned_steps(ckpt, target, pm))
    if dry_run or (dst is None and not result.steps):
        return result
    if dst is None and not (Path(src) / MANIFEST).is_file():
        raise MigrationError(f"{src} is not an amber checkpoint and is never replaced in place; "
                             "give a destination: amber migrate SRC DST", path=src)
    from amber.checkpoint import migrate_in_memory

    migrate_in_memory(ckpt, target, get_registry(pm))
    registry = get_registry(pm)
    fmt = ckpt.format if ckpt.format in registry.formats else registry.default_portable()
    _rewrite(ckpt, out, format=fmt, pm=pm, version=target)
    result.written = True
    return result


def find_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Every checkpoint under ``root`` (amber's, or another system's that a plugin reads),
    outermost only (a policy inside an algorithm checkpoint is not listed), sorted; links
    are not followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if MANIFEST in filenames or "rllib_checkpoint.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:  # an interrupted save's staging or set-aside directory is not a checkpoint
            dirnames[:] = sorted(d for d in dirnames if not is_temporary(d))
    return sorted(found)


def migrate_all(
    root: str | os.PathLike[str],
    *,
    to: str | None = None,
    dry_run: bool = False,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
) -> list[MigrationResult]:
    """:func:`migrate` every amber checkpoint under a run directory, in place; one result each.

    A checkpoint that fails is reported (``result.error``) and left untouched; the others go on.
    Another system's checkpoints are listed with an error, as they cannot be replaced in place.
    """
    results = []
    for path in find_checkpoints(root):
        try:
            results.append(migrate(path, to=to, dry_run=dry_run, allow_pickle=allow_pickle, pm=pm))
        except CheckpointError as e:
            results.append(MigrationResult(path, path, "?", to or "", error=str(e)))
    return results


def migrate_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
) -> list[str]:
    """:func:`migrate`, returning the names of the steps applied (empty if none were needed);
    with ``dst`` the checkpoint is always written there."""
    return [step["name"] for step in migrate(src, dst, allow_pickle=allow_pickle, pm=pm).steps]
