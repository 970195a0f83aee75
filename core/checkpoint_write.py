"""Writing whole checkpoints, atomically, in any registered format.

:func:`write_checkpoint` lays out the levels of a checkpoint (api.md
section 6) in a staging directory, has the format write each state through
a :class:`amber.verified_io.Sink`, records every file in the levels'
manifests and commits the whole directory atomically (:mod:`amber.atomic`).
A checkpoint in a format that can run code when read is written with BLAKE3
digests and its top manifest signed with the user's key (:mod:`amber.signing`).
It reaches formats only through the registry built from the plugins' hooks.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber import __version__
from amber.atomic import commit, fsync_on_close, staging
from amber.digest import DEFAULT_ALGORITHM, hash_file, writing_with
from amber.durable import describe
from amber.errors import CheckpointError, CheckpointWriteError, MissingPluginError, UnserializableStateError
from amber.layout import (
    MANIFEST,
    STATE_STEMS,
    FileEntry,
    Sink,
    check_id,
    enclosing_checkpoint,
    write_manifest,
)
from amber.manifest import metadata_problem
from amber.migration import CHECKPOINT_VERSION, is_newer
from amber.names import to_names
from amber.registry import FormatRegistry, FormatSpec, get_registry
from amber.signing import SIGNATURE, SIGNED_DIGEST, SigningKey, key_for_saving, sign
from amber.state import validate_tree
from amber.storage import is_remote, local_path
from amber.storage_upload import writing as staged_for

if TYPE_CHECKING:
    import pluggy

__all__ = ["Attachment", "check_metadata", "write_checkpoint"]

#: Writes extra files (exported models) into the directory of one level of a checkpoint.
Attachment = Callable[[Path], None]


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


@dataclass(frozen=True)
class _Plan:
    """What every level of one save shares."""

    spec: FormatSpec
    registry: FormatRegistry
    metadata: Mapping[str, str] | None
    version: str
    #: BLAKE3 for a format that can run code when read (its signature covers the files through
    #: their digests: :mod:`amber.signing`); else the fast default.
    digest: str = DEFAULT_ALGORITHM
    #: The user's key, which signs the top manifest (None: unsigned).
    key: SigningKey | None = None


#: The version from which a format that can run code is hashed with BLAKE3, and what came before.
_FIRST_BLAKE3, _SIGNED_DIGEST_BEFORE = "2.2", "sha256"


def _plan(
    spec: FormatSpec, registry: FormatRegistry, metadata: Mapping[str, str] | None, version: str
) -> _Plan:
    """The plan of a save: a format that can run code is hashed with BLAKE3 and signed."""
    if spec.capabilities.safe:
        return _Plan(spec, registry, metadata, version)
    # an amber that reads up to 2.1 knows sha256, not BLAKE3 (docs/format.md): what it wrote then
    digest = SIGNED_DIGEST if not is_newer(_FIRST_BLAKE3, version) else _SIGNED_DIGEST_BEFORE
    return _Plan(spec, registry, metadata, version, digest, key_for_saving())


def _write_level(
    directory: Path,
    plan: _Plan,
    *,
    type_: str,
    state: Any,
    shown: Path,
    extra: Mapping[str, Any] | None = None,
    children: Mapping[str, FileEntry] | None = None,
    attachment: Attachment | None = None,
    top: bool = False,
) -> FileEntry:
    spec = plan.spec
    stem = STATE_STEMS[type_]
    if not spec.capabilities.arbitrary_objects:
        validate_tree(state, format=spec.name, where=str(shown / f"{stem}{spec.extension}"))
    files: dict[str, FileEntry] = {}
    sink = Sink(directory, stem, spec.extension, files)
    with writing_with(plan.digest):  # the files are hashed as they are written, with this algorithm
        _run_write(spec, state, sink, directory, shown)
        sink.finish()
    _check_all_through_sink(directory, files, children, plan, shown, f"{stem}{spec.extension}")
    _pin(directory, files, plan.digest)
    if attachment is not None:
        attachment(directory)
        _record_untracked(directory, files, children, plan.digest)
    files.update(children or {})
    content = _header(type_, spec, plan.registry, plan.metadata, plan.version)
    content.update(extra or {})
    content["state_file"] = f"{stem}{spec.extension}"
    content["files"] = {rel: {"size": e.size, "digest": e.digest} for rel, e in files.items()}
    if top and plan.key is not None:
        content[SIGNATURE] = sign(content, plan.key)
    try:
        entry = write_manifest(directory, content)
    except CheckpointWriteError as e:  # (named by the staging directory it was written in)
        raise CheckpointWriteError(f"{shown}: {e.message}; nothing was written", path=shown,
                                   format=spec.name) from e
    if not top and plan.digest != DEFAULT_ALGORITHM:  # the parent pins this manifest with it too
        entry = FileEntry(*hash_file(directory / MANIFEST, algorithm=plan.digest))
    return entry


def _run_write(spec: FormatSpec, state: Any, sink: Sink, directory: Path, shown: Path) -> None:
    """``spec.write(state, sink)`` into the staging ``directory``; its failures name ``shown``, the
    checkpoint's own directory, never the staging copy.

    :raises MissingPluginError: the format's own dependencies are missing.
    :raises UnserializableStateError: the format could not write this state (nothing is committed).
    """
    try:
        spec.write(state, sink)
    except ImportError as e:  # the format's own dependencies are missing
        raise MissingPluginError(f"format {spec.name!r} cannot write {shown}: {e}; {spec.install_hint}",
                                 path=shown, format=spec.name) from e
    except CheckpointError as e:  # name the checkpoint's own file, not its staging copy
        if e.path is not None and Path(e.path).is_relative_to(directory):
            e.path = str(shown / Path(e.path).relative_to(directory))
        raise
    except OSError:
        raise  # (a full or read-only disk: the save names it)
    except Exception as e:
        raise UnserializableStateError(
            f"cannot write {shown} in format {spec.name!r}: {type(e).__name__}: {e}; nothing was written",
            path=shown, format=spec.name) from e


def _check_all_through_sink(
    directory: Path, files: Mapping[str, FileEntry], children: Mapping[str, FileEntry] | None, plan: _Plan,
    shown: Path, state_file: str,
) -> None:
    """Refuse a level whose format wrote no state file, or wrote a file other than through its sink
    (to ``sink.path`` itself, or beside it): such a file would be committed unlisted, unhashed and not
    fsynced, and ``amber verify`` would fail the new checkpoint. One listing of ``directory``.

    :raises CheckpointWriteError: naming the format (its plugin) and the files.
    """
    spec = plan.spec
    stray = sorted(set(os.listdir(directory)) - set(files) - ({"policies"} if children else set()))
    if state_file in files and not stray:
        return
    plugin = plan.registry.provider(spec.name).plugin
    if state_file not in files and state_file not in stray:  # it would commit a checkpoint no reader accepts
        raise CheckpointWriteError(
            f"format {spec.name!r} wrote no {state_file} for {shown} (its write() must write the state file "
            f"it is given, through sink.open()); nothing was written (plugin {plugin!r})",
            path=shown, format=spec.name, plugin=plugin)
    raise CheckpointWriteError(
        f"format {spec.name!r} wrote {', '.join(stray)} in {shown} directly, not through sink.open(), so "
        "that checkpoint.json would not list them (`amber verify` would fail the checkpoint): its write() "
        "must open every file with sink.open(), or sink.open(suffix) for <stem><suffix> beside the state "
        f"file; nothing was written (plugin {plugin!r})", path=shown, format=spec.name, plugin=plugin)


def _pin(directory: Path, files: dict[str, FileEntry], digest: str) -> None:
    """Re-hash with ``digest`` any file whose digest was taken with another algorithm (a format
    that wrote from a thread of its own, where :func:`writing_with` does not reach)."""
    for rel, entry in files.items():
        if not entry.digest.startswith(f"{digest}:"):
            files[rel] = FileEntry(*hash_file(directory / rel, algorithm=digest))


def _record_untracked(
    directory: Path, files: dict[str, FileEntry], children: Mapping[str, FileEntry] | None, digest: str
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
            files[rel] = FileEntry(*hash_file(Path(dirpath) / name, fsync=fsync_on_close(), algorithm=digest))


def write_checkpoint(
    path: str | os.PathLike[str],
    *,
    type: str,
    state: Any,
    format: str,
    policies: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    attachments: Mapping[str, Attachment] | None = None,
    placeholders: bool | Collection[str] = False,
    checkpoint_version: str = CHECKPOINT_VERSION,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    Classes and functions in the trees are written as their registered
    names (:mod:`amber.names`); a format that holds any object
    (``capabilities.arbitrary_objects``) keeps those that have none. A format
    that can run code when read is written with BLAKE3 digests and signed with
    the user's key (:mod:`amber.signing`; unsigned, with a warning, if there
    can be no key), so that it loads by default only for that user.

    :param path: the checkpoint directory; an existing amber checkpoint or empty
        directory there is replaced as a whole, in one atomic step. Or an fsspec URL:
        written locally, then uploaded with its manifest last (:mod:`amber.storage`);
        the URL is returned as it was given.
    :param type: ``"Algorithm"``, ``"Policy"`` or ``"State"``.
    :param state: the state tree (for an Algorithm, without its policies).
    :param format: a registered format name.
    :param policies: for an Algorithm, each policy's state tree by policy id.
    :param metadata: strings recorded in every checkpoint.json.
    :param attachments: by policy id (or ``""`` for the top level), a function
        that writes extra files (exported models) into that level's directory;
        they are listed and verified like the rest.
    :param placeholders: in a portable format, write a class or function of
        the (top) state that has no registered name as a placeholder (the loader
        asks for it) instead of failing: True anywhere in it, or only at these key
        paths (``config.policy_mapping_fn``: those a loader can be given again).
        A policy's state never holds one; anything else still fails, before
        anything is written.
    :param checkpoint_version: the version to label it with (``amber migrate --to``); trees
        of an older version are written as they are.
    :param pm: the plugin manager (default: the process's).
    :param storage_options: for a URL, passed to its fsspec file system.
    :raises UnknownFormatError: no such format.
    :raises UnserializableStateError: the state holds something the format cannot write.
    :raises CheckpointWriteError: a full or read-only disk, a format writing beside its sink; nothing left.
    """
    registry = get_registry(pm)
    spec = registry.get(format)
    check_metadata(metadata)
    job = _Job(spec, registry, type, state, dict(policies or {}), metadata, attachments or {}, placeholders,
               checkpoint_version, pm)
    if not is_remote(path):
        _check_not_inside_a_checkpoint(local_path(path))
        return _write_local(local_path(path), job)
    with staged_for(path, storage_options) as local:
        _write_local(local, job)
    return os.fspath(path)  # type: ignore[return-value]


