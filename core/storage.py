"""Checkpoints at fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://``).

Object stores have no rename, so a remote checkpoint is written in a local staging directory
as usual (atomically, digests and all), then uploaded file by file with the top
``checkpoint.json`` *last* (:mod:`amber.storage_upload`). That manifest is the commit marker:
a prefix without it is an upload that did not finish, which every reader refuses and
:class:`amber.CheckpointManager` never counts. While an upload or a deletion runs, the prefix
holds ``.amber-uploading``; only a prefix that is empty, holds a committed checkpoint with
nothing its manifests do not list, or carries that marker is ever written over or deleted
(:func:`check_replaceable`).

Reading downloads the top manifest, validates it, then only the files it lists (for a subset
of policies, only theirs), each checked against its size before and its digest after the
download, into a temporary directory that the ordinary local reader then reads. Errors name
the URL, never the temporary directory. A URL without a manifest is refused from its listing,
unless it is another system's checkpoint (whose reader then decides).

``storage_options`` go to the file system as they are; fsspec's own configuration
(``FSSPEC_S3_ENDPOINT_URL``-style variables, its config files) applies as for any fsspec
user. A URL whose file system is not installed is a
:class:`~amber.errors.MissingStorageError` naming the package to install. fsspec is imported
only when a URL is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

from amber.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    MissingStorageError,
    NotACheckpointError,
    StorageError,
)

__all__ = ["UPLOAD_MARKER", "Remote", "check_replaceable", "find_committed", "is_remote", "join",
           "local_path", "open_remote", "naming", "reading", "relocated", "transfer"]

UPLOAD_MARKER = ".amber-uploading"
MANIFEST = "checkpoint.json"
_URL_RE = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL_PROTOCOLS = ("file", "local")
#: What to install for the protocols users meet most (fsspec names the package for the rest).
_INSTALL = {"s3": "pip install 'amber-rl[s3]'", "s3a": "pip install 'amber-rl[s3]'",
            "gs": "pip install gcsfs", "gcs": "pip install gcsfs",
            "az": "pip install adlfs", "abfs": "pip install adlfs", "abfss": "pip install adlfs"}


def _protocol(path: object) -> str | None:
    if isinstance(path, PurePath):  # never a URL: a Path folds "://" into ":/"
        return None
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or "://" not in path:
        return None
    m = _URL_RE.match(path)
    return m["protocol"].lower() if m else None


def is_remote(path: object) -> bool:
    """Whether ``path`` is a URL of a file system other than the local one."""
    protocol = _protocol(path)
    return protocol is not None and protocol not in _LOCAL_PROTOCOLS


def local_path(path: str | os.PathLike[str]) -> Path:
    """A local path or ``file://`` URL as a :class:`~pathlib.Path` (a remote URL is an error)."""
    protocol = _protocol(path)
    if protocol is None:
        return Path(path)
    if protocol in _LOCAL_PROTOCOLS:
        return Path(os.fspath(path)[len(protocol) + 3:])
    raise ValueError(f"{path} is a remote URL, not a local path")


def join(base: str | os.PathLike[str], name: str) -> str | Path:
    """``base/name``: a URL stays a URL (``Path`` would fold its ``//``), a local path a Path."""
    if is_remote(base):
        return os.fspath(base).rstrip("/") + "/" + name
    return local_path(base) / name


