"""`replicator config`: the effective settings."""

from __future__ import annotations

import json

from replicator.cli._common import config_app, friendly, out, settings
from replicator.config import redacted


@config_app.command("show")
@friendly
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    out.print_json(json.dumps(redacted(settings())))
