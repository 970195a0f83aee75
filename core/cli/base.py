"""The ``amber`` click group and what its commands share.

The command modules (:mod:`amber.cli.info`, :mod:`amber.cli.convert`,
:mod:`amber.cli.export`, :mod:`amber.cli.rl`, :mod:`amber.cli.evaluate`,
:mod:`amber.cli.trust`) import this module and attach their commands to
:data:`cli`; this module imports none of them, so the package has no import cycle.

Every amber error (:class:`amber.errors.CheckpointError`) and every OS error
ends the command with exit status 2 and one line on stderr,
``amber: error: <message>``, never a traceback; click's own usage errors
exit 2 too. Ctrl-C (SIGINT) ends any command with exit status 130 (``amber train``
first saves a checkpoint). A checkpoint replaced by another save while a command read it
(:class:`amber.errors.ChangedWhileReadError`) is read again (:data:`REREADS` times at most).

Whatever a command prints that comes from a checkpoint (ids, file names,
metadata, versions, timestamps, error messages quoting them) goes through
:func:`escape` (or :func:`echo`, :func:`plain_text`): control, format and
separator characters and lone surrogates are shown as visible escapes
(``\\x1b``, ``\\u202e``), so a checkpoint can neither drive the terminal
nor disguise what is shown, and printing never fails to encode.

rich and the engine are imported inside the helpers and commands, so that
``amber --help`` is quick and importing the package never imports torch.
"""

from __future__ import annotations

import errno
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amber import __version__
from amber.errors import CheckpointError

if TYPE_CHECKING:
    import pluggy
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "ALLOW_PICKLE_HELP",
    "INTERRUPTED",
    "LOCATION",
    "LocalPath",
    "trust_option",
    "AmberCliError",
    "AmberCommand",
    "AmberGroup",
    "CliState",
    "checkpoint_place",
    "cli",
    "echo",
    "escape",
    "human_size",
    "make_console",
    "plain_text",
    "policy_files",
    "show_warning",
    "total_bytes",
]

#: The help of ``--trust/--safe`` (alias ``--allow-pickle``), on every command that loads a checkpoint.
ALLOW_PICKLE_HELP = (
    "Pickle checkpoints run code when read: --trust (or --allow-pickle) loads any, --safe none. "
    "Default: only those signed with your key (see `amber trust`), none if AMBER_SAFE_LOAD is set."
)


class Location(click.ParamType):
    """A checkpoint or run location: a local path (a :class:`~pathlib.Path`) or an fsspec URL
    (``s3://bucket/ck``, kept as the str it is: ``Path`` would fold its ``//``)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value as a Path, or a URL's str."""
        import os

        from amber.storage import is_remote, local_path

        if not isinstance(value, (str, os.PathLike)):
            return value
        if not os.fspath(value):  # "" would be the current directory ("$UNSET" in a script)
            self.fail("an empty path", param, ctx)
        return os.fspath(value) if is_remote(value) else local_path(value)


#: A checkpoint or run location argument: every verb's PATH may be an fsspec URL.
LOCATION = Location()


class LocalPath(click.ParamType):
    """A path that must be local (a ``file://`` URL too): a remote URL is refused, saying what
    to do instead (never written as a local directory named ``s3:``)."""

    name = "path"

    def __init__(self, instead: Callable[[str], str]) -> None:
        self.instead = instead

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value as a Path; a remote URL fails (exit 2) with :attr:`instead`'s advice."""
        import os

        from amber.storage import is_remote, local_path

        if not isinstance(value, (str, os.PathLike)):
            return value
        if is_remote(value):
            self.fail(f"{os.fspath(value)} is a URL, and this option takes a local path: "
                      f"{self.instead(os.fspath(value))}", param, ctx)
        return local_path(value)


def trust_option(command: Any) -> Any:
    """The ``--trust/--safe`` (alias ``--allow-pickle``) option, as ``allow_pickle``: True, False or None."""
    return click.option("--trust/--safe", "--allow-pickle", "allow_pickle", default=None,
                        help=ALLOW_PICKLE_HELP)(command)


#: The Unicode categories :func:`escape` escapes, the ones :func:`amber.layout.check_id` refuses:
#: control (Cc: ESC, C1...), format (Cf: bidi overrides such as U+202E, zero-width characters),
#: lone surrogates (Cs) and the line and paragraph separators (Zl, Zp).
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def escape(value: object) -> str:
    """``str(value)`` fit to print: each character of :data:`ESCAPED_CATEGORIES` as a visible
    escape (``\\x1b``, ``\\u202e``, ``\\udc80``); everything else, spaces included, as it is.

    Use it on everything taken from a checkpoint before printing it.
    """
    text = str(value)
    if text.isprintable():  # every escaped character is unprintable: the common case is quick
        return text
    return "".join(_escape_char(c) if unicodedata.category(c) in ESCAPED_CATEGORIES else c for c in text)


