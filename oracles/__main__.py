"""``python -m oracles``: see :mod:`oracles.cli`."""

import sys

from oracles.cli import main

sys.exit(main())
