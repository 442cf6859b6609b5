"""What change data capture needs from the source PostgreSQL, as one idempotent script:
REPLICA IDENTITY FULL on the replicated tables, the heartbeat and signal tables, the
replication role and the publication. The text is stack/sql/replication.sql; this module fills
it from the settings, for the local stack, `replicator postgres prepare` and
`replicator postgres sql`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.core.mapping import TableMapping, template_fields
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
                owner_name=sql.Literal(pg.user),
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


# --- REPLICA IDENTITY ------------------------------------------------------------------------

_IDENTITIES = {"f": "FULL", "d": "DEFAULT", "i": "USING INDEX", "n": "NOTHING"}


@dataclass(frozen=True)
class IdentityCheck:
    """One captured table's REPLICA IDENTITY against what its mapping needs."""

    table: str  # source, schema.table
    identity: str | None  # FULL, DEFAULT, USING INDEX, NOTHING; None: the table is missing
    moving: frozenset[str]  # key columns outside the primary key: FULL is needed if any

    @property
    def ok(self) -> bool:
        return self.identity == "FULL" or (self.identity is not None and not self.moving)

    @property
    def fix(self) -> str:
        return f"ALTER TABLE {self.table} REPLICA IDENTITY FULL;"

    def describe(self) -> str:
        if self.identity is None:
            return f"{self.table}: no such table in PostgreSQL"
        if self.ok:
            why = "" if self.identity == "FULL" else " (its item keys use only the primary key)"
            return f"{self.table}: REPLICA IDENTITY {self.identity}{why}"
        return (
            f"{self.table}: REPLICA IDENTITY {self.identity}, but its item key is built from "
            f"columns an UPDATE can change ({', '.join(sorted(self.moving))}): without the old "
            "row, an update that moves the key leaves the old item behind and a delete cannot "
            f"find the item. Fix: {self.fix}"
        )


def key_columns_beyond_pk(mapping: TableMapping) -> frozenset[str]:
    """Columns outside the primary key that the item's key is built from (a lookup counts as
    the column it looks up by): an UPDATE of one of them moves the item to another key."""
    using = {lookup.column: lookup.using for lookup in mapping.lookups}
    keys = [mapping.partition_key, *([mapping.sort_key] if mapping.sort_key else [])]
    named = {using.get(name, name) for key in keys for name, _ in template_fields(key.template)}
    return frozenset(named - set(mapping.primary_key))


def replica_identities(settings: Settings) -> list[IdentityCheck]:
    """Ask PostgreSQL (the lookups' connection: the consumer already has it) for each mapped
    table's REPLICA IDENTITY. Raises ReplicatorError when PostgreSQL does not answer."""
    pg = settings.postgres
    sources = [mapping.source for mapping in settings.tables]
    try:
        with psycopg.connect(pg.lookups()) as conn:
            rows = conn.execute(
                "SELECT n.nspname || '.' || c.relname, c.relreplident FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname || '.' || c.relname = ANY(%s) AND c.relkind IN ('r', 'p')",
                [sources],
            ).fetchall()
    except psycopg.Error as exc:
        raise ReplicatorError(
            f"cannot read the captured tables' REPLICA IDENTITY from PostgreSQL at "
            f"{pg.host}:{pg.port}/{pg.database}: {exc}"
        ) from exc
    found = {name: _IDENTITIES.get(code, code) for name, code in rows}
    return [
        IdentityCheck(mapping.source, found.get(mapping.source), key_columns_beyond_pk(mapping))
        for mapping in settings.tables
    ]


def require_replica_identity(settings: Settings) -> None:
    """Refuse to consume when a captured table's REPLICA IDENTITY would hide key moves."""
    bad = [check for check in replica_identities(settings) if not check.ok]
    if bad:
        fixes = "\n".join(f"  {check.fix}" for check in bad if check.identity is not None)
        raise ReplicatorError(
            "refusing to run:\n"
            + "\n".join(f"- {check.describe()}" for check in bad)
            + (f"\nRun as the tables' owner:\n{fixes}" if fixes else "")
        )
