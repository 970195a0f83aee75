"""Retention: keep the last or the best checkpoints of a run (Ray Tune's ``num_to_keep``).

A :class:`CheckpointManager` saves an algorithm into ``<root>/checkpoint_<iteration:06d>``
and records in that checkpoint's manifest metadata that it is managed
(``amber.managed``), its iteration (``amber.iteration``) and its score
(``amber.score``, the metric named by ``score_attribute``). Once the new
checkpoint is committed, and never before, it keeps the ``num_to_keep`` best
by score (the newest by iteration without a score attribute) and always the
one it has just saved (the newest, even when older runs left higher
iterations under ``root``), and deletes the others. Without ``num_to_keep``
no checkpoint is read or deleted after a save.

Only a managed amber checkpoint directly under ``root`` is ever deleted: a
``checkpoint_<iteration:06d>`` directory (a copy under another name never is one) whose
``checkpoint.json`` reads as an amber manifest carrying the marker and that iteration,
holding nothing that manifest (or its policies' manifests) does not list; one holding
more is left alone. A deletion first renames the directory to
``.<name>.amber-del-<pid>-<8 hex digits>``, a temporary name that readers ignore
(:func:`amber.atomic.is_temporary`), then removes it; what a
crash leaves of one is removed by the next save under that root. In remote storage, a
deletion puts the upload marker up, then removes the manifest, then the rest
(:func:`amber.storage_upload.remove`); what a crash leaves of it is removed by the next save
that applies retention (``num_to_keep``) under that root.

The manager receives the algorithm object; it imports no framework.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.errors import CheckpointError, warn

if TYPE_CHECKING:
    from amber.algorithms.algorithm_checkpoints import SaveResult

__all__ = ["ITERATION_KEY", "MANAGED_KEY", "SCORE_KEY", "CheckpointManager", "ManagedCheckpoint",
           "carried_metadata",
           "check_retention"]

MANAGED_KEY = "amber.managed"
ITERATION_KEY = "amber.iteration"
SCORE_KEY = "amber.score"
_ORDERS = ("max", "min")
_DELETING_RE = re.compile(r"^\.checkpoint_.+\.amber-del-(?P<pid>\d+)-[0-9a-f]{8}$")
#: The name :meth:`CheckpointManager.path_for` gives a checkpoint: ``checkpoint_<iteration:06d>``.
_OWN_NAME_RE = re.compile(r"^checkpoint_(?P<iteration>\d{6,})$")


def check_retention(num_to_keep: Any, score_order: Any) -> None:
    """Check retention settings.

    :raises ValueError: ``num_to_keep`` is not None or an int >= 1, or ``score_order``
        is not "max" or "min".
    """
    if num_to_keep is not None and (isinstance(num_to_keep, bool) or not isinstance(num_to_keep, int)
                                    or num_to_keep < 1):
        raise ValueError(f"num_to_keep must be None or an int >= 1, not {num_to_keep!r}")
    if score_order not in _ORDERS:
        raise ValueError(f"checkpoint_score_order must be 'max' or 'min', not {score_order!r}")


@dataclass(frozen=True)
class ManagedCheckpoint:
    """A checkpoint a :class:`CheckpointManager` wrote: where, which iteration, its score (or None)."""

    path: Path  # a str (the URL) for a checkpoint in remote storage
    iteration: int
    score: float | None


def _score_of(metrics: Mapping[str, Any] | None, attribute: str) -> float | None:
    """The metric ``attribute`` (``a/b`` reaches into nested dicts) as a finite float, or None.
    Any real number counts (a numpy ``float32`` or ``int64`` too), a bool does not."""
    value: Any = metrics
    if metrics is not None and attribute in metrics:
        value = metrics[attribute]
    else:
        for part in attribute.split("/"):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's bool_ is not Real
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _has_metric(metrics: Mapping[str, Any], attribute: str) -> bool:
    """Whether ``attribute`` (``a/b`` reaching into nested dicts) names something in ``metrics``."""
    if attribute in metrics:
        return True
    value: Any = metrics
    for part in attribute.split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def _own_name(name: str) -> bool:
    """Whether ``name`` is one a manager gives a checkpoint (``checkpoint_000012``): a copy beside
    it (``checkpoint_000012-copy``) is not the manager's, whatever its metadata says."""
    return _OWN_NAME_RE.match(name) is not None


