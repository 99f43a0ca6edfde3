"""``python -m jaxkmeans``: the command line (see :mod:`jaxkmeans.cli`)."""

import sys

from jaxkmeans.cli import main

if __name__ == "__main__":
    sys.exit(main())
