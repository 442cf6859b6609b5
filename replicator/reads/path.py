"""The read path: the design's access patterns, served from PostgreSQL or DynamoDB with identical
results, and a router that picks the store by the table's migration phase.

What "identical" means, exactly (both stores follow it; tests compare them):

- A row is the item the sink writes for that PostgreSQL row, cut down to the table's key
  attributes and its columns: index keys (GSI*), the TTL attribute and meta attributes (``_pos``,
  ``_src_ms``, ``_deleted``) are plumbing and are left out. On the PostgreSQL side the item is
  built by ``mapping.to_item`` itself, so every value has the pipeline's formatting. NULL is an
  absent key; text columns that were gzipped to fit 400 KB come back as text.
- Values: ``str``; ``bool``; ``int`` for integer columns and integer keys; ``Decimal`` for
  decimal columns, without trailing zeros (DynamoDB keeps a number's value, not its scale:
  ``12.50`` is stored as ``12.5``), never a float.
- Order: every list is newest first by the item's sort key, which ends in the primary key and so
  breaks every tie the same way in both stores: logs by ``SK`` (``{LogTimestamp}#{LogId:019}``),
  payments by ``PaymentDateId`` (``{PaymentDate}#{PaymentId:010}``).
- Ranges: timestamps are ``[start, end)``; dates are ``[start, end]``, both ends included.
- A cursor is the sort key of the last row returned (and a digest of its query), so it is valid
  on either store: a listing begun on DynamoDB continues on PostgreSQL after a fallback or a
  phase change, without gaps or repeats.
- Delete markers are never returned.

DynamoDB's GSIs are eventually consistent: right after a write an index may still show the old
state for a moment (moto's are immediate). Items fetched by key after an index lookup use
strongly consistent reads.

Routing (``ReadPath``): postgres-only and dual-write read PostgreSQL; hybrid-read reads
DynamoDB and falls back to PostgreSQL on an error or a miss (a single item not found, or an
empty first page) and counts it; dynamodb-only reads DynamoDB only. The phase is cached for
``reads.cache_s``. Shadow mode also reads the other store in the background and records
mismatches that persist after ``reads.shadow_recheck_s``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import gzip
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
import psycopg
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from replicator.config import Settings
from replicator.core.items import DELETED
from replicator.core.mapping import (
    Item,
    TableMapping,
    format_date,
    format_timestamp,
    render,
    to_item,
)
from replicator.errors import ConfigError, MappingError, ReplicatorError
from replicator.observe.metrics import start_time_gauge
from replicator.ops.rows import as_debezium, source_row
from replicator.stream.dynamo import dynamodb_client

if TYPE_CHECKING:
    from replicator.ops.phases import PhaseStore

log = structlog.get_logger("replicator.reads.path")

POSTGRES = "postgres"
DYNAMODB = "dynamodb"
Store = Literal["postgres", "dynamodb"]

# The source schema's CHECK constraints: anything else can only be a typo.
PAYMENT_STATUSES = ("Pending", "Completed", "Failed", "Reversed")
PAYMENT_METHODS = ("ACH", "Check", "Online", "Cash")

LOG_PATTERNS = (
    "logs_by_application",
    "logs_by_service",
    "logs_by_correlation",
    "failures_of_day",
    "log_by_id",
)
PAYMENT_PATTERNS = (
    "payments_by_customer",
    "payments_by_loan",
    "payments_by_status",
    "payments_by_method",
    "payment_by_id",
)
PATTERNS = LOG_PATTERNS + PAYMENT_PATTERNS
SINGLE_PATTERNS = ("log_by_id", "payment_by_id")

# The design's key layout, which the Dynamo side's queries rely on (checked at start).
_LOG_KEYS = ("{servicename}-{logtimestamp:date}", "{logtimestamp}#{logid:019}")
_PAYMENT_KEYS = ("{customerid}", "{paymentdate}#{paymentid:010}")
_LOG_INDEXES = {
    "logs_by_application": ("GSI1-Application", "GSI1PK", "GSI1SK"),
    "logs_by_correlation": ("GSI2-Correlation", "GSI2PK", "GSI2SK"),
    "failures_of_day": ("GSI3-Errors", "GSI3PK", "GSI3SK"),
    "log_by_id": ("LogIdIndex", "LogId", None),
}
_PAYMENT_INDEXES = {
    "payments_by_loan": ("LoanPaymentIndex", "LoanId", "PaymentDateId"),
    "payments_by_status": ("PaymentStatusIndex", "PaymentStatus", "PaymentDate"),
    "payments_by_method": ("PaymentMethodIndex", "PaymentMethod", "PaymentDate"),
    "payment_by_id": ("PaymentIdIndex", "PaymentId", None),
}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class QueryError(ReplicatorError):
    """A parameter of a read is invalid (HTTP 400). Never a reason to fall back."""


class StoreError(ReplicatorError):
    """A store did not answer or refused the read (HTTP 503). Hybrid-read falls back on it."""

    def __init__(self, store: Store, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: str | None = None
    source: str = field(default="", compare=False)  # which store served it


Row = dict[str, Any]
Result = Page | Row | None


# --- parameters (pure) ----------------------------------------------------------------------


def parse_timestamp(name: str, value: str) -> str:
    """A time parameter as the stored text (fixed-width UTC, microseconds): a date means its
    midnight; an ISO-8601 time without an offset is UTC."""
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not text:
        raise QueryError(f"{name}: a date or an ISO-8601 timestamp is required")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"{name}: {value!r} is not a date (2024-01-15) or an ISO-8601 timestamp "
            "(2024-01-15T10:30:00Z)"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return format_timestamp(as_debezium(when))


def parse_date(name: str, value: str) -> str:
    text = value.strip() if isinstance(value, str) else value
    try:
        day = dt.date.fromisoformat(text) if isinstance(text, str) and len(text) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise QueryError(f"{name}: {value!r} is not a date like 2024-01-15")
    return format_date(as_debezium(day))


def parse_int(name: str, value: Any, bounds: tuple[int, int] = _INT32) -> int:
    if isinstance(value, bool):
        raise QueryError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise QueryError(f"{name}: expected an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise QueryError(f"{name}: expected an integer, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise QueryError(f"{name}: {value} is out of range ({bounds[0]}..{bounds[1]})")
    return value


def parse_text(name: str, value: Any, max_chars: int, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise QueryError(f"{name}: a non-empty text is required")
    if len(value) > max_chars:
        raise QueryError(f"{name}: at most {max_chars} characters")
    if choices and value not in choices:
        raise QueryError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _timestamp_value(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def _next_day(date_text: str) -> str:
    return (dt.date.fromisoformat(date_text) + dt.timedelta(days=1)).isoformat()


def _day_of(timestamp_text: str) -> dt.date:
    return dt.date.fromisoformat(timestamp_text[:10])


@dataclass(frozen=True)
class Query:
    """One validated list query. ``lo``/``hi`` bound the sort key (lo included, hi excluded),
    ``after`` is the sort key of the last row already seen (excluded)."""

    pattern: str
    value: Any
    limit: int
    lo: str | None = None
    hi: str | None = None
    after: str | None = None
    start: str | None = None  # the range as given (normalized), for the SQL
    end: str | None = None

    @property
    def upper(self) -> str | None:
        """The exclusive upper bound of the next row's sort key."""
        bounds = [b for b in (self.hi, self.after) if b is not None]
        return min(bounds) if bounds else None


