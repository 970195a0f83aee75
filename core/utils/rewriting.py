"""Rewriting checkpoints: the files a rewrite carries over, and migration to a newer
checkpoint_version (:func:`migrate`, :func:`migrate_all`). Re-exported by
:mod:`amber.utils.checkpoints`, RLlib's import path."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.algorithms.saved_config import GIVEN_AGAIN
from amber.atomic import guarded, is_temporary
from amber.checkpoint import CHECKPOINT_VERSION, Checkpoint, read_checkpoint, write_checkpoint
from amber.checkpoint_manager import carried_metadata
from amber.checkpoint_read import adopt_trees
from amber.errors import CheckpointError, CheckpointWriteError, NotACheckpointError
from amber.layout import MANIFEST, Manifest, manifest_changed, read_manifest
from amber.registry import get_registry
from amber.storage import find_committed, is_remote, local_path, reading, relocated

if TYPE_CHECKING:
    import pluggy

    from amber.migration import CheckpointTrees

__all__ = ["MigrationResult", "find_checkpoints", "migrate", "migrate_all", "migrate_checkpoint"]


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


def manifest_in_place(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None) -> Manifest | None:
    """Before ``src`` is read for a rewrite to ``dst``: when that replaces it in place (``dst`` None
    or ``src``, local), the manifest now there, which :func:`_rewrite` checks is still there right
    before its commit (None otherwise, or when there is none to read)."""
    if is_remote(src) or (dst is not None and (is_remote(dst)
                                                or os.path.realpath(dst) != os.path.realpath(src))):
        return None
    try:
        return read_manifest(local_path(src))
    except CheckpointError:  # read_checkpoint says why; nothing amber's is replaced in place
        return None


@contextlib.contextmanager
def still_in_place(dst: str | os.PathLike[str], before: Manifest | None) -> Iterator[None]:
    """Writes to ``dst`` inside commit only while it still holds the checkpoint ``before`` (read by
    :func:`manifest_in_place`; None: no check), else fail with :class:`CheckpointWriteError`."""
    if before is None or is_remote(dst):
        yield
        return
    with guarded(local_path(dst), _still(local_path(dst), before)):
        yield


def _still(path: Path, before: Manifest) -> Callable[[], None]:
    """A check (:func:`amber.atomic.guarded`) that ``path`` still holds the checkpoint ``before``."""
    def check() -> None:
        if manifest_changed(path, before):
            raise CheckpointWriteError(
                f"{path} changed meanwhile: another save committed there while it was rewritten; "
                "nothing was changed, the newer checkpoint is kept (run again)", path=path)
    return check


def _rewrite(
    ckpt: Checkpoint, dst: str | os.PathLike[str], *, format: str, pm: pluggy.PluginManager | None,
    version: str | None = None, storage_options: Mapping[str, Any] | None = None,
    before: Manifest | None = None,
) -> None:
    """Write ``ckpt`` at ``dst``; ``before`` (:func:`manifest_in_place`): it replaces the checkpoint
    read, and only if ``dst`` still holds that one right before the commit."""
    if before is not None and not is_remote(dst):
        with still_in_place(dst, before):
            _rewrite(ckpt, dst, format=format, pm=pm, version=version, storage_options=storage_options)
        return
    if not is_remote(dst):  # an amber source: the write's own refusal (a target inside a checkpoint) first
        from amber.checkpoint_write import _check_not_inside_a_checkpoint

        _check_not_inside_a_checkpoint(local_path(dst))
    _check_apart(ckpt.path, dst)  # another system's source is never written to either
    attachments = {pid: fn for pid, p in ckpt.policies.items() if (fn := _carried_files(p)) is not None}
    if (own := _carried_files(ckpt)) is not None:
        attachments[""] = own
    write_checkpoint(
        dst,
        type=ckpt.type,
        state=ckpt.state,
        format=format,
        policies={pid: p.state for pid, p in ckpt.policies.items()},
        metadata=carried_metadata(ckpt.metadata, ckpt.path, dst),
        attachments=attachments,
        # a lambda that pickle held cannot be written portably: the loader asks for it instead
        placeholders=set(GIVEN_AGAIN) if ckpt.type == "Algorithm" else True,
        checkpoint_version=version or CHECKPOINT_VERSION,
        pm=pm,
        storage_options=storage_options,
    )


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


def _planned_steps(ckpt: Checkpoint, to: str,
                   pm: pluggy.PluginManager | None) -> tuple[list[dict[str, Any]], CheckpointTrees]:
    """Apply the chain step by step in memory, once, recording what each changes; return the
    record and the trees the last step returned (what :func:`migrate` writes)."""
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
    return steps, trees


def migrate(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    to: str | None = None,
    dry_run: bool = False,
    allow_pickle: bool | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
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
    :param storage_options: for URLs, passed to their fsspec file systems. In remote storage,
        replacing ``src`` in place removes its manifest while the new files upload (object
        stores have no atomic rename): give a ``dst`` to keep the source loadable throughout.
    :return: a :class:`MigrationResult`.
    :raises UnsupportedVersionError: no chain of steps leads from its version to ``to``.
    :raises MigrationError: a step failed (named), or ``src`` cannot be replaced in place.
    :raises CheckpointWriteError: ``dst`` cannot be written (named), or lies inside ``src`` or holds it.
        A dry run checks all this as the real run does (a URL's ``dst`` only as it is written).

    Example::

        result = amber.migrate("old_checkpoint", dry_run=True)
        for step in result.steps:
            print(step["name"], step["description"])
    """
    from amber.migration import CHECKPOINT_VERSION

    target = to or CHECKPOINT_VERSION
    out = _as_location(dst if dst is not None else src)
    before = manifest_in_place(src, dst)
    with reading(src, storage_options) as local:  # a URL's copy lasts until its model files are copied
        ckpt = read_checkpoint(local, allow_pickle=allow_pickle, migrate=False, pm=pm)
        steps, trees = _planned_steps(ckpt, target, pm)  # each step runs once: its trees are written
        result = MigrationResult(_as_location(src), out, ckpt.checkpoint_version, target,
                                 relocated(steps, local, os.fspath(src)))
        if dst is None and not result.steps:
            return result
        _check_target(src, local, out, in_place=dst is None)  # a dry run fails where the write would
        _check_apart(src, dst)
        if dry_run:
            return result
        adopt_trees(ckpt, trees, target)
        registry = get_registry(pm)
        fmt = ckpt.format if ckpt.format in registry.formats else registry.default_portable()
        _rewrite(ckpt, out, format=fmt, pm=pm, version=target, storage_options=storage_options, before=before)
    result.written = True
    return result


