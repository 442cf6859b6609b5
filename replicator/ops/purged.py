"""The purged windows of Phase 5 (``replicator purge``), as the control schema keeps them:
which rows of which table were deleted from PostgreSQL only, so that verify and validate do not
count those DynamoDB items as extra and a rollback to a phase reading PostgreSQL is refused.
Separate from ``purge`` (which needs the phase gates) so that verify and phases can read it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.config import Settings
from replicator.core.mapping import TableMapping, format_date, format_timestamp
from replicator.errors import ReplicatorError
from replicator.ops import control
from replicator.ops.control import control_sql

_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.purges (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    source text NOT NULL,
    time_column text NOT NULL,
    before text NOT NULL,              -- rows with time_column < before (UTC, ISO-8601)
    who text NOT NULL,
    why text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,           -- NULL: running, or killed (resumable)
    rows_deleted bigint NOT NULL DEFAULT 0,
    gates jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS purges_by_table ON {schema}.purges (table_name, id);
"""


class PurgeError(ReplicatorError):
    """A purge was not started or did not finish."""


@dataclass(frozen=True)
class PurgeWindow:
    """A recorded purge: rows of ``table`` whose ``column`` is before ``before`` are gone from
    PostgreSQL (all of them once ``finished_at`` is set, some while it is None)."""

    id: int
    table: str
    column: str
    before: dt.datetime | dt.date
    who: str
    why: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    rows: int

    def describe(self) -> str:
        state = "done" if self.finished_at else "unfinished"
        return (
            f"purge #{self.id} ({state}): {self.rows} rows with {self.column} < "
            f"{self.before.isoformat()} by {self.who}"
        )


def item_bound(column_type: str, before: dt.datetime | dt.date) -> str:
    """The window's bound as the item attribute's text (fixed width: text order is time
    order), so an item is in the window when its attribute is below it."""
    epoch = dt.datetime(1970, 1, 1)
    if column_type == "date":
        day = before if not isinstance(before, dt.datetime) else before.date()
        return format_date((day - epoch.date()).days)
    moment = before if isinstance(before, dt.datetime) else dt.datetime.combine(before, dt.time())
    return format_timestamp((moment - epoch) // dt.timedelta(microseconds=1))


def connect_control(settings: Settings) -> psycopg.Connection[Any]:
    return control.connect(settings, PurgeError)


def ensure_store(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    control.ensure(settings, conn, "purges", _DDL)


def _window(row: tuple[Any, ...]) -> PurgeWindow:
    id_, table, column, before, who, why, started, finished, rows = row
    moment = dt.datetime.fromisoformat(before)
    # Stored as isoformat(): a date column's bound is a bare date.
    bound: dt.datetime | dt.date = moment.date() if len(before) == 10 else moment
    return PurgeWindow(id_, table, column, bound, who, why, started, finished, rows)


_COLUMNS = "id, table_name, time_column, before, who, why, started_at, finished_at, rows_deleted"


def purged_windows(settings: Settings, table: str) -> list[PurgeWindow]:
    """Every recorded purge of ``table`` (mapping name), oldest first, finished or not."""
    try:
        with connect_control(settings) as conn:
            ensure_store(settings, conn)
            rows = conn.execute(
                control_sql(
                    settings,
                    f"SELECT {_COLUMNS} FROM {{schema}}.purges WHERE table_name = %s ORDER BY id",
                ),
                (table,),
            ).fetchall()
    except psycopg.Error as exc:
        raise PurgeError(f"reading the purged windows failed: {str(exc).strip()}") from exc
    return [_window(r) for r in rows]


def purged_bounds(settings: Settings, mapping: TableMapping) -> list[tuple[str, str]]:
    """(item attribute, bound text) of every purged window of the table: an item whose
    attribute is below a bound may have no row any more, by design."""
    columns = {c.name: c for c in mapping.columns}
    bounds = []
    for window in purged_windows(settings, mapping.name):
        column = columns.get(window.column)
        if column is not None:
            bounds.append((column.attribute, item_bound(column.type, window.before)))
    return bounds


def in_purged_window(item: dict[str, Any], bounds: list[tuple[str, str]]) -> bool:
    """Whether a DynamoDB item lies in one of the purged windows (``purged_bounds``). Pure."""
    for attribute, bound in bounds:
        value = item.get(attribute)
        text = value.get("S") if isinstance(value, dict) else None
        if isinstance(text, str) and text < bound:
            return True
    return False