def check_metadata(metadata: Any) -> None:
    """Refuse ``metadata`` (of :func:`write_checkpoint`) that does not map strings to strings:
    every checkpoint.json records it, and a reader refuses anything else, so the checkpoint
    written would not load.

    :raises TypeError: naming the key.
    """
    if metadata is not None and (problem := metadata_problem(metadata)) is not None:
        raise TypeError(f"metadata {problem}")


def _check_not_inside_a_checkpoint(target: Path) -> None:
    """Refuse a target inside another checkpoint (``SRC/converted``, ``ALGO/policies/x-copy``):
    that checkpoint's manifest would not list it, and ``amber verify`` would then fail on it.

    :raises CheckpointWriteError: naming both.
    """
    outer = enclosing_checkpoint(target)
    if outer is not None:
        raise CheckpointWriteError(
            f"refusing to write a checkpoint at {target}: it is inside the checkpoint {outer}, whose "
            "checkpoint.json would not list it (`amber verify` would then fail on it); choose a "
            "directory outside it", path=target)


@dataclass(frozen=True)
class _Job:
    """What :func:`write_checkpoint` was asked to write."""

    spec: FormatSpec
    registry: FormatRegistry
    type: str
    state: Any
    policies: dict[str, Any]
    metadata: Mapping[str, str] | None
    attachments: Mapping[str, Attachment]
    placeholders: bool | Collection[str]
    checkpoint_version: str
    pm: pluggy.PluginManager | None


