"""``python -m pgx_core`` = the ``pgx`` command."""

import sys

from pgx_core.cli import main

sys.exit(main())
