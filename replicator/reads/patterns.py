"""The access patterns the mappings declare (``reads:`` of a table mapping), resolved once into
what both stores need; parameters, queries and cursors (pure, no I/O).

A pattern is asked for one value (its parameter, the path's placeholder) and, for lists, an
optional or required range (``start``/``end``: timestamps ``[start, end)``, dates
``[start, end]``). Lists are newest first by the pattern's order attribute, a key template that
ends in the primary key, so both stores break ties alike. A cursor is that attribute's value of
the last row returned and a digest of its query: valid on either store.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from replicator.config import Settings
from replicator.core.mapping import (
    ColumnType,
    Index,
    ReadPattern,
    TableMapping,
    format_date,
    format_timestamp,
)
from replicator.core.times import utc_moment
from replicator.errors import ConfigError, ReplicatorError
from replicator.reads.rows import Page, Result, Row, RowShape
from replicator.stream.rows import as_debezium

POSTGRES = "postgres"
DYNAMODB = "dynamodb"
Store = Literal["postgres", "dynamodb"]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class QueryError(ReplicatorError):
    """A parameter of a read is invalid (HTTP 400). Never a reason to fall back."""


class StoreError(ReplicatorError):
    """A store did not answer or refused the read (HTTP 503). Hybrid-read falls back on it."""

    def __init__(self, store: Store, message: str) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store


# --- parameters -----------------------------------------------------------------------------


def parse_timestamp(name: str, value: str) -> str:
    """A time parameter as the stored text (fixed-width UTC, microseconds): a date means its
    midnight; an ISO-8601 time without an offset is UTC."""
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not text:
        raise QueryError(f"{name}: a date or an ISO-8601 timestamp is required")
    try:
        when = utc_moment(text)
    except ValueError:
        raise QueryError(
            f"{name}: {value!r} is not a date (2024-01-15) or an ISO-8601 timestamp "
            "(2024-01-15T10:30:00Z)"
        ) from None
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


def parse_int(name: str, value: Any, bounds: tuple[int, int] = INT32) -> int:
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


def timestamp_value(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def next_day(date_text: str) -> str:
    return (dt.date.fromisoformat(date_text) + dt.timedelta(days=1)).isoformat()


def day_of(timestamp_text: str) -> dt.date:
    return dt.date.fromisoformat(timestamp_text[:10])


# --- sort keys ------------------------------------------------------------------------------

_FIELD_TEXT = {
    "timestamp": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z",
    "date": r"\d{4}-\d{2}-\d{2}",
}


@dataclass(frozen=True)
class SortKey:
    """An order attribute's template (``{paymentdate}#{paymentid:010}``): checks a cursor's key
    and turns it back into column values, for the PostgreSQL side's ``(a, b) < (x, y)``."""

    template: str
    columns: tuple[tuple[str, ColumnType], ...]
    regex: re.Pattern[str]

    @classmethod
    def of(cls, template: str, types: dict[str, ColumnType]) -> SortKey:
        parts, columns = [], []
        for literal, name, spec, _ in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if name is None:
                continue
            kind = types[name]
            # The mapping allows only fixed-width fields here (checked at load).
            width = int(spec or "1")
            parts.append(f"({_FIELD_TEXT[kind]})" if kind in _FIELD_TEXT else rf"(\d{{{width}}})")
            columns.append((name, kind))
        return cls(template, tuple(columns), re.compile("".join(parts)))

    def values(self, key: str) -> list[Any] | None:
        """The columns' values a well-formed key holds (PostgreSQL parameters); None if not."""
        found = self.regex.fullmatch(key)
        if found is None:
            return None
        out: list[Any] = []
        try:
            for (_, kind), text in zip(self.columns, found.groups(), strict=True):
                if kind == "timestamp":
                    out.append(timestamp_value(text))
                elif kind == "date":
                    out.append(dt.date.fromisoformat(text))
                else:
                    out.append(int(text))
        except ValueError:
            return None
        return out


# --- cursors --------------------------------------------------------------------------------


