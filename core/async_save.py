"""Saving in the background: the snapshot in the caller's thread, the write in another.

``amber.save(..., block=False)`` and ``algo.save(..., block=False)`` go
through :func:`save_in_background`. In the caller's thread it waits for the
save in flight, if any, and has the saver take its snapshot: a copy of the
state that nothing done afterwards can change (:func:`amber.snapshots.snapshot`).
The weights and optimizer moments of an algorithm's policies, most of its
bytes, are copied first thing in the background thread instead; until they
are, amber's in-place updates of them wait (:func:`wait_for_snapshot`, see
:mod:`amber.snapshots`). The background thread then runs the usual write path
(:func:`amber.checkpoint_write.write_checkpoint`: encoding, digests, fsync,
atomic commit), so the checkpoint is the one a synchronous save would have
written at that moment. The caller gets a :class:`SaveHandle`.

The process has one background writer: one save in flight at a time, in
the order they were asked for. A synchronous save, ``algo.stop()`` and
:func:`wait_for_saves` wait for it first, and so does interpreter exit, as
soon as the main thread ends (a kill or ``os._exit`` does not wait: the
atomic write leaves the previous checkpoint at that path intact).

No error is lost. A failed background save raises its exception (the one a
synchronous save would have raised, naming the path) from
:meth:`SaveHandle.result`. If nobody asked for it (``result()`` or
``exception()``) by the time of the next save, synchronous or not,
``algo.stop()`` or :func:`wait_for_saves`, that call raises it, once, and the
new save is not started. So does a failed save that a background write
started itself (written at once, in the writer's thread: an ``on_checkpoint``
callback's ``save(block=False)``). At interpreter exit every error nobody
asked for is printed on stderr, with the checkpoint's path; the exit status
is not changed (Python ignores what exit hooks raise, ``SystemExit`` too):
a script that must fail with its save calls ``result()`` or
:func:`wait_for_saves` before it ends.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import concurrent.futures.thread  # its exit hook is registered before ours, so runs after ours
import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from amber.snapshots import _BUFFERS, deferring, forget_pending, hold, snapshot, wait_for_snapshot

__all__ = ["SaveHandle", "save_in_background", "snapshot", "wait_before_reading", "wait_for_saves",
           "wait_for_snapshot"]

T = TypeVar("T")


class SaveHandle(concurrent.futures.Future[T], Generic[T]):
    """A save running in the background: a :class:`concurrent.futures.Future` of its result.

    ``result()`` is what the synchronous save returns (a ``SaveResult`` for
    ``algo.save``, the checkpoint's path for ``amber.save``) and raises what
    it would have raised. A save cannot be cancelled: :meth:`cancel` returns False.

    :ivar path: the checkpoint directory being written.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._retrieved = False
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> T:
        """Wait for the save and return its result.

        :param timeout: seconds to wait at most (None: until it ends).
        :raises TimeoutError: the save is still running after ``timeout`` seconds
            (``concurrent.futures.TimeoutError``).
        :raises CheckpointError: the save failed (the same error as a synchronous save).
        """
        try:
            return super().result(timeout)
        except BaseException as e:
            if e is self._error:  # not a timeout or an interrupt of the wait: the save's own error
                self._retrieved = True
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the save and return its error, or None if it succeeded (the error is then
        taken as seen: no later call raises it)."""
        error = super().exception(timeout)  # raises TimeoutError (error not seen) if still running
        self._retrieved = True
        return error

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the save to end, without raising its error (:meth:`result` does).

        :param timeout: seconds to wait at most (None: until it ends).
        :return: whether it has ended.
        """
        concurrent.futures.wait([self], timeout=timeout)
        return self.done()

    def unretrieved_error(self) -> BaseException | None:
        """The error of a finished save that nobody has asked for yet (None: none, or running)."""
        return self._error if self.done() and not self._retrieved else None

    def __repr__(self) -> str:
        return f"<SaveHandle {str(self.path)!r} {'done' if self.done() else 'running'}>"


class _Writer:
    """The process's background writer: one thread, started on the first background save and
    fed one save at a time; the last save handed to it; a lock that keeps one in flight.

    The thread waits for work rather than being started for each save: starting a thread
    waits for it to run, which can hold the caller up for a whole GIL switch interval.
    It is a daemon, so that it never keeps the process alive; exit waits for its save.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: SaveHandle[Any] | None = None
        self.failed: list[SaveHandle[Any]] = []  # failed saves, whose error may not have been asked for
        self.local = threading.local()
        self.hooked = False
        self.jobs: queue.SimpleQueue[tuple[SaveHandle[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self, handle: SaveHandle[T], job: Callable[[], T]) -> None:
        """Hand a save to the thread (started if it is not running)."""
        self.last = handle
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=_serve, args=(self.jobs,), name="amber-save", daemon=True)
            self.thread.start()
        self.jobs.put((handle, job))

    def settle(self) -> None:
        """Wait for the save in flight; raise the first error nobody asked for (each once)."""
        if self.last is not None:
            self.last.wait()
        for handle in self.unseen():
            error, handle._retrieved = handle._error, True
            if error is not None:
                raise error

    def unseen(self) -> list[SaveHandle[Any]]:
        """The failed saves, in order, whose error nobody has asked for (forgetting the others)."""
        self.failed = [h for h in self.failed if not h.done() or h.unretrieved_error() is not None]
        return [h for h in self.failed if h.done()]

    def in_writer(self) -> bool:
        """Whether this is the writer's thread (a save started from a save being written)."""
        return getattr(self.local, "writing", False)

    def reset(self) -> None:
        """Forget the save in flight (in a forked child, whose copy of the writing thread does not run)."""
        forget_pending()
        self.lock = threading.Lock()
        self.last = None
        self.failed = []
        self.jobs = queue.SimpleQueue()
        self.thread = None


_WRITER = _Writer()


def wait_for_saves() -> None:
    """Wait until the background save in flight (if any) has ended.

    :raises CheckpointError: that save failed and nobody has asked for its error
        (:meth:`SaveHandle.result`): it is raised here, once.
    """
    if _WRITER.in_writer():  # a save being written never waits for itself
        return
    with _WRITER.lock:
        _WRITER.settle()


def wait_before_reading(path: str | os.PathLike[str]) -> None:
    """Before a read of ``path`` in this process: wait for the background save in flight to it, or
    to a checkpoint holding it (``ALGO/policies/ID`` while ``ALGO`` is written), so the read gets
    the checkpoint just saved, never the one it replaces (or nothing, at a new path). A save that
    failed is warned of (its error stays the handle's: raised as :func:`wait_for_saves` says) and
    the read gets what the path holds. Costs one attribute check when no save is in flight.
    """
    handle = _WRITER.last
    if handle is None or handle.done() or _WRITER.in_writer():
        return
    saving, reading = _key(handle.path), _key(path)
    if reading != saving and not reading.startswith(saving.rstrip("/") + "/"):
        return
    handle.wait()
    error = handle._error
    if error is not None:
        from amber.errors import warn

        warn(f"the background save to {handle.path} failed ({type(error).__name__}: {error}); "
             f"reading what {path} held before it")


def _key(path: str | os.PathLike[str]) -> str:
    """A path as reads and saves compare it: a URL as written (less a trailing ``/``), a local path
    (or ``file://`` URL) absolute, with its links resolved."""
    from amber.storage import is_remote, local_path

    if is_remote(path):
        return os.fspath(path).rstrip("/")
    return os.path.realpath(local_path(path))


def save_in_background(capture: Callable[[], Callable[[], T]], path: str | os.PathLike[str]) -> SaveHandle[T]:
    """Take a save's snapshot now and write it in the background.

    In the caller's thread: wait for the save in flight (raising its error if
    nobody asked for it: then nothing of this save is done), then call
    ``capture()``, which snapshots the state and returns the function that
    writes it. That function runs in a background thread; its return value or
    exception becomes the handle's.

    From the writer's own thread (a save started by code a background save
    runs), the save is written at once, in that thread: it cannot wait for itself.

    :param capture: takes the snapshot; its errors are raised here, in the caller's thread.
    :param path: the checkpoint directory, for the handle and messages.
    :return: the handle of the save.
    """
    _install_hooks()
    if _WRITER.in_writer():
        inline: SaveHandle[T] = SaveHandle(_where(path))
        inline.set_running_or_notify_cancel()
        _run(inline, capture())
        return inline
    with _WRITER.lock:
        _WRITER.settle()
        taken = _BUFFERS.collect()
        try:
            with deferring(path) as later:
                write = capture()
        finally:
            _BUFFERS.local.taken = None

        def job() -> T:
            try:
                later.run()  # first: until it is done, in-place changes of the state wait
                return write()
            finally:  # written: the snapshot's arrays are free for the next one
                _BUFFERS.give_back(taken)

        handle: SaveHandle[T] = SaveHandle(_where(path))
        handle.set_running_or_notify_cancel()  # running from now on: it cannot be cancelled
        _WRITER.start(handle, job)
        hold(later)
    return handle


def _serve(jobs: queue.SimpleQueue[tuple[SaveHandle[Any], Callable[[], Any]]]) -> None:
    """The writer's thread: run each save handed to it, in order."""
    _WRITER.local.writing = True
    while True:
        handle, job = jobs.get()
        _run(handle, job)
        del handle, job  # the snapshot is freed now, not when the next save comes


def _run(handle: SaveHandle[T], job: Callable[[], T]) -> None:
    """Run a save's write and settle its handle."""
    try:
        result = job()
    except BaseException as e:  # noqa: BLE001 - every error goes to the handle, none is lost
        traceback.clear_frames(e.__traceback__)  # the frames' locals would keep the snapshot alive
        handle._error = e
        _WRITER.failed.append(handle)  # before the handle is done: whoever waits for it sees it
        handle.set_exception(e)
    else:
        handle.set_result(result)


def _install_hooks() -> None:
    """On the first background save: wait for the writer at exit; forget it in a forked child.

    The exit hook is threading's (private, but what :mod:`concurrent.futures` itself uses): it
    runs when the main thread ends, before thread pools refuse work (the commit's fsyncs use
    one) and before ``atexit``; hooks registered later run first.
    """
    if _WRITER.hooked:
        return
    _WRITER.hooked = True
    register = getattr(threading, "_register_atexit", atexit.register)
    try:
        register(_at_exit)
    except RuntimeError:  # the interpreter is shutting down already: atexit still runs
        atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_WRITER.reset)


def _at_exit() -> None:
    """At interpreter exit: wait for the save in flight; print each error nobody asked for.

    Never raises: an exception here would skip the exit hooks that threading runs after it.
    """
    if _WRITER.last is not None:
        _WRITER.last.wait()
    for handle in _WRITER.unseen():
        handle._retrieved = True
        try:
            _report(handle)
        except Exception:  # noqa: BLE001, S110 - stderr is gone: nothing is left to tell
            pass


def _report(handle: SaveHandle[Any]) -> None:
    """Print a failed save's path and error on stderr (at exit, where nothing else could see it)."""
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is None:
        return
    error = handle._error
    if error is None:
        return
    print(f"amber: warning: the background save to {handle.path} failed and its error was never "
          f"retrieved (SaveHandle.result()); that checkpoint was not written: {error}", file=stream)
    traceback.print_exception(type(error), error, error.__traceback__, file=stream)
    stream.flush()


def _where(path: str | os.PathLike[str]) -> Any:
    """A save's path for its handle: a URL as it is (``Path`` would fold its ``//``)."""
    from amber.storage import is_remote

    return os.fspath(path) if is_remote(path) else Path(path)