def carried_metadata(metadata: Mapping[str, str], src: Path | str, dst: Path | str) -> dict[str, str]:
    """The manifest metadata a rewritten copy of a checkpoint keeps: a copy at another path is no
    run's managed checkpoint (:data:`MANAGED_KEY` dropped: a run's retention would delete it); in
    place it stays one."""
    if os.fspath(src).rstrip("/") == os.fspath(dst).rstrip("/"):
        return dict(metadata)
    return {k: v for k, v in metadata.items() if k != MANAGED_KEY}


def _managed(path: Path | str, meta: Mapping[str, Any]) -> ManagedCheckpoint | None:
    """The managed checkpoint a manifest's metadata describes, or None if it is not one: the
    marker, and the iteration its name (``checkpoint_<iteration:06d>``) gives (a copy renamed to
    another iteration's name is not the manager's)."""
    if meta.get(MANAGED_KEY) != "1":
        return None
    try:
        iteration = int(meta.get(ITERATION_KEY, ""))
        score = float(meta[SCORE_KEY]) if SCORE_KEY in meta else None
    except ValueError:
        return None
    named = _OWN_NAME_RE.match(os.fspath(path).rstrip("/").rsplit("/", 1)[-1])
    if named is None or int(named["iteration"]) != iteration:
        return None
    return ManagedCheckpoint(path, iteration, score if score is None or math.isfinite(score) else None)  # type: ignore[arg-type]


