"""The ``amber`` command: list formats and plugins; inspect, verify, convert, migrate checkpoints.

Every amber error (:class:`amber.errors.CheckpointError`) and every OS error
ends the command with exit status 2 and one line on stderr,
``amber: error: <message>``, never a traceback; click's own usage errors
exit 2 too. ``amber verify`` exits 1 when the checkpoint has problems.

The engine, numpy and rich are imported inside the commands, so that
``amber --help`` is quick and importing this module never imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amber import __version__
from amber.errors import CheckpointError, CorruptCheckpointError

if TYPE_CHECKING:
    import pluggy
    from rich.console import Console
    from rich.text import Text
    from rich.tree import Tree

__all__ = ["PROGRESS_MIN_BYTES", "CliState", "cli", "main"]

#: ``amber convert`` shows a progress bar (on a terminal) from this many source bytes.
PROGRESS_MIN_BYTES = 32 * 1024 * 1024


class AmberCliError(click.ClickException):
    """An error shown as one line, ``amber: error: <message>``, with exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print the one-line message to stderr."""
        lines = (line.strip() for line in self.message.splitlines())
        click.echo(f"amber: error: {' '.join(line for line in lines if line)}", err=True)


class _AmberGroup(click.Group):
    """A group that turns amber's errors into :class:`AmberCliError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CheckpointError as e:
            raise AmberCliError(str(e)) from e
        except OSError as e:
            if e.errno == errno.EPIPE:  # `amber ... | head`: click handles it quietly
                raise
            where = f"{e.filename}: " if e.filename else ""
            raise AmberCliError(f"{where}{e.strerror or e}") from e


@dataclass
class CliState:
    """What the ``amber`` group hands its commands.

    :param plugin_manager: the plugin manager to use; None: the process's
        (:func:`amber.plugin_manager.default_plugin_manager`), built on first use.
    :param trace_hooks: build a fresh plugin manager that prints every hook call.
    """

    plugin_manager: pluggy.PluginManager | None = None
    trace_hooks: bool = False

    def get_pm(self) -> pluggy.PluginManager:
        """The plugin manager, built on first use.

        :raises PluginLoadError: a plugin failed to load.
        """
        if self.plugin_manager is None:
            from amber.plugin_manager import default_plugin_manager, get_plugin_manager

            self.plugin_manager = (
                get_plugin_manager(trace=True) if self.trace_hooks else default_plugin_manager()
            )
        return self.plugin_manager


def _console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); wide when not a terminal, so nothing wraps."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console


def _text(value: object, style: str = "") -> Text:
    """Plain text that rich never reads as markup (ids and paths may hold brackets)."""
    from rich.text import Text

    return Text(str(value), style=style)


def human_size(n: int) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"1.5 KiB"``, ``"3.0 GiB"``."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def _provider(plugin: str, distribution: str | None) -> str:
    return f"{plugin} ({distribution})" if distribution else plugin


def _policy_files(info: Mapping[str, Any], pid: str) -> dict[str, Any] | None:
    """A policy's own files from :func:`get_checkpoint_info`, or None if its manifest is bad."""
    entry = info.get("policies", {}).get(pid, {})
    return None if "error" in entry else dict(entry.get("files", {}))


def total_bytes(info: Mapping[str, Any]) -> int:
    """The size of every file the checkpoint's manifests list."""
    total = sum(e["size"] for e in info["files"].values())
    for pid in info.get("policies", {}):
        total += sum(e["size"] for e in (_policy_files(info, pid) or {}).values())
    return int(total)


@click.group(cls=_AmberGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="amber", message="%(prog)s %(version)s"
)
@click.option("--trace-hooks", is_flag=True, help="Print every plugin hook call to stderr.")
@click.pass_context
def cli(ctx: click.Context, trace_hooks: bool) -> None:
    """Inspect, verify, convert and migrate amber checkpoints.

    Plugins load from the entry-point group 'amber' unless
    AMBER_DISABLE_PLUGIN_AUTOLOAD is set; AMBER_PLUGINS=a,b loads only those.
    """
    state = ctx.ensure_object(CliState)
    state.trace_hooks = state.trace_hooks or trace_hooks


