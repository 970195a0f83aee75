"""``amber formats``, ``amber plugins``, ``amber inspect`` and ``amber verify``: what is there.

None of them reads a checkpoint's payload: ``inspect`` and ``verify`` work
from the manifests and file hashes alone and never unpickle. Everything they
print that comes from a checkpoint goes through :func:`amber.cli.base.escape`
(``--json`` output is ASCII, every other character a JSON escape).
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amber.cli.base import (
    LOCATION,
    CliState,
    cli,
    echo,
    escape,
    human_size,
    make_console,
    plain_text,
    policy_files,
    total_bytes,
)
from amber.errors import CorruptCheckpointError

if TYPE_CHECKING:
    from rich.text import Text
    from rich.tree import Tree

__all__ = ["formats", "info_tree", "inspect_command", "plugins", "verify_command"]


def _provider(plugin: str, distribution: str | None) -> str:
    return f"{plugin} ({distribution})" if distribution else plugin


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
            plain_text(name, "bold"), plain_text(spec.extension), *flags,
            plain_text(_provider(provided.plugin, provided.distribution)), plain_text(spec.description),
        )
    console = make_console()
    console.print(table)
    if registry.exporters:
        exporters = Table(title="exporters", title_justify="left")
        for column in ("name", "plugin", "extra", "description"):
            exporters.add_column(column)
        for name in sorted(registry.exporters):
            provided = registry.exporters[name]
            extra = provided.item.extra
            exporters.add_row(
                plain_text(name, "bold"), plain_text(_provider(provided.plugin, provided.distribution)),
                plain_text(f"amber-rl[{extra}]" if extra else "-"), plain_text(provided.item.description),
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
            table.add_row(plain_text(name, "bold"), "(blocked)", "-", "-")
            continue
        dist = dists.get(id(plugin))
        origin = f"{dist.project_name} {dist.version}" if dist else (
            "built in" if name in built_in else "-"
        )
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        table.add_row(
            plain_text(name, "bold"), plain_text(_describe_plugin(plugin)), plain_text(origin),
            plain_text(", ".join(hooks) or "(none)"),
        )
    make_console().print(table)


def _file_label(rel: str, entry: Mapping[str, Any]) -> Text:
    from rich.text import Text

    return Text.assemble(escape(rel), ("  " + human_size(entry["size"]), "dim"))


def _add_files(root: Tree, info: Mapping[str, Any]) -> None:
    """Add the ``files`` branch: the top level's files, then ``policies/<id>/`` with each policy's."""
    from rich.text import Text

    files: Mapping[str, Any] = info["files"]
    listed = len(files) + sum(len(policy_files(info, p) or {}) for p in info.get("policies", {}))
    tree = root.add(
        Text.assemble(("files", "bold"), f" ({listed}, {human_size(total_bytes(info))})")
    )
    policy_dirs = {f"policies/{pid}/" for pid in info.get("policies", {})}
    for rel, entry in files.items():
        if not any(rel.startswith(d) for d in policy_dirs):
            tree.add(_file_label(rel, entry))
    if not policy_dirs:
        return
    policies = tree.add(Text("policies/", style="bold"))
    for pid in info["policies"]:
        node = policies.add(Text(f"{escape(pid)}/", style="bold"))
        for rel, entry in files.items():
            if rel.startswith(f"policies/{pid}/"):
                node.add(_file_label(rel[len(f"policies/{pid}/"):], entry))
        own = policy_files(info, pid)
        if own is None:
            node.add(Text(f"error: {escape(info['policies'][pid]['error'])}", style="red"))
            continue
        for rel, entry in own.items():
            node.add(_file_label(rel, entry))


def info_tree(info: Mapping[str, Any]) -> Tree:
    """Render :func:`amber.utils.checkpoints.get_checkpoint_info`'s dict as a rich tree.

    :param info: the dict, as returned.
    :return: the checkpoint's facts, then its files: the top level's, then
        ``policies/<id>/`` with each policy's files.
    """
    from rich.text import Text
    from rich.tree import Tree

    root = Tree(Text.assemble((f"{escape(info['type'])} checkpoint ", "bold"),
                              escape(info["checkpoint_dir"])))
    written_by = info.get("system") or (  # (another system's checkpoint names that system)
        f"amber {info.get('amber_version') or '?'}, Python {info.get('python_version') or '?'}"
    )
    for label, value in (
        ("checkpoint_version", info["checkpoint_version"]),
        ("format", info["format"]),
        ("written by", written_by),
        ("created", info.get("created") or "?"),
        ("policies", ", ".join(info["policy_ids"]) or "(none)"),
    ):
        root.add(Text.assemble((f"{label}: ", "bold"), escape(value)))
    if info.get("metadata"):
        meta = root.add(Text("metadata", style="bold"))
        for key, value in info["metadata"].items():
            meta.add(Text(f"{escape(key)}: {escape(value)}"))
    _add_files(root, info)
    return root


@cli.command("inspect")
@click.argument("path", type=LOCATION)
@click.option("--json", "as_json", is_flag=True, help="Print the info as JSON on stdout.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Show what a checkpoint is, from its manifests alone (never unpickles)."""
    from amber.utils.checkpoints import get_checkpoint_info

    info = get_checkpoint_info(path)
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=True))  # every non-ASCII character escaped
    else:
        make_console().print(info_tree(info))


@cli.command("verify")
@click.argument("path", type=LOCATION)
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
    echo(f"FAILED: {len(problems)} problem(s) in {path}")
    for problem in problems:
        echo(f"  {problem}")
    ctx.exit(1)
