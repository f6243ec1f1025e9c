"""``python -m filterprune``: the command line."""

import sys

from filterprune.cli import main

sys.exit(main())
