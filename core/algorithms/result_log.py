"""Learning curves on disk: each ``train()`` result as a row of ``progress.csv`` and a line of
``result.json`` in the algorithm's log dir (RLlib's CSV and JSON loggers).

``progress.csv`` has a header once, then a row per iteration: :data:`PROGRESS_FIELDS`, one
``policy_return_mean/<policy id>`` column per policy of a multi-agent algorithm, and
``checkpoint``: the checkpoint saved right after that iteration, filled in when the save
commits (empty otherwise), also when later rows were written meanwhile (a ``save(block=False)``
committing during the next ``train()``): that row and those after it are rewritten in place,
in one write, under the logger's lock.
A file that exists is appended to, with its own header's columns.
``result.json`` holds each whole result as one JSON object per line (NaN and infinities as
null). Both are flushed as they are written. :class:`ResultLogger` writes them; the algorithm
and ``amber train`` use the same one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.errors import warn

__all__ = ["CHECKPOINT_FIELD", "PROGRESS_CSV", "PROGRESS_FIELDS", "RESULT_JSON", "ResultLogger",
           "copy_logs", "copy_logs_to", "flat_scalars", "last_iteration", "resume_logs"]

PROGRESS_CSV = "progress.csv"
RESULT_JSON = "result.json"
PROGRESS_FIELDS = ("training_iteration", "num_env_steps_sampled_lifetime", "episode_return_mean",
                   "time_this_iter_s", "time_total_s")
CHECKPOINT_FIELD = "checkpoint"


def flat_scalars(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A result's scalars (numbers, bools, strings), nested mappings flattened to ``a/b`` keys.

    :param result: a ``train()`` result.
    :param prefix: prepended to every key.
    """
    out: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, name + "/"))
        elif isinstance(value, (bool, str)):
            out[name] = value
        elif isinstance(value, numbers.Integral):
            out[name] = int(value)
        elif isinstance(value, numbers.Real):
            out[name] = float(value)
    return out


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats become None, unknown objects their str."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return str(value)


def _csv_line(fields: Iterable[str], row: Mapping[str, Any] | None = None) -> bytes:
    """One CSV line: the header (no ``row``) or ``row`` in the columns ``fields``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(fields), extrasaction="ignore")
    if row is None:
        writer.writeheader()
    else:
        writer.writerow(row)
    return text.getvalue().encode()


@dataclass
class _Written:
    """The rows this logger wrote in its current ``progress.csv``: each iteration's latest row's
    offsets, so that its checkpoint can be filled in later; ``size``: the file's size after them."""

    path: Path
    fields: list[str]
    rows: dict[int, tuple[int, int]]
    size: int


class ResultLogger:
    """Appends results to ``progress.csv`` and ``result.json`` in a directory (thread-safe).

    :param directory: gives the directory at each write (e.g. the algorithm's log dir,
        made on first use).
    """

    def __init__(self, directory: Callable[[], str | Path]) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._written: _Written | None = None

    def log(self, result: Mapping[str, Any], policy_ids: Iterable[str] = ()) -> None:
        """Append one result.

        :param result: a ``train()`` result (``training_iteration`` and the scalars to write).
        :param policy_ids: the policies whose ``policy_return_mean`` gets a column (if the file is new).
        """
        root = Path(self._directory())
        flat = flat_scalars(result)
        with self._lock:
            with open(root / RESULT_JSON, "a") as f:
                f.write(json.dumps(_jsonable(result)) + "\n")
            path = root / PROGRESS_CSV
            with open(path, "ab") as f:
                start = f.tell()
                new = start == 0
                if new:
                    fields = [*PROGRESS_FIELDS, *(f"policy_return_mean/{p}" for p in policy_ids),
                              CHECKPOINT_FIELD]
                    f.write(_csv_line(fields))
                    start = f.tell()
                else:
                    fields = self._header(path, start)
                f.write(_csv_line(fields, {k: flat.get(k, "") for k in fields}))
                end = f.tell()
            w = self._written
            if new or w is None or w.path != path or w.size != start:  # a new file, or another's rows
                w = self._written = _Written(path, fields, {}, start)
            w.rows[int(result["training_iteration"])] = (start, end)
            w.size = end

    def _header(self, path: Path, size: int) -> list[str]:
        """The columns of the existing ``path`` (``size`` bytes long)."""
        w = self._written
        if w is not None and w.path == path and w.size == size:
            return w.fields
        with open(path, newline="") as f:
            return next(csv.reader(f), [])

    def checkpoint_written(self, checkpoint_path: str | Path, iteration: int) -> None:
        """Fill in the ``checkpoint`` column of ``iteration``'s row (its latest), wherever it is
        in the file, if this logger wrote it and nothing else wrote to the file since.

        :param checkpoint_path: the checkpoint committed.
        :param iteration: the iteration it was saved at.
        """
        with self._lock:
            w = self._written
            if w is None or iteration not in w.rows or CHECKPOINT_FIELD not in w.fields:
                return
            start, end = w.rows[iteration]
            try:
                with open(w.path, "r+b", buffering=0) as f:
                    if os.fstat(f.fileno()).st_size != w.size:  # replaced, or written to by another
                        return
                    tail = os.pread(f.fileno(), w.size - start, start)  # this row and those after it
                    old = next(csv.reader(io.StringIO(tail[: end - start].decode(), newline="")), [])
                    row = {**dict(zip(w.fields, old, strict=False)), CHECKPOINT_FIELD: str(checkpoint_path)}
                    line = _csv_line(w.fields, row)
                    os.pwrite(f.fileno(), line + tail[end - start:], start)  # one write: never half done
                    shift = len(line) - (end - start)
                    if shift < 0:
                        os.ftruncate(f.fileno(), w.size + shift)
            except OSError:
                return
            w.rows = {i: (a, b) if a < start else (a + shift, b + shift) for i, (a, b) in w.rows.items()}
            w.rows[iteration] = (start, end + shift)
            w.size += shift


