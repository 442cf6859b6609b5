"""`replicator validate`: the seed's validation set in one run, per table.

- count match: PostgreSQL rows = live DynamoDB items (delete markers excluded), by a full
  verify, so that rows in flight are re-checked after the replication lag instead of making
  two counts taken at different moments differ (the run is recorded for the gates);
- sample success rate: a ``verify --sample`` of ``verify.sample_rows`` random rows, at least
  ``verify.sample_threshold`` of them equal (the seed asks 95%; ours should be 100%);
- read latency: each access pattern of the read path, ``verify.latency_reads`` times on both
  stores with parameters taken from real rows, p50/p95 each; passes when every read answered;
- coordinated operation: a marked test row inserted into PostgreSQL must appear in DynamoDB
  (exactly as the mapping says) within ``verify.coordinated_timeout_s``, then, deleted in
  PostgreSQL, must disappear from DynamoDB (a delete marker) within the same bound.

Results are stored in ``{schema}.validate_runs`` (one row per table and run), next to
``verify_runs`` where its full and sample verifies are recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from replicator.config import Settings
from replicator.core.items import is_marker
from replicator.core.mapping import Item, TableMapping, canonical
from replicator.errors import ReplicatorError
from replicator.ops import control
from replicator.ops.verify import (
    Progress,
    Verifier,
    VerifyOptions,
    Window,
    _window_bounds,
    differences,
    expect,
    key_of,
    row_pk,
)
from replicator.reads.dynamo import DynamoReads
from replicator.reads.postgres import PostgresReads
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.rows import source_rows

LOGS_SOURCE, PAYMENTS_SOURCE = "dbo.integrationlogs", "dbo.payments"
MARK = "replicator-validate"  # test rows carry it (service name / transaction id)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: str
    needed: str


@dataclass(frozen=True)
class Latency:
    pattern: str
    reads: int
    postgres_ms: tuple[float, float]  # p50, p95
    dynamodb_ms: tuple[float, float]
    errors: int
    mismatches: int  # pages that differed between the stores (rows in flight, or a bug)


@dataclass
class TableValidation:
    table: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    checks: list[Check] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    window: dict[str, str] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "passed": self.passed,
            "window": self.window,
            "checks": [asdict(c) for c in self.checks],
            "latencies": [asdict(x) for x in self.latencies],
        }


# --- the checks -----------------------------------------------------------------------------


def count_check(verifier: Verifier, group_id: str | None, window: Window | None) -> Check:
    """Counts by a full verify: two counts taken at different moments of a live system differ
    by the rows in flight, so every key that differs is re-checked after the replication lag,
    and the counts match when nothing is missing or extra then. The run is recorded as a full
    verify (what the hybrid-read gate reads)."""
    report = verifier.run(VerifyOptions(group_id=group_id, window=window))
    measured = f"{report.source_rows} rows, {report.replica_items} items"
    if report.purged:  # their rows were purged from PostgreSQL on purpose (Phase 5)
        measured += f" (+{report.purged} of purged windows)"
    if report.missing or report.extra:
        measured += f"; {report.missing} missing, {report.extra} extra after the re-check"
    elif report.converged:
        measured += f"; {report.converged} in flight, converged"
    return Check(
        "count match",
        report.missing == 0 and report.extra == 0,
        measured,
        "PostgreSQL rows = live DynamoDB items",
    )


def sample_check(
    verifier: Verifier, size: int, threshold: float, group_id: str | None, window: Window | None
) -> Check:
    report = verifier.run(VerifyOptions(sample=size, group_id=group_id, window=window))
    rate = report.matched / report.source_rows if report.source_rows else 1.0
    measured = f"{report.matched}/{report.source_rows} ({rate:.1%})"
    if report.divergent:
        kinds = {k: getattr(report, k) for k in ("missing", "differing", "unmappable")}
        measured += ", " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v)
    return Check("sample success rate", rate >= threshold, measured, f">= {threshold:.0%}")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return (0.0, 0.0)
    ordered = sorted(samples)
    if len(ordered) == 1:
        return (round(ordered[0], 2), round(ordered[0], 2))
    cuts = statistics.quantiles(ordered, n=20, method="inclusive")
    return (round(statistics.median(ordered), 2), round(cuts[18], 2))


def read_calls(
    mapping: TableMapping, rows: list[dict[str, Any]]
) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """(pattern, args, kwargs) of the mapping's declared access patterns, with parameters
    from real rows (Debezium-shaped, with lookups): the row's value of the pattern's column,
    and a range from its day (a day of times; 30 days of dates) when the range is required."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    types = mapping.column_types()
    for row in rows:
        item = expect(mapping, row_pk(mapping, row), row).item
        if item is None:
            continue
        source = {**row, **row_texts(mapping, row)}
        for pattern in mapping.reads.patterns:
            value = source.get(pattern.param.column)
            if value is None or value == "":
                continue  # nothing to look the row up by (a NULL application id, say)
            if pattern.param.day:
                value = value[:10]
            args: tuple[Any, ...] = (value,)
            rng = pattern.range
            if rng is not None and rng.required:
                day = source[rng.column][:10]
                days = 1 if types[rng.column] == "timestamp" else 30
                end = (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()
                args = (value, day, end)
            calls.append((pattern.name, args, {}))
    return calls


def row_texts(mapping: TableMapping, row: dict[str, Any]) -> dict[str, Any]:
    """The row's timestamps and dates as their stored text (parameters take that form)."""
    out: dict[str, Any] = {}
    for name, kind in mapping.column_types().items():
        value = row.get(name)
        if kind in ("timestamp", "date") and isinstance(value, int):
            out[name] = canonical(name, kind, value)
    return out


def latency_check(
    verifier: Verifier, reads_per_pattern: int, progress: Progress, window: Window | None
) -> tuple[Check, list[Latency]]:
    mapping = verifier.mapping
    where, params = verifier._where(_window_bounds(mapping, window) if window else None)
    query = sql.SQL("SELECT * FROM {} {} ORDER BY random() LIMIT %s").format(
        verifier._source(), where
    )
    records = verifier._query(query, [*params, reads_per_pattern])
    rows = source_rows(mapping, records, verifier.lookups)
    calls = read_calls(mapping, rows)
    stores = [PostgresReads(verifier.settings), DynamoReads(verifier.settings)]
    timings: dict[str, tuple[list[float], list[float], list[int]]] = {}
    progress.start("read latency", len(calls))
    try:
        for pattern, args, kwargs in calls:
            pg_ms, dynamo_ms, problems = timings.setdefault(pattern, ([], [], [0, 0]))
            answers = []
            for store, samples in zip(stores, (pg_ms, dynamo_ms), strict=True):
                started = time.perf_counter()
                try:
                    answers.append(store.read(pattern, *args, **kwargs))
                except ReplicatorError:
                    problems[0] += 1
                    answers.append(None)
                    continue
                samples.append((time.perf_counter() - started) * 1000)
            if answers[0] != answers[1]:
                problems[1] += 1
            progress.advance("read latency", 1)
    finally:
        for store in stores:
            store.close()
    latencies = [
        Latency(
            pattern,
            len(pg_ms) + problems[0],
            _percentiles(pg_ms),
            _percentiles(dynamo_ms),
            problems[0],
            problems[1],
        )
        for pattern, (pg_ms, dynamo_ms, problems) in sorted(timings.items())
    ]
    errors = sum(x.errors for x in latencies)
    worst = max((x.dynamodb_ms[1] for x in latencies), default=0.0)
    measured = f"{len(latencies)} patterns, {len(calls)} reads each store, {errors} errors"
    measured += f", DynamoDB p95 <= {worst:.1f} ms"
    ok = errors == 0 and bool(latencies)
    return Check("read latency", ok, measured, "every read answered on both stores"), latencies


def coordinated_check(verifier: Verifier, timeout_s: float) -> Check:
    """Insert a marked row, wait for its item; delete the row, wait for the item to go."""
    mapping = verifier.mapping
    needed = f"appears, then disappears, within {timeout_s:g} s each"
    name = "coordinated operation"
    if mapping.source not in (LOGS_SOURCE, PAYMENTS_SOURCE):
        return Check(name, True, "not applicable (no test row for this table)", needed)
    marker = f"{MARK}-{uuid.uuid4().hex[:8]}"
    try:
        with verifier._connection().cursor(row_factory=dict_row) as cur:
            if mapping.source == LOGS_SOURCE:
                raw = cur.execute(
                    "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, "
                    "statuscode, correlationid, requestdata) VALUES ('External API', %s, true, "
                    "'200', %s, '{\"validate\": true}') RETURNING *",
                    [MARK, marker],
                ).fetchone()
            else:
                loan = cur.execute("SELECT max(loanid) AS loanid FROM dbo.loans").fetchone()
                if loan is None or loan["loanid"] is None:
                    return Check(name, False, "no loan to attach a test payment to", needed)
                raw = cur.execute(
                    "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, "
                    "paymentamount, principalamount, interestamount, paymentmethod, "
                    "paymentstatus, transactionid) VALUES (%s, 1, current_date, 0.01, 0.01, "
                    "0.00, 'Online', 'Pending', %s) RETURNING *",
                    [loan["loanid"], marker],
                ).fetchone()
    except psycopg.Error as exc:
        return Check(name, False, f"inserting the test row failed: {str(exc).strip()}", needed)
    assert raw is not None
    row = source_rows(mapping, [raw], verifier.lookups)[0]
    expected = verifier.expect(mapping, row_pk(mapping, row), row).item
    key = key_of(mapping, expected) if expected is not None else None

    def current() -> Item | None:
        assert key is not None
        return next(iter(verifier._get_items([key]).values()))

    def arrived() -> bool:
        item = current()
        return item is not None and not is_marker(item) and not differences(expected or {}, item)

    appeared: float | None = None
    try:
        if expected is None:
            return Check(name, False, "the test row cannot be mapped", needed)
        appeared = _within(arrived, timeout_s)
    finally:
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(c)) for c in mapping.primary_key
        )
        verifier._connection().execute(
            sql.SQL("DELETE FROM {} WHERE {}").format(verifier._source(), where),
            [raw[c] for c in mapping.primary_key],
        )
    if appeared is None:
        return Check(name, False, f"test row not in DynamoDB after {timeout_s:g} s", needed)
    removed = _within(lambda: (item := current()) is None or is_marker(item), timeout_s)
    if removed is None:
        return Check(
            name, False, f"appeared in {appeared:.1f} s; still there after {timeout_s:g} s", needed
        )
    return Check(name, True, f"appeared in {appeared:.1f} s, removed in {removed:.1f} s", needed)


