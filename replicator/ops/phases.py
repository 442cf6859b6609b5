"""Per-table migration phases: a durable store with an audit history, and the gates a forward
move must pass.

The current phase of every table lives in PostgreSQL (the control schema), so applications in
any language read it with SQL (the view ``{schema}.current_phases``) or over the read API. Each
change is one transaction: lock the table's row (SELECT ... FOR UPDATE), compare it with the
phase the gates were evaluated against, update it and append a history row. Two concurrent
``set`` calls therefore serialize, and a move whose starting point changed under it (a rollback
meanwhile) is refused instead of applied on stale evidence.

Rules (see README, "Phases"):
- Forward moves go one step at a time; skipping a phase needs ``force`` (the soak in
  hybrid-read is what makes dynamodb-only's incident window mean anything).
- A forward move checks, live, every gate up to the target (gates are cumulative: a stopped
  connector makes zero lag meaningless, so hybrid-read re-checks it).
- ``force`` moves anyway; the failing conditions and the reason are recorded in the history.
- Rollback to any earlier phase is always allowed, checks nothing and takes effect at once.

Why one module of this size: the store, the history and the gates are one transaction (the
gates' evidence is compared with the locked row inside it), so they stay together.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from replicator.config import Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.observe.lag import consumer_lag
from replicator.ops import control
from replicator.ops.connector import ConnectClient
from replicator.ops.purged import PurgeError, purged_windows
from replicator.ops.verify import last_full_verify


class Phase(StrEnum):
    POSTGRES_ONLY = "postgres-only"
    DUAL_WRITE = "dual-write"
    HYBRID_READ = "hybrid-read"
    DYNAMODB_ONLY = "dynamodb-only"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)


_ORDER = list(Phase)
T = TypeVar("T")
IncidentKind = Literal["fallback", "mismatch"]
INCIDENT_KINDS: tuple[str, ...] = ("fallback", "mismatch")


class PhaseError(ReplicatorError):
    """A phase change was not made."""


class PhaseStoreUnavailable(PhaseError):
    """The control database did not answer."""


class PhaseConflict(PhaseError):
    """The table's phase changed between reading it and writing the new one."""


class PhaseRefused(PhaseError):
    """A gate failed; ``checks`` holds every condition with its measured value."""

    def __init__(self, message: str, checks: list[Check]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass(frozen=True)
class Check:
    """One gate condition as evaluated: what was measured against what it must be."""

    gate: Phase  # the phase this condition guards
    name: str
    ok: bool
    value: str  # the measured value, readable
    threshold: str  # what it must be

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "gate": str(self.gate)}


@dataclass(frozen=True)
class Transition:
    """A phase change (or a no-op when the table already was in that phase)."""

    id: int | None  # history row id; None when nothing changed
    table: str
    from_phase: Phase
    to_phase: Phase
    who: str
    why: str
    forced: bool
    at: dt.datetime
    checks: list[Check] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.id is not None

    @property
    def rollback(self) -> bool:
        return self.to_phase.rank < self.from_phase.rank


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    table: str
    from_phase: Phase
    to_phase: Phase
    who: str
    at: dt.datetime
    why: str
    forced: bool
    checks: list[dict[str, Any]]  # as recorded (JSON), empty for a rollback


# --- the store ------------------------------------------------------------------------------

