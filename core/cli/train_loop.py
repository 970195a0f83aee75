"""The loop of ``amber train`` (:mod:`amber.cli.rl`): train until a stop criterion holds or a
signal comes, report each iteration (a live table, plain lines or JSON), checkpoint as asked."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import numbers
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from amber.cli.base import AmberCliError, make_console

__all__ = ["Interrupts", "Report", "Stop", "check_unlocked", "record_settings", "run_lock", "standing",
           "train_until"]

#: The file in a run's directory that the ``amber train`` writing to it holds locked.
LOCK_FILE = ".amber-train.lock"


@contextlib.contextmanager
def run_lock(directory: Path | None) -> Iterator[None]:
    """Hold ``directory``'s run lock for the block (made with the directory if missing; None: no
    lock), so that two ``amber train`` never write one run: their curves would interleave and
    each one's retention would delete the other's checkpoints. The lock goes with the process.

    :raises AmberCliError: another process holds it (named by its pid), or ``directory`` is, or
        lies in, a checkpoint (whose manifest would not list the lock file).
    """
    if directory is None:
        yield
        return
    from amber.cli.base import checkpoint_place, run_in_checkpoint

    if (where := checkpoint_place(directory)) is not None:
        raise run_in_checkpoint(directory, where, "a directory")
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        _lock(fd, directory)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def check_unlocked(directory: Path) -> None:
    """Refuse, as :func:`run_lock` does, a ``directory`` that another ``amber train`` holds;
    writes nothing (a missing lock file is left missing).

    :raises AmberCliError: another process holds it (named by its pid).
    """
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # none there (or no file): nobody holds it
    try:
        _lock(fd, directory)
    finally:
        os.close(fd)


def _lock(fd: int, directory: Path) -> None:
    """Lock ``fd``, the run lock of ``directory``, or refuse: another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        raise AmberCliError(
            f"{directory} is being trained by another amber train (pid {holder}): wait for it to "
            "end, or give another --checkpoint-dir") from None


@dataclass(frozen=True)
class Stop:
    """The stop criteria; any one reached stops the run."""

    iters: int | None
    timesteps: int | None
    reward: float | None

    def reached(self, iteration: int, steps: int, ret: float) -> bool:
        """Whether the run is done after ``iteration`` (its lifetime env steps, its mean return)."""
        return bool(self.met(iteration, steps, ret))

    def met(self, iteration: int, steps: int, ret: float) -> list[str]:
        """The criteria that hold after ``iteration``, as the options and what meets them."""
        out = []
        if self.iters is not None and iteration >= self.iters:
            out.append(f"--stop-iters {self.iters}")
        if self.timesteps is not None and steps >= self.timesteps:
            out.append(f"--stop-timesteps {self.timesteps}: {steps} env steps")
        if self.reward is not None and not math.isnan(ret) and ret >= self.reward:
            out.append(f"--stop-reward {self.reward:g}: a mean return of {ret:g}")
        return out


def standing(algorithm: Any) -> tuple[int, int, float]:
    """Where a (restored) run stands, as its last ``train()`` result said: the iteration, the
    lifetime env steps and the mean return of the recent episodes (NaN: none ended yet)."""
    mean = algorithm.progress.return_mean()  # (its returns are restored with the rest)
    return algorithm.iteration, int(algorithm.counters.get("num_env_steps_sampled_lifetime", 0)), mean


class Interrupts:
    """Catches SIGINT and SIGTERM (and SIGHUP, a closed terminal, unless ignored as under nohup)
    while training: the first asks the loop to stop after the current iteration, a second one
    ends the process at once (exit 128 + signal)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise SystemExit(128 + signum)
        self.signum = signum
        click.echo("amber: stopping after this iteration with a checkpoint (again: stop now)", err=True)

    def __enter__(self) -> Interrupts:
        hangup = getattr(signal, "SIGHUP", None)
        for sig in (signal.SIGINT, signal.SIGTERM, hangup):
            if sig is None or (sig == hangup and signal.getsignal(sig) is not signal.SIG_DFL):
                continue  # (no SIGHUP here, or it is ignored: nohup)
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    """A ``train()`` result's top-level scalars, JSON-ready (NaN and infinities as null)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, (bool, str)):
            out[key] = value
        elif isinstance(value, numbers.Integral):
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value) if math.isfinite(value) else None
    return out


