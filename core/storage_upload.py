"""Writing a checkpoint to an fsspec URL: staged locally, then uploaded with its top manifest last
(the commit), as :mod:`amber.storage` describes; and deleting one: the upload marker put up, the
manifest removed (uncommitted from then on), then the rest, so that what a crash leaves of a
deletion is recognisable (:func:`remove_leftovers`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from amber.errors import CheckpointError, CheckpointWriteError, StorageError
from amber.storage import (
    MANIFEST,
    UPLOAD_MARKER,
    Remote,
    check_replaceable,
    is_remote,
    local_path,
    naming,
    transfer,
)

__all__ = ["enclosing_checkpoint", "remove", "remove_leftovers", "uploading", "writing"]


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """A local path to write a checkpoint at; a URL gets a staging directory uploaded afterwards.

    The block writes a whole checkpoint at the yielded path (as
    :func:`amber.checkpoint_write.write_checkpoint` does locally). For a URL,
    it is then uploaded with :func:`uploading`; if the block raises, nothing is uploaded.
    """
    if not is_remote(path):
        yield local_path(path)
        return
    remote = Remote(path, storage_options)
    outer = enclosing_checkpoint(remote)
    if outer is not None:
        raise CheckpointWriteError(
            f"refusing to write a checkpoint at {remote.url}: it is inside the checkpoint {outer}, whose "
            "checkpoint.json would not list it (`amber verify` would then fail on it); choose a "
            "prefix outside it", path=remote.url)
    checked = remote.listing()
    check_replaceable(remote, checked)  # before the work of writing it locally
    with tempfile.TemporaryDirectory(prefix="amber-upload-") as tmp:
        local = Path(tmp) / (remote.root.rsplit("/", 1)[-1] or "checkpoint")
        with naming(local, remote.url):
            yield local
        uploading(local, remote, checked=checked)


def uploading(local: Path, remote: Remote, *, checked: Mapping[str, int] | None = None) -> None:
    """Upload the checkpoint directory ``local`` to ``remote``, committing it with its manifest last.

    :param checked: a listing of ``remote`` that :func:`check_replaceable` passed: when the
        prefix still lists exactly that, its manifests are not downloaded and checked again.

    Order: the upload marker; the old manifest, if any, removed (the old checkpoint is no
    longer committed); every other file; files of the old checkpoint the new one lacks,
    removed; sizes checked by listing; the policies' manifests; the top manifest (the
    commit); the marker removed.

    :raises CheckpointWriteError: the upload failed; the URL holds an uncommitted upload,
        which readers refuse and the next save there replaces. No other URL is touched.
    """
    files = sorted(str(p.relative_to(local)).replace(os.sep, "/") for p in local.rglob("*") if p.is_file())
    manifests = sorted((f for f in files if f.rsplit("/", 1)[-1] == MANIFEST),
                       key=lambda f: (-f.count("/"), f))
    data = [f for f in files if f not in manifests]
    fs = remote.fs
    try:
        existing = remote.listing()
        if existing != checked:  # (changed since, or never checked)
            check_replaceable(remote, existing)
        marker = _marker()
        transfer(remote, "uploading", lambda: fs.pipe_file(remote.key(UPLOAD_MARKER), marker))
        if MANIFEST in existing:
            transfer(remote, "uncommitting", lambda: fs.rm_file(remote.key(MANIFEST)))
        if data:
            transfer(remote, "uploading", lambda: fs.put([str(local / f) for f in data],
                                                          [remote.key(f) for f in data]))
        stale = sorted(set(existing) - set(files) - {UPLOAD_MARKER})
        if stale:
            transfer(remote, "removing old files of", lambda: fs.rm([remote.key(f) for f in stale]))
        _check_sizes(remote, local, data)
        for f in manifests:  # the policies' first, the top one (the commit) last
            transfer(remote, "committing", lambda f=f: fs.put_file(str(local / f), remote.key(f)))
        transfer(remote, "uploading", lambda: fs.rm_file(remote.key(UPLOAD_MARKER)))
    except CheckpointError as e:
        if isinstance(e, CheckpointWriteError):
            raise
        raise CheckpointWriteError(
            f"saving {remote.url} failed: {e}; what was uploaded is not committed (readers "
            "refuse it, the next save there replaces it) and no other checkpoint was touched",
            path=remote.url) from e


def _check_sizes(remote: Remote, local: Path, data: Iterable[str]) -> None:
    """Every uploaded file is listed with its local size (before anything is committed)."""
    stored = remote.listing()
    for f in data:
        size = (local / f).stat().st_size
        if stored.get(f) != size:
            raise StorageError(f"{remote.url}/{f} holds {stored.get(f)} bytes after the upload, not "
                               f"{size}", path=f"{remote.url}/{f}")


def _marker(**extra: Any) -> bytes:
    """The upload marker's content: who put it up, and when."""
    who = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    return json.dumps({**who, **extra}).encode()