@cli.command()
@click.pass_obj
def formats(state: CliState) -> None:
    """List the registered checkpoint formats and model exporters."""
    from rich.table import Table

    from amber.registry import get_registry

    registry = get_registry(state.get_pm())
    table = Table(title="formats", title_justify="left")
    for column in ("name", "extension", "portable", "safe", "arbitrary objects", "plugin",
                   "description"):
        table.add_column(column)
    for name in registry.names():
        provided = registry.formats[name]
        spec, caps = provided.item, provided.item.capabilities
        flags = ("yes" if f else "no" for f in (caps.portable, caps.safe, caps.arbitrary_objects))
        table.add_row(
            _text(name, "bold"), _text(spec.extension), *flags,
            _text(_provider(provided.plugin, provided.distribution)), _text(spec.description),
        )
    console = _console()
    console.print(table)
    if registry.exporters:
        exporters = Table(title="exporters", title_justify="left")
        for column in ("name", "plugin", "extra", "description"):
            exporters.add_column(column)
        for name in sorted(registry.exporters):
            provided = registry.exporters[name]
            extra = provided.item.extra
            exporters.add_row(
                _text(name, "bold"), _text(_provider(provided.plugin, provided.distribution)),
                _text(f"amber-rl[{extra}]" if extra else "-"), _text(provided.item.description),
            )
        console.print(exporters)


