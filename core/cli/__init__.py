"""The ``amber`` command: list formats and plugins; inspect, verify, convert, migrate,
export and trust checkpoints; train and evaluate algorithms and plot their learning curves.

The group, its error handling and the helpers the commands share live in
:mod:`amber.cli.base`; each command module attaches its commands to that
group and imports only ``base``:

- :mod:`amber.cli.info`: ``formats``, ``plugins``, ``inspect``, ``verify``
- :mod:`amber.cli.convert`: ``convert``, ``migrate``
- :mod:`amber.cli.export`: ``export``
- :mod:`amber.cli.rl`: ``train``
- :mod:`amber.cli.evaluate`: ``evaluate``
- :mod:`amber.cli.trust`: ``trust``
- :mod:`amber.cli.plot`: ``plot``

This package imports them all, so ``from amber.cli import cli`` is the whole
command. Every amber error (:class:`amber.errors.CheckpointError`) and every
OS error ends the command with exit status 2 and one line on stderr,
``amber: error: <message>``, never a traceback; click's own usage errors
exit 2 too. ``amber verify`` exits 1 when the checkpoint has problems.

The engine, numpy and rich are imported inside the commands, so that
``amber --help`` is quick and importing this package never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from amber.cli import convert, evaluate, export, info, plot, rl, trust  # noqa: F401 - each attaches its commands to `cli`
from amber.cli.base import AmberCliError, CliState, cli, human_size, total_bytes
from amber.cli.info import info_tree

__all__ = ["AmberCliError", "CliState", "cli", "human_size", "info_tree", "main", "total_bytes"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``amber`` command; the console script's entry point. Exits the process.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    """
    cli.main(args=list(argv) if argv is not None else None, prog_name="amber")