class Report:
    """One line per iteration: a live table on a terminal, plain lines or JSON lines otherwise."""

    def __init__(self, mode: str, title: str) -> None:
        self.mode = mode
        if mode == "live":
            from rich.live import Live
            from rich.table import Table

            self.table = Table("iter", "env steps", "return (mean of 100)", "iter time", "total time",
                               "checkpoint", title=title)
            self.live = Live(self.table, console=make_console(stderr=True), transient=False,
                             auto_refresh=False)

    def __enter__(self) -> Report:
        if self.mode == "live":
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.mode == "live":
            self.live.__exit__(*exc)

    def row(self, result: dict[str, Any], ckpt: str) -> bool:
        """Show one iteration's result (and the checkpoint it wrote, if any); False when standard
        output's reader is gone (``amber train | head``), which is silenced from then on."""
        try:
            self._row(result, ckpt)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, quietly
            os.close(devnull)
            return False
        return True

    def _row(self, result: dict[str, Any], ckpt: str) -> None:
        if self.mode == "json":
            click.echo(json.dumps(_scalars(result) | ({"checkpoint": ckpt} if ckpt else {})))
            return
        cells = (str(result["training_iteration"]), f"{result['num_env_steps_sampled_lifetime']:,}",
                 f"{result['episode_return_mean']:.1f}", f"{result['time_this_iter_s']:.2f}s",
                 f"{result['time_total_s']:.1f}s")
        if self.mode == "plain":
            names = ("iter", "env_steps", "return_mean", "iter_time", "total_time")
            line = "  ".join(f"{n} {c}" for n, c in zip(names, cells, strict=True))
            click.echo(line + (f"  checkpoint {ckpt}" if ckpt else ""))
        else:
            from amber.cli.base import plain_text

            self.table.add_row(*cells, plain_text(Path(ckpt).name if ckpt else ""))
            self.live.refresh()


def train_until(algorithm: Any, manager: Any, report: Report, interrupts: Interrupts,
                 *, stop: Stop, checkpoint_every: int, format_: str | None,
                 after_save: Callable[[str], None] | None = None) -> tuple[str, int | None]:
    """Train until a stop criterion holds or a signal came (each ``train()`` logs its result);
    ``after_save`` is called with each checkpoint's path once it is saved.

    :return: the last checkpoint written ("" if none) and the signal that stopped the run (or None).
    """
    last_ckpt = ""
    if stop.reached(*standing(algorithm)):  # a resumed run that is done already: nothing to train
        return last_ckpt, None
    if interrupts.signum is not None:  # before the first iteration: nothing to save
        return last_ckpt, interrupts.signum
    while True:
        result = algorithm.train()
        it = result["training_iteration"]
        done = stop.reached(it, result["num_env_steps_sampled_lifetime"], result["episode_return_mean"])
        signum = interrupts.signum
        ckpt = ""
        if done or signum is not None or (checkpoint_every and it % checkpoint_every == 0):
            ckpt = str(manager.save(algorithm, format=format_).checkpoint.path)
            last_ckpt = ckpt
            if after_save is not None:
                after_save(ckpt)
        if not report.row(result, ckpt):  # nobody reads the output: stop, as on SIGTERM, saved
            if not ckpt:
                last_ckpt = str(manager.save(algorithm, format=format_).checkpoint.path)
                if after_save is not None:
                    after_save(last_ckpt)
            click.echo(f"amber: standard output was closed: stopped with the checkpoint {last_ckpt}",
                       err=True)
            return last_ckpt, int(getattr(signal, "SIGPIPE", 13))
        if done or signum is not None:
            return last_ckpt, signum


def record_settings(config: Any, *, num_to_keep: int | None, format_: str | None) -> None:
    """Set the run's ``--num-to-keep`` and ``--format`` (those given) in its algorithm's config, which
    each checkpoint records, so that a later ``--resume`` keeps them.

    Both are read at every save, so they apply whole from the next one: a built (frozen) config
    takes them (:data:`amber.algorithms.config_freeze.LIVE_SETTINGS`).
    """
    if num_to_keep is not None:
        config.checkpointing(num_to_keep=num_to_keep)
    if format_ is not None:
        config.checkpointing(format=format_)
