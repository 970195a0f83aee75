"""amber: atomic, verified, portable checkpoints for reinforcement learning.

The engine knows no format: formats, state capture, migrations and model
exporters are pluggy plugins (see :mod:`amber.hookspecs`). Plugins write
``@amber.hookimpl``.
"""

from __future__ import annotations

from typing import Any

from amber.hookspecs import hookimpl, hookspec
from amber.names import register_class

__version__ = "0.2.0"

__all__ = [
    "CheckpointManager", "__version__", "hookimpl", "hookspec", "load", "migrate", "register_class", "save",
]


def __getattr__(name: str) -> Any:
    # save/load/migrate/CheckpointManager live in amber.checkpoint, amber.utils.checkpoints
    # and amber.checkpoint_manager;
    # imported on first use so that `import amber` stays light.
    if name in ("save", "load"):
        from amber import checkpoint

        return getattr(checkpoint, name)
    if name == "CheckpointManager":
        from amber.checkpoint_manager import CheckpointManager

        return CheckpointManager
    if name == "migrate":
        from amber.utils.checkpoints import migrate

        return migrate
    raise AttributeError(f"module 'amber' has no attribute {name!r}")
