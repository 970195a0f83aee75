"""``python -m amber.cli``: the ``amber`` command.

Imports the package (never imported by it, so no cycle) for :func:`amber.cli.main`.
"""

from amber.cli import main

if __name__ == "__main__":
    main()
