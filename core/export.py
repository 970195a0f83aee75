"""Writing an export: a policy's network as files that load with their own runtime alone.

:func:`export_model` picks exporters through the registry (by name, by a
keyword shorthand, or the one native to the graph's framework), has each
write its files into a staging directory inside the target directory,
checks what they wrote, writes ``model.json`` and moves everything into
place (:func:`amber.atomic.commit_entries`). It names no exporter, file or
framework: each :class:`amber.registry.ExporterSpec` declares its own.

The network itself is described by :mod:`amber.model_graph`, whose names
(``ModelGraph``, ``Dense``, ``weights_digest``...) this module re-exports.
This module imports numpy and amber's engine only (no deep-learning framework).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.atomic import commit_entries, staging
from amber.digest import hash_file
from amber.durable import describe
from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    ExportError,
    MissingPluginError,
    UnknownExporterError,
)
from amber.export_dir import (
    MODEL_JSON,
    carry_over,
    check_outside_checkpoints,
    check_replaceable,
    export_lock,
    prepare_dir,
    previous_export,
    remove_created,
)
from amber.export_options import checked_options
from amber.model_graph import (
    ACTIVATIONS,
    OUTPUT_KINDS,
    Dense,
    ModelGraph,
    Output,
    Preprocess,
    action_rule,
    greedy_action,
    strict_json,
    weights_digest,
)
from amber.verified_io import describe_mode, open_regular

if TYPE_CHECKING:
    import pluggy

    from amber.registry import ExporterSpec, FormatRegistry

__all__ = [
    "ACTIVATIONS",
    "MODEL_JSON",
    "NATIVE_OPTION",
    "OUTPUT_KINDS",
    "Dense",
    "ExportError",
    "ModelGraph",
    "Output",
    "Preprocess",
    "action_rule",
    "export_model",
    "greedy_action",
    "plan_exports",
    "strict_json",
    "weights_digest",
]

#: What ``model.json``'s ``format_version`` is now.
MODEL_JSON_VERSION = 1
#: The option (True) an exporter gets when ``export_model(dir)`` picked it for the native files of
#: the graph's framework, not by name (recorded in ``model.json`` like any option): it may then
#: write that framework's own layout (as RLlib's policies write their native files).
NATIVE_OPTION = "native"

Job = tuple["ExporterSpec", dict[str, Any]]


def _requested(value: Any) -> bool:
    """Whether a shorthand's value asks for its exporter: not None, False or 0 (as in RLlib)."""
    if value is None:
        return False
    return not (isinstance(value, (bool, int, np.integer)) and value == 0)


def plan_exports(
    registry: FormatRegistry, graph: ModelGraph, format: str | None, shorthands: Mapping[str, Any]
) -> list[Job]:
    """The exporters to run, each with its options; fails before anything is written.

    :param format: an exporter's name, or None.
    :param shorthands: keywords and their values (``{KEYWORD: VALUE}``): an exporter's keyword
        shorthand picks it (a value of None, False or 0 asks for nothing); any other keyword is an
        option of the exporter ``format`` names, which must declare it
        (:func:`amber.export_options.checked_options`).
    :return: the shorthands' exporters, then ``format``'s; with neither, the
        exporter native to ``graph.framework``, with the option :data:`NATIVE_OPTION`.
    :raises UnknownExporterError: an unknown name, a keyword that is no shorthand without
        ``format``, or no exporter native to the framework.
    :raises ExportError: nothing asked for, and the graph names no framework; an option the exporter
        does not declare, is no JSON value or contradicts the shorthand's.
    """
    jobs: dict[str, Job] = {}
    by_keyword = {p.item.shorthand: p.item for p in registry.exporters.values() if p.item.shorthand}
    given: dict[str, Any] = {}
    for keyword, value in shorthands.items():
        spec = by_keyword.get(keyword)
        if spec is None:
            if format is not None:
                given[keyword] = value  # an option of format's exporter
            elif _requested(value):
                _unknown_keyword(registry, keyword)
        elif _requested(value):
            plain = value.item() if isinstance(value, np.generic) else value
            jobs[spec.name] = (spec, {str(spec.shorthand_option): plain})
    if format is not None:
        spec = registry.exporter(str(format))
        base = jobs.get(spec.name, (spec, {}))[1]
        plugin = registry.exporters[spec.name].plugin
        jobs[spec.name] = (spec, checked_options(spec, given, base, plugin) if given else base)
    if not jobs:
        if graph.framework is None:
            known = ", ".join(sorted(registry.exporters))
            raise ExportError("the graph names no framework, so there are no native files to write: "
                              f"pick an exporter with format=NAME (known: {known})")
        spec = registry.native_exporter(graph.framework)
        jobs[spec.name] = (spec, {NATIVE_OPTION: True})
    return list(jobs.values())


