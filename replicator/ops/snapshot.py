"""Incremental snapshots on demand (`replicator snapshot`): a signal row asks the running
Debezium connector to re-read a table, or the rows matching a condition, in chunks between
watermarks while streaming goes on. The re-read rows arrive on the table's topic as ordinary
changes with real positions, so the live consumer applies them through the position guard."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.errors import ConfigError, ReplicatorError
from replicator.ops.connector import ConnectClient

# The condition goes verbatim into the connector's chunk queries (as the replication role, which
# may only SELECT the published tables). One expression, nothing that ends or comments out the
# query around it: ';' would chain statements, '--' and '/*' would hide the rest of the query.
_FORBIDDEN = (";", "--", "/*", "*/", "\\")


class SnapshotError(ReplicatorError):
    """The signal could not be sent, or the connector cannot act on it."""


def check_where(where: str) -> str:
    """The condition, if it is one plain SQL expression; ConfigError naming the problem
    otherwise. Pure: the database checks it next (see ``validate_where``)."""
    text = where.strip()
    if not text:
        raise ConfigError("--where is empty; leave it out to re-read the whole table")
    for token in _FORBIDDEN:
        if token in text:
            raise ConfigError(
                f"--where must be one SQL condition: {token!r} is refused (the condition runs "
                "inside the connector's own queries, so it may not end them, chain another "
                "statement or comment out the rest)"
            )
    if text.count("'") % 2 or text.count('"') % 2:
        raise ConfigError("--where has an unclosed quote")
    depth = 0
    for ch in re.sub(r"'[^']*'", "", text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        raise ConfigError("--where has unbalanced parentheses")
    if len(text) > 1500:  # the signal's data column is varchar(2048)
        raise ConfigError("--where is longer than 1500 characters")
    return text


def signal_data(mapping: TableMapping, where: str | None) -> dict[str, Any]:
    """The execute-snapshot signal's data (Debezium's documented format). Pure."""
    data: dict[str, Any] = {"data-collections": [mapping.source], "type": "incremental"}
    if where is not None:
        # Parenthesized: Debezium appends its own chunk conditions with AND.
        data["additional-conditions"] = [
            {"data-collection": mapping.source, "filter": f"({where})"}
        ]
    return data


def validate_where(settings: Settings, mapping: TableMapping, where: str) -> int:
    """Run the condition once as the connector would (the replication role, read only, no rows
    returned) so a typo fails here instead of failing the connector's task. Returns the number
    of rows it matches, for the user to see what will be re-read."""
    table = sql.Identifier(*mapping.source.split("."))
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, sql.SQL(where))  # type: ignore[arg-type]
    try:
        with psycopg.connect(settings.postgres.dsn(replication_role=True)) as conn:
            conn.read_only = True
            conn.execute("SET statement_timeout = '30s'")
            row = conn.execute(query).fetchone()
            conn.rollback()
    except psycopg.errors.QueryCanceled as exc:
        raise ConfigError(f"--where took over 30 s to count its rows: {exc}") from exc
    except psycopg.Error as exc:
        raise ConfigError(
            f"--where is not a valid condition on {mapping.source}: {str(exc).strip()}"
        ) from exc
    return int(row[0]) if row else 0


def send_signal(settings: Settings, data: dict[str, Any]) -> str:
    """Insert the execute-snapshot signal; returns its id."""
    schema, table = settings.backfill.signal_table.split(".")
    signal_id = str(uuid.uuid4())
    statement = sql.SQL(
        "INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)"
    ).format(sql.Identifier(schema, table))
    try:
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            conn.execute(statement, (signal_id, orjson.dumps(data).decode()))
    except psycopg.Error as exc:
        raise SnapshotError(
            f"could not insert the signal into {settings.backfill.signal_table}: "
            f"{str(exc).strip()} (run `replicator postgres prepare` to create it)"
        ) from exc
    return signal_id


def request_snapshot(
    settings: Settings, mapping: TableMapping, where: str | None
) -> tuple[str, int | None]:
    """Check the connector runs and the condition holds, then signal. Returns the signal id and
    the number of rows the condition matches (None without one)."""

    status = ConnectClient(settings).status()
    if status is None:
        raise SnapshotError(
            f"connector {settings.connector.name!r} does not exist: `replicator connector apply`"
        )
    states = [status["connector"]["state"], *(t["state"] for t in status.get("tasks", []))]
    if any(state != "RUNNING" for state in states):
        raise SnapshotError(
            f"connector {settings.connector.name!r} is not running ({', '.join(states)}); "
            "a snapshot signal is read by the running task"
        )
    matched = None
    if where is not None:
        where = check_where(where)
        matched = validate_where(settings, mapping, where)
    return send_signal(settings, signal_data(mapping, where)), matched
