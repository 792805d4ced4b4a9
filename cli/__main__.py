"""``python -m sanegraph.cli``: the ``sanegraph`` command, for when the script is not on PATH."""

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