def _unknown_keyword(registry: FormatRegistry, keyword: str) -> None:
    """:raises UnknownExporterError: ``keyword`` is no exporter's shorthand (the known ones listed)."""
    try:
        registry.shorthand(keyword)
    except UnknownExporterError as e:
        e.message = f"{e.message}; an exporter's options go with format=NAME (format=NAME, {keyword}=...)"
        e.args = (e.message,)
        raise


def _check_written(stage: Path, files: Sequence[Path], spec: ExporterSpec) -> list[str]:
    """The top-level names an exporter wrote; refuses links, paths outside ``stage`` and undeclared names."""
    names = []
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() else stage / p
        try:
            rel = p.relative_to(stage)
        except ValueError:
            raise ExportError(f"exporter {spec.name!r} reported {p}, outside the export directory",
                              path=stage.parent) from None
        if not rel.parts or rel.parts[0] in (MODEL_JSON, "..") or not (stage / rel.parts[0]).exists():
            raise ExportError(f"exporter {spec.name!r} reported a file it did not write: {rel}",
                              path=stage.parent)
        if spec.files and spec.file(rel.parts[0]) is None:
            raise ExportError(f"exporter {spec.name!r} wrote {rel.parts[0]}, which is not among the files "
                              f"it declares ({', '.join(f.name for f in spec.files)})", path=stage.parent)
        names.append(rel.parts[0])
    for dirpath, dirnames, filenames in os.walk(stage):
        for name in dirnames + filenames:
            mode = os.lstat(Path(dirpath) / name).st_mode
            if stat.S_ISLNK(mode):
                raise ExportError(f"exporter {spec.name!r} wrote a symbolic link ({name}); refused",
                                  path=stage.parent)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ExportError(f"exporter {spec.name!r} wrote {name}, which is {describe_mode(mode)}, "
                                  "not a regular file; refused", path=stage.parent)
    return list(dict.fromkeys(names))


def _paths_returned(files: Any, named: str, stage: Path, plugin: str) -> list[Path]:
    """What an exporter's ``export`` returned, as paths: a list (or tuple) of paths is required.

    :raises ExportError: anything else, naming the exporter (``named``)."""
    if not isinstance(files, (list, tuple)):
        raise ExportError(f"{named} returned {type(files).__name__} {files!r:.60} from export(), not a list "
                          "of the paths it wrote; nothing was changed", path=stage.parent, plugin=plugin)
    bad = next((f for f in files if not isinstance(f, (str, os.PathLike))), None)
    if bad is not None:
        raise ExportError(f"{named} returned {type(bad).__name__} {bad!r:.60} among the paths it wrote, "
                          "not a path; nothing was changed", path=stage.parent, plugin=plugin)
    return [Path(f) for f in files]


def _hash(path: Path, stage: Path) -> tuple[int, str]:
    """Size and digest of a file an exporter wrote, opened without following links or blocking."""
    try:
        fd = open_regular(path)
    except CorruptCheckpointError as e:
        raise ExportError(f"cannot read what the exporter wrote: {e.message}", path=stage.parent) from e
    try:
        return hash_file(fd)
    finally:
        os.close(fd)