def echo(message: object = "", *, err: bool = False) -> None:
    """Print one line that holds checkpoint content, through :func:`escape`."""
    click.echo(escape(message), err=err)


class AmberCliError(click.ClickException):
    """An error shown as one line, ``amber: error: <message>``, with exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print the one-line message to stderr."""
        lines = (line.strip() for line in self.message.splitlines())
        echo(f"amber: error: {' '.join(line for line in lines if line)}", err=True)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """Print a warning as the CLI prints its errors: one line on stderr, ``amber: warning: ...``,
    escaped (a warning may quote a checkpoint), the category named unless it is a plain
    UserWarning; no source line (it would be amber's or click's, not the user's)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    lines = (part.strip() for part in str(message).splitlines())
    echo(f"amber: warning: {' '.join(part for part in lines if part)}{kind}", err=True)


#: The exit status of a command stopped by Ctrl-C (SIGINT): 128 + the signal's number, as shells say.
INTERRUPTED = 130


#: How many times a command runs again when a checkpoint it read was replaced meanwhile.
REREADS = 2


class AmberCommand(click.Command):
    """A command that runs again (up to :data:`REREADS` times) when a checkpoint it read was
    replaced meanwhile by another save (:class:`amber.errors.ChangedWhileReadError`: raised
    by readers only, which every command runs before it writes anything)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the command; again if a checkpoint changed while it was read."""
        for _ in range(REREADS):
            try:
                return super().invoke(ctx)
            except CheckpointError as e:
                from amber.errors import ChangedWhileReadError

                if not isinstance(e, ChangedWhileReadError):
                    raise
        return super().invoke(ctx)


class AmberGroup(click.Group):
    """A group that turns amber's errors into :class:`AmberCliError`, Ctrl-C into exit status
    :data:`INTERRUPTED`, and shows warnings with :func:`show_warning`; its commands are
    :class:`AmberCommand`."""

    command_class = AmberCommand

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the command; map :class:`CheckpointError` and :class:`OSError` to one line, exit 2."""
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort) as e:  # (a prompt turns Ctrl-C into Abort)
            if isinstance(e, click.Abort) and not isinstance(e.__context__, KeyboardInterrupt):
                raise  # "no" at a confirmation prompt
            tty = click.get_text_stream("stderr").isatty()  # (after the terminal's "^C")
            click.echo(f"{chr(10) if tty else ''}amber: interrupted", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
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


def make_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); wide when not a terminal, so nothing wraps."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    return console


def plain_text(value: object, style: str = "") -> Text:
    """Plain text that rich never reads as markup (ids and paths may hold brackets), through
    :func:`escape`."""
    from rich.text import Text

    return Text(escape(value), style=style)


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


def policy_files(info: Mapping[str, Any], pid: str) -> dict[str, Any] | None:
    """A policy's own files from :func:`get_checkpoint_info`, or None if its manifest is bad."""
    entry = info.get("policies", {}).get(pid, {})
    return None if "error" in entry else dict(entry.get("files", {}))


def total_bytes(info: Mapping[str, Any]) -> int:
    """The size of every file the checkpoint's manifests list."""
    total = sum(e["size"] for e in info["files"].values())
    for pid in info.get("policies", {}):
        total += sum(e["size"] for e in (policy_files(info, pid) or {}).values())
    return int(total)


@click.group(cls=AmberGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def run_in_checkpoint(target: Any, where: str, what: str) -> AmberCliError:
    """The refusal of an ``amber train`` run (its lock, lease, checkpoints) at ``target``, which is
    ``where`` (:func:`checkpoint_place`'s answer): ``what`` names the kind of place to give instead."""
    return AmberCliError(f"{target} is {where}: amber train writes its run there, and nothing may be "
                         f"written into a checkpoint; give {what} of its own")


def checkpoint_place(path: Path) -> str | None:
    """Where ``path`` stands with respect to checkpoints, for a refusal: ``"a checkpoint"`` (it
    holds a checkpoint.json), ``"inside the checkpoint <dir>"``, or None (neither)."""
    from amber.layout import MANIFEST, enclosing_checkpoint

    if (path / MANIFEST).is_file():
        return "a checkpoint"
    outer = enclosing_checkpoint(path)
    return None if outer is None else f"inside the checkpoint {outer}"
