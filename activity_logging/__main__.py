"""``python -m activity_logging`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
