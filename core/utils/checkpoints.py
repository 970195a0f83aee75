"""Checkpoint utilities, under RLlib's import path.

``get_checkpoint_info`` and ``verify`` read manifests and hash files only:
they never deserialize state, so they are safe on any checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.async_save import wait_before_reading
from amber.checkpoint import read_checkpoint
from amber.checkpoint_read import amber_only, describe_foreign
from amber.errors import ChangedWhileReadError, CheckpointError, CorruptCheckpointError, NotACheckpointError
from amber.layout import MANIFEST, check_file, holds_nothing, manifest_changed, read_manifest, unread_foreign
from amber.registry import get_registry
from amber.storage import is_remote, local_path, reading, relocated
from amber.utils.rewriting import (
    MigrationResult,
    _rewrite,
    find_checkpoints,
    manifest_in_place,
    migrate,
    migrate_all,
    migrate_checkpoint,
)

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


def get_checkpoint_info(path: str | os.PathLike[str], *,
                        storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint is, from its manifests alone (never unpickles).

    No link inside the checkpoint is followed (``path`` itself may be one): a
    symlinked ``policies/`` or policy directory is reported as that policy's
    error; a manifest that is a link, FIFO, socket or device is never opened.

    :param path: a checkpoint directory, or an fsspec URL (its manifests alone are downloaded).
    :param storage_options: for a URL, passed to its fsspec file system.
    :return: ``type``, ``checkpoint_version``, ``format``, ``checkpoint_dir``,
        ``state_file``, ``policy_ids``, ``amber_version``, ``python_version``,
        ``created``, ``metadata``, ``files`` (relative path → size and digest)
        and, for an Algorithm, ``policies``: by id, ``{"files": ...}`` or
        ``{"error": message}`` when that policy's manifest cannot be read.
        Another system's checkpoint that a plugin knows (RLlib 2.10's) is
        described from its own manifests: its ``checkpoint_version`` as amber
        names it (``"rllib-1.1"``), ``system`` (who wrote it), the amber and
        Python versions None, and each file it has with its size and no digest.
    :raises NotACheckpointError: no checkpoint there (nor another system's that a plugin knows).
    :raises CorruptCheckpointError: a manifest is malformed.
    """
    wait_before_reading(path)  # a background save of this process to it: describe what it writes
    if is_remote(path):
        with reading(path, storage_options, manifests_only=True) as local:
            return relocated(get_checkpoint_info(local), local, os.fspath(path).rstrip("/"))
    try:
        manifest = read_manifest(local_path(path))  # a file:// URL too
    except NotACheckpointError as e:
        return _foreign_info(local_path(path), e)
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


def _foreign_info(root: Path, error: NotACheckpointError) -> dict[str, Any]:
    """:func:`get_checkpoint_info` of another system's checkpoint, as a plugin describes it
    (``error``: why ``root`` is no amber checkpoint, raised when no plugin knows it either)."""
    found = describe_foreign(root)
    if found is None:
        raise unread_foreign(root) or error from None
    files = found["files"]
    policies = {pid: {"files": {rel.removeprefix(f"policies/{pid}/"): e for rel, e in files.items()
                                if rel.startswith(f"policies/{pid}/")}} for pid in found["policy_ids"]}
    return {
        "type": found["type"], "checkpoint_version": found["checkpoint_version"], "format": found["format"],
        "checkpoint_dir": str(root), "state_file": str(root / found["state_file"]),
        "policy_ids": list(found["policy_ids"]), "system": found["system"], "amber_version": None,
        "python_version": None, "created": None, "metadata": {},
        "files": {rel: e for rel, e in files.items() if not rel.startswith("policies/")},
        **({"policies": policies} if found["type"] == "Algorithm" else {}),
    }


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


