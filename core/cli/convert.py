"""``amber convert`` and ``amber migrate``: rewrite a checkpoint in another format or version.

Both write atomically and never modify their source on failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from amber.cli.base import (
    LOCATION,
    AmberCliError,
    CliState,
    cli,
    human_size,
    make_console,
    total_bytes,
    trust_option,
)

__all__ = ["PROGRESS_MIN_BYTES", "convert", "convert_framework", "migrate"]

#: ``amber convert`` shows a progress bar (on a terminal) from this many source bytes.
PROGRESS_MIN_BYTES = 32 * 1024 * 1024

_PHASES = {"reading": 0, "writing": 1, "done": 2}


@contextlib.contextmanager
def _progress(description: str, size: int) -> Iterator[Callable[[str], None]]:
    """Show a bar of the job's phases (reading, writing) with elapsed time on stderr.

    Yields the callback the engine calls with each phase; shown only for large
    checkpoints on a terminal.
    """
    console = make_console(stderr=True)
    if size < PROGRESS_MIN_BYTES or not console.is_terminal:
        yield lambda phase: None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=len(_PHASES) - 1)

        def advance(phase: str) -> None:
            progress.update(task, completed=_PHASES.get(phase, 0),
                            description=f"{description}: {phase}")

        yield advance


def _pinned(src: Path | str, dst: Path | str) -> contextlib.AbstractContextManager[None]:
    """Read the local checkpoint ``src`` through one descriptor of its directory
    (:func:`amber.verified_io.pinned`), unless it is also written (``dst`` is ``src``: once
    replaced, it must be read where it now is)."""
    from amber.verified_io import pinned

    return pinned(src) if isinstance(src, Path) and src != dst else contextlib.nullcontext()


@cli.command()
@click.argument("src", type=LOCATION)
@click.argument("dst", type=LOCATION)
@click.option("-f", "--format", "format_", metavar="NAME",
              help="The format to write (see `amber formats`; with --framework, default: SRC's).")
@click.option("--framework", type=click.Choice(["torch", "tf2"]), default=None,
              help="Rewrite the policies for this framework (same weights and optimizer moments).")
@trust_option
@click.pass_obj
def convert(state: CliState, src: Path, dst: Path, format_: str | None, framework: str | None,
            allow_pickle: bool | None) -> None:
    """Rewrite a checkpoint in another format, or for another framework (torch, tf2).

    Writes SRC in format NAME, with its policies for FRAMEWORK, at DST,
    atomically; SRC is never modified (unless DST is SRC: converted in place).
    """
    from amber.registry import get_registry
    from amber.utils.checkpoints import convert_checkpoint, get_checkpoint_info

    if format_ is None and framework is None:
        raise click.UsageError("give --format NAME, --framework torch|tf2, or both")
    pm = state.get_pm()
    if format_ is not None:
        get_registry(pm).get(format_)  # an unknown name fails before anything is read
    if framework is not None:
        fmt = convert_framework(src, dst, framework, format=format_, allow_pickle=allow_pickle, pm=pm)
        click.echo(f"converted {src} -> {dst} ({fmt}, framework {framework})")
        return
    with _pinned(src, dst):  # what a save replacing SRC meanwhile writes is not read
        info = get_checkpoint_info(src)
        size = total_bytes(info)
        description = f"converting {src} ({info['format']}, {human_size(size)}) to {format_}"
        with _progress(description, size) as advance:
            convert_checkpoint(src, dst, format=format_, allow_pickle=allow_pickle, progress=advance, pm=pm)
    click.echo(f"converted {src} ({info['format']}) -> {dst} ({format_})")


def convert_framework(src: Path, dst: Path, framework: str, *, format: str | None = None,
                      allow_pickle: bool | None = None, pm: Any = None) -> str:
    """Rewrite an algorithm or policy checkpoint with its policies for ``framework``; return the format.

    The weights and optimizer moments carry over (one layout for torch and tf2,
    :mod:`amber.policy.frameworks`); native model files (``model/``) are not
    copied, being the other framework's: export them again from the new checkpoint.

    :param format: the format to write (default: the source's, or the default portable format
        (msgpack) for another system's checkpoint, whose format amber only reads, as ``migrate``).
    :raises AmberCliError: the checkpoint holds no policies.
    """
    from amber.checkpoint import read_checkpoint
    from amber.checkpoint_manager import carried_metadata
    from amber.registry import get_registry
    from amber.utils.rewriting import manifest_in_place, still_in_place

    before = manifest_in_place(src, dst)  # in place: replaced only if no save commits meanwhile
    with _pinned(src, dst):
        ckpt = read_checkpoint(src, allow_pickle=allow_pickle, pm=pm)
    registry = get_registry(pm)
    fmt = format or (ckpt.format if ckpt.format in registry.formats else registry.default_portable())
    metadata = carried_metadata(ckpt.metadata, src, dst)
    with still_in_place(dst, before):
        _write_converted(ckpt, src, dst, framework, fmt, metadata, pm)
    return fmt


def _write_converted(ckpt: Any, src: Path, dst: Path, framework: str, fmt: str, metadata: dict[str, str],
                     pm: Any) -> None:
    """Write ``ckpt`` (read from ``src``) at ``dst`` with its policies for ``framework``."""
    from amber.algorithms.saved_config import GIVEN_AGAIN
    from amber.checkpoint import write_checkpoint
    from amber.policy.frameworks import convert_algorithm_state, convert_policy_state

    if ckpt.type == "Algorithm":
        with _framework_needed(framework, src):
            own, policies = convert_algorithm_state(
                ckpt.state, {p: c.state for p, c in ckpt.policies.items()}, framework)
        write_checkpoint(dst, type="Algorithm", state=own, policies=policies, format=fmt,
                         metadata=metadata, placeholders=set(GIVEN_AGAIN), pm=pm)
    elif ckpt.type == "Policy":
        policy_id = ckpt.metadata.get("policy_id") or os.fspath(src).rstrip("/").rsplit("/", 1)[-1]
        with _framework_needed(framework, src):
            state = convert_policy_state(ckpt.state, framework, policy_id=policy_id)
        write_checkpoint(dst, type="Policy", state=state, format=fmt, metadata=metadata, pm=pm)
    else:
        raise AmberCliError(f"{src} holds a {ckpt.type} checkpoint: only algorithm and policy "
                               "checkpoints have policies to convert")


@contextlib.contextmanager
def _framework_needed(framework: str, src: Path | str) -> Iterator[None]:
    """A policy class that cannot be imported here (torch's on a serving host, tf2's without
    ``amber-rl[keras]``): a :class:`~amber.errors.MissingPluginError` naming the module, exit 2."""
    from amber.errors import missing_module

    try:
        yield
    except ImportError as e:
        raise missing_module(e, f"converting its policies for {framework}", src) from e


@cli.command()
@click.argument("src", type=LOCATION)
@click.argument("dst", type=LOCATION, required=False)
@click.option("--to", "to", metavar="VERSION", help="Stop at this checkpoint_version (default: the current).")
@click.option("--dry-run", is_flag=True, help="Print each step and what it changes; write nothing.")
@click.option("--recursive", is_flag=True,
              help="Migrate, in place, every checkpoint under SRC (a run directory); report each.")
@trust_option
@click.pass_obj
def migrate(state: CliState, src: Path, dst: Path | None, to: str | None, dry_run: bool,
            recursive: bool, allow_pickle: bool | None) -> None:
    """Upgrade a checkpoint to the current checkpoint_version, in place or into DST.

    Also reads another system's checkpoint (RLlib 2.10 msgpack) into an amber one at DST.
    A failure leaves SRC untouched. Exit status 1 when --recursive met a checkpoint that failed.
    """
    from amber.utils.checkpoints import migrate as migrate_one
    from amber.utils.checkpoints import migrate_all

    pm = state.get_pm()
    if recursive:
        if dst is not None:
            raise click.UsageError("--recursive migrates in place: give no DST")
        results = migrate_all(src, to=to, dry_run=dry_run, allow_pickle=allow_pickle, pm=pm)
        if not results:
            click.echo(f"no checkpoint under {src}")
        for result in results:
            _report_migration(result, dry_run)
        if any(r.error for r in results):
            raise SystemExit(1)
        return
    result = migrate_one(src, dst, to=to, dry_run=dry_run, allow_pickle=allow_pickle, pm=pm)
    _report_migration(result, dry_run)


def _report_migration(result: Any, dry_run: bool) -> None:
    if result.error:
        click.echo(f"FAILED {result.path}: {result.error}")
        return
    head = f"{result.path}: checkpoint_version {result.from_version} -> {result.to_version}"
    if not result.steps:
        done = f"copied to {result.dst}" if result.written else "nothing to do"
        click.echo(f"{head}: already there, {done}")
        return
    if dry_run:
        click.echo(f"{head} (dry run: nothing written)")
    else:
        where = "in place" if result.dst == result.path else f"-> {result.dst}"
        click.echo(f"migrated {head} {where}")
    for step in result.steps:
        click.echo(f"  step {step['name']}:")
        for line in step["description"].splitlines():
            click.echo(f"    {line}")
        for tree, lines in step["changes"].items():
            for line in lines:
                click.echo(f"    {tree}: {line}")
