"""The control schema in PostgreSQL, where phases, verify and validate runs and purged windows
are kept: one way to connect to it and one first-use DDL rule for every store there."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.errors import ReplicatorError

# Every store's first-use DDL takes this lock: concurrent first runs of several processes
# serialize on it (CREATE ... IF NOT EXISTS alone can still collide in the catalog).
_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('replicator.control.ddl'))"
_created: set[tuple[str, str, str]] = set()


def connect(
    settings: Settings, error: type[ReplicatorError] = ReplicatorError
) -> psycopg.Connection[Any]:
    """An autocommit connection to the control database; ``error`` when it does not answer."""
    try:
        return psycopg.connect(settings.control_dsn(), autocommit=True)
    except psycopg.Error as exc:
        raise error(f"the control database does not answer: {str(exc).strip()}") from exc


def ensure(
    settings: Settings,
    conn: psycopg.Connection[Any],
    store: str,
    ddl: str,
    **params: sql.Composable,
) -> None:
    """Create the schema and one store's tables (``ddl``: statements with ``{schema}``) once
    per process: readers open many connections, and the catalog need not be asked again."""
    schema = settings.control.schema_name
    marker = (settings.control_dsn(), schema, store)
    if marker in _created:
        return
    with conn.transaction():
        conn.execute(_DDL_LOCK)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(sql.SQL(statement).format(schema=sql.Identifier(schema), **params))
    _created.add(marker)


def control_sql(settings: Settings, text: str) -> sql.Composed:
    """``text`` with ``{schema}`` bound to the control schema."""
    return sql.SQL(text).format(schema=sql.Identifier(settings.control.schema_name))
