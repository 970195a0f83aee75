"""``python -m amber``: the ``amber`` command."""

from amber.cli import main

main()