class Remote:
    """A URL resolved to its fsspec file system and the path within it."""

    def __init__(self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = os.fspath(url).rstrip("/")
        protocol = _protocol(self.url) or ""
        try:
            from fsspec.core import url_to_fs

            self.fs, root = url_to_fs(self.url, **dict(storage_options or {}))
        except ImportError as e:
            how = _INSTALL.get(protocol, "install the fsspec implementation it names")
            raise MissingStorageError(f"{self.url}: no file system for {protocol}:// is installed "
                                      f"({e}); {how}", path=self.url) from None
        except ValueError as e:
            raise MissingStorageError(f"{self.url}: fsspec knows no file system for {protocol}:// ({e})",
                                      path=self.url) from None
        self.root = str(root).rstrip("/")

    def key(self, rel: str) -> str:
        """The file system's path of ``rel`` below this URL."""
        return f"{self.root}/{rel}" if rel else self.root

    def listing(self) -> dict[str, int]:
        """Every file below the URL: its path relative to it, and its size (empty if none).
        Listed afresh: another process may have written there since."""
        try:
            self.fs.invalidate_cache(self.root)
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # any back end's own error types: a network or permission failure
            raise StorageError(f"listing {self.url} failed: {type(e).__name__}: {e}", path=self.url) from e
        out = {}
        for name, info in found.items():
            rel = str(name)[len(self.root):].lstrip("/")
            if rel and info.get("type", "file") == "file" and _plain_relpath(rel):
                out[rel] = int(info.get("size") or 0)
        return out

    def children(self) -> list[str]:
        """The names directly below the URL (prefixes and files), sorted."""
        try:
            self.fs.invalidate_cache(self.root)
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise StorageError(f"listing {self.url} failed: {type(e).__name__}: {e}", path=self.url) from e
        return sorted({str(n).rstrip("/").rsplit("/", 1)[-1] for n in names})


def _plain_relpath(rel: str) -> bool:
    """A relative key that maps to a path below a local directory (no ``..``, no empty part)."""
    parts = rel.split("/")
    return all(p not in ("", ".", "..") and "\\" not in p for p in parts)


@contextlib.contextmanager
def naming(local: Path, url: str) -> Iterator[None]:
    """Errors raised and warnings issued about the staged copy name the URL instead."""
    here = str(local)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except CheckpointError as e:
            e.message = e.message.replace(here, url)
            e.args = (e.message, *e.args[1:])
            if e.path is not None:
                e.path = e.path.replace(here, url)
            raise
        finally:
            pending = list(caught)
    for w in pending:
        warnings.warn_explicit(str(w.message).replace(here, url), w.category, w.filename, w.lineno)


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *,
            policy_ids: Iterable[str] | None = None, whole: bool = False,
            manifests_only: bool = False) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``path``, for the duration of the block.

    A local path is yielded as it is. A URL is downloaded (see the module's
    docstring) into a temporary directory removed afterwards.

    :param policy_ids: of an Algorithm checkpoint, download only these policies.
    :param whole: download every file below the URL, listed or not (to rewrite it in place).
    :param manifests_only: download the manifests alone (to describe the checkpoint).
    :raises NotACheckpointError: nothing at the URL, an upload that never committed, or no manifest.
    :raises CorruptCheckpointError: a file's size or digest differs from its manifest's.
    :raises StorageError: the storage failed.
    """
    if not is_remote(path):
        yield local_path(path)
        return
    remote = Remote(path, storage_options)
    with tempfile.TemporaryDirectory(prefix="amber-download-") as tmp:
        local = Path(tmp) / (remote.root.rsplit("/", 1)[-1] or "checkpoint")
        with naming(local, remote.url):
            _download(remote, local, None if policy_ids is None else set(policy_ids), whole, manifests_only)
            yield local


def _download(remote: Remote, local: Path, policy_ids: set[str] | None, whole: bool,
              manifests_only: bool) -> None:
    from amber.layout import read_manifest

    names = remote.listing()
    if MANIFEST not in names:
        _check_unmanifested(remote, names, whole)
    else:
        _check_not_in_an_upload(remote)
    local.mkdir(parents=True)
    if whole or MANIFEST not in names:  # another system's checkpoint: its reader decides what it is
        _fetch(remote, local, {rel: None for rel in names if rel != UPLOAD_MARKER}, names)
        return
    _fetch(remote, local, {MANIFEST: None}, names)
    _fetch_level(remote, local, "", read_manifest(local).files, names, policy_ids, manifests_only)


def _check_unmanifested(remote: Remote, names: Mapping[str, int], whole: bool) -> None:
    """Refuse, from its listing alone (nothing downloaded), a URL without ``checkpoint.json`` that is
    neither another system's checkpoint (a top-level ``*checkpoint.json``, e.g. RLlib's
    ``rllib_checkpoint.json``: its reader decides) nor an export (``model.json``, or one per policy).
    With ``whole`` (``verify``), checkpoint files without their manifest are downloaded, to be reported.

    :raises NotACheckpointError: nothing there, an unfinished upload or deletion, or not a checkpoint.
    :raises CorruptCheckpointError: checkpoint files without their manifest (as a local reader says).
    """
    from amber.layout import STATE_PREFIXES

    url = remote.url
    if not names:
        raise NotACheckpointError(f"{url} is not a checkpoint (nothing is stored there)", path=url)
    if UPLOAD_MARKER in names:
        raise NotACheckpointError(f"{url} is an upload that did not finish, or a checkpoint whose deletion "
                                  f"did not (it has no {MANIFEST}, which is written last and deleted "
                                  "first): not a committed checkpoint", path=url)
    top = [rel for rel in names if "/" not in rel]
    if any(rel.endswith(MANIFEST) for rel in top) or any(
            rel.rsplit("/", 1)[-1] == "model.json" and rel.count("/") <= 1 for rel in names):
        return
    if any(rel.startswith(STATE_PREFIXES) for rel in top) or any(r.startswith("policies/") for r in names):
        if whole:
            return
        raise CorruptCheckpointError(f"{url}/{MANIFEST} is missing (the prefix holds checkpoint files)",
                                     path=f"{url}/{MANIFEST}")
    inner = sorted(rel[: -len(MANIFEST) - 1] for rel in names if rel.endswith("/" + MANIFEST))
    outer = [d for d in inner if not any(d.startswith(o + "/") for o in inner)]
    hint = f"; it holds checkpoints below it, e.g. {url}/{outer[-1]}" if outer else ""
    raise NotACheckpointError(f"{url} is not an amber checkpoint: no {MANIFEST} ({len(names)} objects "
                              f"below it, none downloaded){hint}", path=url)


def _check_not_in_an_upload(remote: Remote) -> None:
    """Refuse a policy of an algorithm checkpoint (``ALGO/policies/ID``) whose upload did not finish
    (or whose deletion did not): ``ALGO`` carries the upload marker. A failure to look is no refusal."""
    parts = remote.root.split("/")
    if len(parts) < 3 or parts[-2] != "policies":
        return
    algo = "/".join(parts[:-2])
    try:
        remote.fs.invalidate_cache(algo)
        uploading = remote.fs.exists(f"{algo}/{UPLOAD_MARKER}")
    except Exception:  # (allowed to read only below the policy, say): not known, so not refused
        return
    if uploading:
        raise NotACheckpointError(f"{remote.url} is a policy of {remote.url.rsplit('/', 2)[0]}, an upload "
                                  "that did not finish (or a checkpoint whose deletion did not): not a "
                                  "committed checkpoint", path=remote.url)


def _fetch_level(remote: Remote, local: Path, inner: str, files: Mapping[str, Any],
                 names: Mapping[str, int], policy_ids: set[str] | None, manifests_only: bool) -> None:
    """Download one level's files (and the levels below it) as its manifest lists them."""
    from amber.layout import read_manifest

    plain, children = {}, {}
    for rel, entry in files.items():
        full = f"{inner}/{rel}" if inner else rel
        if rel.endswith(f"/{MANIFEST}"):
            pid = rel.split("/")[1] if rel.startswith("policies/") else None
            if policy_ids is None or pid is None or pid in policy_ids:
                children[full] = entry
        elif not manifests_only:
            plain[full] = entry
    _fetch(remote, local, {**plain, **children}, names)
    for full, entry in children.items():
        sub = full[: -len(MANIFEST) - 1]
        manifest = read_manifest(local / sub, expected=entry, root=local)
        _fetch_level(remote, local, sub, manifest.files, names, policy_ids, manifests_only)


