"""`replicator postgres`: what CDC needs from the source PostgreSQL."""

from __future__ import annotations

import typer

from replicator.cli._common import friendly, postgres_app, say, settings
from replicator.ops.postgres import prepare, printable_script


@postgres_app.command("sql")
@friendly
def postgres_sql() -> None:
    """Print the SQL that prepares PostgreSQL for CDC (REPLICA IDENTITY FULL, heartbeat and signal
    tables, replication role, publication), without the password, to review and run with psql."""

    typer.echo(printable_script(settings()), nl=False)


@postgres_app.command("prepare")
@friendly
def postgres_prepare() -> None:
    """Run that SQL as postgres.user (the tables' owner); idempotent."""

    s = settings()
    prepare(s)
    say(
        f"{s.postgres.database}: publication {s.connector.publication_name} of "
        f"{', '.join(t.source for t in s.tables)}; role {s.postgres.replication_user}"
    )
