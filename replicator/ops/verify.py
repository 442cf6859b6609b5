"""Verify a DynamoDB replica against its PostgreSQL source, row by row, and repair it.

A full run reads both stores once, concurrently: PostgreSQL through a server-side cursor in
primary-key order, each row mapped by the sink's own mapping code (``rows.source_rows`` with
the lookups, then ``mapping.to_item``); DynamoDB through a parallel segmented Scan with
ConsistentRead. Neither side is held in memory: each item becomes one short line (its key, a
digest of its comparable attributes, its key and primary key) appended to one of N bucket files
chosen by a hash of the item key, so the same key of both sides lands in the same bucket. The
buckets are then compared one at a time; memory is one bucket (``verify.bucket_rows`` entries),
whatever the table size. See docs/verify.md.

Every key found divergent is then *judged*: re-read from both stores (PostgreSQL row, DynamoDB
consistent get) after the consumer group has applied what was in Kafka at the time (the live
re-check), and only what is still divergent is reported, with the differing attributes.
Delete markers are not items: they never count as extra. Numbers compare as numbers.

``--repair`` rewrites what is still divergent, guarded so that a newer replicated change wins
(see ``Verifier.repair``). Runs are stored in ``{schema}.verify_runs`` for the phase gates.

Why one module of this size: the scan, the buckets, the judging and the repair share the
bucket format and the digest of comparable attributes, and each step's guarantee (bounded
memory, re-check before reporting, guarded repair) depends on the others'; split, they would
pass those internals between modules. A split by step is on the list (scan, compare, repair).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

import orjson
import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from replicator.config import Settings
from replicator.core.events import Position, Row
from replicator.core.items import META_ATTRIBUTES, POS, SOURCE_MS, delete_marker, is_marker
from replicator.core.mapping import (
    AttributeValue,
    Item,
    TableMapping,
    format_date,
    format_timestamp,
    to_item,
)
from replicator.core.schema import Included, included_attributes, included_columns
from replicator.errors import ConfigError, MappingError, ReplicatorError
from replicator.observe.lag import consumer_lag
from replicator.ops import control
from replicator.ops.purged import in_purged_window, purged_bounds
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.lookup import Lookups
from replicator.stream.rows import source_rows
from replicator.stream.schema import Catalog
from replicator.stream.source import newest_position

Scope = Literal["full", "window", "sample"]
Kind = Literal["missing", "extra", "differs", "unmappable"]
# Divergences kept in detail in the report (all of them go to the --json file).
REPORT_DETAIL = 1000
T = TypeVar("T")
_EPOCH = dt.datetime(1970, 1, 1)


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
    purged: int = 0  # items of a purged window without their row (Phase 5): not extra
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
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of the run

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

_DDL = """
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
    return control.connect(settings)