def copy_logs(logdir: str | Path, checkpoint: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Copy a run's ``progress.csv`` and ``result.json`` beside its checkpoint committed at the
    URL ``checkpoint``, so that the run can be followed and resumed from there. A failure
    only warns: the checkpoint is saved."""
    from amber.errors import CheckpointError
    from amber.storage import Remote

    try:
        _upload(Remote(checkpoint.rstrip("/").rsplit("/", 1)[0], storage_options), Path(logdir))
    except CheckpointError as e:
        warn(f"{checkpoint} was saved, but not the learning curves beside it: {e}")


def _upload(remote: Any, logdir: Path) -> None:
    """Put ``logdir``'s ``progress.csv`` and ``result.json`` (those there) at the URL ``remote``."""
    from amber.storage import transfer

    for name in (PROGRESS_CSV, RESULT_JSON):
        local = logdir / name
        if local.exists():
            transfer(remote, "uploading the logs to", lambda local=local, name=name:
                     remote.fs.put_file(str(local), remote.key(name)))


def copy_logs_to(logdir: str | Path, directory: str | Path) -> None:
    """Copy a run's ``progress.csv`` and ``result.json`` into the local ``directory`` (a run's
    checkpoints kept apart from its log directory: ``amber train --storage DIR``), each replaced
    whole (written beside, then renamed). A failure only warns: the checkpoint is saved."""
    import shutil

    try:
        for name in (PROGRESS_CSV, RESULT_JSON):
            src, dst = Path(logdir) / name, Path(directory) / name
            if src.exists():
                tmp = dst.with_name(f".{name}.amber-tmp-{os.getpid()}")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
    except OSError as e:
        warn(f"{directory} holds the checkpoints, but not the learning curves beside them: {e}")


def last_iteration(path: str | Path, kind: str | None = None) -> int | None:
    """The ``training_iteration`` of the last result in the file at ``path``: a ``kind``
    (default: its name) of :data:`PROGRESS_CSV` or :data:`RESULT_JSON` (None: missing, unreadable
    or empty)."""
    path = Path(path)
    try:
        text = path.read_text()
        if (kind or path.name) == RESULT_JSON:
            rows: list[Any] = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return None
    for row in reversed(rows):
        try:
            return int(row["training_iteration"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def resume_logs(url: str, logdir: str | Path, iteration: int,
                storage_options: Mapping[str, Any] | None = None) -> None:
    """Give ``logdir`` the learning curves of the remote run at ``url`` that a run resumed from its
    checkpoint of ``iteration`` appends to. Of each file (``progress.csv``, ``result.json``),
    the copy beside the checkpoints (:func:`copy_logs`) or the local one, whichever holds more
    of the run's iterations up to ``iteration`` (its last one's, at most ``iteration``); the
    remote one on a tie (a machine that trained the run earlier holds a stale copy). A local copy
    that holds more (an upload of the curves failed, only warned) is kept and uploaded again.

    :raises StorageError: the storage failed (the local curves are left as they were).
    """
    from amber.errors import CheckpointError
    from amber.storage import Remote, transfer

    remote, logdir = Remote(url, storage_options), Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    present, stale = remote.listing(), False
    fetched: dict[str, Path] = {}
    try:
        for name in (PROGRESS_CSV, RESULT_JSON):
            if name in present:  # fetched beside, so that a failure leaves the local one whole
                fetched[name] = logdir / f".{name}.amber-remote-{os.getpid()}"
                transfer(remote, "downloading the logs of", lambda name=name:
                         remote.fs.get_file(remote.key(name), str(fetched[name])))
        for name in (PROGRESS_CSV, RESULT_JSON):
            local, theirs = logdir / name, fetched.get(name)
            if _held(local, name, iteration) > _held(theirs, name, iteration):
                stale = True
            elif theirs is not None:
                os.replace(fetched.pop(name), local)
            else:
                local.unlink(missing_ok=True)
    finally:
        for tmp in fetched.values():
            tmp.unlink(missing_ok=True)
    if stale:
        try:
            _upload(remote, logdir)
        except CheckpointError as e:
            warn(f"{url}: the local learning curves, which hold more of the run, were kept, "
                 f"but not copied beside its checkpoints: {e}")


def _held(path: Path | None, kind: str, iteration: int) -> int:
    """How far the curves at ``path`` go in a run resumed at ``iteration`` (-1: none)."""
    last = None if path is None else last_iteration(path, kind)
    return -1 if last is None else min(last, iteration)