def _within(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until condition() holds, or None after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


# --- the run and its store ------------------------------------------------------------------


def validate(
    settings: Settings,
    mappings: list[TableMapping],
    group_id: str | None = None,
    progress: Progress | None = None,
    record: bool = True,
    window: Callable[[TableMapping], Window | None] = lambda _: None,
) -> list[TableValidation]:
    """Every check on every table; ``window`` scopes the count, sample and latency rows of a
    table to a time window (for validating recent data, or a test's own rows)."""
    options = settings.verify
    client = dynamodb_client(settings.dynamodb, max_pool=options.scan_segments + 4)
    results = []
    for mapping in mappings:
        result = TableValidation(mapping.name, dt.datetime.now(dt.UTC))
        scope = window(mapping)
        with Verifier(settings, mapping, progress, client) as verifier:
            verifier._estimate_items()  # a missing table is one clear error, before anything
            if scope is not None:
                _window_bounds(mapping, scope)  # a bad window: one clear error, before anything
            result.window = verifier.window_text(scope)
            result.checks.append(count_check(verifier, group_id, scope))
            result.checks.append(
                sample_check(
                    verifier, options.sample_rows, options.sample_threshold, group_id, scope
                )
            )
            if mapping.reads.patterns:
                check, latencies = latency_check(
                    verifier, options.latency_reads, verifier.progress, scope
                )
                result.checks.append(check)
                result.latencies = latencies
            result.checks.append(coordinated_check(verifier, options.coordinated_timeout_s))
        result.finished_at = dt.datetime.now(dt.UTC)
        if record:
            record_validation(settings, result)
        results.append(result)
    return results


_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.validate_runs (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    passed boolean NOT NULL,
    result jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS validate_runs_by_table
    ON {schema}.validate_runs (table_name, finished_at DESC)
"""


def record_validation(settings: Settings, result: TableValidation) -> None:
    schema = sql.Identifier(settings.control.schema_name)
    with control.connect(settings) as conn:
        try:
            control.ensure(settings, conn, "validate_runs", _DDL)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.validate_runs (table_name, started_at, finished_at, passed, "
                    "result) VALUES (%s, %s, %s, %s, %s)"
                ).format(schema),
                (
                    result.table,
                    result.started_at,
                    result.finished_at,
                    result.passed,
                    json.dumps(result.to_json()),
                ),
            )
        except psycopg.Error as exc:
            raise ReplicatorError(f"recording the validation failed: {str(exc).strip()}") from exc


def last_validation(settings: Settings, table: str) -> dict[str, Any] | None:
    """The most recent stored validation of ``table`` (its JSON result), or None."""
    schema = sql.Identifier(settings.control.schema_name)
    with control.connect(settings) as conn:
        try:
            exists = conn.execute(
                "SELECT to_regclass(%s)", [f"{settings.control.schema_name}.validate_runs"]
            ).fetchone()
            if not exists or exists[0] is None:
                return None
            row = conn.execute(
                sql.SQL(
                    "SELECT result FROM {}.validate_runs WHERE table_name = %s "
                    "ORDER BY finished_at DESC, id DESC LIMIT 1"
                ).format(schema),
                [table],
            ).fetchone()
        except psycopg.Error as exc:
            raise ReplicatorError(f"reading validations failed: {str(exc).strip()}") from exc
    return row[0] if row else None