def ensure_store(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    control.ensure(settings, conn, "verify_runs", _DDL)


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
                    json.dumps(report.to_json()),  # with the first REPORT_DETAIL divergences
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


# --- comparing items (pure) -----------------------------------------------------------------

SHOWN_CHARS = 2000  # longer values are cut in reports (JSON bodies can be hundreds of KB)


def _number(text: str) -> Decimal:
    number = Decimal(text)
    return number.normalize() if number else Decimal(0)  # '-0' and '0.00' are 0


def number_text(text: str) -> str:
    """The canonical text of a DynamoDB number: '10.50' -> '10.5', '1E+3' -> '1000'."""
    return format(_number(text), "f")


def _canon(value: AttributeValue) -> Any:
    """A hashable, comparable form of an attribute value. Numbers compare by value, as DynamoDB
    stores them ('10.50' and '10.5' are the same number; DynamoDB answers '10.5' for both)."""
    ((kind, raw),) = value.items()
    if kind == "N":
        return ("N", _number(raw))
    if kind == "NS":
        return ("NS", tuple(sorted(_number(v) for v in raw)))
    if kind == "SS":
        return ("SS", tuple(sorted(raw)))
    if kind == "B":
        return ("B", bytes(raw))
    if kind == "BS":
        return ("BS", tuple(sorted(bytes(v) for v in raw)))
    if kind == "L":
        return ("L", tuple(_canon(v) for v in raw))
    if kind == "M":
        return ("M", tuple(sorted((k, _canon(v)) for k, v in raw.items())))
    return (kind, raw)  # S, BOOL, NULL


def comparable(item: Item) -> dict[str, Any]:
    """The attributes a reader sees, in canonical form: meta attributes (_pos, _src_ms,
    _deleted) are the replicator's bookkeeping, not data."""
    return {name: _canon(v) for name, v in item.items() if name not in META_ATTRIBUTES}


def digest(item: Item) -> str:
    """A short fingerprint of an item's comparable attributes."""
    text = repr(sorted(comparable(item).items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def shown(value: AttributeValue | None) -> Any:
    """An attribute value for a report (DynamoDB JSON; binary as base64; long text cut)."""
    if value is None:
        return None
    ((kind, raw),) = value.items()
    if kind == "B":
        data = bytes(raw)
        return {"B": f"<{len(data)} bytes, base64 {base64.b64encode(data[:60]).decode()}...>"}
    if kind == "S" and len(raw) > SHOWN_CHARS:
        return {"S": f"{raw[:SHOWN_CHARS]}... ({len(raw)} characters)"}
    if kind in ("BS",):
        return {kind: [base64.b64encode(bytes(v)).decode() for v in raw]}
    return {kind: raw}


def differences(expected: Item, actual: Item) -> dict[str, tuple[Any, Any]]:
    """Attribute -> (expected, actual) for every attribute that differs (absent = None)."""
    want, have = comparable(expected), comparable(actual)
    return {
        name: (shown(expected.get(name)), shown(actual.get(name)))
        for name in sorted(want.keys() | have.keys())
        if want.get(name) != have.get(name)
    }


def key_text(mapping: TableMapping, item: Item) -> str:
    """A stable text naming an item's key (numbers canonical)."""
    parts = []
    for attribute in mapping.key_attributes:
        ((kind, raw),) = item[attribute].items()
        parts.append(number_text(raw) if kind == "N" else raw)
    return json.dumps(parts, ensure_ascii=False)


def key_of(mapping: TableMapping, item: Item) -> Item:
    return {a: item[a] for a in mapping.key_attributes}


def shown_key(mapping: TableMapping, item: Item) -> dict[str, str]:
    return {a: next(iter(item[a].values())) for a in mapping.key_attributes}


def key_from_shown(mapping: TableMapping, key: dict[str, str]) -> Item:
    kinds = {k.attribute: k.type for k in filter(None, [mapping.partition_key, mapping.sort_key])}
    return {a: {kinds[a]: key[a]} for a in mapping.key_attributes}


def row_pk(mapping: TableMapping, row: Row) -> dict[str, Any]:
    return {c: row[c] for c in mapping.primary_key}


def pk_tuple(mapping: TableMapping, pk: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(pk[c] for c in mapping.primary_key)


# (column type, attribute type) whose row-shape value is the attribute's raw value
_RAW_PK = {("decimal", "N"), ("text", "S"), ("json", "S"), ("bool", "BOOL")}


def pk_of_item(mapping: TableMapping, item: Item) -> dict[str, Any] | None:
    """The source primary key of a (live) item, from its column attributes, in the row shape
    the pipeline uses; None when the item does not carry it (not written by the replicator)."""
    columns = {c.name: c for c in mapping.columns}
    pk: dict[str, Any] = {}
    for name in mapping.primary_key:
        value = item.get(columns[name].attribute)
        if value is None or len(value) != 1:
            return None
        ((kind, raw),) = value.items()
        column_type = columns[name].type
        try:
            if column_type in ("int", "bigint") and kind == "N":
                pk[name] = int(_number(raw))
            elif (column_type, kind) in _RAW_PK:
                pk[name] = raw
            elif column_type == "timestamp" and kind == "S":
                moment = dt.datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%fZ")
                pk[name] = (moment - _EPOCH) // dt.timedelta(microseconds=1)
            elif column_type == "date" and kind == "S":
                pk[name] = (dt.date.fromisoformat(raw) - _EPOCH.date()).days
            else:
                return None
        except (ValueError, ArithmeticError):
            return None
    return pk


def _pk_param(column_type: str, value: Any) -> Any:
    """A primary-key value in the row shape back to a query parameter."""
    if column_type == "decimal":
        return Decimal(str(value))
    if column_type == "timestamp":
        return _EPOCH + dt.timedelta(microseconds=value)
    if column_type == "date":
        return _EPOCH.date() + dt.timedelta(days=value)
    return value


@dataclass(frozen=True)
class Expectation:
    """What one source row (by primary key) says DynamoDB must hold: ``item`` at its key, or
    nothing when the row does not exist; ``reason`` when the row cannot be mapped."""

    pk: dict[str, Any]
    item: Item | None = None
    reason: str | None = None


def source_connection(settings: Settings, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection to the source database whose json and jsonb values arrive as PostgreSQL's
    text of them, as Debezium sends them (psycopg would parse them into Python objects)."""
    conn = psycopg.connect(settings.postgres.dsn(), autocommit=autocommit)
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)
    return conn


def expect(
    mapping: TableMapping,
    pk: dict[str, Any],
    row: Row | None,
    included: Sequence[Included] = (),
) -> Expectation:
    """``included``: the source's unmapped columns the consumers write (``unmapped_columns:
    include``, replicator.stream.schema.included_columns)."""
    if row is None:
        return Expectation(pk)
    try:
        Lookups.require(mapping, row)
        item, _ = to_item(mapping, row)
        if included:
            item.update(included_attributes(included, row)[0])
    except MappingError as exc:
        return Expectation(pk, reason=str(exc))
    return Expectation(pk, item)


def judge(
    mapping: TableMapping,
    expectations: Iterable[Expectation],
    items: dict[str, Item | None],
    purged: list[tuple[str, str]] | None = None,
) -> list[Divergence]:
    """Divergences between what rows expect and the items read (by key_text, None = absent).

    A row's item missing (or only a delete marker) is ``missing``; present but unequal is
    ``differs``; an unmappable row is ``unmappable``; a live item that no row of
    ``expectations`` claims is ``extra``, so the caller must include the row of every live
    item it read (by the item's primary key) for that to mean "no source row". An unclaimed
    item of a ``purged`` window (``replicator.ops.purge.purged_bounds``) is not extra: its row
    was purged from PostgreSQL on purpose.
    """
    found: list[Divergence] = []
    claimed: set[str] = set()
    for exp in expectations:
        if exp.reason is not None:
            found.append(Divergence("unmappable", {}, exp.pk, detail=exp.reason))
            continue
        if exp.item is None:
            continue
        text = key_text(mapping, exp.item)
        claimed.add(text)
        actual = items.get(text)
        if actual is None or is_marker(actual):
            found.append(Divergence("missing", shown_key(mapping, exp.item), exp.pk))
            continue
        diff = differences(exp.item, actual)
        if diff:
            found.append(Divergence("differs", shown_key(mapping, exp.item), exp.pk, diff))
    for text, actual in items.items():
        if actual is None or is_marker(actual) or text in claimed:
            continue
        if purged and in_purged_window(actual, purged):
            continue
        found.append(Divergence("extra", shown_key(mapping, actual), pk_of_item(mapping, actual)))
    return found


# --- running a verification (I/O) -----------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Rows whose ``column`` (a timestamp or date column) is in [since, until); UTC."""

    column: str
    since: dt.datetime | dt.date | None = None
    until: dt.datetime | dt.date | None = None


@dataclass(frozen=True)
class VerifyOptions:
    sample: int | None = None  # compare this many random rows instead of everything
    window: Window | None = None
    repair: bool = False
    recheck: bool = True  # wait for the replication lag before judging (live traffic)
    group_id: str | None = None  # the consumer group whose lag to wait for; default kafka's
    json_path: Path | None = None  # write the full report (every divergent key) here
    record: bool = True  # store the run in verify_runs


class Progress(Protocol):
    """Where a run reports progress (the CLI draws bars); totals may be unknown (None)."""

    def start(self, task: str, total: int | None) -> None: ...

    def advance(self, task: str, amount: int) -> None: ...


class _Silent:
    def start(self, task: str, total: int | None) -> None:
        pass

    def advance(self, task: str, amount: int) -> None:
        pass


def default_time_column(mapping: TableMapping) -> str:
    """The window column when none is named: the retention column, else the first timestamp
    column, else the first date column."""
    if mapping.retention is not None:
        return mapping.retention.column
    for kind in ("timestamp", "date"):
        for column in mapping.columns:
            if column.type == kind:
                return column.name
    raise ConfigError(f"table {mapping.name} has no timestamp or date column for a time window")


def _window_bounds(mapping: TableMapping, window: Window) -> tuple[str, list[tuple[str, Any, str]]]:
    """(attribute, [(operator, query parameter, DynamoDB value)]) of a window; refuses bad
    columns and bounds."""
    columns = {c.name: c for c in mapping.columns}
    column = columns.get(window.column)
    if column is None or column.type not in ("timestamp", "date"):
        kinds = [c.name for c in mapping.columns if c.type in ("timestamp", "date")]
        raise ConfigError(
            f"time window: {window.column!r} is not a timestamp or date column of "
            f"{mapping.name} (those are: {', '.join(kinds) or 'none'})"
        )
    bounds = []
    for op, bound in ((">=", window.since), ("<", window.until)):
        if bound is None:
            continue
        if column.type == "date":
            if isinstance(bound, dt.datetime):
                if bound.time() != dt.time(0):
                    raise ConfigError(
                        f"time window: {column.name} is a date column; give dates, not times"
                    )
                bound = bound.date()
            value = format_date((bound - _EPOCH.date()).days)
        else:
            if not isinstance(bound, dt.datetime):
                bound = dt.datetime.combine(bound, dt.time(0))
            if bound.tzinfo is not None:
                bound = bound.astimezone(dt.UTC).replace(tzinfo=None)
            value = format_timestamp((bound - _EPOCH) // dt.timedelta(microseconds=1))
        bounds.append((op, bound, value))
    if len(bounds) == 2 and bounds[0][2] >= bounds[1][2]:  # fixed width: text order is time order
        raise ConfigError("time window: --since must be before --until")
    return column.attribute, bounds


def _chunks(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class _Buckets:
    """N append-only files of JSON lines, chosen by a hash of the item key."""

    def __init__(self, folder: Path, name: str, count: int) -> None:
        self.paths = [folder / f"{name}-{i:04d}.jsonl" for i in range(count)]
        self.files: list[BinaryIO] = [p.open("wb", buffering=1 << 16) for p in self.paths]
        self.lock = threading.Lock()

    def add(self, lines: list[tuple[str, bytes]]) -> None:
        count = len(self.files)
        with self.lock:
            for text, line in lines:
                self.files[zlib.crc32(text.encode()) % count].write(line)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def read(self, index: int) -> Iterator[tuple[bytes, bytes, bytes]]:
        """(key text, digest, the rest as JSON) per line, unparsed: a bucket in memory is then
        three small bytes objects per key, not nested dicts."""
        with self.paths[index].open("rb") as f:
            for line in f:
                text, fingerprint, rest = line.rstrip(b"\n").split(b"\t", 2)
                yield text, fingerprint, rest


def _bucket_line(
    text: str, fingerprint: str, key: Item, pk: dict[str, Any] | None, purged: bool = False
) -> bytes:
    # Tab-separated: JSON text never holds a raw tab (json.dumps escapes it), a digest is hex.
    # An item of a purged window carries a third element: without a row it is not extra.
    rest = [key, pk, 1] if purged else [key, pk]
    return b"%s\t%s\t%s\n" % (text.encode(), fingerprint.encode(), orjson.dumps(rest))


def _candidate(kind: str, rest: bytes) -> dict[str, Any]:
    key, pk, *flag = orjson.loads(rest)
    candidate = {"kind": kind, "key": key, "pk": pk}
    if flag:
        candidate["purged"] = True
    return candidate


class _Spill:
    """A JSON-lines file of records, written then read back in order (divergences, keys)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: BinaryIO | None = path.open("wb", buffering=1 << 16)

    def add(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(orjson.dumps(record) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.close()
        with self.path.open("rb") as f:
            for line in f:
                yield orjson.loads(line)


def repair_position(seen: str | None, newest: str | None) -> str | None:
    """The ``_pos`` a repair writes: the stored item's (``seen``), raised to a snapshot read at
    ``newest``, the newest ``_pos`` read from the table before the row was read. Pure.

    The stream applies changes in commit order, so every change it delivers later ranks above
    the newest one already applied: a read ranked there (``streamed`` 0 loses the tie with a
    change at the same position) is overwritten by each of them, as a repair must be. And an
    older event replayed later (a `dlq replay`, a backfill into the live table) ranks below it
    and is refused, where a repaired item without a position, or at its old one, would let it
    overwrite the repair. ``newest`` is None when nothing with a position was read."""
    if newest is None:
        return seen
    at = Position.decode(newest)
    floor = Position(at.last_commit, 0, at.lsn).encode()
    return floor if seen is None or floor > seen else seen


def _divergence(record: dict[str, Any]) -> Divergence:
    attributes = {k: (v["expected"], v["actual"]) for k, v in record["attributes"].items()}
    return Divergence(
        record["kind"], record["key"], record["source_key"], attributes, record["detail"]
    )


class Verifier:
    """One table's verification: both stores' readers, the spill folder, the judge and the
    repair. Use as a context manager; ``run`` does the whole job."""

    JUDGE_BATCH = 100  # keys per BatchGetItem (DynamoDB's limit) and per row query

    def __init__(
        self,
        settings: Settings,
        mapping: TableMapping,
        progress: Progress | None = None,
        dynamodb: Any = None,
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.options = settings.verify
        self.progress = progress or _Silent()
        self.dynamodb = dynamodb or dynamodb_client(
            settings.dynamodb, max_pool=self.options.scan_segments + 4
        )
        self.lookups = Lookups(settings.postgres.lookups())
        self._conn: psycopg.Connection[Any] | None = None
        self._folder = tempfile.TemporaryDirectory(
            prefix="replicator-verify-", dir=self.options.spill_dir
        )
        self.folder = Path(self._folder.name)
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        # The newest _pos read from the table so far: how far the stream had got (see repair).
        self._newest: str | None = None
        self._newest_lock = threading.Lock()
        self.purged: list[tuple[str, str]] = []  # the table's purged windows, read by run()
        self._included: list[Included] | None = None  # asked of the catalog once, when needed
        self._included_lock = threading.Lock()

    def expect(self, mapping: TableMapping, pk: dict[str, Any], row: Row | None) -> Expectation:
        """``expect``, with the unmapped columns the consumers write (``include``)."""
        if mapping.unmapped_columns != "include":
            return expect(mapping, pk, row)
        with self._included_lock:
            if self._included is None:
                catalog = Catalog(self.settings.postgres.dsn())
                try:
                    self._included = included_columns(mapping, catalog.columns(mapping.source))
                finally:
                    catalog.close()
        return expect(mapping, pk, row, self._included)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown()
        self.lookups.close()
        if self._conn is not None:
            self._conn.close()
        self._folder.cleanup()

    # -- the whole run --

    def run(self, options: VerifyOptions) -> VerifyReport:
        scope: Scope = (
            "sample" if options.sample is not None else "window" if options.window else "full"
        )
        started = time.monotonic()
        if options.window is not None:
            _window_bounds(self.mapping, options.window)  # a bad window: refused before reading
        self._estimate_items()  # a missing DynamoDB table: one clear error before anything
        self.purged = purged_bounds(self.settings, self.mapping)
        report = VerifyReport(self.mapping.name, scope, dt.datetime.now(dt.UTC))
        report.window = self.window_text(options.window)
        if options.sample is not None:
            if options.sample <= 0:
                raise ConfigError("--sample must be a positive number of rows")
            candidates = self._sample(options.sample, options.window, report)
            waits = [False] + [options.recheck] * self.options.recheck_rounds
        else:
            candidates = self._compare(options.window, report)
            rounds = max(1, self.options.recheck_rounds) if options.recheck else 1
            waits = [options.recheck] * rounds
        began = time.monotonic()
        final = self._settle(candidates, waits, options.group_id, report)
        report.timings["recheck"] = round(time.monotonic() - began, 3)
        for record in final:
            kind = record["kind"]
            if kind == "missing":
                report.missing += 1
            elif kind == "extra":
                report.extra += 1
            elif kind == "differs":
                report.differing += 1
            else:
                report.unmappable += 1
            if len(report.divergences) < REPORT_DETAIL:
                report.divergences.append(_divergence(record))
        if scope == "sample":
            # Every sampled row was judged; a row is matched unless it is reported.
            rows_reported = report.missing + report.differing + report.unmappable
            report.matched = max(0, report.source_rows - rows_reported)
        report.converged = max(0, report.rechecked - report.divergent)  # changes in flight
        if options.repair and report.divergent:
            began = time.monotonic()
            self.repair(final, report)
            report.timings["repair"] = round(time.monotonic() - began, 3)
        report.finished_at = dt.datetime.now(dt.UTC)
        report.seconds = round(time.monotonic() - started, 3)
        if options.json_path is not None:
            self.write_json(report, final, options.json_path)
        if options.record:
            record_run(self.settings, report)
        return report

    @staticmethod
    def window_text(window: Window | None) -> dict[str, str] | None:
        if window is None:
            return None
        return {
            "column": window.column,
            "since": window.since.isoformat() if window.since else "",
            "until": window.until.isoformat() if window.until else "",
        }

    # -- the first pass: both stores into buckets, then bucket by bucket --

    def _bucket_count(self) -> int:
        estimate = max(self._estimate_rows(), self._estimate_items())
        wanted = -(-estimate // self.options.bucket_rows)
        return max(1, min(self.options.max_buckets, wanted))

    def _compare(self, window: Window | None, report: VerifyReport) -> _Spill:
        count = self._bucket_count()
        expected = _Buckets(self.folder, "expected", count)
        actual = _Buckets(self.folder, "actual", count)
        candidates = _Spill(self.folder / "candidates.jsonl")
        bounds = _window_bounds(self.mapping, window) if window else None
        segments = self.options.scan_segments
        self.progress.start("PostgreSQL rows", None if window else self._estimate_rows())
        self.progress.start("DynamoDB items", None if window else self._estimate_items())
        counts = {"rows": 0, "items": 0, "tombstones": 0}
        began = time.monotonic()

        def timed(name: str, work: Callable[..., None], *args: Any) -> None:
            work(*args)
            with actual.lock:  # the last segment to finish sets the scan's time
                report.timings[name] = round(time.monotonic() - began, 3)

        with ThreadPoolExecutor(max_workers=segments + 1, thread_name_prefix="verify") as pool:
            futures = [
                pool.submit(
                    timed, "read_postgres", self._read_source, expected, candidates, bounds, counts
                )
            ]
            futures += [
                pool.submit(
                    timed,
                    "scan_dynamodb",
                    self._scan_segment,
                    actual,
                    segment,
                    segments,
                    bounds,
                    counts,
                )
                for segment in range(segments)
            ]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        self._stop.set()
                        future.result()
            finally:
                self._stop.set()  # on an error or interrupt, let the other readers end
                wait(futures)
            self._stop.clear()
        expected.close()
        actual.close()
        report.source_rows = counts["rows"]
        report.replica_items = counts["items"] - report.purged
        report.tombstones = counts["tombstones"]
        began = time.monotonic()
        self.progress.start("compare buckets", count)
        for index in range(count):
            mine = {text: (fingerprint, rest) for text, fingerprint, rest in expected.read(index)}
            for text, fingerprint, rest in actual.read(index):
                row = mine.pop(text, None)
                if row is None:
                    candidate = _candidate("extra", rest)
                    if candidate.pop("purged", False):
                        report.purged += 1  # its row was purged on purpose (Phase 5)
                    else:
                        candidates.add(candidate)
                elif row[0] != fingerprint:
                    candidates.add(_candidate("differs", row[1]))
                else:
                    report.matched += 1
            for _, rest in mine.values():
                candidates.add(_candidate("missing", rest))
            self.progress.advance("compare buckets", 1)
        candidates.close()
        report.timings["compare"] = round(time.monotonic() - began, 3)
        return candidates

    def _read_source(
        self,
        buckets: _Buckets,
        candidates: _Spill,
        bounds: tuple[str, list[tuple[str, Any, str]]] | None,
        counts: dict[str, int],
    ) -> None:
        mapping = self.mapping
        where, params = self._where(bounds)
        query = sql.SQL("SELECT * FROM {} {} ORDER BY {}").format(
            self._source(), where, sql.SQL(", ").join(map(sql.Identifier, mapping.primary_key))
        )
        fetch = self.options.fetch_rows
        lookups = Lookups(self.settings.postgres.lookups())  # its own connection: own thread
        try:
            with source_connection(self.settings) as conn:
                conn.read_only = True
                # A named cursor: the server keeps the result, we fetch `fetch` rows at a time.
                with conn.cursor(
                    name=f"verify_{uuid.uuid4().hex[:8]}", row_factory=dict_row
                ) as cur:
                    cur.itersize = fetch
                    cur.execute(query, params)
                    while not self._stop.is_set():
                        records = cur.fetchmany(fetch)
                        if not records:
                            break
                        lines = []
                        for row in source_rows(mapping, records, lookups):
                            pk = row_pk(mapping, row)
                            exp = self.expect(mapping, pk, row)
                            if exp.item is None:
                                candidates.add({"kind": "unmappable", "key": None, "pk": pk})
                                continue
                            text = key_text(mapping, exp.item)
                            line = _bucket_line(
                                text, digest(exp.item), key_of(mapping, exp.item), pk
                            )
                            lines.append((text, line))
                        buckets.add(lines)
                        with buckets.lock:
                            counts["rows"] += len(records)
                        self.progress.advance("PostgreSQL rows", len(records))
        except psycopg.Error as exc:
            raise ReplicatorError(
                f"reading {mapping.source} from PostgreSQL failed: {str(exc).strip()}"
            ) from exc
        finally:
            lookups.close()

    def _scan_segment(
        self,
        buckets: _Buckets,
        segment: int,
        segments: int,
        bounds: tuple[str, list[tuple[str, Any, str]]] | None,
        counts: dict[str, int],
    ) -> None:
        mapping = self.mapping
        request: dict[str, Any] = {
            "TableName": mapping.name,
            "Segment": segment,
            "TotalSegments": segments,
            "ConsistentRead": True,
        }
        if bounds:
            attribute, limits = bounds
            request["FilterExpression"] = " AND ".join(
                f"#t {op} :b{i}" for i, (op, _, _) in enumerate(limits)
            )
            request["ExpressionAttributeNames"] = {"#t": attribute}
            request["ExpressionAttributeValues"] = {
                f":b{i}": {"S": value} for i, (_, _, value) in enumerate(limits)
            }
        try:
            for page in self.dynamodb.get_paginator("scan").paginate(**request):
                if self._stop.is_set():
                    return
                lines, markers = [], 0
                self._saw(page["Items"])
                for item in page["Items"]:
                    if is_marker(item):
                        markers += 1
                        continue
                    text = key_text(mapping, item)
                    line = _bucket_line(
                        text,
                        digest(item),
                        key_of(mapping, item),
                        pk_of_item(mapping, item),
                        bool(self.purged) and in_purged_window(item, self.purged),
                    )
                    lines.append((text, line))
                buckets.add(lines)
                with buckets.lock:
                    counts["items"] += len(lines)
                    counts["tombstones"] += markers
                self.progress.advance("DynamoDB items", len(page["Items"]))
        except (ClientError, BotoCoreError) as exc:
            raise ReplicatorError(f"scanning DynamoDB table {mapping.name} failed: {exc}") from exc

    # -- sample --

    def _sample(self, size: int, window: Window | None, report: VerifyReport) -> _Spill:
        """``size`` random rows (of the window) as candidates: every one is judged."""
        bounds = _window_bounds(self.mapping, window) if window else None
        where, params = self._where(bounds)
        estimate = self._estimate_rows()
        table = self._source()
        if estimate > 20 * size:
            # Bernoulli sampling reads about 3x the rows needed, not the whole table.
            percent = min(100.0, 300.0 * size / estimate)
            query = sql.SQL(
                "SELECT * FROM {} TABLESAMPLE BERNOULLI ({}) {} ORDER BY random() LIMIT %s"
            )
            records = self._query(query.format(table, sql.Literal(percent), where), [*params, size])
            if len(records) < size:  # the estimate was stale
                records = []
        else:
            records = []
        if not records:
            query = sql.SQL("SELECT * FROM {} {} ORDER BY random() LIMIT %s").format(table, where)
            records = self._query(query, [*params, size])
        candidates = _Spill(self.folder / "candidates.jsonl")
        for row in source_rows(self.mapping, records, self.lookups):
            candidates.add({"kind": "sample", "key": None, "pk": row_pk(self.mapping, row)})
        report.source_rows = len(records)
        candidates.close()
        return candidates

    # -- judging: re-read divergent keys from both stores, after the replication lag --

    def _settle(
        self, candidates: _Spill, waits: list[bool], group_id: str | None, report: VerifyReport
    ) -> _Spill:
        current = candidates
        for round_number, must_wait in enumerate(waits):
            if current.count == 0:
                break
            if must_wait:
                if not report.rechecked:
                    report.rechecked = current.count  # keys re-checked after the lag
                note = self.wait_for_replication(group_id)
                if note:
                    report.notes.append(note)
            judged = _Spill(self.folder / f"judged-{round_number}.jsonl")
            task = f"re-check {round_number + 1}"
            self.progress.start(task, current.count)
            batch: list[dict[str, Any]] = []
            for record in current:
                batch.append(record)
                if len(batch) == self.JUDGE_BATCH:
                    self._judge_batch(batch, judged, report, round_number == 0)
                    self.progress.advance(task, len(batch))
                    batch = []
            if batch:
                self._judge_batch(batch, judged, report, round_number == 0)
                self.progress.advance(task, len(batch))
            judged.close()
            current = judged
        return current

    def _judge_batch(
        self, batch: list[dict[str, Any]], out: _Spill, report: VerifyReport, first: bool
    ) -> None:
        """Judge a batch of candidates: first-pass records ({"key": DynamoDB key, "pk"}) or
        the divergences of an earlier round ({"key": shown key, "source_key"})."""
        mapping = self.mapping
        keys: list[Item] = []
        pks: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in batch:
            key, pk = record.get("key"), record.get("pk", record.get("source_key"))
            if key:
                shown_form = all(isinstance(v, str) for v in key.values())
                keys.append(key_from_shown(mapping, key) if shown_form else key)
            if pk:
                pks[pk_tuple(mapping, pk)] = pk
        items = self._get_items(keys)
        for item in items.values():
            if item is not None and not is_marker(item):
                pk = pk_of_item(mapping, item)
                if pk is not None:
                    pks.setdefault(pk_tuple(mapping, pk), pk)
        rows = self._rows(list(pks.values()))
        expectations = [self.expect(mapping, pk, rows.get(t)) for t, pk in pks.items()]
        more = [
            key_of(mapping, e.item)
            for e in expectations
            if e.item is not None and key_text(mapping, e.item) not in items
        ]
        items.update(self._get_items(more))
        if report.scope == "sample" and first:
            report.replica_items += sum(
                1 for i in items.values() if i is not None and not is_marker(i)
            )
        for divergence in judge(mapping, expectations, items, self.purged):
            out.add(divergence.to_json())

    def wait_for_replication(self, group_id: str | None) -> str | None:
        """Wait until the consumer group has applied every change of this table that was in
        Kafka now (after a margin for Debezium to ship recent commits), at most
        ``verify.max_recheck_wait_s``. Returns a note when it could not."""

        group = group_id or self.settings.kafka.group_id
        time.sleep(self.options.debezium_margin_s)
        bound = self.options.max_recheck_wait_s
        deadline = time.monotonic() + bound
        try:
            lag = consumer_lag(self.settings, group)[self.mapping.name]
        except ReplicatorError as exc:
            time.sleep(min(bound, 10.0))
            return f"replication lag unknown ({exc}); re-checked after a fixed wait"
        targets = {p.partition: p.end for p in lag.partitions}
        while True:
            behind = sum(max(0, targets.get(p.partition, 0) - p.committed) for p in lag.partitions)
            if behind == 0:
                return None
            if time.monotonic() >= deadline:
                return (
                    f"consumer group {group!r} was still {behind} events behind after "
                    f"{bound:g}s; re-checked anyway"
                )
            time.sleep(0.5)
            try:
                lag = consumer_lag(self.settings, group)[self.mapping.name]
            except ReplicatorError as exc:
                return f"replication lag unknown ({exc}); re-checked anyway"

    # -- repair --

    def repair(self, divergences: Iterable[dict[str, Any]], report: VerifyReport) -> None:
        """Rewrite what is still divergent, guarded so that a newer replicated change wins.

        For each key: read the DynamoDB item first (its ``_pos``, the position of the last
        change applied there, or none), then the PostgreSQL row, then write conditionally on
        the item still holding that same ``_pos`` (or still none), at ``repair_position``: that
        ``_pos`` raised to a read at the newest position seen before the row was read (in the
        table's topic, whose tail is read first, or in the table):

        - missing/differs: put the row's item (as the sink would write it);
        - extra: put a delete marker, if the item's row still does not map to this key.

        Any change applied after we read the item changes its ``_pos``, and the condition
        fails (counted as skipped: the stream got there first). Any change committed after the
        row was read ranks above the written ``_pos``, so the sink's own guard (``_pos < :pos``)
        still lets it overwrite the repair; an older event replayed later ranks below it.
        Reading the item before the row is what makes that hold: the row we write is at least
        as new as every change already applied. Unmappable rows are left alone (the pipeline
        dead-letters them too).
        """
        self.progress.start("repair", report.divergent)
        # Before any row is read: where the stream has got (see ``repair_position``).
        try:
            streamed = newest_position(self.settings.kafka, self.settings.topic_of(self.mapping))
        except ReplicatorError as exc:
            streamed = None
            report.notes.append(f"repair ranked by the table's positions only: {exc}")
        if streamed is not None:
            self._saw([{POS: {"S": streamed.encode()}}])
        rows: list[dict[str, Any]] = []
        extras: list[Item] = []
        for record in divergences:  # streamed from the spill file, a batch at a time
            if record["kind"] in ("missing", "differs"):
                rows.append(record["source_key"])
            elif record["kind"] == "extra":
                extras.append(key_from_shown(self.mapping, record["key"]))
            else:
                report.repair_skipped += 1
                self.progress.advance("repair", 1)
            if len(rows) == self.JUDGE_BATCH:
                self._write(self._repair_rows(rows, report), report)
                rows = []
            if len(extras) == self.JUDGE_BATCH:
                self._write(self._repair_extras(extras, report), report)
                extras = []
        if rows:
            self._write(self._repair_rows(rows, report), report)
        if extras:
            self._write(self._repair_extras(extras, report), report)
        if report.repaired:
            report.notes.append(
                f"repaired {report.repaired} keys; run verify again to confirm a clean replica"
            )

    def _write(self, writes: list[tuple[Item, Item | None]], report: VerifyReport) -> None:
        """Guarded puts of a batch, concurrently (the keys are distinct)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=2 * self.options.scan_segments, thread_name_prefix="repair"
            )
        for written in self._pool.map(lambda w: self._guarded_put(*w), writes):
            if written:
                report.repaired += 1
            else:
                report.repair_skipped += 1  # a replicated change got there first
        self.progress.advance("repair", len(writes))

    def _repair_rows(
        self, pks: list[dict[str, Any]], report: VerifyReport
    ) -> list[tuple[Item, Item | None]]:
        """The writes that repair these rows' items."""
        mapping = self.mapping
        writes: list[tuple[Item, Item | None]] = []
        first = self._rows(pks)
        keys = {}
        for pk in pks:
            exp = self.expect(mapping, pk, first.get(pk_tuple(mapping, pk)))
            if exp.item is not None:
                keys[pk_tuple(mapping, pk)] = key_of(mapping, exp.item)
        observed = self._get_items(list(keys.values()))  # the item before the row: see repair
        second = self._rows(pks)
        for pk in pks:
            t = pk_tuple(mapping, pk)
            exp = self.expect(mapping, pk, second.get(t))
            if exp.item is None or t not in keys or key_of(mapping, exp.item) != keys[t]:
                report.repair_skipped += 1  # deleted, unmappable or moved meanwhile
                self.progress.advance("repair", 1)
                continue
            seen = observed.get(key_text(mapping, exp.item))
            if seen is not None and not is_marker(seen) and not differences(exp.item, seen):
                self.progress.advance("repair", 1)
                continue  # converged meanwhile
            writes.append((dict(exp.item), seen))
        return writes

    def _repair_extras(
        self, keys: list[Item], report: VerifyReport
    ) -> list[tuple[Item, Item | None]]:
        """The delete markers that remove these extra items."""
        mapping = self.mapping
        writes: list[tuple[Item, Item | None]] = []
        observed = self._get_items(keys)
        pks = {}
        for item in observed.values():
            if item is not None and not is_marker(item):
                pk = pk_of_item(mapping, item)
                if pk is not None:
                    pks[pk_tuple(mapping, pk)] = pk
        rows = self._rows(list(pks.values()))
        now_s = int(time.time())
        for text, item in observed.items():
            if item is None or is_marker(item):
                continue  # gone meanwhile
            pk = pk_of_item(mapping, item)
            if pk is not None:
                exp = self.expect(mapping, pk, rows.get(pk_tuple(mapping, pk)))
                if exp.item is not None and key_text(mapping, exp.item) == text:
                    report.repair_skipped += 1  # its row maps here now: not extra any more
                    self.progress.advance("repair", 1)
                    continue
            writes.append((delete_marker(mapping, key_of(mapping, item), now_s), item))
        return writes

    def _saw(self, items: Iterable[Item]) -> None:
        newest = max((i[POS]["S"] for i in items if "S" in i.get(POS, {})), default=None)
        if newest is not None:
            with self._newest_lock:
                if self._newest is None or newest > self._newest:
                    self._newest = newest

    def _guarded_put(self, item: Item, seen: Item | None) -> bool:
        """Put ``item`` only if the stored item still has the ``_pos`` seen (or still none), at
        ``repair_position`` of that ``_pos`` and the newest one read from the table before;
        False when the condition failed (a newer change is stored)."""
        request: dict[str, Any] = {
            "TableName": self.mapping.name,
            "ExpressionAttributeNames": {"#pos": POS},
        }
        position = seen.get(POS) if seen else None
        with self._newest_lock:
            newest = self._newest
        ranked = repair_position(position["S"] if position else None, newest)
        if ranked is not None:
            item[POS] = {"S": ranked}
        if position is not None:
            request["ConditionExpression"] = "#pos = :seen"
            request["ExpressionAttributeValues"] = {":seen": position}
        else:
            request["ConditionExpression"] = "attribute_not_exists(#pos)"
        if seen is not None and SOURCE_MS in seen:
            item[SOURCE_MS] = seen[SOURCE_MS]
        try:
            self.dynamodb.put_item(Item=item, **request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise ReplicatorError(f"repair write to {self.mapping.name} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise ReplicatorError(f"DynamoDB unreachable during repair: {exc}") from exc
        return True

    # -- the report file --

    def write_json(self, report: VerifyReport, divergences: _Spill, path: Path) -> None:
        """The full report, every divergent key included, written without holding them all."""
        head = orjson.dumps(report.summary(), option=orjson.OPT_INDENT_2)
        try:
            with path.open("wb") as f:
                f.write(head[:-2].rstrip() + b',\n  "divergences": [')
                for i, record in enumerate(divergences):
                    f.write((b",\n    " if i else b"\n    ") + orjson.dumps(record))
                f.write(b"\n  ]\n}\n")
        except OSError as exc:
            raise ReplicatorError(f"cannot write the report to {path}: {exc.strerror}") from exc

    # -- reading --

    def _source(self) -> sql.Composable:
        return sql.Identifier(*self.mapping.source.split("."))

    def _where(
        self, bounds: tuple[str, list[tuple[str, Any, str]]] | None
    ) -> tuple[sql.Composable, list[Any]]:
        if not bounds:
            return sql.SQL(""), []
        column = next(c.name for c in self.mapping.columns if c.attribute == bounds[0])
        parts = [
            sql.SQL("{} {} %s").format(sql.Identifier(column), sql.SQL(op))
            for op, _, _ in bounds[1]
        ]
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(parts), [b for _, b, _ in bounds[1]]

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = source_connection(self.settings, autocommit=True)
            except psycopg.Error as exc:
                raise ReplicatorError(f"PostgreSQL unreachable: {str(exc).strip()}") from exc
        return self._conn

    def _query(self, query: sql.Composable, params: list[Any]) -> list[dict[str, Any]]:
        try:
            with self._connection().cursor(row_factory=dict_row) as cur:
                return cur.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise ReplicatorError(
                f"reading {self.mapping.source} failed: {str(exc).strip()}"
            ) from exc

    def _rows(self, pks: list[dict[str, Any]]) -> dict[tuple[Any, ...], Row]:
        """Current rows by primary key, in the pipeline's shape with lookups."""
        mapping = self.mapping
        types = mapping.column_types()
        found: dict[tuple[Any, ...], Row] = {}
        columns = sql.SQL(", ").join(map(sql.Identifier, mapping.primary_key))
        one = sql.SQL("({})").format(
            sql.SQL(", ").join([sql.Placeholder()] * len(mapping.primary_key))
        )
        for chunk in _chunks(pks, 500):
            query = sql.SQL("SELECT * FROM {} WHERE ({}) IN ({})").format(
                self._source(), columns, sql.SQL(", ").join([one] * len(chunk))
            )
            params = [_pk_param(types[c], pk[c]) for pk in chunk for c in mapping.primary_key]
            for row in source_rows(mapping, self._query(query, params), self.lookups):
                found[pk_tuple(mapping, row_pk(mapping, row))] = row
        return found

    def _get_items(self, keys: list[Item]) -> dict[str, Item | None]:
        """Consistent reads of the keys (None = no item), BatchGetItem 100 at a time."""
        mapping = self.mapping
        unique = {key_text(mapping, k): k for k in keys}
        found: dict[str, Item | None] = dict.fromkeys(unique)
        for chunk in _chunks(list(unique.values()), 100):
            request: dict[str, Any] = {mapping.name: {"Keys": chunk, "ConsistentRead": True}}
            for attempt in range(12):
                try:
                    answer = self.dynamodb.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise ReplicatorError(f"reading {mapping.name} failed: {exc}") from exc
                items = answer.get("Responses", {}).get(mapping.name, [])
                self._saw(items)
                for item in items:
                    found[key_text(mapping, item)] = item
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))
            else:
                raise ReplicatorError(f"DynamoDB kept keys of {mapping.name} unprocessed")
        return found

    def _estimate_rows(self) -> int:
        try:
            row = (
                self._connection()
                .execute(
                    "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
                    [self.mapping.source],
                )
                .fetchone()
            )
        except psycopg.Error as exc:
            raise ReplicatorError(
                f"table {self.mapping.source} not readable in PostgreSQL: {str(exc).strip()}"
            ) from exc
        return int(row[0]) if row else 0

    def _estimate_items(self) -> int:
        try:
            table = self.dynamodb.describe_table(TableName=self.mapping.name)["Table"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise ReplicatorError(
                    f"DynamoDB table {self.mapping.name} does not exist "
                    "(`replicator tables create`)"
                ) from exc
            raise ReplicatorError(f"DynamoDB table {self.mapping.name}: {exc}") from exc
        except BotoCoreError as exc:
            raise ReplicatorError(f"DynamoDB unreachable: {exc}") from exc
        return int(table.get("ItemCount", 0))


def verify(
    settings: Settings,
    mapping: TableMapping,
    options: VerifyOptions,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify one table; see the module's docstring."""
    with Verifier(settings, mapping, progress) as verifier:
        return verifier.run(options)
