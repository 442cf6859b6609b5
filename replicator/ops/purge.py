"""Phase 5: delete old rows from PostgreSQL without touching DynamoDB.

Once a table reads from DynamoDB only, its old rows are PostgreSQL's dead weight. The purge
deletes them in batches, one transaction each, in a session tagged with a PostgreSQL
replication origin (``pg_replication_origin_session_setup``): every change of those
transactions carries the origin's name, Debezium puts it in ``source.origin``, and the
consumers drop such events (``replicator.stream.pipeline``), so the deletes never become delete
markers. (On PostgreSQL 16+ the connector can also leave them out at decode time with
``slot.stream.params=origin=none``; see docs/runbooks/purge.md.)

The window (table, time column, ``before``) is stored in ``{schema}.purges`` before the first
delete, so verify and validate know that items of the window without a row are purged, not
extra, and a rollback of the table to a phase that reads PostgreSQL is refused: those rows now
live in DynamoDB only. The start and the end of every purge go to the phase history.

A killed purge resumes: run the same command again (same table and ``--before``); its
recorded window is reused and the rows already gone are simply not found again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.core.times import utc_moment
from replicator.errors import ConfigError, ReplicatorError
from replicator.ops.control import control_sql
from replicator.ops.phases import Check, Phase, PhaseStore, lag_check
from replicator.ops.purged import (
    PurgeError,
    PurgeWindow,
    connect_control,
    ensure_store,
    purged_windows,
)
from replicator.ops.verify import default_time_column, last_full_verify


class PurgeRefused(PurgeError):
    """A gate failed; ``checks`` holds every condition with its measured value."""

    def __init__(self, message: str, checks: list[Check]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass
class PurgeResult:
    window: PurgeWindow
    checks: list[Check]
    rows: int = 0  # deleted by this run
    batches: int = 0
    seconds: float = 0.0
    resumed: bool = False
    retries: int = 0  # batches retried after a lock timeout
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- the window (pure) ------------------------------------------------------------------------


def time_column(mapping: TableMapping, name: str | None) -> tuple[str, str, str]:
    """(column, its type, its attribute) of the purge window: ``name`` or verify's default."""
    column = name or default_time_column(mapping)
    found = {c.name: c for c in mapping.columns}.get(column)
    if found is None or found.type not in ("timestamp", "date"):
        kinds = [c.name for c in mapping.columns if c.type in ("timestamp", "date")]
        raise ConfigError(
            f"--time-column {column!r} is not a timestamp or date column of {mapping.name} "
            f"(those are: {', '.join(kinds) or 'none'})"
        )
    return found.name, found.type, found.attribute


def parse_before(text: str, column_type: str) -> dt.datetime | dt.date:
    """``--before`` as UTC: a date or an ISO-8601 time (with an offset, converted; without one,
    UTC, as the tables hold UTC)."""
    try:
        value = utc_moment(text)
    except ValueError:
        raise ConfigError(
            f"--before {text!r} is not a date or an ISO-8601 time (2024-01-01, "
            "2024-01-01T00:00:00Z)"
        ) from None
    if column_type == "date":
        if value.time() != dt.time(0):
            raise ConfigError("--before: the time column is a date column; give a date")
        return value.date()
    return value


def purge_checks(
    *,
    phase: Phase,
    entered_at: dt.datetime | None,
    last_verify: Any,
    now: dt.datetime,
    window_h: float,
    verify_within_h: float,
) -> list[Check]:
    """The purge's own gates, from what was measured: the table reads from DynamoDB only and
    has for ``window_h``, and its latest full verify is clean and recent. Pure."""
    gate = Phase.DYNAMODB_ONLY
    checks = [
        Check(gate, "in dynamodb-only", phase == Phase.DYNAMODB_ONLY, str(phase), "dynamodb-only")
    ]
    need = f"in dynamodb-only >= {window_h:g} h"
    if phase != Phase.DYNAMODB_ONLY or entered_at is None:
        checks.append(Check(gate, "dynamodb-only soak", False, f"in {phase}", need))
    else:
        held_h = (now - entered_at).total_seconds() / 3600
        checks.append(
            Check(gate, "dynamodb-only soak", held_h >= window_h, f"{held_h:.2f} h", need)
        )
    need = f"latest full verify clean, within {verify_within_h:g} h"
    if last_verify is None:
        checks.append(Check(gate, "clean verify", False, "no full verify recorded", need))
    else:
        age_h = (now - last_verify.finished_at).total_seconds() / 3600
        when = f"{last_verify.finished_at.isoformat(timespec='seconds')} ({age_h:.1f} h ago)"
        if not last_verify.clean:
            value = f"{last_verify.divergent} divergent keys at {when}"
            checks.append(Check(gate, "clean verify", False, value, need))
        else:
            ok = age_h <= verify_within_h
            checks.append(Check(gate, "clean verify", ok, f"clean at {when}", need))
    return checks


