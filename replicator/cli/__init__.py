"""Command line: one module per command group, parsing and printing only; each parses,
loads the settings once, calls one function and prints. Expected failures (ReplicatorError)
print a one-paragraph message and exit 1, never a traceback."""

from replicator.cli import (  # noqa: F401  (registers the commands)
    backfill,
    config,
    connector,
    dlq,
    lag,
    phase,
    postgres,
    purge,
    reads,
    report,
    run,
    stack,
    verify,
)
from replicator.cli._common import app

__all__ = ["app"]