def _fetch(remote: Remote, local: Path, wanted: Mapping[str, Any], names: Mapping[str, int]) -> None:
    """Download ``wanted`` (relative path -> manifest entry or None) and check each against its entry."""
    from amber.layout import check_file

    for rel, entry in wanted.items():
        if rel not in names:
            raise CorruptCheckpointError(f"{remote.url}/{rel} is missing", path=f"{remote.url}/{rel}")
        if entry is not None and names[rel] != entry.size:
            raise CorruptCheckpointError(f"{remote.url}/{rel} is {names[rel]} bytes, its manifest says "
                                         f"{entry.size}", path=f"{remote.url}/{rel}")
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
    rels = list(wanted)
    if rels:
        transfer(remote, "downloading", lambda: remote.fs.get([remote.key(r) for r in rels],
                                                              [str(local / r) for r in rels]))
    for rel, entry in wanted.items():
        why = check_file(local, rel, entry) if entry is not None else None
        if why:
            raise CorruptCheckpointError(f"{remote.url}/{rel} {why}", path=f"{remote.url}/{rel}")


def transfer(remote: Remote, doing: str, action: Callable[[], Any]) -> Any:
    """Run ``action`` (a call on ``remote``'s file system); its failure is a :class:`StorageError`
    saying what was being done (``doing``) to the URL."""
    try:
        return action()
    except CheckpointError:
        raise
    except Exception as e:  # each back end raises its own types (botocore, aiohttp, OSError)
        raise StorageError(f"{doing} {remote.url} failed: {type(e).__name__}: {e}", path=remote.url) from e


