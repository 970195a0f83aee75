"""Checkpoint versions and migrations: the one module that knows them.

A checkpoint says which ``checkpoint_version`` wrote it. This amber writes
:data:`CHECKPOINT_VERSION` and reads every version that a chain of
migration steps leads from. A step (:class:`Migration`) is a pure function
from one version's :class:`CheckpointTrees` (the manifest and the state
trees) to the next's; steps come from plugins through the
``amber_register_migrations`` hook (amber's own live in
``amber.plugins.migrations``, as a third party's would). Loaders migrate in
memory and never rewrite the source; :func:`amber.migrate` writes the result.

The version is checked before any digest, so a checkpoint from a newer
amber is named as such even if its integrity scheme changed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amber.errors import MigrationError, UnsupportedVersionError

if TYPE_CHECKING:
    from amber.registry import Provided

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointTrees",
    "Migration",
    "apply_chain",
    "check_not_newer",
    "is_newer",
    "plan",
    "supported_versions",
]

#: The checkpoint_version this amber writes.
CHECKPOINT_VERSION = "2.2"


@dataclass(frozen=True)
class CheckpointTrees:
    """What a migration step reads and returns: one checkpoint, in memory.

    :param type: ``"Algorithm"``, ``"Policy"`` or ``"State"``.
    :param manifest: the top level's checkpoint.json content (read only).
    :param state: the top level's state tree.
    :param policies: for an Algorithm, each policy's state tree by id (those read).
    """

    type: str
    manifest: Mapping[str, Any]
    state: Any
    policies: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> CheckpointTrees:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Migration:
    """One step from a checkpoint version to the next, registered through ``amber_register_migrations``.

    :param from_version: the checkpoint_version it reads.
    :param to_version: the checkpoint_version it produces.
    :param apply: a pure function: ``apply(trees) -> trees``; it must not modify its input.
    :param description: what it changes, one line per change (shown by ``amber migrate --dry-run``).
    """

    from_version: str
    to_version: str
    apply: Callable[[CheckpointTrees], CheckpointTrees]
    description: str = ""

    @property
    def name(self) -> str:
        """``"<from> -> <to>"``."""
        return f"{self.from_version} -> {self.to_version}"


def _numeric(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return None


def is_newer(version: str, than: str = CHECKPOINT_VERSION) -> bool:
    """Whether ``version`` is a numeric version above ``than``."""
    a, b = _numeric(version), _numeric(than)
    return a is not None and b is not None and a > b


def check_not_newer(raw: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a manifest written by a newer amber (called before its digests are checked).

    :raises UnsupportedVersionError: naming the version and the amber that wrote it.
    """
    version = raw.get("checkpoint_version")
    if isinstance(version, str) and is_newer(version):
        writer = raw.get("amber_version")
        raise UnsupportedVersionError(
            f"{path} has checkpoint_version {version!r}"
            + (f", written by amber {writer}" if isinstance(writer, str) else "")
            + f"; this amber reads versions up to {CHECKPOINT_VERSION!r}: upgrade amber to read it",
            path=path,
        )


def _steps(migrations: Iterable[Provided]) -> dict[str, tuple[Migration, str]]:
    """Steps by from_version; two plugins stepping from the same version is an error."""
    out: dict[str, tuple[Migration, str]] = {}
    for provided in migrations:
        step = provided.item
        if step.from_version in out and out[step.from_version][0] != step:
            other = out[step.from_version][1]
            raise MigrationError(
                f"two migration steps start at checkpoint_version {step.from_version!r}: "
                f"{out[step.from_version][0].name} (plugin {other!r}) and {step.name} "
                f"(plugin {provided.plugin!r}); uninstall one"
            )
        out[step.from_version] = (step, provided.plugin)
    return out


def plan(
    from_version: str, to_version: str, migrations: Iterable[Provided], *, path: Any = None
) -> list[Migration]:
    """The steps leading from ``from_version`` to ``to_version`` (empty when equal).

    :raises UnsupportedVersionError: ``to_version`` is unknown, older than ``from_version``
        (migrations only upgrade), one this amber would refuse to read (newer than
        :data:`CHECKPOINT_VERSION`, or leading to it by no chain), or no chain leads there.
    """
    migrations = list(migrations)
    steps = _steps(migrations)
    if to_version != CHECKPOINT_VERSION:
        _check_readable_target(to_version, migrations, steps, path)
    chain: list[Migration] = []
    version = from_version
    while version != to_version:
        found = steps.get(version)
        if found is None or len(chain) > len(steps):
            raise _no_chain(from_version, to_version, migrations, steps, path)
        chain.append(found[0])
        version = found[0].to_version
    return chain


