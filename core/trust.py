"""Marking a checkpoint as trusted (``amber trust``): verify every file, then sign it.

A checkpoint in a format that can run code when read loads by default only
when the user's key signs it (:mod:`amber.signing`). :func:`trust_checkpoint`
gives one that key's signature: it checks every file of every level against
its manifest, records each file's BLAKE3 digest where a manifest held a digest that
does not resist forgery (xxh3), and signs the top manifest. State files are
never rewritten: the checkpoint is staged beside itself with hard links to
them (copies where the file system has none), only the manifests that change
are written anew, and the result replaces the original in one atomic step
(:mod:`amber.atomic`). :func:`trust_state` says what a checkpoint is and why
it is not trusted yet, without reading any state.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.atomic import commit, staging
from amber.digest import CHUNK_BYTES, CRYPTOGRAPHIC, format_digest, hash_file, is_cryptographic, new_hasher
from amber.durable import describe
from amber.errors import CheckpointError, CheckpointWriteError, CorruptCheckpointError, NotACheckpointError
from amber.layout import (
    MANIFEST,
    FileEntry,
    Manifest,
    manifest_changed,
    read_manifest,
    unlisted_entries,
    write_manifest,
)
from amber.registry import get_registry
from amber.signing import (
    SIGNATURE,
    SIGNED_DIGEST,
    SigningKey,
    containing_algorithm,
    key_path,
    load_key,
    policy_manifest,
    sign,
    signature_problem,
    weak_digest,
)
from amber.storage import is_remote, reading
from amber.verified_io import corrupt, open_nofollow

if TYPE_CHECKING:
    import pluggy

__all__ = ["TrustResult", "TrustState", "trust_checkpoint", "trust_state"]


@dataclass(frozen=True)
class TrustState:
    """What a checkpoint is, and whether the user's key vouches for it (from its manifests alone).

    :param safe: its format cannot run code when read: it needs no signature.
    :param signer: the key id its signature names, if it has one.
    :param problem: why the user's key does not vouch for it; None when it does (or it is safe).
    """

    path: Path
    type: str
    format: str
    safe: bool
    created: str | None
    amber_version: str | None
    signer: str | None
    problem: str | None


@dataclass(frozen=True)
class TrustResult:
    """What :func:`trust_checkpoint` did.

    :param changed: whether the checkpoint was signed now (False: it was safe or already signed).
    :param verified: how many files were checked against their digests.
    :param upgraded: how many of them had a digest that does not resist forgery, now their BLAKE3 digest.
    """

    path: Path
    key: SigningKey | None
    changed: bool
    verified: int = 0
    upgraded: int = 0


def _top(root: Path) -> Manifest:
    """The top manifest of ``root``, which must not be a policy inside an algorithm checkpoint."""
    outer = containing_algorithm(root)
    if outer is not None:
        raise CheckpointError(f"{root} is a policy of the algorithm checkpoint {outer}, whose signature "
                              f"covers its policies: trust that one (amber trust {outer})", path=root)
    try:
        return read_manifest(root)
    except NotACheckpointError:
        from amber.checkpoint_read import amber_only

        if (foreign := amber_only(root, "a signature vouches for amber checkpoints only")) is None:
            raise
        raise foreign from None


def _policies_whole(root: Path, top: Manifest) -> None:
    """Check that every policy's manifest is the one the algorithm records (a stranger's policy in a
    format that can run code, put into a safe checkpoint, is damage: no signature, and no "needs
    none", would do).

    :raises CorruptCheckpointError: one does not match (:func:`amber.signing.policy_manifest`).
    """
    for pid in top.policy_ids:
        policy_manifest(root, top, pid)


def _problem(root: Path, top: Manifest, key: SigningKey | None) -> str | None:
    """Why ``key`` does not vouch for the whole checkpoint (every level's digests included), or None.

    :raises CorruptCheckpointError: (a checkpoint the key signed) a policy's manifest does not
        match the algorithm's record of it.
    """
    if key is None:
        return f"this user has no signing key yet ({key_path()})"
    found = signature_problem(top.raw, key) or weak_digest(top)
    for pid in top.policy_ids:
        if found:
            break
        found = weak_digest(policy_manifest(root, top, pid))
    return found


def trust_state(path: str | os.PathLike[str], *, pm: pluggy.PluginManager | None = None,
                storage_options: Mapping[str, Any] | None = None) -> TrustState:
    """Whether a checkpoint needs, and has, the user's signature; reads manifests only
    (at an fsspec URL, downloads only them).

    :raises NotACheckpointError: no amber checkpoint there.
    :raises CorruptCheckpointError: a manifest is malformed or altered, or a policy's does not
        match the algorithm's record of it (damaged or replaced: no signature would help).
    :raises UnknownFormatError: its format is not installed.
    :raises SigningKeyError: the user's key file is unreadable, malformed or not private.
    """
    if is_remote(path):
        with reading(path, storage_options, manifests_only=True) as local:
            found = trust_state(local, pm=pm)
        return dataclasses.replace(found, path=os.fspath(path))  # type: ignore[arg-type]
    root = Path(path)
    top = _top(root)
    safe = get_registry(pm).get(top.format).capabilities.safe
    sig = top.raw.get(SIGNATURE)
    signer = sig.get("key_id") if isinstance(sig, dict) and isinstance(sig.get("key_id"), str) else None
    raw = top.raw
    return TrustState(
        path=root, type=top.type, format=top.format, safe=safe,
        created=raw.get("created") if isinstance(raw.get("created"), str) else None,
        amber_version=raw.get("amber_version") if isinstance(raw.get("amber_version"), str) else None,
        signer=signer, problem=_policies_whole(root, top) if safe else _problem(root, top, load_key()),
    )


def trust_checkpoint(
    path: str | os.PathLike[str], *, pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> TrustResult:
    """Sign a checkpoint with the user's key (created on first use), after verifying every file.

    Only the manifests that change are written; the state files are kept as they
    are (hard-linked into the new directory), and the checkpoint is replaced
    atomically. A checkpoint in a safe format, or one already signed with the
    user's key, is left alone.

    :param path: the checkpoint directory (an algorithm checkpoint, not one of its policies; a link
        to one signs the checkpoint it points to), or
        an fsspec URL: downloaded whole, signed, and uploaded again with its manifest last.
    :param storage_options: for a URL, passed to its fsspec file system.
    :raises CorruptCheckpointError: a file is missing, altered, a link, or not listed as it is;
        nothing was changed.
    :raises CheckpointWriteError: the directory cannot be written; nothing was changed.
    :raises SigningKeyError: the key cannot be created or read.
    """
    if is_remote(path):
        return _trust_remote(os.fspath(path), pm, storage_options)
    named = Path(path)
    # a link the user named (runs/latest) is followed: the checkpoint it points to is signed
    root = Path(os.path.realpath(named)) if named.is_symlink() else named
    top = _top(root)
    if get_registry(pm).get(top.format).capabilities.safe:
        return TrustResult(root, None, changed=False)
    key = load_key(create=True)
    assert key is not None  # created above
    if _problem(root, top, key) is None:
        return TrustResult(root, key, changed=False)
    _check_complete(root, top)
    try:
        with staging(root, what="a signed copy of the checkpoint") as tmp:
            _link_tree(root, tmp)
            try:
                verified, upgraded = _resign(tmp, key)
            except CorruptCheckpointError as e:  # name the user's files, not their staged links
                shown = e.message.replace(str(tmp), str(root))
                raise CorruptCheckpointError(f"{shown}; nothing was changed", path=root) from e

            def unchanged() -> None:  # after commit's fsyncs, right before its rename
                if manifest_changed(root, top):  # a save replaced it meanwhile: keep that one
                    raise CheckpointWriteError(f"{root} changed meanwhile (another save committed there "
                                               "while it was being signed); nothing was changed, the newer "
                                               "checkpoint is kept (run amber trust again)", path=root)

            commit(tmp, root, expect=unchanged)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointWriteError(f"signing {root} failed: {describe(e)}; the checkpoint is unchanged",
                                   path=root) from e
    return TrustResult(root, key, changed=True, verified=verified, upgraded=upgraded)


def _check_complete(root: Path, top: Manifest) -> None:
    """Refuse a checkpoint holding what its manifests do not list, or missing a policy's manifest:
    a signature vouches for what they list, and the signed copy replaces the checkpoint whole.

    :raises CorruptCheckpointError: naming the files; nothing was changed.
    """
    try:
        extra = unlisted_entries(root, top)  # reads each policy's manifest: a missing one is named
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"{e.message}; nothing was changed", path=root) from e
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise CorruptCheckpointError(
            f"{root} holds what its manifests do not list ({shown}), which a signature would not "
            "cover: move it out of the checkpoint (amber verify names it), then trust it again; "
            "nothing was changed", path=root)


def _trust_remote(url: str, pm: pluggy.PluginManager | None,
                  storage_options: Mapping[str, Any] | None) -> TrustResult:
    """:func:`trust_checkpoint` of a checkpoint at a URL."""
    from amber.storage import Remote
    from amber.storage_upload import uploading

    with reading(url, storage_options, whole=True) as local:
        result = trust_checkpoint(local, pm=pm)
        if result.changed:
            uploading(local, Remote(url, storage_options))
    return dataclasses.replace(result, path=url)  # type: ignore[arg-type]


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src``'s directories in ``dst`` and hard-link its files there (copy where links fail)."""
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        there = dst / here.relative_to(src)
        for name in [*dirnames, *filenames]:
            mode = os.lstat(here / name).st_mode
            if stat.S_ISDIR(mode):
                (there / name).mkdir()
            elif stat.S_ISREG(mode):
                try:
                    os.link(here / name, there / name)
                except OSError:
                    shutil.copyfile(here / name, there / name)
            else:
                raise corrupt(here / name, "is a link or a special file; checkpoints hold only regular "
                                           "files and directories")


def _verify(directory: Path, rel: str, entry: FileEntry) -> str:
    """Check a file against its entry, in one pass that also takes its BLAKE3 digest; return the
    digest to record."""
    algorithm = entry.digest.partition(":")[0]
    hashers = [new_hasher(algorithm)]
    if algorithm not in CRYPTOGRAPHIC:
        hashers.append(new_hasher(SIGNED_DIGEST))
    size = 0
    with os.fdopen(open_nofollow(directory, rel), "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            for h in hashers:
                h.update(chunk)
            size += len(chunk)
    if size != entry.size:
        raise corrupt(directory / rel, f"has {size} bytes, checkpoint.json records {entry.size}")
    if format_digest(hashers[0], algorithm) != entry.digest:
        raise corrupt(directory / rel, "content does not match its digest in checkpoint.json")
    return format_digest(hashers[-1])


def _level_files(
    level: Manifest, done: dict[str, dict[str, object]]
) -> tuple[dict[str, dict[str, object]], int, int]:
    """A level's file entries with cryptographic digests (``done``: entries already made), and
    how many files were verified and how many digests changed."""
    files: dict[str, dict[str, object]] = {}
    verified = upgraded = 0
    for rel, entry in level.files.items():
        if rel in done:
            files[rel] = done[rel]
            continue
        digest = _verify(level.directory, rel, entry)
        files[rel] = {"size": entry.size, "digest": digest}
        verified += 1
        upgraded += digest != entry.digest
    return files, verified, upgraded


def _rewrite(level: Manifest, files: dict[str, dict[str, object]], key: SigningKey | None) -> None:
    content = {k: v for k, v in level.raw.items() if k != SIGNATURE}
    content["files"] = files
    if key is not None:
        content[SIGNATURE] = sign(content, key)
    level.path.unlink()  # a hard link to the original: replace it, never write through it
    write_manifest(level.directory, content)


def _resign(tmp: Path, key: SigningKey) -> tuple[int, int]:
    """Verify every level staged in ``tmp``, pin each file with its BLAKE3 digest, sign the top manifest."""
    top = read_manifest(tmp)
    children: dict[str, dict[str, object]] = {}
    verified = upgraded = 0
    for pid in top.policy_ids:
        rel = f"policies/{pid}/{MANIFEST}"
        child = read_manifest(tmp / "policies" / pid, expected=top.files[rel], root=tmp)
        files, v, u = _level_files(child, {})
        verified, upgraded = verified + v + 1, upgraded + u
        if u:
            _rewrite(child, files, None)
        if u or not is_cryptographic(top.files[rel].digest):
            size, digest = hash_file(child.path, algorithm=SIGNED_DIGEST)
            children[rel] = {"size": size, "digest": digest}
            upgraded += 1
        else:
            children[rel] = {"size": top.files[rel].size, "digest": top.files[rel].digest}
    files, v, u = _level_files(top, children)
    _rewrite(top, files, key)
    return verified + v, upgraded + u
