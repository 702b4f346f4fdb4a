"""``python -m oracles``: the verification application, :mod:`oracles.verify.cli`."""

import sys

from oracles.verify.cli import main

sys.exit(main())
