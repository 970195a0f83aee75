"""``amber export``: a checkpoint's policies as model files that load without amber."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amber.cli.base import LOCATION, AmberCliError, CliState, checkpoint_place, cli, trust_option

if TYPE_CHECKING:
    import pluggy

__all__ = ["export_command"]


def _check_outside_checkpoints(directory: Path | str) -> None:
    """Refuse to export into a checkpoint (or a folder inside one): its manifest would not list
    the model files, and ``amber verify`` would then fail on it.

    :raises AmberCliError: naming the checkpoint.
    """
    from amber.storage import is_remote

    if is_remote(directory):
        return
    where = checkpoint_place(Path(directory))
    if where is not None:
        raise AmberCliError(f"refusing to export into {directory}: it is {where}, whose checkpoint.json "
                            "would not list the model files (`amber verify` would then fail on it); "
                            "choose a directory outside it")


def _targets(checkpoint: Path, directory: Path, policy_id: str | None, allow_pickle: bool | None,
             pm: pluggy.PluginManager) -> list[tuple[str | None, Any, Path]]:
    """The policies to export, each with its id (None: a policy checkpoint that records none) and the
    directory it goes to.

    :raises AmberCliError: the checkpoint holds no policy, or ``--policy`` does not fit it.
    :raises UnknownPolicyError: ``policy_id`` is not one of the algorithm's policies.
    """
    from amber.errors import UnknownPolicyError
    from amber.policy.policy import Policy
    from amber.utils.checkpoints import get_checkpoint_info

    info = get_checkpoint_info(checkpoint)
    if info["type"] == "Policy":
        if policy_id is not None and policy_id not in info["policy_ids"]:
            raise AmberCliError(f"{checkpoint} is a policy checkpoint (of one policy): --policy picks "
                                "a policy of an algorithm checkpoint")
        policy = Policy.from_checkpoint(checkpoint, allow_pickle=allow_pickle, pm=pm)
        return [(info["policy_ids"][0] if info["policy_ids"] else None, policy, directory)]
    if info["type"] != "Algorithm":
        raise AmberCliError(f"{checkpoint} is a {info['type']} checkpoint: it holds no policy to export")
    ids = list(info["policy_ids"])
    if policy_id is not None:
        if policy_id not in ids:
            raise UnknownPolicyError(policy_id, ids, path=checkpoint)
        ids = [policy_id]
    if not ids:
        raise AmberCliError(f"{checkpoint} holds no policies")
    policies = Policy.from_checkpoint(checkpoint, policy_ids=ids, allow_pickle=allow_pickle, pm=pm)
    if not isinstance(policies, dict):
        raise AmberCliError(f"{checkpoint} did not load as an algorithm checkpoint")
    single = len(ids) == 1
    return [(pid, policies[pid], directory if single else directory / pid) for pid in ids]


@cli.command("export")
@click.argument("checkpoint", type=LOCATION)
@click.argument("directory", type=LOCATION)
@click.option("--policy", "policy_id", metavar="ID",
              help="The policy to export from an algorithm checkpoint (default: all of them).")
@click.option("--onnx", "opset", type=click.IntRange(min=1), metavar="OPSET",
              help="Write model.onnx with this ONNX opset.")
@click.option("-f", "--format", "format_", metavar="NAME",
              help="An exporter (see `amber formats`): keras writes saved_model/ and model.keras.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An option of the --format exporter (repeatable); dotted keys reach into dicts; "
                   "VALUE is JSON, else a string.")
@trust_option
@click.pass_obj
def export_command(state: CliState, checkpoint: Path, directory: Path, policy_id: str | None,
                   opset: int | None, format_: str | None, options: tuple[str, ...],
                   allow_pickle: bool | None) -> None:
    """Export the network of a checkpoint's policy into DIRECTORY.

    Writes the native files (model.pt2) and model.json, or with --onnx
    model.onnx, or with --format keras saved_model/ and model.keras: files
    that load with their own runtime alone; -o KEY=VALUE gives the --format
    exporter an option. From an algorithm checkpoint with several policies
    and no --policy, each goes to DIRECTORY/<policy id>/.
    """
    from amber.registry import get_registry

    pm = state.get_pm()
    _check_outside_checkpoints(directory)
    given = _exporter_options(options, format_)
    if format_ is not None:  # an unknown name or option fails before anything is read
        from amber.export_options import check_declared

        registry = get_registry(pm)
        check_declared(registry.exporter(format_), given, registry.exporters[format_].plugin)
    targets = _targets(checkpoint, directory, policy_id, allow_pickle, pm)
    with _into_folders(directory, targets, pm):
        for pid, policy, target in targets:
            paths = policy.export_model(target, onnx=opset, format=format_, pm=pm, policy_id=pid, **given)
            names = ", ".join(Path(p).name + ("/" if Path(p).is_dir() else "") for p in paths)
            click.echo(f"exported {pid or 'policy'} -> {target}: {names}")


def _exporter_options(options: tuple[str, ...], format_: str | None) -> dict[str, Any]:
    """``-o KEY=VALUE`` options as a map (dotted keys reach into dicts, made as needed).

    :raises AmberCliError: one is not ``KEY=VALUE``, reaches into a value that is not a dict, names a
        parameter of the export itself, or is given without ``--format``.
    """
    import inspect

    from amber.algorithms.config_overrides import parse_override
    from amber.policy.policy import Policy

    if options and format_ is None:
        raise AmberCliError("-o gives options to the exporter --format names: name it (`amber formats` "
                            "lists the exporters)")
    own = set(inspect.signature(Policy.export_model).parameters) - {"self", "options"}
    out: dict[str, Any] = {}
    for text in options:
        try:
            path, value = parse_override(text)
        except ValueError as e:
            raise AmberCliError(f"-o {e}") from e
        if path[0] in own:
            raise AmberCliError(f"-o {text!r}: {path[0]} is not an exporter option (use the command's own "
                                "arguments)")
        node = out
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AmberCliError(f"-o {text!r}: {'.'.join(path[:i + 1])} is not a dict")
        node[path[-1]] = value
    return out


def _into_folders(directory: Path | str, targets: list[tuple[str | None, Any, Path]],
                  pm: pluggy.PluginManager) -> contextlib.AbstractContextManager[Any]:
    """For several policies, each exported into ``DIRECTORY/<policy id>/``: DIRECTORY's export lock
    held meanwhile, and the model an earlier export of one policy left at its top level removed
    afterwards (DIRECTORY never mixes two models). Else nothing."""
    from amber.export_dir import exporting_into_folders
    from amber.registry import get_registry
    from amber.storage import is_remote

    if is_remote(directory) or all(target == directory for _, _, target in targets):
        return contextlib.nullcontext()
    return exporting_into_folders(Path(directory), get_registry(pm))