def find_committed(url: str | os.PathLike[str],
                   storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The URLs of the committed checkpoints below ``url`` (outermost only), sorted."""
    remote = Remote(url, storage_options)
    dirs = sorted(rel[: -len(MANIFEST)].rstrip("/") for rel in remote.listing()
                  if rel == MANIFEST or rel.endswith("/" + MANIFEST))
    outer: list[str] = []
    for d in dirs:
        if not any(d == o or d.startswith(o + "/") or o == "" for o in outer):
            outer.append(d)
    return [f"{remote.url}/{d}" if d else remote.url for d in outer]


def relocated(value: Any, local: Path, url: str) -> Any:
    """``value`` (a report: strings, lists, dicts, paths) with the staged copy's path replaced by
    the URL it came from."""
    here = str(local)
    if isinstance(value, (str, Path)):
        text = str(value)
        return text.replace(here, url) if here in text else value
    if isinstance(value, list):
        return [relocated(v, local, url) for v in value]
    if isinstance(value, dict):
        return {k: relocated(v, local, url) for k, v in value.items()}
    return value


def check_replaceable(remote: Remote, names: Mapping[str, int]) -> None:
    """Refuse to write over or delete what ``remote`` holds (``names``, its listing) unless it is
    nothing, an upload that did not finish, or an amber checkpoint holding nothing that its
    manifest or its policies' manifests do not list (:func:`amber.atomic.check_replaceable`
    at a URL; only the manifests are downloaded).

    :raises CheckpointWriteError: it holds something that is not ours (named).
    :raises StorageError: the storage failed.
    """
    if MANIFEST not in names:
        if names and UPLOAD_MARKER not in names:
            raise CheckpointWriteError(
                f"{remote.url} holds files that are not an amber checkpoint ({len(names)}, e.g. "
                f"{sorted(names)[0]}); refusing to write a checkpoint over them", path=remote.url)
        return
    with tempfile.TemporaryDirectory(prefix="amber-download-") as tmp:
        local = Path(tmp) / "checkpoint"
        try:
            with naming(local, remote.url):
                _download(remote, local, None, False, True)
                listed = _listed(local, "")
        except StorageError:
            raise
        except CheckpointError as e:
            raise CheckpointWriteError(
                f"{remote.url} is neither empty nor an amber checkpoint ({e.message}); not overwriting it "
                "(choose an empty or new directory)", path=remote.url) from e
    extra = sorted(set(names) - listed - {UPLOAD_MARKER})
    if extra:
        shown = ", ".join(repr(n) for n in extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise CheckpointWriteError(
            f"{remote.url} is an amber checkpoint holding files that its checkpoint.json does not list "
            f"({shown}); not overwriting it (move them, or choose an empty or new directory)",
            path=remote.url)


def _listed(local: Path, inner: str) -> set[str]:
    """The paths the manifest at ``local/inner`` lists (itself and those below, as downloaded)."""
    from amber.layout import read_manifest

    prefix = f"{inner}/" if inner else ""
    out = {prefix + MANIFEST}
    for rel in read_manifest(local / inner if inner else local, root=local).files:
        if rel.endswith(f"/{MANIFEST}"):
            out |= _listed(local, prefix + rel[: -len(MANIFEST) - 1])
        else:
            out.add(prefix + rel)
    return out


def open_remote(path: str | os.PathLike[str], mode: str = "rb",
                storage_options: Mapping[str, Any] | None = None) -> Any:
    """Open one file at a URL (a run's progress.csv, say) with fsspec."""
    remote = Remote(path, storage_options)
    return transfer(remote, "opening", lambda: remote.fs.open(remote.root, mode))
