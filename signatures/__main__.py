"""``python -m signatures``: see :mod:`signatures.cli`."""

import sys

from .cli import main

sys.exit(main())
