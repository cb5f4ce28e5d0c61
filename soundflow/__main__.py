"""`python -m soundflow ...` = `soundflow ...` (the one command line, `cli.py`)."""

import sys

from .cli import main

sys.exit(main())
