"""Reading one state file through its format, each failure said as what it is.

:func:`read_state` has a format read a manifest's state through the engine's
:class:`amber.verified_io.Source` (every byte checked against its digest) and
turns what the format raises into an error that says why: the format's own
dependency missing (:class:`MissingPluginError`), code the file names that is
not installed here, or a file of a format tied to its writer's Python read
by another Python (:class:`IncompatibleCodeError`: the file is intact), else
damage (:class:`CorruptCheckpointError`).
"""

from __future__ import annotations

import dis
import platform
import re
import sys
from typing import Any

from amber import __version__
from amber.errors import CheckpointError, CorruptCheckpointError, IncompatibleCodeError, MissingPluginError
from amber.layout import STATE_STEMS, Manifest, Source
from amber.registry import FormatSpec, StateSource

__all__ = ["other_python", "read_state", "running", "written_by"]

#: The major and minor version at the start of a recorded Python version (``"3.11"`` of ``"3.11.7"``).
_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)(?:[.+a-z]|$)")
#: A recorded version that is shown in a message (anything else is left out).
_VERSION = re.compile(r"[0-9A-Za-z.+!_-]{1,64}")


def other_python(written: str | None) -> str | None:
    """``"X.Y"`` when the Python version ``written`` (a checkpoint.json's ``python_version``) is
    another major.minor than the running Python's, whose bytecode and internals differ;
    None when it is the same, or unknown (not recorded, or not a version).

    :param written: the recorded version, such as ``"3.11.7"``.
    """
    found = _MAJOR_MINOR.match(written) if isinstance(written, str) else None
    if found is None or (int(found[1]), int(found[2])) == sys.version_info[:2]:
        return None
    return f"{found[1]}.{found[2]}"


def read_state(manifest: Manifest, spec: FormatSpec) -> Any:
    """The state of ``manifest``, read by the format ``spec`` from its verified file.

    :raises CorruptCheckpointError: the state file is not the format's, or the format fails on it.
    :raises IncompatibleCodeError: the file names code not importable here, or a format not
        portable across Python versions fails on a file another Python version wrote.
    :raises MissingPluginError: the format's own dependency cannot be imported.
    """
    stem = STATE_STEMS[manifest.type]
    if manifest.state_file != f"{stem}{spec.extension}":
        raise CorruptCheckpointError(
            f"{manifest.path}: state_file {manifest.state_file!r} does not match format "
            f"{spec.name!r} (expected {stem}{spec.extension})",
            path=manifest.path,
        )
    source = Source(manifest, stem, spec.extension)
    try:
        return spec.read(source)
    except CheckpointError:
        raise
    except ImportError as e:
        if _named_by_content(e, spec):
            raise IncompatibleCodeError(
                f"{source.path} holds a class, function or object defined in the module {e.name!r}, "
                f"which cannot be imported here ({e}): make that module importable (install it, or put "
                "its directory on sys.path) and load again. A checkpoint saved after amber.register_class "
                "of those classes and functions refers to them by registered name instead",
                module=e.name, path=source.path, format=spec.name,
            ) from e
        raise MissingPluginError(  # the format's own dependencies are missing, not the file damaged
            f"format {spec.name!r} cannot read {source.path}: {e}; {spec.install_hint}",
            path=source.path, format=spec.name,
        ) from e
    except Exception as e:  # any failure of a format on bytes that passed the digest
        if not spec.capabilities.portable and (writer := other_python(source.python_version)):
            raise _other_python(source, spec, writer, e) from e
        raise CorruptCheckpointError(
            f"{source.path}: cannot be read as {spec.name!r}: {type(e).__name__}: {e}",
            path=source.path, format=spec.name,
        ) from e


def _other_python(source: Source, spec: FormatSpec, writer: str, error: Exception) -> IncompatibleCodeError:
    """The error of a format tied to its writer's Python that failed on a file, intact (its digest
    verified), that Python ``writer`` (major.minor) wrote."""
    return IncompatibleCodeError(
        f"{source.path} was written by {written_by(source)} in format {spec.name!r}, which is not "
        f"portable across Python versions, and this {running()} cannot read it ({type(error).__name__}: "
        f"{error}). The file is intact (its digest matches): load it with Python {writer} and convert it "
        "there to a portable format (`amber convert CKPT DST --format NAME`, `amber formats` lists them; "
        "functions and classes registered by name with amber.register_class: see docs/checkpoints.md), "
        "then load the copy here",
        path=source.path, format=spec.name,
    )


def written_by(source: StateSource) -> str:
    """``amber A on Python P``: who wrote the checkpoint, as its checkpoint.json records it (a
    version that is not a plain version string is left out)."""
    amber_v, python_v = (getattr(source, key, None) for key in ("amber_version", "python_version"))
    parts = [f"amber {amber_v}" if isinstance(amber_v, str) and _VERSION.fullmatch(amber_v) else "",
             f"Python {python_v}" if isinstance(python_v, str) and _VERSION.fullmatch(python_v) else ""]
    return " on ".join(p for p in parts if p) or "an unknown amber and Python"


def running() -> str:
    """``amber A on Python P``: this process's versions."""
    return f"amber {__version__} on Python {platform.python_version()}"


def _named_by_content(error: ImportError, spec: FormatSpec) -> bool:
    """Whether ``error`` is the import of a module the state file names (a format that holds any
    object imports the module of each class or function in it) rather than of the format's own
    dependency: not an import statement of the format's plugin itself."""
    if not spec.capabilities.arbitrary_objects or not error.name:
        return False
    own = spec.read.__module__
    package = (own.rpartition(".")[0] or own) + "."
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == own or module.startswith(package):
            at = next((i for i in dis.get_instructions(tb.tb_frame.f_code) if i.offset == tb.tb_lasti), None)
            if at is not None and at.opname in ("IMPORT_NAME", "IMPORT_FROM"):  # the plugin's own
                return False
        tb = tb.tb_next
    return True