def _among(path: Path | str, paths: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether ``path`` is one of ``paths`` (a local path by where it leads, a URL as written)."""
    def key(p: str | os.PathLike[str]) -> str:
        return os.fspath(p).rstrip("/") if isinstance(path, str) else os.path.realpath(p)

    return any(key(p) == key(path) for p in paths)


class CheckpointManager:
    """Saves an algorithm's checkpoints under one directory and keeps the last or the best.

    :param root: the directory holding ``checkpoint_<iteration:06d>`` checkpoints: a local path
        or an fsspec URL. In remote storage a checkpoint counts once its manifest, uploaded
        last, is there; one is deleted manifest first (:mod:`amber.storage`).
    :param num_to_keep: how many to keep (None: all, and no checkpoint is read after a save); the
        checkpoint just saved is always kept on top of them.
    :param score_attribute: the metric that ranks checkpoints (e.g. ``"episode_return_mean"``);
        None: the newest are kept.
    :param score_order: ``"max"``: higher scores are better; ``"min"``: lower.
    :param storage_options: for a URL, passed to its fsspec file system.
    :raises ValueError: invalid ``num_to_keep``, ``score_attribute`` or ``score_order``.

    Example::

        manager = amber.CheckpointManager("runs/a", num_to_keep=2, score_attribute="episode_return_mean")
        algo.train()
        manager.save(algo)
        best = manager.best()
    """

    def __init__(self, root: str | os.PathLike[str], num_to_keep: int | None = None,
                 score_attribute: str | None = None, score_order: str = "max", *,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        from amber.storage import is_remote, local_path

        check_retention(num_to_keep, score_order)
        if score_attribute is not None and not isinstance(score_attribute, str):
            raise ValueError(f"score_attribute must be a metric's name (a str) or None, "
                             f"not {score_attribute!r}")
        self.root: Path | str = os.fspath(root).rstrip("/") if is_remote(root) else local_path(root)
        self.storage_options = storage_options
        self.num_to_keep = num_to_keep
        self.score_attribute = score_attribute
        self.score_order = score_order
        self._warned_missing = False

    def path_for(self, iteration: int) -> Path:
        """The directory (or URL) of the checkpoint of this iteration."""
        from amber.storage import join

        return join(self.root, f"checkpoint_{iteration:06d}")  # type: ignore[return-value]

    def metadata_for(self, algo: Any, metrics: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The manifest metadata of a managed checkpoint of ``algo`` now.

        :param metrics: where the score is read (default: ``algo``'s last ``train()`` result);
            a missing or non-finite metric records no score.
        """
        out = {MANAGED_KEY: "1", ITERATION_KEY: str(int(algo.iteration))}
        if self.score_attribute is not None:
            source = metrics if metrics is not None else getattr(algo, "_last_result", None)
            score = _score_of(source, self.score_attribute)
            if score is not None:
                out[SCORE_KEY] = repr(score)
            elif isinstance(source, Mapping) and not _has_metric(source, self.score_attribute):
                self._warn_missing(source)
        return out

    def _warn_missing(self, metrics: Mapping[str, Any]) -> None:
        """Say once that the score attribute is not in the results (a typo, or RLlib's old name):
        "keep the best" then silently keeps the newest."""
        if not self._warned_missing:
            self._warned_missing = True
            close = difflib.get_close_matches(self.score_attribute or "", list(map(str, metrics)), n=3)
            warn(f"{self.root}: the score attribute {self.score_attribute!r} is not in the train() "
                 "result, so this checkpoint has no score and retention keeps the newest"
                 + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))

    def save(self, algo: Any, *, format: str | None = None,
             metrics: Mapping[str, Any] | None = None) -> SaveResult:
        """Save ``algo`` into ``root/checkpoint_<iteration:06d>`` (synchronously), then apply retention.

        :param format: a registered format (default: the algorithm's).
        :param metrics: where the score is read (default: the algorithm's last ``train()`` result).
        :return: the algorithm's :class:`~amber.algorithms.algorithm_checkpoints.SaveResult`.
        :raises CheckpointError: the save failed (nothing is deleted then).
        """
        path = self.path_for(int(algo.iteration))
        result: SaveResult = algo.save(path, format=format, _metadata=self.metadata_for(algo, metrics),
                                       storage_options=self.storage_options)
        self.prune(saved=path, keep=getattr(algo, "_sources_to_keep", lambda _: [])(path))  # (in part from)
        return result

    def checkpoints(self) -> list[ManagedCheckpoint]:
        """The managed checkpoints under :attr:`root`, oldest first.

        Only what this manager wrote counts: a ``checkpoint_<iteration:06d>`` directory whose
        manifest carries the marker and that iteration. Anything else is skipped: temporary
        directories, links, files, directories that are not amber checkpoints, amber checkpoints
        without the marker, and copies under another name (``checkpoint_000001-copy``).
        """
        from amber.atomic import is_temporary
        from amber.layout import read_manifest

        if isinstance(self.root, str):
            return self._remote_checkpoints()
        found = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return []
        for entry in entries:
            if (not _own_name(entry.name) or is_temporary(entry.name)
                    or not entry.is_dir(follow_symlinks=False)):
                continue
            try:
                meta = read_manifest(Path(entry.path)).raw.get("metadata", {})
            except CheckpointError:
                continue
            if (managed := _managed(Path(entry.path), meta)) is not None:
                found.append(managed)
        return sorted(found, key=lambda c: (c.iteration, str(c.path)))

    def _remote_checkpoints(self) -> list[ManagedCheckpoint]:
        """:meth:`checkpoints` in remote storage: each prefix's manifest read, uncommitted ones skipped."""
        from amber.storage import Remote, join, reading

        found = []
        for name in Remote(self.root, self.storage_options).children():
            if not _own_name(name):
                continue
            url = str(join(self.root, name))
            try:
                with reading(url, self.storage_options, policy_ids=(), manifests_only=True) as local:
                    from amber.layout import read_manifest

                    meta = read_manifest(local).raw.get("metadata", {})
            except CheckpointError:
                continue
            if (managed := _managed(url, meta)) is not None:
                found.append(managed)
        return sorted(found, key=lambda c: (c.iteration, str(c.path)))

    def latest(self) -> ManagedCheckpoint | None:
        """The newest managed checkpoint (highest iteration), or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def best(self) -> ManagedCheckpoint | None:
        """The managed checkpoint with the best score (the newer on a tie), or None when none has one."""
        scored = [c for c in self.checkpoints() if c.score is not None]
        return max(scored, key=self._rank) if scored else None

    def _rank(self, c: ManagedCheckpoint) -> tuple[int, float, int]:
        """Higher is better: scored before unscored, then the score in order, then newer."""
        if c.score is None:
            return (0, 0.0, c.iteration)
        return (1, c.score if self.score_order == "max" else -c.score, c.iteration)

    def to_keep(self, found: list[ManagedCheckpoint], *,
                saved: Path | str | None = None) -> list[ManagedCheckpoint]:
        """Of ``found`` (oldest first), those retention keeps: the best ``num_to_keep`` and the newest.

        :param saved: the checkpoint just saved: it is the newest, whatever its iteration
            (default: the highest iteration).
        """
        if self.num_to_keep is None or not found:
            return list(found)
        by_score = self.score_attribute is not None
        ranked = sorted(found, key=self._rank if by_score else (lambda c: c.iteration), reverse=True)
        newest = found[-1].path if saved is None else self._same_kind(saved)
        keep = {c.path for c in ranked[: self.num_to_keep]} | {newest}
        return [c for c in found if c.path in keep]

    def _same_kind(self, path: Path | str) -> Path | str:
        """``path`` as :meth:`checkpoints` names it: a URL as a str, a local path as a Path."""
        return os.fspath(path).rstrip("/") if isinstance(self.root, str) else Path(path)

    def prune(self, saved: Path | str | None = None,
              keep: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
        """Apply retention now: remove leftovers of interrupted deletions, then delete what
        :meth:`to_keep` does not keep. Called by :meth:`save` after each commit; without
        ``num_to_keep`` no checkpoint is read (all are kept; at a URL, nothing is listed).

        :param saved: the checkpoint just saved, always kept (see :meth:`to_keep`).
        :param keep: checkpoints never deleted: the one an algorithm saved here was restored from in
            part (``from_checkpoint(policy_ids=...)``), while it alone holds the policies left out.
        :return: the checkpoints deleted.
        """
        if self.num_to_keep is None:
            if not isinstance(self.root, str):  # (at a URL, nothing else under root is read)
                self._remove_leftovers()
            return []
        self._remove_leftovers()
        found = self.checkpoints()
        kept = {c.path for c in self.to_keep(found, saved=saved)}
        kept |= {c.path for c in found if _among(c.path, keep)}
        deleted = []
        for c in found:
            if c.path not in kept and self._delete(c.path):
                deleted.append(c.path)
        return deleted

    def _delete(self, path: Path | str) -> bool:
        """Rename a managed checkpoint to a temporary name, then remove it; False if left alone.
        In remote storage: its manifest first, then the rest."""
        from amber.atomic import check_replaceable
        from amber.durable import fsync_dir

        if isinstance(path, str):
            from amber.storage_upload import remove

            try:
                remove(path, self.storage_options)
            except CheckpointError:
                return False
            return True

        try:
            check_replaceable(path)  # only a checkpoint holding nothing its manifest does not list
        except CheckpointError:
            return False
        doomed = path.with_name(f".{path.name}.amber-del-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, doomed)
            fsync_dir(path.parent)
        except OSError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def _remove_leftovers(self) -> None:
        """Remove what crashed deletions left under :attr:`root` (their process no longer runs)."""
        from amber.atomic import pid_alive

        if isinstance(self.root, str):  # (an unfinished upload is replaced by the next save there)
            from amber.storage_upload import remove_leftovers

            remove_leftovers(self.root, self.storage_options)
            return
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for entry in entries:
            m = _DELETING_RE.match(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and not pid_alive(int(m["pid"])):
                shutil.rmtree(entry.path, ignore_errors=True)