def refusal_message(table: str, checks: list[Check]) -> str:
    failed = [c for c in checks if not c.ok]
    lines = [f"{table}: purge refused ({len(failed)} of {len(checks)} condition(s) failed)"]
    lines += [f"  {c.name}: {c.value} (needs {c.threshold})" for c in failed]
    return "\n".join(lines)


def pace(done: int, rate: float, started: float, now: float) -> float:
    """Seconds to wait so that ``done`` rows since ``started`` stay within ``rate`` rows/s."""
    return max(0.0, started + done / rate - now)


def _history(
    conn: psycopg.Connection[Any], settings: Settings, table: str, who: str, why: str, gates: str
) -> None:
    conn.execute(
        control_sql(
            settings,
            "INSERT INTO {schema}.phase_history (table_name, from_phase, to_phase, who, why, "
            "forced, gates) VALUES (%s, %s, %s, %s, %s, false, %s::jsonb)",
        ),
        (table, Phase.DYNAMODB_ONLY.value, Phase.DYNAMODB_ONLY.value, who, why, gates),
    )


# --- running a purge (I/O) --------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeOptions:
    table: str
    before: str
    who: str
    why: str
    column: str | None = None
    batch: int | None = None
    rate: float | None = None
    dry_run: bool = False


class Progress:
    """Where a run reports progress (the CLI draws a bar)."""

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


def evaluate(settings: Settings, table: str) -> list[Check]:
    """The purge gates, measured now: dynamodb-only for ``phases.incident_window_h``, latest full
    verify clean, and the consumer group caught up (what is in PostgreSQL is in DynamoDB)."""
    store = PhaseStore(settings)
    try:
        phase, entered = store.get(table), store.entered_at(table)
    finally:
        store.close()
    unknown: str | None = None
    try:
        last = last_full_verify(settings, table)
    except ReplicatorError as exc:  # cannot measure: the condition fails, the purge is refused
        last, unknown = None, f"unknown: {exc}"
    checks = purge_checks(
        phase=phase,
        entered_at=entered,
        last_verify=last,
        now=_now(),
        window_h=settings.phases.incident_window_h,
        verify_within_h=settings.phases.verify_within_h,
    )
    if unknown is not None:
        checks = [
            Check(c.gate, c.name, False, unknown, c.threshold) if c.name == "clean verify" else c
            for c in checks
        ]
    return [*checks, lag_check(settings, table)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _count(conn: psycopg.Connection[Any], mapping: TableMapping, column: str, before: Any) -> int:
    schema, name = mapping.source.split(".")
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} < %s").format(
            sql.Identifier(schema, name), sql.Identifier(column)
        ),
        (before,),
    ).fetchone()
    return int(row[0]) if row else 0


def _delete_batch(mapping: TableMapping, column: str) -> sql.Composed:
    """One batch: the first N rows of the window in primary-key order, locked, deleted."""
    schema, name = mapping.source.split(".")
    table = sql.Identifier(schema, name)
    pk = sql.SQL(", ").join(map(sql.Identifier, mapping.primary_key))
    return sql.SQL(
        "WITH doomed AS (SELECT {pk} FROM {table} WHERE {column} < %s ORDER BY {pk} "
        "LIMIT %s FOR UPDATE) DELETE FROM {table} AS t USING doomed WHERE ({tpk}) = ({dpk})"
    ).format(
        pk=pk,
        table=table,
        column=sql.Identifier(column),
        tpk=sql.SQL(", ").join(sql.Identifier("t", c) for c in mapping.primary_key),
        dpk=sql.SQL(", ").join(sql.Identifier("doomed", c) for c in mapping.primary_key),
    )


