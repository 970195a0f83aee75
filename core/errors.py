"""The errors amber raises.

Every error about a checkpoint, a format or a plugin derives from
:class:`CheckpointError`. Each carries the path it concerns (``.path``), and
where known the format (``.format``) and the plugin (``.plugin``) involved,
and its message names the path.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator

__all__ = [
    "warn",
    "CheckpointError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "DuplicateFormatError",
    "ExportError",
    "IncompatibleCodeError",
    "InvalidIdError",
    "InvalidStateError",
    "MigrationError",
    "MissingPluginError",
    "MissingStorageError",
    "NotACheckpointError",
    "PluginLoadError",
    "SigningKeyError",
    "StateChangedError",
    "StorageError",
    "UnknownExporterError",
    "UnknownFormatError",
    "UnknownPolicyError",
    "UnsafeContentError",
    "UnserializableStateError",
    "UnregisteredNameError",
    "DuplicateNameError",
    "UnsupportedVersionError",
]


class CheckpointError(Exception):
    """Base class of every amber error.

    :param message: what went wrong and, where there is one, the way out.
    :param path: the file or directory concerned; appended to the message.
    :param format: the format name involved, if any.
    :param plugin: the plugin name involved, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        format: str | None = None,
        plugin: str | None = None,
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.format = format
        self.plugin = plugin
        super().__init__(message)

    def __str__(self) -> str:
        if self.path is not None and self.path not in self.message:
            return f"{self.message} (path: {self.path})"
        return self.message


class NotACheckpointError(CheckpointError):
    """The path holds no amber checkpoint (no checkpoint.json, or not a directory)."""


class CorruptCheckpointError(CheckpointError):
    """A file is truncated, altered, malformed, missing or not what its manifest says."""


class UnsupportedVersionError(CheckpointError):
    """The checkpoint's version is newer than, or unknown to, this amber."""


class MigrationError(CheckpointError):
    """A migration step failed or the migration chain is broken."""


class UnsafeContentError(CheckpointError):
    """Content that can run code was refused: safe loading is on, or no signature this user trusts
    vouches for it (see docs/security.md)."""


class SigningKeyError(CheckpointError):
    """The user's signing key cannot be created or read, or its file is not private to the user."""


class ExportError(CheckpointError):
    """A model export was refused or failed; nothing in its directory was changed."""


class UnserializableStateError(CheckpointError):
    """A value in a state tree cannot be written in the chosen format."""


class InvalidIdError(CheckpointError, ValueError):
    """An id that becomes a path component (a policy id) is not allowed."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, read-only directory...); nothing was left behind."""


class StateChangedError(CheckpointWriteError):
    """A background save's state was changed in place before the save had copied it (code that
    writes weights itself must call :func:`amber.async_save.wait_for_snapshot` first); nothing
    was written."""


class PluginLoadError(CheckpointError):
    """A plugin failed to import or to register."""


class DuplicateFormatError(PluginLoadError):
    """Two plugins register a format (or exporter) under the same name."""


class MissingPluginError(CheckpointError):
    """A checkpoint or call needs a plugin (or an extra) that is not installed."""


class InvalidStateError(CheckpointError):
    """A checkpoint's state is intact but does not fit what loads it (keys, types, shapes, sizes)."""


class StorageError(CheckpointError, OSError):
    """Remote storage (an fsspec URL) failed: unreachable, refused, or cut off mid-transfer."""


class MissingStorageError(MissingPluginError):
    """A URL whose file system is not installed (``s3://`` without the ``s3`` extra) or unknown."""


#: How to install the modules amber's own code needs that an install with ``--no-deps`` leaves out.
_INSTALL = {"torch": "pip install torch", "gymnasium": "pip install gymnasium"}