def verify(path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> VerifyReport:
    """Check every file of a checkpoint against its manifests (never deserializes).

    Reports, each naming the file: missing, truncated, altered or linked
    files, FIFOs, sockets and devices (never opened), malformed manifests, and
    files or directories no manifest lists (a folder with nothing in it at any depth is no
    problem: it holds no data, and object stores keep no folders). No link is followed.

    :param path: a checkpoint directory, or an fsspec URL (every file below it is downloaded).
    :param storage_options: for a URL, passed to its fsspec file system.
    :return: a :class:`VerifyReport`; ``report.ok`` is True when all is well.
    :raises NotACheckpointError: no checkpoint there.
    :raises UnsupportedVersionError: a checkpoint of a newer amber.
    :raises ChangedWhileReadError: another save replaced it while it was verified, and what looked
        wrong may come from that: verify it again.
    """
    wait_before_reading(path)  # a background save of this process to it: verify what it writes
    if is_remote(path):
        with reading(path, storage_options, whole=True) as local:
            found = verify(local)
            url = os.fspath(path).rstrip("/")
            return VerifyReport(url, relocated(found.checked, local, url),  # type: ignore[arg-type]
                                relocated(found.problems, local, url))
    root = local_path(path)
    report = VerifyReport(root)
    top = None
    try:
        top = read_manifest(root)  # not a checkpoint at all: raise, as documented
    except CorruptCheckpointError:
        pass  # reported below, as a problem
    except NotACheckpointError:
        if (foreign := amber_only(root, "it records no sizes or digests of its files, so there is "
                                        "nothing to verify it against")) is None:
            raise
        raise foreign from None
    listed, broken = _check_levels(root, report)
    report.problems += _unlisted(root, listed, broken)
    if report.problems and top is not None and manifest_changed(root, top):
        raise ChangedWhileReadError(  # what looked wrong may be the two checkpoints' mix
            f"{root} changed while it was verified (another save replaced it meanwhile; nothing is "
            "known to be damaged): verify it again", path=root)
    return report


def _check_levels(root: Path, report: VerifyReport) -> tuple[set[Path], list[Path]]:
    """Check every manifest and listed file below ``root`` into ``report``; return the paths
    listed and the directories whose manifest is broken."""
    pending: list[tuple[Path, Any]] = [(root, None)]
    listed: set[Path] = set()
    broken: list[Path] = []
    while pending:
        directory, expected = pending.pop()
        try:
            manifest = read_manifest(directory, expected=expected, root=root)
        except ChangedWhileReadError:
            raise  # not a problem of the checkpoint: another save replaced it (read it again)
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
    return listed, broken


def _unlisted(root: Path, listed: set[Path], broken: list[Path]) -> list[str]:
    """A problem for each file, link or directory below ``root`` that no manifest lists (below a
    ``broken`` manifest's directory, nothing: that manifest was reported)."""
    problems = []
    for dirpath, dirnames, filenames in os.walk(root):
        if any(Path(dirpath) == b or b in Path(dirpath).parents for b in broken):
            continue  # already reported through its manifest
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            if p not in listed:
                problems.append(f"{p}: is not listed in any checkpoint.json")
        for d in dirnames:
            p = Path(dirpath) / d
            if not any(q == p or p in q.parents for q in listed) and not holds_nothing(p):
                problems.append(f"{p}: directory is not part of the checkpoint")
    return problems


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str,
    allow_pickle: bool | None = None,
    progress: Progress | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Rewrite a checkpoint in another registered format; return ``dst``.

    The source is read and verified whole first, then ``dst`` is written
    atomically; the source is never modified.

    :param src: the checkpoint to read (any registered format).
    :param dst: where to write the converted checkpoint.
    :param format: the format to write.
    :param allow_pickle: see :func:`amber.checkpoint.read_checkpoint`.
    :param progress: called with each phase: ``"reading"``, ``"writing"``, ``"done"``.
    :param storage_options: for URLs (``src``, ``dst`` or both), passed to their fsspec file systems.
    :raises UnknownFormatError: before anything is read.
    """
    get_registry(pm).get(format)  # an unknown name fails before anything is read
    report = progress or (lambda phase: None)
    report("reading")
    before = manifest_in_place(src, dst)  # in place: replaced only if no save commits meanwhile
    with reading(src, storage_options) as local:  # a URL's copy lasts until its model files are copied
        ckpt = read_checkpoint(local, allow_pickle=allow_pickle, pm=pm)
        report("writing")
        _rewrite(ckpt, dst, format=format, pm=pm, storage_options=storage_options, before=before)
    report("done")
    return os.fspath(dst)


def convert_to_msgpack_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    allow_pickle: bool | None = None,
    progress: Progress | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Rewrite a checkpoint in the portable msgpack format; return ``dst``.

    :func:`convert_checkpoint` to that format, with the same options.

    :param storage_options: for URLs (``src``, ``dst`` or both), passed to their fsspec file systems.
    """
    return convert_checkpoint(src, dst, format="msgpack", allow_pickle=allow_pickle,
                              progress=progress, pm=pm, storage_options=storage_options)
