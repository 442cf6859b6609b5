"""`python -m replicator.cli`."""

import sys

from replicator.cli import app

sys.exit(app())