def _digest(pattern: str, params: Iterable[Any]) -> str:
    text = "\x1f".join([pattern, *(str(p) for p in params)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(pattern: str, params: Iterable[Any], sort_key: str) -> str:
    raw = orjson.dumps([1, _digest(pattern, params), sort_key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(pattern: str, params: Iterable[Any], cursor: str, key: SortKey) -> str:
    """The sort key a cursor carries; QueryError when it is malformed or belongs to another
    query (a cursor only continues the listing that produced it)."""
    bad = QueryError("cursor: not a cursor of this query (take `next` from the previous page)")
    if not isinstance(cursor, str) or not cursor or len(cursor) > 512:
        raise bad
    try:
        version, digest, value = orjson.loads(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        )
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise bad from None
    if version != 1 or digest != _digest(pattern, params) or not isinstance(value, str):
        raise bad
    if key.values(value) is None:  # a well-formed key only: it goes into SQL and key conditions
        raise bad
    return value


# --- patterns -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Pattern:
    """A declared pattern with what its mapping says about it, resolved once."""

    decl: ReadPattern
    mapping: TableMapping
    shape: RowShape
    index: Index | None  # None: the table's own key
    param_type: ColumnType  # of the parameter's column ("date" for a day of a timestamp)
    range_type: ColumnType | None  # "timestamp" or "date"
    order: str | None  # the order attribute (lists)
    sort_key: SortKey | None
    regroup: bool  # the index sorts by a coarser key (a date): re-order each date's items
    shards: int = 1  # partitions per value: the key queried carries a shard suffix when > 1

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def table(self) -> str:
        return self.mapping.name

    @property
    def single(self) -> bool:
        return self.decl.single

    @property
    def key(self) -> tuple[str, str, str | None]:
        """(partition attribute, its type, sort attribute) of the table or index queried."""
        if self.index is not None:
            sk = self.index.sort_key
            return (self.index.partition_key.attribute, self.index.partition_key.type,
                    sk.attribute if sk else None)  # fmt: skip
        sk_attr = self.mapping.sort_key.attribute if self.mapping.sort_key else None
        return self.mapping.partition_key.attribute, self.mapping.partition_key.type, sk_attr

    @classmethod
    def of(cls, mapping: TableMapping, decl: ReadPattern) -> Pattern:
        types = mapping.column_types()
        index = next((i for i in mapping.indexes if i.name == decl.index), None)
        templates = {
            a.attribute: a.template
            for a in filter(None, [mapping.partition_key, mapping.sort_key, *mapping.derived])
        }
        param_type = "date" if decl.param.day else types[decl.param.column]
        range_type = types[decl.range.column] if decl.range else None
        order = sort_key = None
        regroup = False
        if not decl.single:
            order = decl.order or (mapping.sort_key.attribute if mapping.sort_key else None)
            assert order is not None  # checked when the mapping was loaded
            sort_key = SortKey.of(templates[order], types)
            sk = (index.sort_key if index else mapping.sort_key) or None
            regroup = sk is not None and templates.get(sk.attribute) != templates[order]
        queried = index.partition_key.attribute if index else mapping.partition_key.attribute
        shards = mapping.shards if mapping.sharded(queried) else 1
        return cls(decl, mapping, RowShape.of(mapping), index, param_type, range_type, order,
                   sort_key, regroup, shards)  # fmt: skip

    # -- the parameters as a query

    def value(self, given: Any) -> Any:
        p = self.decl.param
        if self.param_type in ("int", "bigint"):
            return parse_int(p.name, given, INT64 if self.param_type == "bigint" else INT32)
        if self.param_type == "date":
            return parse_date(p.name, given)
        if self.param_type in ("text", "json"):
            return parse_text(p.name, given, p.max_chars, tuple(p.choices))
        raise QueryError(f"{p.name}: a {self.param_type} parameter is not supported")

    def query(
        self,
        settings: Settings,
        given: Any,
        start: Any = None,
        end: Any = None,
        limit: Any = 50,
        after: str | None = None,
    ) -> Query:
        value = self.value(given)
        lo = hi = first = last = None
        rng = self.decl.range
        if rng is None:
            if start is not None or end is not None:
                raise QueryError(f"{self.name} takes no start/end")
        elif rng.required and (start is None or end is None):
            raise QueryError(f"{self.name} needs start and end")
        elif self.range_type == "timestamp":
            first = lo = parse_timestamp("start", start) if start is not None else None
            last = hi = parse_timestamp("end", end) if end is not None else None
            if lo and hi and lo >= hi:
                raise QueryError("start must be before end")
        else:
            first = lo = parse_date("start", start) if start is not None else None
            last = parse_date("end", end) if end is not None else None
            if first and last and first > last:
                raise QueryError("start must not be after end")
            hi = next_day(last) if last else None
        if self.decl.fan_out == "days" and first and last:
            days = (day_of(last) - day_of(first)).days + 1
            top = settings.reads.max_range_days
            if days > top:
                raise QueryError(
                    f"the range spans {days} days; at most {top} (reads.max_range_days)"
                )
        count = parse_int("limit", limit, (1, settings.reads.max_page_size))
        key = None
        if after is not None:
            assert self.sort_key is not None
            key = decode_cursor(self.name, (value, first, last), after, self.sort_key)
        return Query(self.name, value, count, lo, hi, key, first, last)

    def cursor(self, q: Query, sort_key: str) -> str:
        return encode_cursor(q.pattern, (q.value, q.start, q.end), sort_key)

    def partition(
        self, value: Any, day: str | None = None, shard: int | None = None
    ) -> dict[str, str]:
        """The partition key value (DynamoDB's wire form) for the parameter (and a day, and
        a shard when the key queried is sharded)."""
        template = self.decl.partition or f"{{{self.decl.param.name}}}"
        fields = {self.decl.param.name: str(value)} | ({"day": day} if day else {})
        if shard is not None:
            fields["shard"] = str(shard)
        text = template.format(**fields)
        return {"N": text} if self.key[1] == "N" else {"S": text}

    def partitions(self, value: Any, day: str | None = None) -> list[dict[str, str]]:
        """Every partition key value that holds the parameter's items: one per shard."""
        if self.shards == 1:
            return [self.partition(value, day)]
        return [self.partition(value, day, shard) for shard in range(self.shards)]


def catalog(settings: Settings) -> dict[str, Pattern]:
    """Every declared pattern of every mapping, by name (unique across tables)."""
    found: dict[str, Pattern] = {}
    for mapping in settings.tables:
        for decl in mapping.reads.patterns:
            if decl.name in found:
                raise ConfigError(
                    f"read pattern {decl.name!r} is declared by {found[decl.name].table} and "
                    f"{mapping.name}; names must be unique"
                )
            found[decl.name] = Pattern.of(mapping, decl)
    clis = [p.decl.cli_name for p in found.values()]
    paths = [p.decl.path for p in found.values()]
    for what, names in (("CLI name", clis), ("path", paths)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"read patterns share a {what}: {', '.join(twice)}")
    return found


class PatternReads:
    """The declared patterns on one store: parameter checks shared by both stores. Each
    pattern is ``read(name, value, start, end, limit=, after=)``, or a method of its name."""

    store: Store

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.patterns = catalog(settings)

    # subclasses implement these two
    def _list(self, p: Pattern, q: Query) -> Page:
        raise NotImplementedError

    def _one(self, p: Pattern, value: Any) -> Row | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def pattern(self, name: str) -> Pattern:
        found = self.patterns.get(name)
        if found is None:
            raise QueryError(f"unknown access pattern {name!r}")
        return found

    def read(
        self,
        name: str,
        value: Any,
        start: Any = None,
        end: Any = None,
        *,
        limit: Any = None,
        after: str | None = None,
    ) -> Result:
        p = self.pattern(name)
        if p.single:
            if start is not None or end is not None or limit is not None or after is not None:
                raise QueryError(f"{name} returns one row: no range, limit or cursor")
            return self._one(p, p.value(value))
        if limit is None:
            limit = self.settings.reads.default_page_size
        return self._list(p, p.query(self.settings, value, start, end, limit, after))

    def _page(self, p: Pattern, q: Query, rows: list[tuple[str, Row]], more: bool) -> Page:
        """A page of (order key, row) pairs; ``more``: rows follow the last one."""
        cursor = p.cursor(q, rows[-1][0]) if more and rows else None
        return Page([row for _, row in rows], cursor, self.store)

    def __getattr__(self, name: str) -> Callable[..., Result]:
        # reader.payments_by_loan(7, limit=5): the declared patterns as methods.
        patterns = self.__dict__.get("patterns", {})
        if name in patterns:
            return functools.partial(self.read, name)
        raise AttributeError(f"{type(self).__name__} has no attribute or pattern {name!r}")