def enclosing_checkpoint(remote: Remote) -> str | None:
    """The URL of the committed checkpoint that ``remote`` lies inside (a prefix above it holds a
    ``checkpoint.json``), or None. A prefix that cannot be looked at (no permission) counts as none."""
    parts = remote.root.split("/")
    for up in range(1, len(parts)):
        parent = "/".join(parts[:-up])
        if not parent.strip("/"):
            break
        try:
            remote.fs.invalidate_cache(parent)
            found = remote.fs.exists(f"{parent}/{MANIFEST}")
        except Exception:  # each back end's own error types: not known, so not refused
            found = False
        if found:
            return remote.url.rsplit("/", up)[0]
    return None


def remove(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete the checkpoint at a URL: the upload marker put up (saying it is a deletion), its
    manifest removed (uncommitted from then on), the rest, then the marker. What a crash leaves
    is an unfinished deletion that :func:`remove_leftovers` removes.

    :raises CheckpointWriteError: it holds files its manifests do not list (:func:`check_replaceable`):
        nothing is deleted.
    :raises StorageError: the storage failed.
    """
    remote = Remote(path, storage_options)
    names = remote.listing()
    check_replaceable(remote, names)
    _delete(remote, names)


def _delete(remote: Remote, names: Iterable[str]) -> None:
    fs = remote.fs
    marker = _marker(deleting=True)
    transfer(remote, "deleting", lambda: fs.pipe_file(remote.key(UPLOAD_MARKER), marker))
    if MANIFEST in names:
        transfer(remote, "deleting", lambda: fs.rm_file(remote.key(MANIFEST)))
    rest = [remote.key(f) for f in names if f not in (MANIFEST, UPLOAD_MARKER)]
    if rest:
        transfer(remote, "deleting", lambda: fs.rm(rest))
    transfer(remote, "deleting", lambda: fs.rm_file(remote.key(UPLOAD_MARKER)))


def remove_leftovers(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Finish the deletions that a crash interrupted below the URL ``root``: each ``checkpoint_*``
    prefix without a manifest whose upload marker says it is a deletion (an unfinished *upload*
    is left alone: the next save there replaces it). A failure only warns.

    :return: the URLs removed.
    """
    from amber.errors import warn

    remote = Remote(root, storage_options)
    removed = []
    try:
        names = remote.listing()
        for rel in sorted(names):
            name, _, last = rel.rpartition("/")
            if last != UPLOAD_MARKER or "/" in name or not name.startswith("checkpoint_") \
                    or f"{name}/{MANIFEST}" in names:
                continue
            raw = transfer(remote, "reading", lambda rel=rel: remote.fs.cat_file(remote.key(rel)))
            try:
                deleting = json.loads(raw).get("deleting") is True
            except (ValueError, AttributeError):
                deleting = False
            if deleting:
                inner = {r[len(name) + 1:] for r in names if r.startswith(name + "/")}
                _delete(Remote(f"{remote.url}/{name}", storage_options), inner)
                removed.append(f"{remote.url}/{name}")
    except CheckpointError as e:
        warn(f"{root}: what an interrupted deletion left could not be removed: {e}")
    return removed