def _tag_session(conn: psycopg.Connection[Any], origin: str) -> None:
    """Every later transaction of this session carries the replication origin ``origin``."""
    try:
        if conn.execute("SELECT pg_replication_origin_oid(%s)", (origin,)).fetchone()[0] is None:
            # A concurrent purge may have made it meanwhile.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute("SELECT pg_replication_origin_create(%s)", (origin,))
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PurgeError(
            f"the purge's session cannot use the replication origin {origin!r}: "
            f"{str(exc).strip()}. The origin functions need a superuser or, on PostgreSQL 14+, "
            "GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), "
            "pg_replication_origin_session_setup(text), pg_replication_origin_session_reset(), "
            "pg_replication_origin_oid(text) TO the purging role (replicator postgres sql "
            "prints it)"
        ) from exc
    except psycopg.errors.ObjectInUse as exc:
        raise PurgeError(
            f"the replication origin {origin!r} is in use by another session (another purge "
            f"running?): {str(exc).strip()}; wait for it, or stop it, then run this again"
        ) from exc


def purge(
    settings: Settings, options: PurgeOptions, progress: Progress | None = None
) -> PurgeResult:
    """Run (or resume, or with ``dry_run`` only measure) a purge. Raises PurgeRefused when a
    gate fails, PurgeError when PostgreSQL refuses; a kill leaves a resumable window."""
    progress = progress or Progress()
    mapping = settings.mapping_named(options.table)
    column, column_type, _ = time_column(mapping, options.column)
    before = parse_before(options.before, column_type)
    batch = options.batch or settings.purge.batch_rows
    rate = options.rate or settings.purge.rate_rows_s
    if batch <= 0 or rate <= 0:
        raise ConfigError("--batch and --rate must be positive")
    if not options.why.strip():
        raise ConfigError("a purge needs a reason: --why TEXT (recorded in the phase history)")
    if not options.who.strip():
        raise ConfigError("a purge needs a name for who runs it (--who)")
    checks = evaluate(settings, mapping.name)
    failed = [c for c in checks if not c.ok]
    existing = [w for w in purged_windows(settings, mapping.name) if w.finished_at is None]
    if existing and (existing[-1].column, existing[-1].before) != (column, before):
        other = existing[-1]
        raise PurgeError(
            f"{mapping.name}: {other.describe()} is unfinished; finish it first (run purge "
            f"again with --before {other.before.isoformat()} --time-column {other.column})"
        )
    window = PurgeWindow(
        existing[-1].id if existing else 0,
        mapping.name,
        column,
        before,
        options.who,
        options.why,
        _now(),
        None,
        existing[-1].rows if existing else 0,
    )
    result = PurgeResult(window, checks, resumed=bool(existing))
    if options.dry_run:
        try:
            with _source(settings) as conn:
                result.rows = _count(conn, mapping, column, before)
        except psycopg.Error as exc:
            raise PurgeError(f"counting the rows of {mapping.source} failed: {exc}") from exc
        return result
    if failed:
        raise PurgeRefused(refusal_message(mapping.name, checks), checks)
    gates = orjson.dumps([c.as_json() for c in checks]).decode()
    text = f"{column} < {before.isoformat()}"
    try:
        with connect_control(settings) as control:
            ensure_store(settings, control)
            if not existing:
                with control.transaction():
                    row = control.execute(
                        control_sql(
                            settings,
                            "INSERT INTO {schema}.purges (table_name, source, time_column, before, "
                            "who, why, gates) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) "
                            "RETURNING id, started_at",
                        ),
                        (
                            mapping.name,
                            mapping.source,
                            column,
                            before.isoformat(),
                            options.who,
                            options.why,
                            gates,
                        ),
                    ).fetchone()
                    window = PurgeWindow(
                        row[0],
                        mapping.name,
                        column,
                        before,
                        options.who,
                        options.why,
                        row[1],
                        None,
                        0,
                    )
                    _history(
                        control,
                        settings,
                        mapping.name,
                        options.who,
                        f"purge #{row[0]} started: rows with {text} deleted from PostgreSQL "
                        f"only; {options.why}",
                        gates,
                    )
                result.window = window
            else:
                _history(
                    control,
                    settings,
                    mapping.name,
                    options.who,
                    f"purge #{window.id} resumed ({window.rows} rows done): {text}; {options.why}",
                    gates,
                )
            deleted = _run_batches(
                settings, mapping, column, before, window, batch, rate, progress, result
            )
            with control.transaction():
                total = control.execute(
                    control_sql(
                        settings,
                        "UPDATE {schema}.purges SET finished_at = now() WHERE id = %s "
                        "RETURNING rows_deleted, finished_at",
                    ),
                    (window.id,),
                ).fetchone()
                _history(
                    control,
                    settings,
                    mapping.name,
                    options.who,
                    f"purge #{window.id} done: {total[0]} rows with {text} deleted from "
                    f"PostgreSQL only (this run {deleted})",
                    gates,
                )
            result.window = PurgeWindow(
                window.id,
                mapping.name,
                column,
                before,
                options.who,
                options.why,
                window.started_at,
                total[1],
                int(total[0]),
            )
    except psycopg.Error as exc:  # the control database; the deletes say so themselves
        raise PurgeError(
            f"recording purge of {mapping.name} in the control schema failed: "
            f"{str(exc).strip()}; run the same purge again to resume"
        ) from exc
    return result


