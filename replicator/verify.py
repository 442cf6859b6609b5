"""Verify a DynamoDB replica against its PostgreSQL source, row by row, and repair it.

This part: the report a run produces and the store of runs (``{schema}.verify_runs`` in the
control database), which the phase gates read through ``last_clean_verify``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.errors import ReplicatorError

Scope = Literal["full", "window", "sample"]
Kind = Literal["missing", "extra", "differs", "unmappable"]
# Divergences kept in detail in the report (all of them go to the --json file).
REPORT_DETAIL = 1000


@dataclass(frozen=True)
class Divergence:
    """One divergent key. ``key`` is the item's DynamoDB key (attribute -> value text);
    ``source_key`` the PostgreSQL primary key of the row (None for an extra item whose row
    cannot be named); ``attributes`` the differing attributes as (expected, actual), values in
    DynamoDB JSON (absent = None)."""

    kind: Kind
    key: dict[str, str]
    source_key: dict[str, Any] | None = None
    attributes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["attributes"] = {
            name: {"expected": exp, "actual": act} for name, (exp, act) in self.attributes.items()
        }
        return data


@dataclass
class VerifyReport:
    table: str  # mapping name
    scope: Scope
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    window: dict[str, str] | None = None  # {"column", "since", "until"} for scope=window
    source_rows: int = 0  # PostgreSQL rows compared
    replica_items: int = 0  # live DynamoDB items compared (delete markers excluded)
    tombstones: int = 0  # delete markers seen (never counted as extra)
    matched: int = 0
    missing: int = 0
    extra: int = 0
    differing: int = 0
    unmappable: int = 0  # rows the pipeline cannot map (it dead-letters them)
    rechecked: int = 0  # divergent keys after the first pass, re-checked after the lag
    converged: int = 0  # of those, equal at the re-check (changes in flight)
    repaired: int = 0
    repair_skipped: int = 0  # a newer replicated change won over the repair
    divergences: list[Divergence] = field(default_factory=list)  # the first REPORT_DETAIL
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def divergent(self) -> int:
        return self.missing + self.extra + self.differing + self.unmappable

    @property
    def clean(self) -> bool:
        return self.divergent == 0

    def summary(self) -> dict[str, Any]:
        """Everything but the divergence details, JSON-ready."""
        data = {k: v for k, v in asdict(self).items() if k not in ("divergences", "started_at")} | {
            "started_at": self.started_at.isoformat()
        }
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        data["divergent"] = self.divergent
        data["clean"] = self.clean
        return data

    def to_json(self) -> dict[str, Any]:
        return self.summary() | {"divergences": [d.to_json() for d in self.divergences]}


# --- the store ------------------------------------------------------------------------------

_ensured: set[tuple[str, str]] = set()

_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.verify_runs (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    scope text NOT NULL CHECK (scope IN ('full', 'window', 'sample')),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    source_rows bigint NOT NULL,
    replica_items bigint NOT NULL,
    missing bigint NOT NULL,
    extra bigint NOT NULL,
    differing bigint NOT NULL,
    unmappable bigint NOT NULL,
    repaired bigint NOT NULL,
    clean boolean NOT NULL,
    report jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS verify_runs_by_table
    ON {schema}.verify_runs (table_name, scope, finished_at DESC);
"""


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(settings.control_dsn(), autocommit=True)
    except psycopg.Error as exc:
        raise ReplicatorError(f"control database unreachable: {str(exc).strip()}") from exc


def ensure_store(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    """Create the schema and table once per process. Concurrent first runs serialize on an
    advisory lock (CREATE ... IF NOT EXISTS alone can still collide in the catalog)."""
    schema = settings.control.schema_name
    marker = (settings.control_dsn(), schema)
    if marker in _ensured:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.control.ddl'))")
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)))
    _ensured.add(marker)


def record_run(settings: Settings, report: VerifyReport) -> int:
    """Store a finished run; returns its id."""
    if report.finished_at is None:
        raise ReplicatorError("a verify run is recorded once it has finished")
    with _connect(settings) as conn:
        try:
            ensure_store(settings, conn)
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO {}.verify_runs (table_name, scope, started_at, finished_at, "
                    "source_rows, replica_items, missing, extra, differing, unmappable, "
                    "repaired, clean, report) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s) RETURNING id"
                ).format(sql.Identifier(settings.control.schema_name)),
                (
                    report.table,
                    report.scope,
                    report.started_at,
                    report.finished_at,
                    report.source_rows,
                    report.replica_items,
                    report.missing,
                    report.extra,
                    report.differing,
                    report.unmappable,
                    report.repaired,
                    report.clean,
                    json.dumps(report.summary()),
                ),
            ).fetchone()
        except psycopg.Error as exc:
            raise ReplicatorError(f"recording the verify run failed: {str(exc).strip()}") from exc
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class VerifyRun:
    """A stored run, as gates and `verify history` read it."""

    id: int
    table: str
    scope: str
    started_at: dt.datetime
    finished_at: dt.datetime
    source_rows: int
    replica_items: int
    divergent: int
    repaired: int
    clean: bool


def runs(
    settings: Settings, table: str | None = None, scope: str | None = None, limit: int = 20
) -> list[VerifyRun]:
    """The most recent runs, newest first."""
    where, params = [], []
    if table is not None:
        where.append("table_name = %s")
        params.append(table)
    if scope is not None:
        where.append("scope = %s")
        params.append(scope)
    query = sql.SQL(
        "SELECT id, table_name, scope, started_at, finished_at, source_rows, replica_items, "
        "missing + extra + differing + unmappable, repaired, clean FROM {}.verify_runs {} "
        "ORDER BY finished_at DESC, id DESC LIMIT %s"
    ).format(
        sql.Identifier(settings.control.schema_name),
        sql.SQL("WHERE " + " AND ".join(where) if where else ""),
    )
    with _connect(settings) as conn:
        try:
            ensure_store(settings, conn)
            found = conn.execute(query, (*params, limit)).fetchall()
        except psycopg.Error as exc:
            raise ReplicatorError(f"reading verify runs failed: {str(exc).strip()}") from exc
    return [
        VerifyRun(*r[:3], r[3].astimezone(dt.UTC), r[4].astimezone(dt.UTC), *r[5:]) for r in found
    ]


def last_clean_verify(settings: Settings, table: str) -> dt.datetime | None:
    """Finish time (UTC) of the most recent FULL verify of ``table`` (mapping name) that found
    zero divergence; None if there is none. Sample and time-window runs never count."""
    query = sql.SQL(
        "SELECT max(finished_at) FROM {}.verify_runs "
        "WHERE table_name = %s AND scope = 'full' AND clean"
    ).format(sql.Identifier(settings.control.schema_name))
    with _connect(settings) as conn:
        try:
            ensure_store(settings, conn)
            row = conn.execute(query, (table,)).fetchone()
        except psycopg.Error as exc:
            raise ReplicatorError(f"reading verify runs failed: {str(exc).strip()}") from exc
    found = row[0] if row else None
    return found.astimezone(dt.UTC) if found is not None else None


def last_full_verify(settings: Settings, table: str) -> VerifyRun | None:
    """The most recent FULL verify of ``table``, clean or not: a stricter gate can require
    that the latest one was clean, not only that some clean one exists."""
    found = runs(settings, table, "full", limit=1)
    return found[0] if found else None
