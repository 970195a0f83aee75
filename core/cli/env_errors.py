"""The errors of building an algorithm's environment, or of a missing optional dependency, as one
line (``amber: error: ...``, exit 2) rather than a traceback.

Only these families are caught: an error raised by the env's own code or by gymnasium while
:func:`amber.envs.make_env` builds it (a module that does not import, an unknown gymnasium id, a
missing dependency such as Box2D, a constructor refusing its ``env_config``), gymnasium's own
errors, and :class:`~amber.models.keras_mlp.MissingFrameworkError` (the tf2 framework without
``amber-rl[keras]``). Anything raised by amber's own code otherwise keeps its traceback: a bug.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from amber.cli.base import AmberCliError

__all__ = ["building_env", "env_given_again", "is_env_or_dependency_error", "saved_env_hint"]

#: amber's package directory: a frame in a file under it is amber's own code.
_AMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _raised_building_env(e: BaseException) -> bool:
    """Whether ``e`` came from outside amber (the env's code, gymnasium, an import) while
    :func:`amber.envs.registry.make_env` ran."""
    from amber.envs.registry import make_env

    frames = list(_frames(e.__traceback__))
    if not frames or not any(f.tb_frame.f_code is make_env.__code__ for f in frames):
        return False
    innermost = os.path.abspath(frames[-1].tb_frame.f_code.co_filename)
    return not innermost.startswith(_AMBER_DIR + os.sep)


def is_env_or_dependency_error(e: BaseException) -> bool:
    """Whether ``e`` is an env-construction or missing-dependency error (see the module)."""
    from amber.models.keras_mlp import MissingFrameworkError

    if isinstance(e, MissingFrameworkError):
        return True
    try:
        import gymnasium.error
    except ImportError:  # pragma: no cover - gymnasium is a core dependency
        return _raised_building_env(e)
    return isinstance(e, gymnasium.error.Error) or _raised_building_env(e)


@contextlib.contextmanager
def building_env(what: str) -> Iterator[None]:
    """Turn an env-construction or missing-dependency error raised in the block into
    :class:`AmberCliError` ``"<what>: <ErrorType>: <message>"``; anything else passes through.

    :param what: what was being built, e.g. ``"cannot build PPO on 'nomod:Foo-v0'"``.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, AmberCliError) or not is_env_or_dependency_error(e):
            raise
        from amber.models.keras_mlp import MissingFrameworkError

        why = str(e) if isinstance(e, MissingFrameworkError) else f"{type(e).__name__}: {e}"
        raise AmberCliError(f"{what}: {why}") from e


def _saved_env(path: Path | str, allow_pickle: bool | None) -> Any:
    """The ``config.env`` an algorithm checkpoint saved (its own state alone is read)."""
    from amber.checkpoint import read_checkpoint

    config = read_checkpoint(path, policy_ids=(), allow_pickle=allow_pickle).state.get("config")
    return config.get("env") if isinstance(config, dict) else None


def env_given_again(path: Path | str, env_id: str | None, allow_pickle: bool | None) -> str | None:
    """``--env`` for a checkpoint's algorithm: accepted only as the env id it saved, given again
    (so that a ``"module:EnvId"`` id's module is imported, as ``--env`` does for a new run: the
    user names it; a checkpoint alone never makes amber import a module).

    :raises click.UsageError: ``env_id`` is not the checkpoint's env id.
    """
    if env_id is None:
        return None
    saved = _saved_env(path, allow_pickle)
    if saved != env_id:
        raise click.UsageError(f"--env with a checkpoint only gives its own env id again (to import a "
                               f"'module:EnvId' id's module): {path} saved {saved!r}, not {env_id!r}")
    return env_id


@contextlib.contextmanager
def saved_env_hint(path: Path | str, allow_pickle: bool | None, command: str) -> Iterator[None]:
    """Say, when the block refuses a checkpoint's ``"module:EnvId"`` env whose module is not
    imported, how to give it on the command line: ``<command> --env module:EnvId``."""
    from amber.errors import UnregisteredNameError

    try:
        yield
    except UnregisteredNameError as e:
        from amber.envs.registry import _module_id

        saved = _saved_env(path, allow_pickle)
        if not isinstance(saved, str) or _module_id(saved) is None or repr(saved) not in e.message:
            raise
        raise AmberCliError(f"{e.message}. On the command line, give that id again: `{command} "
                            f"--env {shlex.quote(saved)}` (amber then imports {saved.split(':')[0]!r}, "
                            "as for a new run)") from e
