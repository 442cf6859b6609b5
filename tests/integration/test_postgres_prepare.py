"""The SQL that prepares a source database for CDC, as `replicator postgres sql` prints it and
as `replicator postgres prepare` runs it, on a throwaway database of the real PostgreSQL: psql
runs the printed script (password given with -v, never in the text), twice, and the database
ends with the publication, REPLICA IDENTITY FULL, the heartbeat and signal tables and a role that
can log in with that password and read the tables, and nothing more."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import psycopg
import pytest
from psycopg import sql

from replicator.config import Settings
from replicator.ops.postgres import prepare
from replicator.stack.local import PG_BIN, LocalStack
from tests.integration.conftest import ROOT
from tests.integration.helpers import cli

pytestmark = pytest.mark.stack


@pytest.fixture
def scratch(stack: LocalStack, settings: Settings) -> Iterator[Settings]:
    """Settings pointing at a new database that holds the source schema; dropped afterwards."""
    name = f"prepare_{uuid.uuid4().hex[:10]}"
    pg = settings.postgres
    admin = pg.dsn().replace(f"dbname={pg.database}", "dbname=postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    own = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"database": name})}
    )
    schema = resources.files("replicator.stack").joinpath("sql", "source_schema.sql")
    try:
        with psycopg.connect(own.postgres.dsn(), autocommit=True) as conn:
            conn.execute(schema.read_text())
        yield own
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _published(conn: psycopg.Connection[Any], publication: str) -> set[str]:
    rows = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
        [publication],
    )
    return {r[0] for r in rows}


def _check(conn: psycopg.Connection[Any], settings: Settings) -> None:
    sources = {t.source for t in settings.tables}
    assert _published(conn, settings.connector.publication_name) == sources | {
        "dbo.debezium_heartbeat",
        "dbo.debezium_signal",
    }
    identities = dict(
        conn.execute(
            "SELECT n.nspname || '.' || c.relname, c.relreplident FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'dbo' "
            "AND c.relkind = 'r'"
        ).fetchall()
    )
    assert {t: identities[t] for t in sources} == dict.fromkeys(sources, "f")
    role = conn.execute(
        "SELECT rolcanlogin, rolreplication, rolsuper, rolcreatedb, rolcreaterole "
        "FROM pg_roles WHERE rolname = %s",
        [settings.postgres.replication_user],
    ).fetchone()
    assert role == (True, True, False, False, False)


def test_printed_sql_runs_in_psql_twice_and_prepares_the_database(scratch: Settings) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "replicator.cli", "postgres", "sql"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    password = scratch.postgres.replication_password.get_secret_value()
    # The password is read from the session, never written (both CREATE and ALTER ROLE).
    assert printed.count(", current_setting('replicator.replication_password'))") == 2
    pg = scratch.postgres
    for _ in range(2):  # idempotent: the second run takes the ALTER PUBLICATION branch
        run = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"replication_password={password}",
                "-h",
                pg.host,
                "-p",
                str(pg.port),
                "-U",
                pg.user,
                "-d",
                pg.database,
                "-f",
                "-",
            ],
            input=printed,
            capture_output=True,
            text=True,
            env={"PGPASSWORD": pg.password.get_secret_value(), "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert run.returncode == 0, run.stderr
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        _check(conn, scratch)
    # The role logs in with the password given to psql and reads what Debezium captures.
    with psycopg.connect(pg.dsn(replication_role=True), autocommit=True) as conn:
        for table in ("dbo.integrationlogs", "dbo.payments", "dbo.debezium_signal"):
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM dbo.loans")


def test_prepare_runs_the_same_script(scratch: Settings) -> None:
    prepare(scratch)
    prepare(scratch)
    with psycopg.connect(scratch.postgres.dsn(), autocommit=True) as conn:
        _check(conn, scratch)


def test_run_refuses_a_table_whose_replica_identity_hides_key_moves(
    scratch: Settings, tmp_path: Any
) -> None:
    """Both design tables build their keys from columns an UPDATE can change: under REPLICA
    IDENTITY DEFAULT `run` refuses before consuming anything and prints the SQL that fixes it;
    after that SQL, every table checks out."""
    from replicator.ops.postgres import replica_identities

    with psycopg.connect(scratch.postgres.dsn(), autocommit=True) as conn:
        for mapping in scratch.tables:
            conn.execute(f"ALTER TABLE {mapping.source} REPLICA IDENTITY DEFAULT")
    checks = {check.table: check for check in replica_identities(scratch)}
    assert {t: (c.identity, c.ok) for t, c in checks.items()} == {
        "dbo.integrationlogs": ("DEFAULT", False),
        "dbo.payments": ("DEFAULT", False),
    }
    config = tmp_path / "replicator.yaml"
    config.write_text(f"postgres:\n  database: {scratch.postgres.database}\n")
    done = cli(config, "run", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "refusing to run" in output
    assert "Traceback" not in output
    for mapping in scratch.tables:
        assert f"ALTER TABLE {mapping.source} REPLICA IDENTITY FULL;" in output

    with psycopg.connect(scratch.postgres.dsn(), autocommit=True) as conn:
        for mapping in scratch.tables:
            conn.execute(f"ALTER TABLE {mapping.source} REPLICA IDENTITY FULL")
    assert all(check.ok for check in replica_identities(scratch))