def _check_readable_target(to_version: str, migrations: list[Provided],
                           steps: Mapping[str, tuple[Migration, str]], path: Any) -> None:
    """Refuse a known target this amber would refuse to read back (a plugin's step beyond
    :data:`CHECKPOINT_VERSION`): migrating there would leave a checkpoint no load accepts.
    An unknown target is left to :func:`_no_chain`, which names it as such."""
    if to_version not in {step.to_version for step, _ in steps.values()}:
        return
    if is_newer(to_version) or to_version not in supported_versions(migrations):
        why = "is newer than" if is_newer(to_version) else "does not migrate to"
        what = "" if path is None else f" {path}"
        raise UnsupportedVersionError(
            f"refusing to migrate{what} to checkpoint_version {to_version!r}: it {why} "
            f"{CHECKPOINT_VERSION!r}, the version this amber writes, so this amber could not read "
            f"the result; pick a target up to {CHECKPOINT_VERSION!r}", path=path)


def _no_chain(from_version: str, to_version: str, migrations: list[Provided],
              steps: Mapping[str, tuple[Migration, str]], path: Any) -> UnsupportedVersionError:
    """Why no chain of steps leads from ``from_version`` to ``to_version``: an unknown target,
    a target older than the source, or a source this amber does not read."""
    targets = sorted({CHECKPOINT_VERSION, *(step.to_version for step, _ in steps.values())})
    if to_version not in targets:
        return UnsupportedVersionError(
            f"unknown target version {to_version!r}; known: {', '.join(targets)}", path=path)
    version, seen = to_version, 0  # the source is reached from the target: backwards
    while version in steps and version != from_version and seen <= len(steps):
        version, seen = steps[version][0].to_version, seen + 1
    if version == from_version:
        return UnsupportedVersionError(
            f"cannot migrate backwards from {from_version} to {to_version} (migrations only upgrade)",
            path=path)
    known = supported_versions(migrations, to_version)
    return UnsupportedVersionError(
        f"{path} has checkpoint_version {from_version!r}; this amber reads "
        f"{', '.join(repr(v) for v in known)} into {to_version!r}"
        + (" - upgrade amber to read it" if is_newer(from_version, to_version) else ""),
        path=path,
    )


def supported_versions(migrations: Iterable[Provided], to_version: str = CHECKPOINT_VERSION) -> list[str]:
    """Every version that migrates to ``to_version``, itself included."""
    migrations = list(migrations)
    steps = _steps(migrations)
    found = {to_version}
    for start in steps:
        version, seen = start, 0
        while version in steps and version != to_version and seen <= len(steps):
            version, seen = steps[version][0].to_version, seen + 1
        if version == to_version:
            found.add(start)
    return sorted(found)


def apply_chain(trees: CheckpointTrees, chain: Iterable[Migration], *, path: Path | str) -> CheckpointTrees:
    """Apply ``chain`` in order; each step gets the previous step's output.

    :raises MigrationError: a step failed, returned something else, or added or dropped
        policies (named).
    """
    for step in chain:
        try:
            out = step.apply(trees)
        except Exception as e:
            raise MigrationError(
                f"migration {step.name} failed on {path}: {type(e).__name__}: {e}", path=path
            ) from e
        if not isinstance(out, CheckpointTrees):
            raise MigrationError(
                f"migration {step.name} returned {type(out).__name__}, not CheckpointTrees", path=path
            )
        if set(out.policies) != set(trees.policies):
            raise MigrationError(
                f"migration {step.name} changed the set of policies of {path}"
                + "".join(f"; {what} {', '.join(map(repr, sorted(ids, key=str)))}" for what, ids in (
                    ("dropped", set(trees.policies) - set(out.policies)),
                    ("added", set(out.policies) - set(trees.policies))) if ids)
                + ": a step may change each policy's state, never which policies there are", path=path)
        trees = out
    return trees


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: From how many keys of one map a step removes, they are listed on one line.
_GROUPED = 4


def changes(before: Any, after: Any, path: str = "", limit: int = 200) -> list[str]:
    """What a step changed, as ``"key.path: old -> new"`` lines (steps rebuild only what they change,
    so unchanged subtrees are the very same objects and are skipped); :data:`_GROUPED` or more keys
    removed from one map make one line, ``"key.path: removed N keys: a, b, ..."``."""
    out: list[str] = []
    stack: list[tuple[str, Any, Any]] = [(path, before, after)]
    while stack and len(out) < limit:
        where, a, b = stack.pop()
        if a is b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            removed = [str(key) for key in a if key not in b]
            if len(removed) >= _GROUPED:
                out.append(f"{where or '(root)'}: removed {len(removed)} keys: {', '.join(removed)}")
            for key in reversed([*a, *(k for k in b if k not in a)]):
                sub = f"{where}.{key}" if where else str(key)
                if key not in b:
                    if len(removed) < _GROUPED:
                        out.append(f"{sub}: removed")
                elif key not in a:
                    out.append(f"{sub}: added {_short(b[key])}")
                else:
                    stack.append((sub, a[key], b[key]))
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            pairs = list(zip(range(len(a)), a, b, strict=True))
            stack.extend((f"{where}[{i}]", x, y) for i, x, y in reversed(pairs))
        elif not (type(a) is type(b) and _same_leaf(a, b)):
            out.append(f"{where or '(root)'}: {_short(a)} -> {_short(b)}")
    return out


def _same_leaf(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays compare elementwise
        return False