def _write_local(target: Path, job: _Job) -> Path:
    """:func:`write_checkpoint` to a local directory."""
    state, policies, fmt = job.state, job.policies, job.spec.name
    if job.type != "Algorithm" and policies:
        raise ValueError("only Algorithm checkpoints hold policies")
    for pid in policies:
        check_id(pid, path=target)
    if job.checkpoint_version == CHECKPOINT_VERSION:  # trees of an older version are written as they are
        portable = not job.spec.capabilities.arbitrary_objects
        # a placeholder only where a loader can be given the object again (none in a policy's tree)
        placeholders = job.placeholders if isinstance(job.placeholders, bool) else set(job.placeholders)
        state = to_names(state, portable=portable, placeholders=placeholders, format=fmt,
                         where=str(target), pm=job.pm)
        policies = {pid: to_names(p, portable=portable, format=fmt,
                                  where=str(target / "policies" / pid), pm=job.pm)
                    for pid, p in policies.items()}
    plan = _plan(job.spec, job.registry, job.metadata, job.checkpoint_version)
    _write_atomically(target, job.type, state, policies, plan, job.attachments)
    return target


def _write_atomically(
    target: Path, type_: str, state: Any, policies: Mapping[str, Any], plan: _Plan,
    attachments: Mapping[str, Attachment],
) -> None:
    """Write the checkpoint in a staging directory and commit it onto ``target``."""
    try:
        with staging(target) as tmp:
            _write_levels(tmp, target, type_, state, policies, plan, attachments)
            commit(tmp, target)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointWriteError(
            f"saving {target} failed: {describe(e)}; "
            "nothing was written and any previous checkpoint there is intact",
            path=target, format=plan.spec.name,
        ) from e


def _write_levels(
    tmp: Path, target: Path, type_: str, state: Any, policies: Mapping[str, Any], plan: _Plan,
    attachments: Mapping[str, Attachment],
) -> None:
    """Write every level of a checkpoint into the staging directory ``tmp``: the policies', then the top."""
    children: dict[str, FileEntry] = {}
    for pid, pstate in policies.items():
        pdir = tmp / "policies" / pid
        pdir.mkdir(parents=True)
        children[f"policies/{pid}/{MANIFEST}"] = _write_level(
            pdir, plan, type_="Policy", state=pstate, extra={"policy_id": pid},
            attachment=attachments.get(pid), shown=target / "policies" / pid,
        )
    extra = {"policy_ids": list(policies)} if type_ == "Algorithm" else {}
    _write_level(tmp, plan, type_=type_, state=state, extra=extra, children=children,
                 attachment=attachments.get(""), shown=target, top=True)