def _file_facts(spec: ExporterSpec, path: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """``model.json``'s entry for one written file or directory: who wrote it, how it loads, its digest."""
    facts: dict[str, Any] = {"exporter": spec.name}
    declared = spec.file(path.name)
    if declared is not None:
        if declared.runtime:
            facts["runtime"] = declared.runtime
        facts["load"] = declared.load
    facts.update({k: v for k, v in options.items() if k not in facts})
    if path.is_dir():
        contents = {}
        for dirpath, _, filenames in os.walk(path):
            for name in sorted(filenames):
                f = Path(dirpath) / name
                size, digest = _hash(f, path.parent)
                contents[f.relative_to(path).as_posix()] = {"size": size, "digest": digest}
        facts["contents"] = dict(sorted(contents.items()))
    else:
        facts["size"], facts["digest"] = _hash(path, path.parent)
    return facts


def _run_exporters(
    jobs: Sequence[Job], graph: ModelGraph, stage: Path, registry: FormatRegistry
) -> dict[str, dict[str, Any]]:
    """Run each exporter into ``stage``; ``model.json``'s entries of what they wrote, by top-level name."""
    written: dict[str, dict[str, Any]] = {}
    for spec, options in jobs:
        plugin = registry.exporters[spec.name].plugin
        named = f"the {spec.name!r} exporter (plugin {plugin!r})"
        try:
            files = spec.export(graph, stage, options)
        except ImportError as e:  # a dependency of the exporter's extra is missing
            raise MissingPluginError(f"the {spec.name!r} exporter cannot run: {e}; {spec.install_hint}",
                                     plugin=plugin) from e
        except CheckpointError as e:
            e.plugin = e.plugin or plugin
            raise
        except OSError as e:  # a full or read-only disk, or the exporter's own fault: it is named
            raise ExportError(f"exporting into {stage.parent} failed: {describe(e)} (in {named}); nothing "
                              "was changed", path=stage.parent, plugin=plugin) from e
        except Exception as e:
            raise ExportError(f"{named} failed: {type(e).__name__}: {e}; nothing was changed",
                              path=stage.parent, plugin=plugin) from e
        for top in _check_written(stage, _paths_returned(files, named, stage, plugin), spec):
            written[top] = _file_facts(spec, stage / top, options)
    return written


def _model_json(graph: ModelGraph, digest: str, files: Mapping[str, Any], policy_id: str | None
                ) -> dict[str, Any]:
    from amber import __version__

    content: dict[str, Any] = {
        "format_version": MODEL_JSON_VERSION,
        "producer": {"name": "amber", "version": __version__},
        **({"policy_id": policy_id} if policy_id is not None else {}),
        "files": dict(files),
        "weights_digest": digest,
        **graph.describe(),
        "output_names": graph.output_names,
    }
    act = action_rule(graph.info)
    if act is not None:
        content["act"] = act
    return content


def export_model(
    graph: ModelGraph,
    directory: str | os.PathLike[str],
    *,
    format: str | None = None,
    pm: pluggy.PluginManager | None = None,
    storage_options: Mapping[str, Any] | None = None,
    policy_id: str | None = None,
    **shorthands: Any,
) -> list[Path]:
    """Export a policy's network as files that load with their own runtime alone.

    With no exporter asked for, the native files of ``graph.framework`` (the exporter whose
    ``native_for`` names it); ``format=NAME``: what the exporter ``NAME`` writes; a keyword
    shorthand of an exporter (``KEYWORD=VALUE``) picks it with that option, and a value of
    None, False or 0 asks for nothing; with ``format=NAME``, other keywords are options ``NAME``
    declares (``ExporterSpec.options``). ``model.json`` is always written: the architecture,
    spaces, outputs and how to act from them, and each file with its exporter and digest.

    Every file is written in a staging directory inside ``directory`` and moved into
    place; model files of an earlier export of *other* weights that this export does not
    replace are removed (only names an exporter declares). Nothing is written outside
    ``directory``, and a ``directory`` (or a file to replace in it) that is a symbolic link
    is refused; so is a ``directory`` that is, or lies inside, a checkpoint, and an entry to
    replace that no earlier export wrote (a directory of other files:
    :func:`amber.export_dir.check_replaceable`). Exports into one ``directory``
    hold its lock (:func:`amber.export_dir.export_lock`): one at a time, each whole.

    :param graph: the network (``policy.export_graph()``).
    :param directory: where to write; created if missing. An fsspec URL: exported locally, then
        uploaded (``model.json`` last; ``storage_options`` go to its file system).
    :param format: a registered exporter's name (``amber formats`` lists them).
    :param pm: the plugin manager (default: the process's).
    :param policy_id: the id of the policy exported, recorded in ``model.json`` (``load_policy``
        of the export gives it that id); None records none.
    :param shorthands: exporters' keyword shorthands and their values, and ``format``'s options.
    :return: the paths written, ``model.json`` last.
    :raises UnknownExporterError: no exporter of that name, keyword or framework.
    :raises MissingPluginError, ExportError: the exporter's extra is missing; the directory is
        refused, an option is undeclared, or an exporter failed or returned no list (named).
    """
    from amber.registry import get_registry
    from amber.storage import is_remote, local_path

    if is_remote(directory):
        return _export_remote(graph, os.fspath(directory), format, pm, storage_options,
                              {**shorthands, "policy_id": policy_id})
    registry = get_registry(pm)
    jobs = plan_exports(registry, graph, format, shorthands)
    target = local_path(directory).absolute()  # a file:// URL too; exporters report absolute paths
    if policy_id is not None and not isinstance(policy_id, str):
        raise TypeError(f"policy_id must be a str or None, not {type(policy_id).__name__}")
    check_outside_checkpoints(target)
    created = prepare_dir(target)
    try:
        with export_lock(target):  # another export into target waits: each replaces the other whole
            return _export_into(target, graph, jobs, registry, policy_id)
    except BaseException:
        remove_created(created)  # a failed export leaves no directory behind it either
        raise


def _export_into(target: Path, graph: ModelGraph, jobs: Sequence[Job], registry: FormatRegistry,
                 policy_id: str | None) -> list[Path]:
    """:func:`export_model` into the existing directory ``target``, whose lock the caller holds:
    all of it, or nothing."""
    previous = previous_export(target)
    digest = weights_digest(graph)
    try:
        with staging(target, inside=True, what="an export", error=ExportError) as stage:
            written = _run_exporters(jobs, graph, stage, registry)
            kept, stale = carry_over(previous, digest, written, target, registry)
            check_replaceable(target, [*written, *stale], previous)
            with open(stage / MODEL_JSON, "w") as f:
                json.dump(strict_json(_model_json(graph, digest, {**kept, **written}, policy_id)), f,
                          indent=2, allow_nan=False)
                f.write("\n")
            commit_entries(stage, target, [*written, MODEL_JSON], remove=stale)
    except OSError as e:
        raise ExportError(f"exporting into {target} failed: {describe(e)}; nothing was changed",
                          path=target) from e
    return [target / top for top in written] + [target / MODEL_JSON]


def _export_remote(graph: ModelGraph, url: str, format: str | None, pm: pluggy.PluginManager | None,
                   storage_options: Mapping[str, Any] | None, shorthands: Mapping[str, Any]) -> list[Path]:
    """:func:`export_model` to a URL: exported in a temporary directory, then uploaded."""
    import tempfile

    from amber.storage import Remote, transfer

    remote = Remote(url, storage_options)
    with tempfile.TemporaryDirectory(prefix="amber-export-") as tmp:
        written = export_model(graph, tmp, format=format, pm=pm, **shorthands)
        rels = sorted((p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file()),
                      key=lambda rel: rel == MODEL_JSON)  # model.json, which lists the rest, last
        for rel in rels:
            transfer(remote, "uploading the export to",
                     lambda rel=rel: remote.fs.put_file(str(Path(tmp) / rel), remote.key(rel)))
        return [f"{remote.url}/{Path(p).relative_to(tmp).as_posix()}" for p in written]  # type: ignore[misc]
