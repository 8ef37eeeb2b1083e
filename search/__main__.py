"""``python -m squeeze.search``: the ``squeeze`` command line, for environments without the console script."""

import sys

from ._cli import main

sys.exit(main())