def _digest(pattern: str, params: Iterable[Any]) -> str:
    text = "\x1f".join([pattern, *(str(p) for p in params)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(pattern: str, params: Iterable[Any], sort_key: str) -> str:
    raw = orjson.dumps([1, _digest(pattern, params), sort_key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(pattern: str, params: Iterable[Any], cursor: str, *, logs: bool) -> str:
    """The sort key a cursor carries; QueryError when it is malformed or belongs to another
    query (a cursor only continues the listing that produced it)."""
    bad = QueryError("cursor: not a cursor of this query (take `next` from the previous page)")
    if not isinstance(cursor, str) or not cursor or len(cursor) > 512:
        raise bad
    try:
        version, digest, key = orjson.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise bad from None
    if version != 1 or digest != _digest(pattern, params) or not isinstance(key, str):
        raise bad
    try:  # a well-formed key only: it goes into SQL parameters and key conditions
        head, _, tail = key.rpartition("#")
        if logs:
            _timestamp_value(head)
            ok = len(tail) == 19
        else:
            dt.date.fromisoformat(head)
            ok = len(tail) == 10 and len(head) == 10
        if not (ok and tail.isdigit()):
            raise ValueError(key)
    except ValueError:
        raise bad from None
    return key


# --- items as rows (pure) -------------------------------------------------------------------


def _number(text: str, kind: str) -> int | Decimal:
    if kind in ("int", "bigint"):
        return int(text)
    number = Decimal(text)
    if kind == "decimal":
        # DynamoDB keeps the value, not the scale: 12.50 comes back as 12.5, 0.00 as 0.
        if number == number.to_integral_value():
            return Decimal(int(number))
        return number.normalize()
    try:
        return int(text)
    except ValueError:
        return number


@dataclass(frozen=True)
class RowShape:
    """Which attributes of an item a row keeps, and how each value becomes Python."""

    kinds: dict[str, str]  # attribute -> column type ("int", "decimal", "text", ...) or "key"

    @classmethod
    def of(cls, mapping: TableMapping) -> RowShape:
        types = mapping.column_types()
        kinds: dict[str, str] = {}
        for key in filter(None, [mapping.partition_key, mapping.sort_key]):
            # A key that is one column ("{customerid}") has that column's type.
            inner = key.template[1:-1]
            plain = key.template == f"{{{inner}}}" and inner.isidentifier()
            kinds[key.attribute] = types.get(inner, "key") if plain else "key"
        for column in mapping.columns:
            kinds[column.attribute] = column.type
        return cls(kinds)

    def row(self, item: Item) -> Row | None:
        """The row of an item; None for a delete marker."""
        if item.get(DELETED, {}).get("BOOL"):
            return None
        out: Row = {}
        # In the shape's order (keys, then columns), whatever order the store sent: the same
        # row is the same JSON text from either store.
        for name, kind in self.kinds.items():
            value = item.get(name)
            if value is None:
                continue
            if "S" in value:
                out[name] = value["S"]
            elif "N" in value:
                out[name] = _number(value["N"], kind)
            elif "BOOL" in value:
                out[name] = value["BOOL"]
            elif "B" in value:  # a text column gzipped to fit the 400 KB item limit
                raw = value["B"]
                out[name] = gzip.decompress(raw if isinstance(raw, bytes) else bytes(raw)).decode()
        return out


def miss(result: Result, query_after: str | None = None) -> bool:
    """What hybrid-read falls back on: no item, or an empty first page."""
    if result is None:
        return True
    if isinstance(result, Page):
        return not result.rows and query_after is None
    return False


# --- the two stores -------------------------------------------------------------------------


class _Reads:
    """The ten access patterns: parameter checks shared by both stores."""

    store: Store

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.logs = logs_mapping(settings)
        self.payments = payments_mapping(settings)
        self.log_shape = RowShape.of(self.logs)
        self.payment_shape = RowShape.of(self.payments)

    # subclasses implement these two
    def _list(self, q: Query) -> Page:
        raise NotImplementedError

    def _one(self, pattern: str, key: int) -> Row | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _limit(self, limit: Any) -> int:
        top = self.settings.reads.max_page_size
        return parse_int("limit", limit, (1, top))

    def _query(
        self,
        pattern: str,
        value: Any,
        limit: Any,
        after: str | None,
        *,
        start: str | None = None,
        end: str | None = None,
        lo: str | None = None,
        hi: str | None = None,
    ) -> Query:
        limit = self._limit(limit)
        params = (value, start, end)
        key = None
        if after is not None:
            key = decode_cursor(pattern, params, after, logs=pattern in LOG_PATTERNS)
        return Query(pattern, value, limit, lo, hi, key, start, end)

    def _page(self, q: Query, rows: list[Row], more: bool, sort_attribute: str) -> Page:
        cursor = None
        if more and rows:
            cursor = encode_cursor(q.pattern, (q.value, q.start, q.end), rows[-1][sort_attribute])
        return Page(rows, cursor, self.store)

    # -- IntegrationLogs

    def logs_by_application(
        self, application_id: int, *, limit: int = 50, after: str | None = None
    ) -> Page:
        app = parse_int("application_id", application_id)
        return self._list(self._query("logs_by_application", app, limit, after))

    def logs_by_service(
        self, service: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        name = parse_text("service", service, 100)
        lo, hi = parse_timestamp("start", start), parse_timestamp("end", end)
        if lo >= hi:
            raise QueryError("start must be before end")
        days = (_day_of(hi) - _day_of(lo)).days + 1
        if days > self.settings.reads.max_range_days:
            raise QueryError(
                f"the range spans {days} days; at most {self.settings.reads.max_range_days} "
                "(reads.max_range_days)"
            )
        return self._list(
            self._query("logs_by_service", name, limit, after, start=lo, end=hi, lo=lo, hi=hi)
        )

    def logs_by_correlation(
        self, correlation_id: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        corr = parse_text("correlation_id", correlation_id, 50)
        return self._list(self._query("logs_by_correlation", corr, limit, after))

    def failures_of_day(self, day: str, *, limit: int = 50, after: str | None = None) -> Page:
        date = parse_date("day", day)
        return self._list(self._query("failures_of_day", date, limit, after))

    def log_by_id(self, log_id: int) -> Row | None:
        return self._one("log_by_id", parse_int("log_id", log_id, _INT64))

    # -- Payments

    def payments_by_customer(
        self,
        customer_id: int,
        start: str | None = None,
        end: str | None = None,
        *,
        limit: int = 50,
        after: str | None = None,
    ) -> Page:
        customer = parse_int("customer_id", customer_id)
        first = parse_date("start", start) if start is not None else None
        last = parse_date("end", end) if end is not None else None
        if first and last and first > last:
            raise QueryError("start must not be after end")
        return self._list(
            self._query(
                "payments_by_customer",
                customer,
                limit,
                after,
                start=first,
                end=last,
                lo=first,
                hi=_next_day(last) if last else None,
            )
        )

    def payments_by_loan(self, loan_id: int, *, limit: int = 50, after: str | None = None) -> Page:
        loan = parse_int("loan_id", loan_id)
        return self._list(self._query("payments_by_loan", loan, limit, after))

    def payments_by_status(
        self, status: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._dated(
            "payments_by_status", "status", status, PAYMENT_STATUSES, start, end, limit, after
        )

    def payments_by_method(
        self, method: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._dated(
            "payments_by_method", "method", method, PAYMENT_METHODS, start, end, limit, after
        )

    def _dated(
        self,
        pattern: str,
        name: str,
        value: str,
        choices: tuple[str, ...],
        start: str,
        end: str,
        limit: int,
        after: str | None,
    ) -> Page:
        text = parse_text(name, value, 20, choices)
        first, last = parse_date("start", start), parse_date("end", end)
        if first > last:
            raise QueryError("start must not be after end")
        return self._list(
            self._query(
                pattern, text, limit, after, start=first, end=last, lo=first, hi=_next_day(last)
            )
        )

    def payment_by_id(self, payment_id: int) -> Row | None:
        return self._one("payment_by_id", parse_int("payment_id", payment_id))


def _mapping(settings: Settings, table: str) -> TableMapping:
    source = f"{settings.postgres.schema_name}.{table}"
    for mapping in settings.tables:
        if mapping.source == source:
            return mapping
    raise ConfigError(f"the read path needs a mapping of {source}; none is configured")


def logs_mapping(settings: Settings) -> TableMapping:
    return _mapping(settings, "integrationlogs")


def payments_mapping(settings: Settings) -> TableMapping:
    return _mapping(settings, "payments")


class PostgresReads(_Reads):
    """The access patterns as SQL on the source tables (``dbo.*``); each row becomes an item
    through the mapping, exactly as the pipeline builds it, and then a row."""

    store: Store = POSTGRES

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        reads = settings.reads
        dsn = reads.postgres_dsn.get_secret_value() if reads.postgres_dsn else None
        # Connections are made in the background: a PostgreSQL outage fails reads, not start-up.
        self.pool = ConnectionPool(
            dsn or settings.postgres.dsn(),
            min_size=1,
            max_size=reads.postgres_pool_size,
            kwargs={"autocommit": True},
            open=False,
            name="reads",
            timeout=5.0,
            reconnect_timeout=0,
        )
        self.pool.open(wait=False)
        schema = self.logs.source.split(".")[0]
        self._logs = sql.Identifier(*self.logs.source.split("."))
        payments = sql.Identifier(*self.payments.source.split("."))
        # payments has no customer column: the design's relation, the same as the lookup.
        self._payments = sql.SQL(
            "SELECT p.*, a.customerid FROM {p} p JOIN {l} l ON l.loanid = p.loanid "
            "JOIN {a} a ON a.applicationid = l.applicationid"
        ).format(
            p=payments,
            l=sql.Identifier(schema, "loans"),
            a=sql.Identifier(schema, "applications"),
        )

    def close(self) -> None:
        self.pool.close()

    def _fetch(self, query: sql.Composable, params: list[Any]) -> list[dict[str, Any]]:
        for attempt in (1, 2):  # once more on a fresh connection after a server restart
            try:
                with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    return cur.execute(query, params).fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise StoreError(POSTGRES, str(exc).strip()) from exc
            except PoolTimeout as exc:
                raise StoreError(POSTGRES, f"no connection within 5 s: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(POSTGRES, str(exc).strip()) from exc
        raise AssertionError("unreachable")

    def _rows(
        self, mapping: TableMapping, shape: RowShape, records: list[dict[str, Any]]
    ) -> list[Row]:
        rows = []
        for record in records:
            try:
                item, _ = to_item(mapping, source_row(record))
            except MappingError as exc:
                # The pipeline dead-letters such a row: DynamoDB does not have it either.
                log.warning("row not mappable, left out", table=mapping.name, error=str(exc))
                continue
            row = shape.row(item)
            if row is not None:
                rows.append(row)
        return rows

    def _list(self, q: Query) -> Page:
        logs = q.pattern in LOG_PATTERNS
        where, params = self._where(q)
        if logs:
            base = sql.SQL("SELECT * FROM {t}").format(t=self._logs)
            order = sql.SQL("ORDER BY logtimestamp DESC, logid DESC")
            after_sql = sql.SQL("(logtimestamp, logid) < (%s, %s)")
            mapping, shape, sort_attribute = self.logs, self.log_shape, "SK"
        else:
            base = self._payments
            order = sql.SQL("ORDER BY p.paymentdate DESC, p.paymentid DESC")
            after_sql = sql.SQL("(p.paymentdate, p.paymentid) < (%s, %s)")
            mapping, shape, sort_attribute = self.payments, self.payment_shape, "PaymentDateId"
        rows: list[Row] = []
        after = q.after
        while True:
            conditions, values = list(where), list(params)
            if after is not None:
                head, _, tail = after.rpartition("#")
                conditions.append(after_sql)
                values += [
                    _timestamp_value(head) if logs else dt.date.fromisoformat(head),
                    int(tail),
                ]
            query = sql.SQL("{base} WHERE {where} {order} LIMIT %s").format(
                base=base, where=sql.SQL(" AND ").join(conditions), order=order
            )
            want = q.limit + 1 - len(rows)
            records = self._fetch(query, [*values, want])
            rows += self._rows(mapping, shape, records)
            if len(records) < want or len(rows) > q.limit:
                break
            # Some rows could not be mapped (left out): read on past the last one.
            last = records[-1]
            after = (
                f"{format_timestamp(as_debezium(last['logtimestamp']))}#{last['logid']:019d}"
                if logs
                else f"{last['paymentdate'].isoformat()}#{last['paymentid']:010d}"
            )
        return self._page(q, rows[: q.limit], len(rows) > q.limit, sort_attribute)

    def _where(self, q: Query) -> tuple[list[sql.Composable], list[Any]]:
        cond: list[sql.Composable] = []
        params: list[Any] = []

        def add(text: str, *values: Any) -> None:
            cond.append(sql.SQL(text))
            params.extend(values)

        p = q.pattern
        if p == "logs_by_application":
            add("applicationid = %s", q.value)
        elif p == "logs_by_service":
            add("servicename = %s", q.value)
            add(
                "logtimestamp >= %s AND logtimestamp < %s",
                _timestamp_value(q.start or ""),
                _timestamp_value(q.end or ""),
            )
        elif p == "logs_by_correlation":
            add("correlationid = %s", q.value)
        elif p == "failures_of_day":
            day = dt.date.fromisoformat(q.value)
            add(
                "NOT issuccess AND logtimestamp >= %s AND logtimestamp < %s",
                day,
                day + dt.timedelta(days=1),
            )
        elif p == "payments_by_customer":
            add("a.customerid = %s", q.value)
        elif p == "payments_by_loan":
            add("p.loanid = %s", q.value)
        elif p == "payments_by_status":
            add("p.paymentstatus = %s", q.value)
        elif p == "payments_by_method":
            add("p.paymentmethod = %s", q.value)
        if p.startswith("payments_"):
            if q.start:
                add("p.paymentdate >= %s", dt.date.fromisoformat(q.start))
            if q.end:
                add("p.paymentdate <= %s", dt.date.fromisoformat(q.end))
        return cond, params

    def _one(self, pattern: str, key: int) -> Row | None:
        if pattern == "log_by_id":
            query = sql.SQL("SELECT * FROM {t} WHERE logid = %s").format(t=self._logs)
            rows = self._rows(self.logs, self.log_shape, self._fetch(query, [key]))
        else:
            query = sql.SQL("{base} WHERE p.paymentid = %s").format(base=self._payments)
            rows = self._rows(self.payments, self.payment_shape, self._fetch(query, [key]))
        return rows[0] if rows else None


class DynamoReads(_Reads):
    """The access patterns as DynamoDB queries on the mapped tables and their GSIs."""

    store: Store = DYNAMODB

    def __init__(self, settings: Settings, client: Any = None) -> None:
        super().__init__(settings)
        for mapping, keys in ((self.logs, _LOG_KEYS), (self.payments, _PAYMENT_KEYS)):
            have = (mapping.partition_key.template, mapping.sort_key and mapping.sort_key.template)
            if have != keys:
                raise ConfigError(
                    f"the read path queries the design's key layout {keys}; mapping "
                    f"{mapping.name} has {have}"
                )
        self.client = client or reads_client(settings)
        self._indexes = {**_LOG_INDEXES, **_PAYMENT_INDEXES}
        # Told the read units DynamoDB reports for every request (table, units): `cost` prices
        # them. ReadPath points it at its metrics.
        self.on_capacity: Callable[[str, float], None] | None = None

    def _account(self, response: dict[str, Any]) -> None:
        consumed = response.get("ConsumedCapacity")
        if consumed is None or self.on_capacity is None:
            return
        for entry in consumed if isinstance(consumed, list) else [consumed]:
            units = entry.get("CapacityUnits")
            if units:
                self.on_capacity(entry.get("TableName", ""), float(units))

    def _index(self, pattern: str, mapping: TableMapping) -> tuple[str, str, str | None]:
        name, pk, sk = self._indexes[pattern]
        found = next((i for i in mapping.indexes if i.name == name), None)
        if (
            found is None
            or found.partition_key.attribute != pk
            or (found.sort_key.attribute if found.sort_key else None) != sk
        ):
            raise ConfigError(
                f"{pattern} needs the index {name} ({pk}{', ' + sk if sk else ''}) on "
                f"{mapping.name}; the mapping does not define it"
            )
        return name, pk, sk

    @staticmethod
    @contextlib.contextmanager
    def _errors(operation: str, table: str) -> Iterator[None]:
        """boto3's failures as StoreError (what hybrid-read falls back on)."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StoreError(
                DYNAMODB,
                f"{operation} on {table}: {error.get('Code')}: {error.get('Message')}",
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(DYNAMODB, f"{operation} on {table}: {exc}") from exc

    def _items(
        self,
        table: str,
        index: str | None,
        pk: str,
        pk_value: dict[str, str],
        sk: str | None,
        lo: str | None,
        hi: str | None,
        page: int,
    ) -> Iterator[Item]:
        """Items of one partition key, newest first, with ``lo <= sk <= hi`` (inclusive)."""
        names = {"#pk": pk}
        values: dict[str, Any] = {":pk": pk_value}
        condition = "#pk = :pk"
        if sk is not None and (lo is not None or hi is not None):
            names["#sk"] = sk
            if lo is not None and hi is not None:
                condition += " AND #sk BETWEEN :lo AND :hi"
                values |= {":lo": {"S": lo}, ":hi": {"S": hi}}
            elif lo is not None:
                condition += " AND #sk >= :lo"
                values[":lo"] = {"S": lo}
            else:
                condition += " AND #sk <= :hi"
                values[":hi"] = {"S": hi}
        request: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": page,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if index:
            request["IndexName"] = index
        while True:
            with self._errors("Query", table):
                response = self.client.query(**request)
            self._account(response)
            yield from response.get("Items", [])
            start = response.get("LastEvaluatedKey")
            if not start:
                return
            request["ExclusiveStartKey"] = start

    def _list(self, q: Query) -> Page:
        logs = q.pattern in LOG_PATTERNS
        mapping = self.logs if logs else self.payments
        sort_attribute = "SK" if logs else "PaymentDateId"
        page = min(q.limit + 1, 1000)
        upper = q.upper
        if q.pattern == "logs_by_service":
            candidates = self._service_items(q, page)
        elif q.pattern == "payments_by_customer":
            candidates = self._items(
                mapping.name,
                None,
                "CustomerId",
                {"N": str(q.value)},
                "PaymentDateId",
                q.lo,
                upper,
                page,
            )
        else:
            index, pk, sk = self._index(q.pattern, mapping)
            pk_value = {"N": str(q.value)} if pk == "LoanId" else {"S": self._pk_text(q)}
            if sk == "PaymentDate":  # not unique: order each date's items by PaymentDateId
                hi = min(q.end or "", upper[:10]) if upper and q.after else q.end
                raw = self._items(mapping.name, index, pk, pk_value, sk, q.start, hi, page)
                candidates = _by_sort_key(raw, sk, sort_attribute)
            else:
                candidates = self._items(mapping.name, index, pk, pk_value, sk, q.lo, upper, page)
        shape = self.log_shape if logs else self.payment_shape
        resolve = self._full_payments(q) if q.pattern == "payments_by_method" else None
        rows: list[Row] = []
        pending: list[Item] = []
        for item in candidates:
            key = item.get(sort_attribute, {}).get("S")
            if key is None or (upper is not None and key >= upper) or (q.lo and key < q.lo):
                continue
            pending.append(item)
            if len(rows) + len(pending) > q.limit:
                rows += _rows(shape, resolve(pending) if resolve else pending)
                pending = []
                if len(rows) > q.limit:
                    break
        if pending:
            rows += _rows(shape, resolve(pending) if resolve else pending)
        return self._page(q, rows[: q.limit], len(rows) > q.limit, sort_attribute)

    def _pk_text(self, q: Query) -> str:
        return {
            "logs_by_application": f"APP#{q.value}",
            "logs_by_correlation": f"CORR#{q.value}",
            "failures_of_day": f"ERROR#{q.value}",
        }.get(q.pattern, str(q.value))

    def _service_items(self, q: Query, page: int) -> Iterator[Item]:
        """One query per day of the range (the partition key is per service and day), newest
        day first; the days' items are already in sort-key order one after another."""
        upper = q.upper or ""
        last = _day_of(upper) if q.after else _day_of(q.end or "")
        if not q.after and (q.end or "").endswith("T00:00:00.000000Z"):
            last -= dt.timedelta(days=1)  # an end at midnight excludes that day
        first = _day_of(q.start or "")
        types = self.logs.column_types()
        day = last
        while day >= first:
            micros = as_debezium(dt.datetime(day.year, day.month, day.day))
            pk = render(
                self.logs.partition_key.template,
                {"servicename": q.value, "logtimestamp": micros},
                types,
            )
            yield from self._items(
                self.logs.name, None, "PK", {"S": pk or ""}, "SK", q.lo, upper, page
            )
            day -= dt.timedelta(days=1)

    def _full_payments(self, q: Query) -> Callable[[list[Item]], list[Item]]:
        """PaymentMethodIndex projects only some attributes: fetch the whole items by key
        (BatchGetItem, consistent) and keep those that still match (the index may lag)."""
        table = self.payments.name

        def resolve(items: list[Item]) -> list[Item]:
            keys = [
                {"CustomerId": i["CustomerId"], "PaymentDateId": i["PaymentDateId"]} for i in items
            ]
            found: dict[tuple[str, str], Item] = {}
            for start in range(0, len(keys), 100):
                request: dict[str, Any] = {
                    table: {"Keys": keys[start : start + 100], "ConsistentRead": True}
                }
                for _ in range(10):
                    with self._errors("BatchGetItem", table):
                        response = self.client.batch_get_item(
                            RequestItems=request, ReturnConsumedCapacity="TOTAL"
                        )
                    self._account(response)
                    for item in response.get("Responses", {}).get(table, []):
                        found[(item["CustomerId"]["N"], item["PaymentDateId"]["S"])] = item
                    request = response.get("UnprocessedKeys") or {}
                    if not request:
                        break
                    time.sleep(0.05)
                if request:
                    raise StoreError(DYNAMODB, f"BatchGetItem on {table}: keys left unprocessed")
            out = []
            for key in keys:
                item = found.get((key["CustomerId"]["N"], key["PaymentDateId"]["S"]))
                if (
                    item is not None
                    and item.get("PaymentMethod", {}).get("S") == q.value
                    and (q.start or "") <= item.get("PaymentDate", {}).get("S", "") <= (q.end or "")
                ):
                    out.append(item)
            return out

        return resolve

    def _one(self, pattern: str, key: int) -> Row | None:
        mapping = self.logs if pattern == "log_by_id" else self.payments
        shape = self.log_shape if pattern == "log_by_id" else self.payment_shape
        index, pk, _ = self._index(pattern, mapping)
        # KEYS_ONLY index, then the item itself. Right after a key move the index may still
        # list the old key for a moment: take the live item that has this id.
        for entry in self._items(mapping.name, index, pk, {"N": str(key)}, None, None, None, 10):
            item_key = {a: entry[a] for a in mapping.key_attributes}
            with self._errors("GetItem", mapping.name):
                found = self.client.get_item(
                    TableName=mapping.name,
                    Key=item_key,
                    ConsistentRead=True,
                    ReturnConsumedCapacity="TOTAL",
                )
            self._account(found)
            item = found.get("Item")
            if item and item.get(pk, {}).get("N") == str(key):
                row = shape.row(item)
                if row is not None:
                    return row
        return None


def _rows(shape: RowShape, items: list[Item]) -> list[Row]:
    return [row for row in map(shape.row, items) if row is not None]


def _by_sort_key(
    items: Iterable[Item], group_attribute: str, order_attribute: str
) -> Iterator[Item]:
    """Items that arrive ordered by a non-unique index sort key (a date), reordered so that
    each group of equal keys is ordered by ``order_attribute`` (newest first) too."""
    group: list[Item] = []
    current = None
    for item in items:
        value = item.get(group_attribute, {}).get("S")
        if group and value != current:
            yield from sorted(group, key=lambda i: i[order_attribute]["S"], reverse=True)
            group = []
        current = value
        group.append(item)
    yield from sorted(group, key=lambda i: i[order_attribute]["S"], reverse=True)


def reads_client(settings: Settings) -> Any:
    """A boto3 client for reads: few attempts and short timeouts, so that hybrid-read falls
    back within seconds when DynamoDB does not answer."""
    reads = settings.reads
    return dynamodb_client(
        settings.dynamodb,
        max(16, reads.postgres_pool_size),
        max_attempts=reads.dynamodb_attempts,
        connect_timeout_s=reads.dynamodb_timeout_s,
        read_timeout_s=reads.dynamodb_timeout_s,
    )


# --- routing --------------------------------------------------------------------------------


class PhaseSource(Protocol):
    """What the router needs of replicator.ops.phases.PhaseStore."""

    def current(self) -> dict[str, Any]: ...

    def record_incidents(self, table: str, kind: Any, count: int) -> None: ...


_READ_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ReadMetrics:
    """The read path's Prometheus metrics, on a registry of their own. Labels: ``table``,
    ``store``, ``pattern`` and ``reason`` (each a small fixed set)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reads = Counter(
            "replicator_reads",
            "Reads served, by the store that served them.",
            ["table", "pattern", "store"],
            registry=r,
        )
        self.seconds = Histogram(
            "replicator_read_seconds",
            "Latency of one read on one store.",
            ["table", "store"],
            buckets=_READ_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "replicator_read_errors", "Reads a store failed.", ["table", "store"], registry=r
        )
        self.fallbacks = Counter(
            "replicator_read_fallbacks",
            "hybrid-read reads served by PostgreSQL: DynamoDB failed (error) or lacked what "
            "PostgreSQL has (miss).",
            ["table", "reason"],
            registry=r,
        )
        self.mismatches = Counter(
            "replicator_read_shadow_mismatches",
            "Shadow reads whose stores still disagreed after the recheck.",
            ["table"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "replicator_read_shadow_skipped",
            "Shadow comparisons not made (too many in flight, or the other store failed).",
            ["table"],
            registry=r,
        )
        self.start_time = start_time_gauge(r)  # `replicator cost` without --window
        self.read_units = Counter(
            "replicator_dynamodb_consumed_read_units",
            "Read capacity units DynamoDB reported consumed by the read path's requests.",
            ["table"],
            registry=r,
        )
        self.phase_failures = Counter(
            "replicator_read_phase_refresh_failures",
            "Phase look-ups that failed (the last known phases stay in use).",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Served:
    value: Result
    source: Store


class ReadPath:
    """The access patterns, each read from the store its table's phase names (see the module
    docstring). Thread-safe; ``close()`` writes the incidents still buffered."""

    def __init__(
        self,
        settings: Settings,
        phases: PhaseStore | PhaseSource | None = None,
        *,
        postgres: PostgresReads | None = None,
        dynamo: DynamoReads | None = None,
        shadow: bool | None = None,
        metrics: ReadMetrics | None = None,
    ) -> None:
        self._own_phases = phases is None
        if phases is None:
            from replicator.ops.phases import PhaseStore

            phases = PhaseStore(settings)
        self.settings = settings
        self.config = settings.reads
        self.phases = phases
        self.postgres = postgres or PostgresReads(settings)
        self.dynamo = dynamo or DynamoReads(settings)
        self.shadow = self.config.shadow if shadow is None else shadow
        self.metrics = metrics or ReadMetrics()
        self.dynamo.on_capacity = self._read_units
        self.tables = {
            **dict.fromkeys(LOG_PATTERNS, logs_mapping(settings).name),
            **dict.fromkeys(PAYMENT_PATTERNS, payments_mapping(settings).name),
        }
        self._phase_lock = threading.Lock()
        self._known: dict[str, str] = {}
        self._fetched = -float("inf")
        self._incidents: dict[tuple[str, str], int] = {}
        self._incident_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._shadow_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadow-read")
        self._shadow_slots = threading.BoundedSemaphore(64)
        self._shadow_futures: set[Future[None]] = set()

    def _read_units(self, table: str, units: float) -> None:
        self.metrics.read_units.labels(table).inc(units)

    # -- phases

    def phase(self, table: str) -> str:
        """The table's phase (a Phase value), at most ``reads.cache_s`` old."""
        if time.monotonic() - self._fetched >= self.config.cache_s:
            with self._phase_lock:
                if time.monotonic() - self._fetched >= self.config.cache_s:
                    # Aged from when the look-up began: a change committed while it ran is
                    # then seen within cache_s of its commit, however slow the look-up was.
                    started = time.monotonic()
                    try:
                        self._known = {k: str(v) for k, v in self.phases.current().items()}
                    except ReplicatorError as exc:
                        # Keep serving by the last known phases; PostgreSQL has every write in
                        # every phase, so it is the safe default when nothing is known yet.
                        self.metrics.phase_failures.inc()
                        log.warning("phase look-up failed", error=str(exc))
                    self._fetched = started
        return self._known.get(table, "postgres-only")

    def current_phases(self) -> dict[str, str]:
        for table in set(self.tables.values()):
            self.phase(table)
        return {t: self._known.get(t, "postgres-only") for t in sorted(set(self.tables.values()))}

    # -- reading

    def read(self, pattern: str, *args: Any, **kwargs: Any) -> Served:
        """One access pattern by name, with the store that served it."""
        if pattern not in PATTERNS:
            raise QueryError(f"unknown access pattern {pattern!r}")
        table = self.tables[pattern]
        phase = self.phase(table)
        if phase in ("postgres-only", "dual-write"):
            served = Served(self._on(self.postgres, table, pattern, args, kwargs), POSTGRES)
        elif phase == "dynamodb-only":
            served = Served(self._on(self.dynamo, table, pattern, args, kwargs), DYNAMODB)
        else:
            served = self._hybrid(table, pattern, args, kwargs)
            if served.source == POSTGRES:
                return served  # both stores were read already
        if self.shadow:
            self._shadow(table, pattern, args, kwargs, served)
        return served

    def _on(self, store: _Reads, table: str, pattern: str, args: Any, kwargs: Any) -> Result:
        started = time.perf_counter()
        try:
            result: Result = getattr(store, pattern)(*args, **kwargs)
        except StoreError:
            self.metrics.errors.labels(table, store.store).inc()
            raise
        self.metrics.seconds.labels(table, store.store).observe(time.perf_counter() - started)
        self.metrics.reads.labels(table, pattern, store.store).inc()
        return result

    def _hybrid(self, table: str, pattern: str, args: Any, kwargs: Any) -> Served:
        reason = "miss"
        try:
            result = self._on(self.dynamo, table, pattern, args, kwargs)
        except StoreError as exc:
            reason = "error"
            log.warning("DynamoDB read failed, falling back", table=table, error=str(exc))
        else:
            if not miss(result, kwargs.get("after")):
                return Served(result, DYNAMODB)
        fallback = self._on(self.postgres, table, pattern, args, kwargs)
        # An empty answer from both is not a replication gap: not counted.
        if reason == "error" or not miss(fallback, kwargs.get("after")):
            self.metrics.fallbacks.labels(table, reason).inc()
            self._incident(table, "fallback")
        return Served(fallback, POSTGRES)

    # -- shadow reads

    def _shadow(self, table: str, pattern: str, args: Any, kwargs: Any, served: Served) -> None:
        if not self._shadow_slots.acquire(blocking=False):
            self.metrics.shadow_skipped.labels(table).inc()
            return
        future = self._shadow_pool.submit(self._compare, table, pattern, args, kwargs, served)
        self._shadow_futures.add(future)

        def done(f: Future[None]) -> None:
            self._shadow_slots.release()
            self._shadow_futures.discard(f)

        future.add_done_callback(done)

    def _compare(self, table: str, pattern: str, args: Any, kwargs: Any, served: Served) -> None:
        other = self.dynamo if served.source == POSTGRES else self.postgres
        first = self.postgres if served.source == POSTGRES else self.dynamo
        try:
            if same(served.value, getattr(other, pattern)(*args, **kwargs)):
                return
            # Replication lag explains a fresh difference: look again once before counting.
            self._stop.wait(self.config.shadow_recheck_s)
            again = getattr(first, pattern)(*args, **kwargs)
            if same(again, getattr(other, pattern)(*args, **kwargs)):
                return
        except ReplicatorError as exc:
            self.metrics.shadow_skipped.labels(table).inc()
            log.info("shadow read failed", table=table, pattern=pattern, error=str(exc))
            return
        self.metrics.mismatches.labels(table).inc()
        self._incident(table, "mismatch")
        log.warning("shadow read mismatch", table=table, pattern=pattern, served=served.source)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the shadow comparisons in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        for future in list(self._shadow_futures):
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))

    # -- incidents: buffered, written every reads.incident_flush_s, not per read

    def _incident(self, table: str, kind: str) -> None:
        with self._incident_lock:
            self._incidents[(table, kind)] = self._incidents.get((table, kind), 0) + 1
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="read-incidents", daemon=True
                )
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.incident_flush_s):
            self.flush()

    def flush(self) -> None:
        """Write the buffered incident counts to the phase store; kept for later on failure."""
        with self._incident_lock:
            pending, self._incidents = self._incidents, {}
        for (table, kind), count in pending.items():
            try:
                self.phases.record_incidents(table, kind, count)
            except ReplicatorError as exc:
                log.warning("incidents not recorded yet", table=table, kind=kind, error=str(exc))
                with self._incident_lock:
                    self._incidents[(table, kind)] = self._incidents.get((table, kind), 0) + count

    def pending_incidents(self) -> dict[tuple[str, str], int]:
        with self._incident_lock:
            return dict(self._incidents)

    def close(self) -> None:
        self._stop.set()
        self.drain(5.0)
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        self.flush()
        self.postgres.close()
        self.dynamo.close()
        if self._own_phases and hasattr(self.phases, "close"):
            self.phases.close()

    # -- the access patterns (see _Reads for parameters)

    def logs_by_application(
        self, application_id: int, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._page("logs_by_application", application_id, limit=limit, after=after)

    def logs_by_service(
        self, service: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._page("logs_by_service", service, start, end, limit=limit, after=after)

    def logs_by_correlation(
        self, correlation_id: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._page("logs_by_correlation", correlation_id, limit=limit, after=after)

    def failures_of_day(self, day: str, *, limit: int = 50, after: str | None = None) -> Page:
        return self._page("failures_of_day", day, limit=limit, after=after)

    def log_by_id(self, log_id: int) -> Row | None:
        return self.read("log_by_id", log_id).value  # type: ignore[return-value]

    def payments_by_customer(
        self,
        customer_id: int,
        start: str | None = None,
        end: str | None = None,
        *,
        limit: int = 50,
        after: str | None = None,
    ) -> Page:
        return self._page("payments_by_customer", customer_id, start, end, limit=limit, after=after)

    def payments_by_loan(self, loan_id: int, *, limit: int = 50, after: str | None = None) -> Page:
        return self._page("payments_by_loan", loan_id, limit=limit, after=after)

    def payments_by_status(
        self, status: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._page("payments_by_status", status, start, end, limit=limit, after=after)

    def payments_by_method(
        self, method: str, start: str, end: str, *, limit: int = 50, after: str | None = None
    ) -> Page:
        return self._page("payments_by_method", method, start, end, limit=limit, after=after)

    def payment_by_id(self, payment_id: int) -> Row | None:
        return self.read("payment_by_id", payment_id).value  # type: ignore[return-value]

    def _page(self, pattern: str, *args: Any, **kwargs: Any) -> Page:
        served = self.read(pattern, *args, **kwargs)
        assert isinstance(served.value, Page)
        return served.value


def same(a: Result, b: Result) -> bool:
    """Equal results: the same rows (values and order) and the same continuation."""
    if isinstance(a, Page) and isinstance(b, Page):
        return a.rows == b.rows and a.next == b.next
    return a == b
