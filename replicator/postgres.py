"""What change data capture needs from the source PostgreSQL, as one idempotent script:
REPLICA IDENTITY FULL on the replicated tables, the heartbeat and signal tables, the
replication role and the publication. The text is stack/sql/replication.sql; this module fills
it from the settings, for the local stack, `replicator postgres prepare` and
`replicator postgres sql`."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.errors import ReplicatorError

# `postgres sql` prints the script without the secret: the role's password is read from this
# session setting, which the administrator sets first (see the script's header).
PASSWORD_SETTING = "replicator.replication_password"


def cdc_script(settings: Settings, password: sql.Composable) -> sql.Composed:
    """The script for the mapped tables; ``password`` is the SQL expression of the role's
    password (a literal, or current_setting(...) when printed for an administrator)."""
    pg = settings.postgres
    tables = [sql.Identifier(*t.source.split(".")) for t in settings.tables]
    published = sql.SQL(", ").join(
        [
            *tables,
            sql.Identifier("dbo", "debezium_heartbeat"),  # as named in replication.sql
            sql.Identifier("dbo", "debezium_signal"),
        ]
    )
    publication = settings.connector.publication_name
    # CREATE the first time, SET TABLE afterwards: the same script can be run again.
    publication_statement = sql.SQL(
        "DO $pub$ BEGIN\n"
        "  IF EXISTS (SELECT FROM pg_publication WHERE pubname = {name}) THEN\n"
        "    ALTER PUBLICATION {publication} SET TABLE {published};\n"
        "  ELSE\n"
        "    CREATE PUBLICATION {publication} FOR TABLE {published};\n"
        "  END IF;\n"
        "END $pub$"
    ).format(
        name=sql.Literal(publication),
        publication=sql.Identifier(publication),
        published=published,
    )
    text = resources.files("replicator.stack").joinpath("sql", "replication.sql").read_text()
    replica_identity = [
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL;\n").format(t) for t in tables
    ]
    return sql.Composed(
        [
            *replica_identity,
            sql.SQL(text).format(
                tables=sql.SQL(", ").join(tables),
                role=sql.Identifier(pg.replication_user),
                role_name=sql.Literal(pg.replication_user),
                password=password,
                database=sql.Identifier(pg.database),
                publication_statement=publication_statement,
            ),
        ]
    )


def printable_script(settings: Settings) -> str:
    """The script for an administrator to review and run with psql, without the password."""
    expression = sql.SQL("current_setting({})").format(sql.Literal(PASSWORD_SETTING))
    header = (
        "-- Prepares PostgreSQL for the replicator's change data capture. Idempotent.\n"
        "-- Run as the owner of the replicated tables, with the replication role's password:\n"
        "--   psql -v replication_password=... -f this-file.sql\n"
        "-- (psql -v puts the password in the SET below; it is never written in this file.)\n"
        f"SET {PASSWORD_SETTING} = :'replication_password';\n"
    )
    return header + cdc_script(settings, expression).as_string() + "\n"


def prepare(settings: Settings, conn: psycopg.Connection[Any] | None = None) -> None:
    """Run the script as the configured owner of the tables (``postgres.user``)."""
    pg = settings.postgres
    script = cdc_script(settings, sql.Literal(pg.replication_password.get_secret_value()))
    try:
        if conn is not None:
            conn.execute(script)
            return
        with psycopg.connect(pg.dsn(), autocommit=True) as own:
            own.execute(script)
    except psycopg.Error as exc:
        raise ReplicatorError(
            f"preparing PostgreSQL at {pg.host}:{pg.port}/{pg.database} for CDC failed: {exc}"
        ) from exc