def missing_module(
    error: ImportError, what: str, path: str | os.PathLike[str] | None = None
) -> MissingPluginError:
    """The error of ``what`` (``"training"``, ``"loading its policy state"``) failing for want of
    a module that cannot be imported (``error``): a :class:`MissingPluginError` naming the module
    and how to install it, not a fault of the checkpoint."""
    module = (error.name or "").partition(".")[0]
    message = f"{os.fspath(path)}: " if path is not None else ""
    if module in _INSTALL:
        message += (f"{what} needs {module}, which cannot be imported here ({error}): install it with: "
                    f"{_INSTALL[module]}. Without torch and gymnasium (a serving install, see "
                    "docs/serving.md), amber serves policies with amber.serve.load_policy")
    elif module:
        message += (f"{what} needs the module {module!r}, which cannot be imported here ({error}): "
                    f"install the package that provides it")
    else:
        message += f"{what} needs a module that cannot be imported here: {error}"
    return MissingPluginError(message, path=path)


@contextlib.contextmanager
def state_errors(path: str | os.PathLike[str] | None, what: str = "its state") -> Iterator[None]:
    """Turn any error raised while building or applying a checkpoint's state into an
    :class:`InvalidStateError` naming the path (a :class:`CheckpointError` passes through,
    given the path if it named none); a module that cannot be imported (torch on a serving host)
    is a :class:`MissingPluginError` naming it (:func:`missing_module`)."""
    try:
        yield
    except CheckpointError as e:
        if e.path is None and path is not None:
            e.path = os.fspath(path)
        raise
    except ImportError as e:
        raise missing_module(e, f"loading {what}", path) from e
    except Exception as e:
        raise InvalidStateError(f"{path}: {what} does not fit what loads it: {type(e).__name__}: {e}",
                                path=path) from e


class UnregisteredNameError(CheckpointError, LookupError):
    """A checkpoint refers to a class or function by a name this process has not registered."""


class IncompatibleCodeError(UnregisteredNameError):
    """A checkpoint's state names a module, class or function that the installed code lacks: it
    was written by other code (another version, or another environment), and is not damaged.

    :param module: the module named.
    :param name: the name missing from it (None: the module itself cannot be imported).
    """

    def __init__(self, message: str, *, module: str | None = None, name: str | None = None,
                 path: str | os.PathLike[str] | None = None, format: str | None = None) -> None:
        self.module = module
        self.name = name
        super().__init__(message, path=path, format=format)


class ChangedWhileReadError(CheckpointError):
    """Another save replaced the checkpoint while it was read (no damage): read it again. The CLI's
    commands read it again by themselves, twice at most."""


class DuplicateNameError(CheckpointError, ValueError):
    """Two different objects were registered under the same name."""


class _KeyErrorMixin(KeyError):
    # KeyError.__str__ quotes its argument; keep the readable message.
    def __str__(self) -> str:
        return CheckpointError.__str__(self)  # type: ignore[arg-type]


class UnknownFormatError(CheckpointError, _KeyErrorMixin):
    """A format name that no plugin registers; the message lists the known names."""

    def __init__(
        self,
        name: str,
        known: Iterable[str],
        *,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.known = sorted(known)
        msg = f"unknown format {name!r}; known formats: {', '.join(self.known) or '(none)'}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg, path=path, format=name)


class UnknownExporterError(CheckpointError, _KeyErrorMixin):
    """An exporter name that no plugin registers; the message lists the known names."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown exporter {name!r}; known exporters: {', '.join(self.known) or '(none)'}"
        )


class UnknownPolicyError(CheckpointError, _KeyErrorMixin):
    """A policy id that the checkpoint does not hold; the message lists the ids present."""

    def __init__(
        self, policy_id: str, present: Iterable[str], *, path: str | os.PathLike[str] | None
    ) -> None:
        self.policy_id = policy_id
        self.present = sorted(present)
        super().__init__(
            f"policy {policy_id!r} is not in this checkpoint; policies present: "
            f"{', '.join(self.present) or '(none)'}",
            path=path,
        )


#: Modules whose frames a warning skips to reach the caller's code: amber's own, and what calls it.
_INNER = ("amber", "pluggy", "contextlib", "functools", "threading", "concurrent")


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``message`` as a warning attributed to the first frame of the caller's code, outside
    amber (and the hook and context-manager machinery between them), whatever the depth of the call."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INNER:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