def _source(settings: Settings) -> psycopg.Connection[Any]:
    pg = settings.postgres
    try:
        return psycopg.connect(pg.dsn(), autocommit=True)
    except psycopg.Error as exc:
        raise PurgeError(
            f"PostgreSQL at {pg.host}:{pg.port}/{pg.database} does not answer: {str(exc).strip()}"
        ) from exc


def _run_batches(
    settings: Settings,
    mapping: TableMapping,
    column: str,
    before: Any,
    window: PurgeWindow,
    batch: int,
    rate: float,
    progress: Progress,
    result: PurgeResult,
) -> int:
    """The deletes, one transaction per batch, in the origin-tagged session. The window's row
    count is updated in the same transaction when the control schema lives in the source
    database (the default), so a kill never loses count of a committed batch."""
    same_database = settings.control_dsn() == settings.postgres.dsn()
    delete = _delete_batch(mapping, column)
    count_rows = control_sql(
        settings, "UPDATE {schema}.purges SET rows_deleted = rows_deleted + %s WHERE id = %s"
    )
    started = time.monotonic()
    done = 0
    try:
        with _source(settings) as conn, connect_control(settings) as control:
            progress.start(_count(conn, mapping, column, before), 0)
            _tag_session(conn, settings.purge.origin)
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(
                    sql.Literal(f"{int(settings.purge.lock_timeout_s * 1000)}ms")
                )
            )
            while True:
                try:
                    with conn.transaction():
                        rows = conn.execute(delete, (before, batch)).rowcount
                        if same_database and rows:
                            conn.execute(count_rows, (rows, window.id))
                except psycopg.errors.LockNotAvailable:
                    # A row of the batch is locked by a writer: wait a little, take it again.
                    result.retries += 1
                    time.sleep(min(5.0, 0.1 * 2 ** min(result.retries, 6)))
                    continue
                if rows and not same_database:
                    control.execute(count_rows, (rows, window.id))
                if rows == 0:
                    break
                done += rows
                result.rows = done
                result.batches += 1
                progress.advance(rows)
                time.sleep(pace(done, rate, started, time.monotonic()))
            conn.execute("SELECT pg_replication_origin_session_reset()")
    except psycopg.Error as exc:
        raise PurgeError(
            f"purging {mapping.source} stopped after {done} rows: {str(exc).strip()}; the window "
            "is recorded: run the same purge again to resume"
        ) from exc
    finally:
        result.seconds = round(time.monotonic() - started, 3)
    return done