def _describe_plugin(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    if isinstance(plugin, type):
        return f"{plugin.__module__}.{plugin.__qualname__}"
    return f"{type(plugin).__module__}.{type(plugin).__qualname__} instance"


@cli.command()
@click.pass_obj
def plugins(state: CliState) -> None:
    """List the registered plugins, where each comes from and the hooks it implements."""
    from rich.table import Table

    from amber.plugin_manager import DEFAULT_PLUGINS

    pm = state.get_pm()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    built_in = {name.rsplit(".", 1)[-1] for name in DEFAULT_PLUGINS}
    table = Table(title="plugins", title_justify="left")
    for column in ("name", "module / object", "distribution", "hooks"):
        table.add_column(column)
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            table.add_row(_text(name, "bold"), "(blocked)", "-", "-")
            continue
        dist = dists.get(id(plugin))
        origin = f"{dist.project_name} {dist.version}" if dist else (
            "built in" if name in built_in else "-"
        )
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        table.add_row(
            _text(name, "bold"), _text(_describe_plugin(plugin)), _text(origin),
            _text(", ".join(hooks) or "(none)"),
        )
    _console().print(table)


def _file_label(rel: str, entry: Mapping[str, Any]) -> Text:
    from rich.text import Text

    return Text.assemble(rel, ("  " + human_size(entry["size"]), "dim"))


def info_tree(info: Mapping[str, Any]) -> Tree:
    """Render :func:`amber.utils.checkpoints.get_checkpoint_info`'s dict as a rich tree.

    :param info: the dict, as returned.
    :return: the checkpoint's facts, then its files: the top level's, then
        ``policies/<id>/`` with each policy's files.
    """
    from rich.text import Text
    from rich.tree import Tree

    root = Tree(Text.assemble((f"{info['type']} checkpoint ", "bold"), str(info["checkpoint_dir"])))
    written_by = (
        f"amber {info.get('amber_version') or '?'}, Python {info.get('python_version') or '?'}"
    )
    for label, value in (
        ("checkpoint_version", info["checkpoint_version"]),
        ("format", info["format"]),
        ("written by", written_by),
        ("created", info.get("created") or "?"),
        ("policies", ", ".join(info["policy_ids"]) or "(none)"),
    ):
        root.add(Text.assemble((f"{label}: ", "bold"), str(value)))
    if info.get("metadata"):
        meta = root.add(Text("metadata", style="bold"))
        for key, value in info["metadata"].items():
            meta.add(Text(f"{key}: {value}"))

    files: Mapping[str, Any] = info["files"]
    listed = len(files) + sum(len(_policy_files(info, p) or {}) for p in info.get("policies", {}))
    tree = root.add(
        Text.assemble(("files", "bold"), f" ({listed}, {human_size(total_bytes(info))})")
    )
    policy_dirs = {f"policies/{pid}/" for pid in info.get("policies", {})}
    for rel, entry in files.items():
        if not any(rel.startswith(d) for d in policy_dirs):
            tree.add(_file_label(rel, entry))
    if policy_dirs:
        policies = tree.add(Text("policies/", style="bold"))
        for pid in info["policies"]:
            node = policies.add(Text(f"{pid}/", style="bold"))
            for rel, entry in files.items():
                if rel.startswith(f"policies/{pid}/"):
                    node.add(_file_label(rel[len(f"policies/{pid}/"):], entry))
            own = _policy_files(info, pid)
            if own is None:
                node.add(Text(f"error: {info['policies'][pid]['error']}", style="red"))
                continue
            for rel, entry in own.items():
                node.add(_file_label(rel, entry))
    return root


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the info as JSON on stdout.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Show what a checkpoint is, from its manifests alone (never unpickles)."""
    from amber.utils.checkpoints import get_checkpoint_info

    info = get_checkpoint_info(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _console().print(info_tree(info))


@cli.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_context
def verify_command(ctx: click.Context, path: Path) -> None:
    """Check every file of a checkpoint against its manifests (never unpickles).

    Exits 0 when all is well, 1 listing each problem, 2 when PATH is no checkpoint.
    """
    from amber.utils.checkpoints import verify

    try:
        report = verify(path)
        problems = report.problems
    except CorruptCheckpointError as e:  # the top checkpoint.json itself is malformed
        problems = [str(e)]
    if not problems:
        click.echo(f"ok: {len(report.checked)} files verified")
        return
    click.echo(f"FAILED: {len(problems)} problem(s) in {path}")
    for problem in problems:
        click.echo(f"  {problem}")
    ctx.exit(1)


_PHASES = {"reading": 0, "writing": 1, "done": 2}


@contextlib.contextmanager
def _progress(description: str, size: int) -> Iterator[Callable[[str], None]]:
    """Show a bar of the job's phases (reading, writing) with elapsed time on stderr.

    Yields the callback the engine calls with each phase; shown only for large
    checkpoints on a terminal.
    """
    console = _console(stderr=True)
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


_ALLOW_PICKLE_HELP = (
    "Allow reading pickle checkpoints (reading them can run code), or refuse them. "
    "Default: allowed unless AMBER_SAFE_LOAD is set."
)


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("-f", "--format", "format_", required=True, metavar="NAME",
              help="The format to write (see `amber formats`).")
@click.option("--allow-pickle/--safe", "allow_pickle", default=None, help=_ALLOW_PICKLE_HELP)
@click.pass_obj
def convert(state: CliState, src: Path, dst: Path, format_: str, allow_pickle: bool | None) -> None:
    """Rewrite a checkpoint in another format.

    Writes SRC in format NAME at DST, atomically; SRC is never modified.
    """
    from amber.registry import get_registry
    from amber.utils.checkpoints import convert_checkpoint, get_checkpoint_info

    pm = state.get_pm()
    get_registry(pm).get(format_)  # an unknown name fails before anything is read
    info = get_checkpoint_info(src)
    size = total_bytes(info)
    description = f"converting {src} ({info['format']}, {human_size(size)}) to {format_}"
    with _progress(description, size) as advance:
        convert_checkpoint(src, dst, format=format_, allow_pickle=allow_pickle, progress=advance, pm=pm)
    click.echo(f"converted {src} ({info['format']}) -> {dst} ({format_})")


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path), required=False)
@click.option("--to", "to", metavar="VERSION", help="Stop at this checkpoint_version (default: the current).")
@click.option("--dry-run", is_flag=True, help="Print each step and what it changes; write nothing.")
@click.option("--recursive", is_flag=True,
              help="Migrate, in place, every checkpoint under SRC (a run directory); report each.")
@click.option("--allow-pickle/--safe", "allow_pickle", default=None, help=_ALLOW_PICKLE_HELP)
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
    _report_migration(migrate_one(src, dst, to=to, dry_run=dry_run, allow_pickle=allow_pickle, pm=pm), dry_run)


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


from amber import cli_export as _cli_export  # noqa: E402,F401 - registers export
from amber import cli_rl as _cli_rl  # noqa: E402,F401 - registers train and evaluate


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``amber`` command; the console script's entry point. Exits the process.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    cli.main(args=list(argv) if argv is not None else None, prog_name="amber")


if __name__ == "__main__":  # `python -m amber.cli`: run the imported module, where commands register
    from amber.cli import main as _main

    _main()