def _check_apart(src: str | os.PathLike[str], dst: str | os.PathLike[str] | None) -> None:
    """Refuse a ``dst`` inside ``src`` (the source is never written to) or holding it (replacing
    ``dst`` would remove the source); ``dst`` being ``src`` (or None) is left to the checks that follow.

    :raises CheckpointWriteError: naming both (as writing into another checkpoint is refused).
    """
    from amber.errors import CheckpointWriteError

    if dst is None or is_remote(src) != is_remote(dst):
        return
    if is_remote(src):
        a, b = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
    else:  # links resolved: SRC/link-to-SRC/x is inside SRC too
        a, b = os.path.realpath(src), os.path.realpath(dst)
    if b.startswith(a.rstrip("/") + "/"):
        raise CheckpointWriteError(f"refusing to write {dst}: it is inside the source checkpoint {src}, "
                                   "which is never written to; choose a destination outside it", path=dst)
    if a.startswith(b.rstrip("/") + "/"):
        raise CheckpointWriteError(f"refusing to write {dst}: it holds the source checkpoint {src}, which "
                                   "replacing it would remove; choose a destination outside it", path=dst)


def _check_target(src: str | os.PathLike[str], local: Path, out: Path, *, in_place: bool) -> None:
    """What the migration of ``src`` (read at ``local``) checks before it writes at ``out``: another
    system's checkpoint is not replaced in place, and a local ``out`` is not inside a checkpoint
    and is missing, empty or an amber checkpoint (as writing checks it again).

    :raises MigrationError: another system's checkpoint in place.
    :raises CheckpointWriteError: ``out`` cannot be written (named).
    """
    from amber.atomic import check_replaceable
    from amber.checkpoint_write import _check_not_inside_a_checkpoint
    from amber.errors import MigrationError

    if in_place and not (local / MANIFEST).is_file():
        raise MigrationError(f"{src} is not an amber checkpoint and is never replaced in place; "
                             "give a destination: amber migrate SRC DST", path=src)
    if not is_remote(out):
        _check_not_inside_a_checkpoint(local_path(out))
        check_replaceable(local_path(out))


def _as_location(path: str | os.PathLike[str]) -> Path:
    """A local path as a Path; a URL as the str it is (``Path`` would fold its ``//``)."""
    return os.fspath(path).rstrip("/") if is_remote(path) else local_path(path)  # type: ignore[return-value]


def find_checkpoints(root: str | os.PathLike[str], *,
                     storage_options: Mapping[str, Any] | None = None) -> list[Path]:
    """Every checkpoint under ``root`` (amber's, or another system's that a plugin reads),
    outermost only (a policy inside an algorithm checkpoint is not listed), sorted; links
    are not followed. Under a URL: the committed amber checkpoints (their URLs)."""
    if is_remote(root):
        return find_committed(root, storage_options)  # type: ignore[return-value]
    if not os.path.isdir(root):  # os.walk would find nothing, and "nothing to migrate" is wrong
        what = "is a file" if os.path.lexists(root) else "does not exist"
        raise NotACheckpointError(f"{root} is not a directory ({what})", path=root)
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
    storage_options: Mapping[str, Any] | None = None,
) -> list[MigrationResult]:
    """:func:`migrate` every amber checkpoint under a run directory, in place; one result each.

    A checkpoint that fails is reported (``result.error``) and left untouched; the others go on.
    Another system's checkpoints are listed with an error, as they cannot be replaced in place.
    """
    results = []
    for path in find_checkpoints(root, storage_options=storage_options):
        try:
            results.append(migrate(path, to=to, dry_run=dry_run, allow_pickle=allow_pickle, pm=pm,
                                   storage_options=storage_options))
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