_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.phases (
    table_name text PRIMARY KEY,
    phase text NOT NULL CHECK (phase IN ({phases})),
    changed_at timestamptz,            -- NULL: never changed (postgres-only by default)
    changed_by text,
    why text,
    forced boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS {schema}.phase_history (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    from_phase text NOT NULL,
    to_phase text NOT NULL,
    who text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    why text NOT NULL,
    forced boolean NOT NULL,
    gates jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS phase_history_table ON {schema}.phase_history (table_name, id);
-- Counted per minute, so a busy reader adds to one row instead of inserting per event.
CREATE TABLE IF NOT EXISTS {schema}.phase_incidents (
    table_name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('fallback', 'mismatch')),
    minute timestamptz NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (table_name, kind, minute)
);
CREATE OR REPLACE VIEW {schema}.current_phases AS
    SELECT table_name, phase,
           CASE phase WHEN 'postgres-only' THEN 'postgres' WHEN 'dual-write' THEN 'postgres'
                      WHEN 'hybrid-read' THEN 'dynamodb, falling back to postgres'
                      ELSE 'dynamodb' END AS reads_from,
           changed_at, changed_by, why, forced
    FROM {schema}.phases;
"""


class PhaseStore:
    """The phases of the mapped tables, their history, and the read path's incident counts.

    Thread-safe: short reads share one connection under a lock; a change uses its own
    connection and transaction.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = sql.Identifier(settings.control.schema_name)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._ready = False

    # -- plumbing

    def _connect(self) -> psycopg.Connection[Any]:
        return control.connect(self.settings, PhaseStoreUnavailable)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(schema=self.schema)

    def _ensure(self, conn: psycopg.Connection[Any]) -> None:
        if self._ready:
            return
        phases = sql.SQL(", ").join(sql.Literal(p.value) for p in Phase)
        control.ensure(self.settings, conn, "phases", _DDL, phases=phases)
        with conn.transaction():
            # Every mapped table gets a row, so the view lists them all for other readers.
            for mapping in self.settings.tables:
                conn.execute(
                    self._q(
                        "INSERT INTO {schema}.phases (table_name, phase) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    (mapping.name, Phase.POSTGRES_ONLY.value),
                )
        self._ready = True

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` on the shared autocommit connection; once more on a fresh connection if the
        server dropped the old one (a restart), since every read here is safe to repeat."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                try:
                    self._ensure(self._conn)
                    return work(self._conn)
                except psycopg.OperationalError as exc:
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise PhaseStoreUnavailable(
                            f"the control database failed: {str(exc).strip()}"
                        ) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _name(self, table: str) -> str:
        return self.settings.mapping_named(table).name

    # -- reading

    def get(self, table: str) -> Phase:
        """The table's phase; postgres-only when never set."""
        name = self._name(table)
        row = self._run(
            lambda conn: conn.execute(
                self._q("SELECT phase FROM {schema}.phases WHERE table_name = %s"), (name,)
            ).fetchone()
        )
        return Phase(row[0]) if row else Phase.POSTGRES_ONLY

    def current(self) -> dict[str, Phase]:
        """Every mapped table's phase."""
        names = [m.name for m in self.settings.tables]
        rows = self._run(
            lambda conn: conn.execute(
                self._q("SELECT table_name, phase FROM {schema}.phases WHERE table_name = ANY(%s)"),
                (names,),
            ).fetchall()
        )
        found = {name: Phase(phase) for name, phase in rows}
        return {name: found.get(name, Phase.POSTGRES_ONLY) for name in names}

    def details(self) -> list[dict[str, Any]]:
        """The view's rows for the mapped tables (phase, since, by whom, why, forced)."""
        names = [m.name for m in self.settings.tables]
        query = self._q(
            "SELECT * FROM {schema}.current_phases WHERE table_name = ANY(%s) ORDER BY table_name"
        )
        return self._run(lambda conn: _dicts(conn, query, [names]))

    def history(self, table: str | None = None, limit: int | None = None) -> list[HistoryEntry]:
        """Changes, oldest first; the last ``limit`` ones when given."""
        where = sql.SQL("")
        params: list[Any] = []
        if table is not None:
            try:
                name = self._name(table)
            except ConfigError:
                name = table  # a table no longer mapped still has its history
            where = sql.SQL("WHERE table_name = %s")
            params.append(name)
        cap = sql.SQL("LIMIT %s") if limit is not None else sql.SQL("")
        if limit is not None:
            params.append(limit)
        query = sql.SQL(
            "SELECT * FROM (SELECT * FROM {schema}.phase_history {where} ORDER BY id DESC {cap}) "
            "AS recent ORDER BY id"
        ).format(schema=self.schema, where=where, cap=cap)
        rows = self._run(lambda conn: _dicts(conn, query, params))
        return [
            HistoryEntry(
                id=r["id"],
                table=r["table_name"],
                from_phase=Phase(r["from_phase"]),
                to_phase=Phase(r["to_phase"]),
                who=r["who"],
                at=r["at"],
                why=r["why"],
                forced=r["forced"],
                checks=r["gates"],
            )
            for r in rows
        ]

    def entered_at(self, table: str) -> dt.datetime | None:
        """When the table last moved into its current phase (None: never changed)."""
        name = self._name(table)
        row = self._run(
            lambda conn: conn.execute(
                self._q("SELECT changed_at FROM {schema}.phases WHERE table_name = %s"), (name,)
            ).fetchone()
        )
        return row[0] if row else None

    # -- incidents (written by the read path)

    def record_incidents(self, table: str, kind: IncidentKind, count: int) -> None:
        """Add ``count`` fallbacks or shadow mismatches of ``table`` (counted per minute)."""
        if kind not in INCIDENT_KINDS:
            raise ConfigError(f"incident kind must be one of {INCIDENT_KINDS}, not {kind!r}")
        if count <= 0:
            return
        name = self._name(table)
        query = self._q(
            "INSERT INTO {schema}.phase_incidents (table_name, kind, minute, count) "
            "VALUES (%s, %s, date_trunc('minute', now()), %s) "
            "ON CONFLICT (table_name, kind, minute) "
            "DO UPDATE SET count = phase_incidents.count + EXCLUDED.count"
        )
        # Not repeated on a dropped connection: the first attempt may have counted already.
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                self._ensure(self._conn)
                self._conn.execute(query, (name, kind, count))
            except psycopg.OperationalError as exc:
                self._conn.close()
                self._conn = None
                raise PhaseStoreUnavailable(
                    f"the control database failed: {str(exc).strip()}"
                ) from exc

    def incidents(self, table: str, kind: str, since: dt.datetime) -> int:
        """Incidents of that kind since ``since``, counting the whole minute ``since`` falls in
        (a gate would rather over-count than miss one)."""
        if kind not in INCIDENT_KINDS:
            raise ConfigError(f"incident kind must be one of {INCIDENT_KINDS}, not {kind!r}")
        name = self._name(table)
        query = self._q(
            "SELECT coalesce(sum(count), 0) FROM {schema}.phase_incidents "
            "WHERE table_name = %s AND kind = %s AND minute >= date_trunc('minute', %s)"
        )
        row = self._run(lambda conn: conn.execute(query, (name, kind, since)).fetchone())
        return int(row[0]) if row else 0

    # -- changing

    def set(
        self,
        table: str,
        to: Phase | str,
        *,
        who: str,
        why: str,
        force: bool = False,
        gates: Callable[[Settings, PhaseStore, str, Phase, Phase], list[Check]] | None = None,
    ) -> Transition:
        """Move ``table`` to ``to``. Forward: one step at a time, every gate up to ``to`` must
        pass, unless ``force`` (then the failures are recorded). Backward: always, no gates.

        Raises PhaseRefused (with every check) or PhaseConflict (the phase changed while the
        gates were evaluated: look again and retry). ``gates`` replaces the live evaluation
        (tests of the rules only).
        """
        name = self._name(table)
        target = parse_phase(to)
        if not why.strip():
            raise PhaseError("a phase change needs a reason (--why)")
        if not who.strip():
            raise PhaseError("a phase change needs a name for who made it (--who)")
        start = self.get(name)
        if target == start:
            return Transition(None, name, start, target, who, why, force, _now())
        checks: list[Check] = []
        if target.rank > start.rank:
            checks = (gates or evaluate)(self.settings, self, name, start, target)
            failed = [c for c in checks if not c.ok]
            if (failed or target.rank - start.rank > 1) and not force:
                raise PhaseRefused(refusal_message(name, start, target, checks), checks)
        elif target.rank < Phase.DYNAMODB_ONLY.rank:
            # Every phase before dynamodb-only reads PostgreSQL (hybrid-read on a miss): rows a
            # purge deleted exist in DynamoDB only, so such a rollback would hide them.
            checks = purge_check(self.settings, name, start)
            if any(not c.ok for c in checks) and not force:
                raise PhaseRefused(
                    f"{name}: rollback {start} -> {target} refused\n"
                    + "\n".join(f"  {c.name}: {c.value} (needs {c.threshold})" for c in checks)
                    + "\n(restore the purged rows first, see docs/runbooks/purge.md, or --force)",
                    checks,
                )
        return self._write(name, start, target, who=who, why=why, force=force, checks=checks)

    def _write(
        self,
        name: str,
        start: Phase,
        target: Phase,
        *,
        who: str,
        why: str,
        force: bool,
        checks: list[Check],
    ) -> Transition:
        # A forced move records that it was forced only if something was actually overridden.
        overridden = force and (any(not c.ok for c in checks) or target.rank - start.rank > 1)
        gates_json = orjson.dumps([c.as_json() for c in checks]).decode()
        conn = self._connect()
        try:
            with conn, conn.transaction():
                self._ensure(conn)
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute(
                    self._q(
                        "INSERT INTO {schema}.phases (table_name, phase) VALUES (%s, %s) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    (name, Phase.POSTGRES_ONLY.value),
                )
                row = conn.execute(
                    self._q("SELECT phase FROM {schema}.phases WHERE table_name = %s FOR UPDATE"),
                    (name,),
                ).fetchone()
                now_phase = Phase(row[0])
                if now_phase != start:
                    raise PhaseConflict(
                        f"{name} moved from {start} to {now_phase} while this change was "
                        f"being checked; nothing was changed (look with `phase show` and retry)"
                    )
                at = conn.execute(
                    self._q(
                        "UPDATE {schema}.phases SET phase = %s, changed_at = now(), "
                        "changed_by = %s, why = %s, forced = %s WHERE table_name = %s "
                        "RETURNING changed_at"
                    ),
                    (target.value, who, why, overridden, name),
                ).fetchone()[0]
                history_id = conn.execute(
                    self._q(
                        "INSERT INTO {schema}.phase_history "
                        "(table_name, from_phase, to_phase, who, at, why, forced, gates) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id"
                    ),
                    (name, start.value, target.value, who, at, why, overridden, gates_json),
                ).fetchone()[0]
        except psycopg.errors.LockNotAvailable as exc:
            raise PhaseConflict(
                f"{name} is being changed by someone else (row locked for 10 s); retry"
            ) from exc
        except psycopg.OperationalError as exc:
            raise PhaseStoreUnavailable(
                f"the control database failed during the change: {str(exc).strip()}"
            ) from exc
        finally:
            conn.close()
        return Transition(history_id, name, start, target, who, why, overridden, at, checks)


def _dicts(conn: psycopg.Connection[Any], query: sql.Composed, params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def parse_phase(value: Phase | str) -> Phase:
    try:
        return Phase(value)
    except ValueError:
        names = ", ".join(p.value for p in Phase)
        raise ConfigError(f"unknown phase {value!r} (phases: {names})") from None


def refusal_message(table: str, start: Phase, target: Phase, checks: list[Check]) -> str:
    lines = [f"{table}: {start} -> {target} refused"]
    if target.rank - start.rank > 1:
        lines.append(
            f"  phases go forward one at a time: {start} -> {_ORDER[start.rank + 1]} first "
            "(or --force with a reason)"
        )
    for c in checks:
        if not c.ok:
            lines.append(f"  {c.name}: {c.value} (needs {c.threshold})")
    return "\n".join(lines)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- gates ----------------------------------------------------------------------------------


def evaluate(
    settings: Settings, store: PhaseStore, table: str, start: Phase, target: Phase
) -> list[Check]:
    """Every condition of every phase after postgres-only up to ``target``, measured now.
    A condition that cannot be measured (Connect or Kafka down) fails with the error as its
    value. ``start`` matters for the soak of dynamodb-only."""
    mapping = settings.mapping_named(table)
    checks: list[Check] = []
    if target.rank >= Phase.DUAL_WRITE.rank:
        checks += connector_checks(settings, mapping.source)
    if target.rank >= Phase.HYBRID_READ.rank:
        checks.append(lag_check(settings, mapping.name))
        checks.append(verify_check(settings, mapping.name))
    if target.rank >= Phase.DYNAMODB_ONLY.rank:
        checks += incident_checks(settings, store, mapping.name, start)
    return checks


def connector_checks(settings: Settings, source: str) -> list[Check]:
    """dual-write: the connector and all its tasks RUNNING, the table captured, and its snapshot
    complete according to the connector's committed source offsets (Connect REST, Kafka 3.6+)."""

    gate = Phase.DUAL_WRITE
    name = settings.connector.name
    try:
        client = ConnectClient(settings)
        status = client.status()
        config = client.config() if status is not None else None
        offsets = client.offsets() if status is not None else None
    except Exception as exc:  # cannot measure: the condition fails, the move is refused
        return [Check(gate, "connector running", False, f"unknown: {exc}", "RUNNING")]
    if status is None:
        return [Check(gate, "connector running", False, f"{name} does not exist", "RUNNING")]
    return [
        running_check(status),
        captured_check(config or {}, source),
        snapshot_check(offsets, source),
    ]


def running_check(status: dict[str, Any]) -> Check:
    tasks = status.get("tasks", [])
    states = [f"connector {status['connector']['state']}"] + [
        f"task {t.get('id')} {t.get('state')}" for t in tasks
    ]
    ok = (
        status["connector"]["state"] == "RUNNING"
        and bool(tasks)
        and all(t.get("state") == "RUNNING" for t in tasks)
    )
    if not tasks:
        states.append("no tasks")
    return Check(
        Phase.DUAL_WRITE, "connector running", ok, ", ".join(states), "connector and tasks RUNNING"
    )


def captured_check(config: dict[str, str], source: str) -> Check:
    """The table is in the connector's table.include.list (comma-separated regular
    expressions matched against schema.table, as Debezium matches them)."""
    listed = [p.strip() for p in config.get("table.include.list", "").split(",") if p.strip()]
    ok = any(re.fullmatch(p, source) for p in listed) if listed else True
    value = f"table.include.list={','.join(listed)}" if listed else "every table (no include list)"
    return Check(Phase.DUAL_WRITE, "table captured", ok, value, f"includes {source}")


def snapshot_check(offsets: list[dict[str, Any]] | None, source: str) -> Check:
    """Debezium's source offset carries ``snapshot`` (and ``snapshot_completed`` false) while
    the initial snapshot runs and drops them once it streams; an incremental snapshot in progress
    lists its tables under ``incremental_snapshot_collections``."""
    gate, name, need = Phase.DUAL_WRITE, "snapshot complete", "streaming, no snapshot of it running"
    if offsets is None:  # the connector exists, so the endpoint does not: Kafka Connect < 3.6
        return Check(gate, name, False, "unknown: Connect has no offsets endpoint (< 3.6)", need)
    if not offsets:
        return Check(gate, name, False, "no source offset committed yet (snapshot not done)", need)
    offset = offsets[0].get("offset") or {}
    if offset.get("snapshot") not in (None, False, "false", "FALSE") and not offset.get(
        "snapshot_completed"
    ):
        return Check(
            gate, name, False, f"initial snapshot in progress ({offset.get('snapshot')})", need
        )
    incremental = offset.get("incremental_snapshot_collections")
    if incremental and source in _incremental_tables(incremental):
        return Check(gate, name, False, f"incremental snapshot of {source} in progress", need)
    lsn = offset.get("lsn")
    return Check(gate, name, True, f"streaming (lsn {lsn})" if lsn else "streaming", need)


def _incremental_tables(value: Any) -> set[str]:
    try:
        entries = orjson.loads(value) if isinstance(value, str) else value
    except orjson.JSONDecodeError:
        return {str(value)}
    tables: set[str] = set()
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            tables.add(str(entry.get("incremental_snapshot_collections_id", "")).replace('"', ""))
        else:
            tables.add(str(entry).replace('"', ""))
    return tables


def lag_check(settings: Settings, table: str) -> Check:
    """hybrid-read: the age of the consumer group's oldest uncommitted record of the table."""
    gate, limit = Phase.HYBRID_READ, settings.phases.max_lag_s
    need = f"<= {limit:g} s"
    try:
        lag = consumer_lag(settings, timeout_s=settings.phases.lag_timeout_s).get(table)
    except Exception as exc:  # cannot measure: the condition fails, the move is refused
        return Check(gate, "consumer lag", False, f"unknown: {exc}", need)
    if lag is None:
        return Check(gate, "consumer lag", False, "not measured (no lag for the table)", need)
    return Check(
        gate,
        "consumer lag",
        lag.seconds <= limit,
        f"{lag.seconds:.1f} s ({lag.events} events behind on {lag.topic})",
        need,
    )


def verify_check(settings: Settings, table: str) -> Check:
    """hybrid-read: the latest full verify found zero divergence and is recent enough (a clean
    run followed by a divergent one does not count)."""
    gate, window = Phase.HYBRID_READ, settings.phases.verify_within_h
    need = f"latest full verify clean, within {window:g} h"
    try:
        last = last_full_verify(settings, table)
    except Exception as exc:  # cannot measure: the condition fails, the move is refused
        return Check(gate, "clean verify", False, f"unknown: {exc}", need)
    if last is None:
        return Check(gate, "clean verify", False, "no full verify recorded", need)
    age_h = (_now() - last.finished_at).total_seconds() / 3600
    when = f"{last.finished_at.isoformat(timespec='seconds')} ({age_h:.1f} h ago)"
    if not last.clean:
        return Check(
            gate, "clean verify", False, f"{last.divergent} divergent keys at {when}", need
        )
    return Check(gate, "clean verify", age_h <= window, f"clean at {when}", need)


def purge_check(settings: Settings, table: str, start: Phase) -> list[Check]:
    """A rollback to a phase that reads PostgreSQL: no purge of the table recorded (Phase 5,
    replicator.ops.purge). Empty when the store cannot say: a rollback is never blocked by an
    unanswered question."""
    try:
        windows = purged_windows(settings, table)
    except PurgeError:
        return []
    if not windows:
        return []
    rows = sum(w.rows for w in windows)
    shown = "; ".join(w.describe() for w in windows[-3:])
    value = f"{rows} rows purged from PostgreSQL live in DynamoDB only ({shown})"
    return [Check(start, "purged rows", False, value, "no purge recorded, or --force")]


def incident_checks(settings: Settings, store: PhaseStore, table: str, start: Phase) -> list[Check]:
    """dynamodb-only: zero fallbacks and zero shadow mismatches over the window, and the table
    in hybrid-read for at least that window (else "zero" means "not looked")."""
    gate, window_h = Phase.DYNAMODB_ONLY, settings.phases.incident_window_h
    since = _now() - dt.timedelta(hours=window_h)
    checks = []
    for kind, label in (("fallback", "fallbacks"), ("mismatch", "shadow mismatches")):
        count = store.incidents(table, kind, since)
        checks.append(Check(gate, label, count == 0, str(count), f"0 in the last {window_h:g} h"))
    entered = store.entered_at(table)
    need = f"in hybrid-read >= {window_h:g} h"
    if start != Phase.HYBRID_READ:
        checks.append(Check(gate, "hybrid-read soak", False, f"in {start}", need))
    else:
        held_h = (_now() - entered).total_seconds() / 3600 if entered else 0.0
        checks.append(Check(gate, "hybrid-read soak", held_h >= window_h, f"{held_h:.2f} h", need))
    return checks
