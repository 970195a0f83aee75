"""Who trains a run kept in remote storage (``amber train --storage URL``, ``--resume URL``): a
lease object, since a lock file at a URL cannot be locked.

The run's prefix holds :data:`LEASE_FILE` while an ``amber train`` writes to it: a small JSON
object (its pid, host, a token and the time it was last renewed), created only if absent
(a conditional write, where the file system has one: S3 and fsspec's own do), renewed every
:data:`RENEW_S` seconds by a thread and removed at the end. A second ``amber train`` given
the same URL stops at once while the lease is fresh: renewed less than :data:`TTL_S` seconds
ago, by a process that, on this host, still runs. A lease left by a killed process is taken
over at once on its host, after :data:`TTL_S` seconds elsewhere.

No lease is ever written into a committed checkpoint (its manifest would not list it):
:func:`storage_lease` refuses a URL that is, or lies in, one (:func:`remote_place`).

This is not airtight: hosts' clocks must agree within the TTL, a process stalled past the TTL
(suspended, or cut off from the storage) loses its lease while it may still write, and two
processes taking over the same stale lease at the same instant may both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from amber.cli.base import AmberCliError, run_in_checkpoint

__all__ = ["LEASE_FILE", "RENEW_S", "TTL_S", "check_unleased", "remote_place", "storage_lease"]

#: The object in a remote run's prefix naming the ``amber train`` that writes to it.
LEASE_FILE = ".amber-train.lease"
#: How often the holder renews its lease, and how long one that is not renewed stays fresh (seconds).
RENEW_S = 30.0
TTL_S = 120.0


@contextlib.contextmanager
def storage_lease(url: str | None) -> Iterator[None]:
    """Hold the lease of the remote run ``url`` for the block (None: nothing to hold).

    :raises AmberCliError: another ``amber train`` holds a fresh lease there (named), or ``url``
        is, or lies in, a committed checkpoint (nothing is written there).
    :raises StorageError: the storage failed.
    """
    if url is None:
        yield
        return
    from amber.storage import Remote

    if (where := remote_place(url)) is not None:
        raise run_in_checkpoint(url, where, "a location")
    remote = Remote(url)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
    _acquire(remote, mine)
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(remote, mine, done), daemon=True,
                               name="amber-train-lease")
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join(timeout=10)
        _release(remote, mine)


def remote_place(url: str) -> str | None:
    """Where the URL ``url`` stands with respect to checkpoints, for a refusal (as
    :func:`~amber.cli.base.checkpoint_place` for a directory): ``"a checkpoint"`` (a committed
    one), ``"inside the checkpoint <url>"``, or None."""
    from amber.storage import MANIFEST, Remote
    from amber.storage_upload import enclosing_checkpoint

    remote = Remote(url)
    if MANIFEST in remote.children():
        return "a checkpoint"
    outer = enclosing_checkpoint(remote)
    return None if outer is None else f"inside the checkpoint {outer}"


def check_unleased(url: str) -> None:
    """Refuse, as :func:`storage_lease` does, the remote run ``url`` while another ``amber train``
    holds a fresh lease on it; writes nothing.

    :raises AmberCliError: another ``amber train`` holds it (named).
    :raises StorageError: the storage failed.
    """
    from amber.storage import Remote

    held = _read(Remote(url))
    if held is not None and _fresh(held):
        raise _refusal(url, held)


def _read(remote: Any) -> dict[str, Any] | None:
    """The lease at ``remote`` (None: none; ``{}``: a file that is no lease, taken for a stale one)."""
    from amber.storage import transfer

    key = remote.key(LEASE_FILE)
    try:
        raw = transfer(remote, "reading the lease of", lambda: remote.fs.cat_file(key))
    except Exception as e:
        if isinstance(e.__cause__, FileNotFoundError) or isinstance(e, FileNotFoundError):
            return None
        raise
    try:
        lease = json.loads(raw)
    except ValueError:
        return {}
    return lease if isinstance(lease, dict) else {}


def _fresh(lease: dict[str, Any]) -> bool:
    """Whether ``lease`` still stands: renewed within the TTL, by a process that runs (on this host)."""
    from amber.atomic import pid_alive

    try:
        age = time.time() - float(lease.get("time", 0))
        pid = int(lease.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if lease.get("host") == socket.gethostname() and pid > 0 and not pid_alive(pid):
        return False
    return age < TTL_S


def _write(remote: Any, mine: dict[str, Any], *, create: bool) -> bool:
    """Write our lease (``create``: only if there is none); False: there was one."""
    from amber.storage import transfer

    data = json.dumps({**mine, "time": time.time()}).encode()
    key = remote.key(LEASE_FILE)
    if not create:
        transfer(remote, "renewing the lease of", lambda: remote.fs.pipe_file(key, data))
        return True
    try:
        transfer(remote, "taking the lease of", lambda: remote.fs.pipe_file(key, data, mode="create"))
    except Exception as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, FileExistsError):
            return False
        if not isinstance(cause, (TypeError, NotImplementedError, ValueError)):
            raise
        if _read(remote) is not None:  # a file system without conditional writes: look, then write
            return False
        transfer(remote, "taking the lease of", lambda: remote.fs.pipe_file(key, data))
    return True


def _refusal(url: str, lease: dict[str, Any]) -> AmberCliError:
    try:
        age = f", its lease renewed {max(time.time() - float(lease['time']), 0):.0f}s ago"
    except (KeyError, TypeError, ValueError):
        age = ""
    return AmberCliError(
        f"{url} is being trained by another amber train (pid {lease.get('pid', '?')} on "
        f"{lease.get('host', '?')}{age}): wait for it to end, or give another --storage or "
        f"--checkpoint-dir (a killed one's lease, {LEASE_FILE}, lapses {TTL_S:.0f}s after it died)")


def _acquire(remote: Any, mine: dict[str, Any]) -> None:
    """Take the lease, or refuse: a fresh one of another process stands."""
    from amber.storage import transfer

    for _ in range(3):
        if _write(remote, mine, create=True):
            break
        held = _read(remote)
        if held is not None and _fresh(held):
            raise _refusal(remote.url, held)
        if held is not None:  # stale (or not a lease): taken over
            with contextlib.suppress(Exception):
                transfer(remote, "taking the lease of", lambda: remote.fs.rm_file(remote.key(LEASE_FILE)))
    else:
        raise AmberCliError(f"{remote.url}: could not take its lease ({LEASE_FILE}); try again")
    held = _read(remote)
    if held is None or held.get("token") != mine["token"]:  # taken over by another at the same time
        raise _refusal(remote.url, held or {})


def _renew(remote: Any, mine: dict[str, Any], done: threading.Event) -> None:
    """Renew the lease every :data:`RENEW_S` seconds until ``done``; a failure only warns."""
    from amber.errors import warn

    while not done.wait(RENEW_S):
        try:
            held = _read(remote)
            if held is not None and held.get("token") != mine["token"]:
                warn(f"{remote.url}: another amber train took this run's lease ({LEASE_FILE}) "
                     f"(pid {held.get('pid')} on {held.get('host')}); both may now write the run")
                return
            _write(remote, mine, create=False)
        except Exception as e:  # the storage failed: try again at the next renewal
            warn(f"{remote.url}: renewing the run's lease ({LEASE_FILE}) failed: {e}")


def _release(remote: Any, mine: dict[str, Any]) -> None:
    """Remove the lease if it is still ours; a failure only warns (it lapses)."""
    from amber.errors import warn
    from amber.storage import transfer

    try:
        held = _read(remote)
        if held is not None and held.get("token") == mine["token"]:
            transfer(remote, "releasing the lease of", lambda: remote.fs.rm_file(remote.key(LEASE_FILE)))
    except Exception as e:
        warn(f"{remote.url}: removing the run's lease ({LEASE_FILE}) failed (it lapses in {TTL_S:.0f}s): {e}")
