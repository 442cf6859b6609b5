"""Declarative table mappings (validated data) and the pure row -> DynamoDB item function.

A mapping says, per source table: which DynamoDB table, how the key is built (templates over
columns), every column's attribute name and type, derived attributes such as sparse GSI keys,
enrichment lookups that add columns from other tables, and TTL. Items are built in DynamoDB's
wire format ({"S": ...}, {"N": ...}, {"BOOL": ...}) so that no float ever touches a number.

Why one module of this size: the mapping's validation and the row -> item function read the
same compiled templates and column types; split, the checks made at load time and the code
that relies on them would drift apart.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import re
import string
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from replicator.core.items import AttributeValue, Item, item_size, size_bound
from replicator.errors import MappingError

ColumnType = Literal["int", "bigint", "decimal", "text", "json", "bool", "timestamp", "date"]

# Debezium's stand-in for an unchanged TOASTed value that it could not read.
UNAVAILABLE = "__debezium_unavailable_value"
MAX_ITEM_BYTES = 400 * 1024
MAX_NUMBER_DIGITS = 38
MAX_SHARDS = 64
SHARD = "shard"  # the template format of a shard suffix: {logid:shard}
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_FORMATTER = string.Formatter()
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Column(_Frozen):
    name: str = Field(description="column name in PostgreSQL (lower case)")
    attribute: str = Field(description="attribute name in DynamoDB")
    type: ColumnType
    scale: int | None = Field(
        None,
        ge=0,
        le=38,
        description="a decimal column's scale (numeric(10,2): 2): reads "
        "render its values with that many decimals from either store (DynamoDB keeps no scale)",
    )
    nullable: bool = Field(
        True,
        description="false for a NOT NULL source column: an event whose row lacks it (the "
        "column was dropped or renamed) is dead-lettered rather than written without it",
    )


class KeyAttribute(_Frozen):
    attribute: str
    type: Literal["S", "N"] = "S"
    template: str = Field(
        description="e.g. '{servicename}-{logtimestamp:date}'; a partition key may end in a "
        "shard suffix, '{servicename}-{logtimestamp:date}#{logid:shard}' (logid mod shards)"
    )


class DerivedAttribute(_Frozen):
    """An attribute built from a template, present only when its conditions hold (sparse GSIs)."""

    attribute: str
    template: str
    type: Literal["S", "N"] = "S"
    when_set: list[str] = Field(default_factory=list, description="columns that must be non-NULL")
    when_equal: dict[str, Any] = Field(default_factory=dict, description="column -> value")


class IndexKey(_Frozen):
    attribute: str
    type: Literal["S", "N"] = "S"


class Index(_Frozen):
    name: str
    partition_key: IndexKey
    sort_key: IndexKey | None = None
    projection: Literal["ALL", "KEYS_ONLY", "INCLUDE"] = "ALL"
    non_key_attributes: list[str] = Field(default_factory=list)


class Lookup(_Frozen):
    """Adds ``column`` to each row by looking up ``using`` in PostgreSQL.

    ``sql`` returns (key, value) rows for ``%(keys)s``, an array of ``using`` values, so one
    query serves a whole batch.
    """

    column: str
    using: str
    type: ColumnType
    sql: str


class Retention(_Frozen):
    column: str
    days: int = Field(gt=0)


class ReadParam(_Frozen):
    """The one value a read pattern is asked for (in its path), matched against a column."""

    name: str = Field(description="as in the path, the CLI and error messages: 'loan_id'")
    column: str = Field(description="the column it equals (a lookup column too)")
    day: bool = Field(False, description="a date that matches the day of a timestamp column")
    max_chars: int = Field(100, gt=0, description="a text value's longest length")
    choices: list[str] = Field(default_factory=list, description="the only values allowed")
    description: str | None = None


class ReadRange(_Frozen):
    """The optional start/end query parameters: timestamps [start, end), dates [start, end]."""

    column: str
    required: bool = True


class ReadPattern(_Frozen):
    """One access pattern: a key condition on the table or an index, and the same rows as a
    PostgreSQL query (the parameter's column, the range, the filters)."""

    name: str = Field(description="e.g. payments_by_loan (library, metrics, OpenAPI operation)")
    path: str = Field(description="HTTP path with the parameter: /payments/by-loan/{loan_id}")
    summary: str
    cli: str | None = Field(None, description="`replicator read` name; default: name with -")
    param: ReadParam
    index: str | None = Field(None, description="a GSI of the mapping; none: the table's key")
    partition: str | None = Field(
        None,
        description="partition key value, a template over the parameter ({day} too with "
        "fan_out: days; {shard} where the key queried carries a shard suffix: every shard "
        "is queried and the answers merged); default the parameter itself",
    )
    fan_out: Literal["days"] | None = Field(
        None,
        description="days: one query per day of the range, newest first (the partition "
        "key holds the day)",
    )
    range: ReadRange | None = None
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description="column -> value the PostgreSQL side also requires "
        "(what a sparse index's when_equal keeps)",
    )
    order: str | None = Field(
        None,
        description="the attribute lists are ordered by (newest first) and cursors carry; "
        "default the table's sort key",
    )
    single: bool = Field(False, description="one row by id, or none")

    @property
    def cli_name(self) -> str:
        return self.cli or self.name.replace("_", "-")


class Reads(_Frozen):
    """What the read path serves of a table."""

    postgres_rows: str | None = Field(
        None,
        description="SQL giving the table's rows with their lookup columns, for tables "
        "whose patterns filter on a lookup column (payments by customer); default the table",
    )
    show: list[str] = Field(default_factory=list, description="`replicator read` columns")
    patterns: list[ReadPattern] = Field(default_factory=list)


class TableMapping(_Frozen):
    name: str = Field(description="DynamoDB table name")
    source: str = Field(description="PostgreSQL table, 'schema.table'")
    primary_key: list[str] = Field(min_length=1)
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None = None
    columns: list[Column] = Field(min_length=1)
    derived: list[DerivedAttribute] = Field(default_factory=list)
    indexes: list[Index] = Field(default_factory=list)
    lookups: list[Lookup] = Field(default_factory=list)
    ttl_attribute: str = "ExpiresAt"
    retention: Retention | None = None
    reads: Reads = Field(default_factory=Reads, description="the read path's access patterns")
    tombstone_days: int = Field(
        default=40,
        gt=0,
        description="how long delete markers are kept: the no-resurrection horizon. It must "
        "cover the dead-letter topic's retention and the source topic's max.compaction.lag.ms "
        "+ delete.retention.ms (checked at start); 40 days covers the defaults, 30 and 7 + 1 "
        "days, with room for Kafka deleting a segment only once all of it is past retention",
    )
    shards: int = Field(
        1,
        ge=1,
        le=MAX_SHARDS,
        description="how many partitions each partition key value is spread over (hot "
        "partitions): a key template's {column:shard} is that integer column mod shards. "
        "1, the design's keys, takes no {column:shard}; more than 1 needs one",
    )
    _types: dict[str, ColumnType] = PrivateAttr(default_factory=dict)
    unmapped_columns: Literal["ignore", "include"] = Field(
        "ignore",
        description="source columns the mapping does not name (added by ALTER TABLE): "
        "always reported (a warning, a metric, a line in `replicator status`); 'include' also "
        "writes them under their PascalCase name by their PostgreSQL type's rules",
    )
    large_items: Literal["compress", "dead-letter"] = Field(
        "compress",
        description="an item over 400 KB: gzip its largest text columns (stored as "
        "binary) until it fits, or dead-letter the event",
    )

    @field_validator("source")
    @classmethod
    def _qualified(cls, value: str) -> str:
        if value.count(".") != 1:
            raise ValueError("must be 'schema.table'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TableMapping:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(
                f"columns named twice: {sorted({n for n in names if names.count(n) > 1})}"
            )
        columns = {c.name: c for c in self.columns}
        known = set(columns) | {lk.column for lk in self.lookups}
        for c in self.columns:
            if c.scale is not None and c.type != "decimal":
                raise ValueError(f"column {c.name!r}: scale is for decimal columns")
        for lookup in self.lookups:
            if lookup.using not in columns:
                raise ValueError(f"lookup {lookup.column!r} uses unknown column {lookup.using!r}")
        for pk in self.primary_key:
            if pk not in columns:
                raise ValueError(f"primary_key column {pk!r} is not in columns")
        templated = [self.partition_key, *([self.sort_key] if self.sort_key else []), *self.derived]
        for attr in templated:
            for name, _ in template_fields(attr.template):
                if name not in known:
                    raise ValueError(
                        f"template of {attr.attribute!r} names unknown column {name!r}"
                    )
        self._check_shards(columns)
        for attr in self.derived:
            for name in [*attr.when_set, *attr.when_equal]:
                if name not in known:
                    raise ValueError(
                        f"condition of {attr.attribute!r} names unknown column {name!r}"
                    )
        # A key may simply be a column ("{noteid}" into the column's own attribute).
        plain_keys = {
            k.attribute
            for k in filter(None, [self.partition_key, self.sort_key])
            if any(
                k.template == f"{{{c.name}}}" and k.attribute == c.attribute for c in self.columns
            )
        }
        attributes = (
            [a.attribute for a in templated if a.attribute not in plain_keys]
            + [columns[c].attribute for c in columns]
            + [self.ttl_attribute]
        )
        duplicates = {a for a in attributes if attributes.count(a) > 1}
        if duplicates:
            raise ValueError(f"attribute names used twice: {sorted(duplicates)}")
        for attr in attributes:
            if attr.startswith("_"):
                raise ValueError(f"attribute {attr!r}: names starting with '_' are reserved")
        in_key = {
            name
            for attr in filter(None, [self.partition_key, self.sort_key])
            for name, _ in template_fields(attr.template)
        }
        missing = [pk for pk in self.primary_key if pk not in in_key]
        if missing:
            # Otherwise two rows could share one item and a delete of one would erase the other.
            raise ValueError(
                f"key templates must include every primary_key column; missing {missing}"
            )
        if self.retention and self.retention.column not in columns:
            raise ValueError(f"retention column {self.retention.column!r} is not in columns")
        types = {a.attribute: a.type for a in templated}
        for c in columns.values():
            types[c.attribute] = (
                "N"
                if c.type in ("int", "bigint", "decimal")
                else ("BOOL" if c.type == "bool" else "S")
            )
        for index in self.indexes:
            for key in filter(None, [index.partition_key, index.sort_key]):
                if key.attribute not in types:
                    raise ValueError(
                        f"index {index.name!r} keys on {key.attribute!r}, "
                        "which no key, derived attribute or column produces"
                    )
                if types[key.attribute] != key.type:
                    raise ValueError(
                        f"index {index.name!r}: {key.attribute!r} is "
                        f"{types[key.attribute]}, not {key.type}"
                    )
        self._check_reads(known, types)
        # Derived once here, not per row (model_copy(update=...) skips validation anyway).
        self._types = {c.name: c.type for c in self.columns} | {
            lk.column: lk.type for lk in self.lookups
        }
        return self

    def _check_shards(self, columns: dict[str, Column]) -> None:
        """{column:shard} only where a partition is chosen, of an integer column, and used
        exactly when shards > 1."""
        sort_attributes = {i.sort_key.attribute for i in self.indexes if i.sort_key}
        orders = {p.order for p in self.reads.patterns if p.order}
        sharded = []
        templated = [self.partition_key, *([self.sort_key] if self.sort_key else []), *self.derived]
        for attr in templated:
            for name, spec in template_fields(attr.template):
                if spec != SHARD:
                    continue
                if attr is self.sort_key or attr.attribute in sort_attributes | orders:
                    # Shards split partitions; in a sort key the suffix would only reorder.
                    raise ValueError(
                        f"template of {attr.attribute!r}: a shard suffix belongs in a "
                        "partition key, not a sort key or an order"
                    )
                column = columns.get(name)
                if column is None or column.type not in ("int", "bigint"):
                    raise ValueError(
                        f"template of {attr.attribute!r}: {{{name}:shard}} needs an integer "
                        "column of the table (its value mod shards picks the shard)"
                    )
                sharded.append(attr.attribute)
        if self.shards > 1 and not sharded:
            raise ValueError(
                f"shards is {self.shards}, but no key template carries a shard suffix "
                "({column:shard}, e.g. '{servicename}-{logtimestamp:date}#{logid:shard}')"
            )
        if self.shards == 1 and sharded:
            raise ValueError(
                f"{sorted(set(sharded))} carry a shard suffix, but shards is 1: "
                "set shards (2..64) or leave the suffix out"
            )

    def sharded(self, attribute: str) -> bool:
        """Whether the key or derived attribute's template carries a shard suffix."""
        keys = [self.partition_key, *([self.sort_key] if self.sort_key else [])]
        for attr in [*keys, *self.derived]:
            if attr.attribute == attribute:
                return any(spec == SHARD for _, spec in template_fields(attr.template))
        return False

    def _check_reads(self, known: set[str], types: dict[str, str]) -> None:
        columns = {c.name: c for c in self.columns}
        kinds = {c.name: c.type for c in self.columns} | {lk.column: lk.type for lk in self.lookups}
        templates = {
            a.attribute: a.template
            for a in [
                self.partition_key,
                *([self.sort_key] if self.sort_key else []),
                *self.derived,
            ]
        }
        indexes = {i.name: i for i in self.indexes}
        names = [p.name for p in self.reads.patterns]
        if len(set(names)) != len(names):
            raise ValueError(f"read patterns named twice: {sorted(names)}")
        for attr in self.reads.show:
            if attr not in types:
                raise ValueError(f"reads.show names unknown attribute {attr!r}")
        for p in self.reads.patterns:
            where = f"read pattern {p.name!r}"
            for name in [p.param.column, *(p.filters), *([p.range.column] if p.range else [])]:
                if name not in known:
                    raise ValueError(f"{where} names unknown column {name!r}")
            if p.param.day and kinds[p.param.column] != "timestamp":
                raise ValueError(f"{where}: day needs a timestamp column")
            if p.range and kinds[p.range.column] not in ("timestamp", "date"):
                raise ValueError(f"{where}: the range column must be a timestamp or a date")
            if p.path.count("{") != 1 or f"{{{p.param.name}}}" not in p.path:
                raise ValueError(f"{where}: path must hold {{{p.param.name}}} and nothing else")
            if p.index is not None and p.index not in indexes:
                raise ValueError(f"{where}: no index {p.index!r} in the mapping")
            index = indexes.get(p.index or "")
            queried = index.partition_key.attribute if index else self.partition_key.attribute
            sharded = self.sharded(queried)
            allowed = {p.param.name, *(["day"] if p.fan_out else []), *(["shard"] * sharded)}
            named = [name for name, _ in template_fields(p.partition or f"{{{p.param.name}}}")]
            for name in named:
                if name not in allowed:
                    raise ValueError(f"{where}: partition names {name!r}, not the parameter")
            if sharded and "shard" not in named:
                raise ValueError(
                    f"{where}: {queried!r} carries a shard suffix: the partition template "
                    "needs {shard} where it goes (every shard is queried)"
                )
            if sharded and _around_shard(p.partition or "") != _around_shard(templates[queried]):
                # Otherwise every query would ask for partitions no item is in.
                raise ValueError(
                    f"{where}: {{shard}} must sit between the same text as the shard suffix "
                    f"of {queried!r} ({templates[queried]!r})"
                )
            if p.fan_out and (p.index or not p.range or kinds[p.range.column] != "timestamp"):
                raise ValueError(f"{where}: fan_out days is on the table key, by a time range")
            if p.single:
                if index is None and self.sort_key is not None:
                    raise ValueError(f"{where}: one row by the table key needs no sort key")
                pk = index.partition_key.attribute if index else self.partition_key.attribute
                if p.param.column not in columns or pk != columns[p.param.column].attribute:
                    raise ValueError(f"{where}: the key must be the parameter's column")
                if p.range or p.fan_out or p.order:
                    raise ValueError(f"{where}: one row takes no range, fan_out or order")
                continue
            order = p.order or (self.sort_key.attribute if self.sort_key else None)
            if order not in templates:
                raise ValueError(f"{where}: order must be a key or derived attribute")
            for name, spec in template_fields(templates[order]):
                padded = kinds[name] in ("int", "bigint") and spec.startswith("0")
                if not padded and (spec or kinds[name] not in ("timestamp", "date")):
                    raise ValueError(
                        f"{where}: order {order!r} must be made of fixed-width "
                        "timestamps, dates and zero-padded ids"
                    )
            sort = index.sort_key if index else self.sort_key
            if sort is not None and templates.get(sort.attribute) != templates[order]:
                # A coarser index sort key (a date) whose items are re-ordered by `order`.
                first = template_fields(templates[order])[0][0]
                column = columns.get(first)
                if (
                    not p.range
                    or first != p.range.column
                    or column is None
                    or (sort.attribute != column.attribute)
                ):
                    raise ValueError(
                        f"{where}: the index sorts by {sort.attribute!r}, which "
                        f"must be the range column that {order!r} begins with"
                    )

    @property
    def key_attributes(self) -> list[str]:
        return [self.partition_key.attribute] + ([self.sort_key.attribute] if self.sort_key else [])

    def column_types(self) -> dict[str, ColumnType]:
        return self._types


def _around_shard(template: str) -> tuple[str, str]:
    """The literal text just before and just after a template's shard field ({column:shard} of
    a key, {shard} of a read pattern's partition)."""
    parts = list(_FORMATTER.parse(template))
    for n, (literal, name, spec, _) in enumerate(parts):
        if name == "shard" or spec == SHARD:
            after = parts[n + 1][0] if n + 1 < len(parts) else ""
            return literal, after
    return "", ""


def known_format(spec: str) -> bool:
    """A template format: 'date', 'shard' or a zero-padding '0N'."""
    return spec in ("date", SHARD) or (spec.startswith("0") and spec[1:].isdigit())


def template_fields(template: str) -> list[tuple[str, str]]:
    """(column, format) pairs named by a template; raises ValueError on a malformed template."""
    fields = []
    for _, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if not name or conversion:
            raise ValueError(f"template {template!r}: use {{column}} or {{column:format}}")
        if spec and not known_format(spec):
            raise ValueError(
                f"template {template!r}: format {spec!r} is not 'date', 'shard' or '0N'"
            )
        fields.append((name, spec))
    return fields


# --- values ---------------------------------------------------------------------------------


def format_timestamp(micros: int) -> str:
    """Fixed-width UTC ISO-8601 with microseconds, e.g. 2024-01-15T10:30:00.123456Z."""
    t = _EPOCH + dt.timedelta(microseconds=micros)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
        f"{t.second:02d}.{t.microsecond:06d}Z"
    )


def format_date(days: int) -> str:
    d = _EPOCH_DATE + dt.timedelta(days=days)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def canonical(column: str, kind: ColumnType, value: Any) -> str:
    """The exact text form of a non-NULL column value, as used in items and key templates."""
    try:
        if kind in ("int", "bigint"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise MappingError(f"column {column!r}: expected an integer, got {value!r}")
            return str(value)
        if kind == "decimal":
            return _exact_number(column, value)
        if kind in ("text", "json"):
            if not isinstance(value, str):
                raise MappingError(f"column {column!r}: expected text, got {type(value).__name__}")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise MappingError(f"column {column!r}: expected a boolean, got {value!r}")
            return "true" if value else "false"
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int):
                raise MappingError(
                    f"column {column!r}: expected microseconds since the epoch "
                    f"(Debezium MicroTimestamp), got {value!r}"
                )
            return format_timestamp(value)
        if kind == "date":
            if isinstance(value, bool) or not isinstance(value, int):
                raise MappingError(
                    f"column {column!r}: expected days since the epoch, got {value!r}"
                )
            return format_date(value)
    except (OverflowError, ValueError) as exc:
        raise MappingError(f"column {column!r}: value {value!r} is out of range") from exc
    raise MappingError(f"column {column!r}: unknown type {kind!r}")


def _exact_number(column: str, value: Any) -> str:
    if isinstance(value, float):
        # A float has already lost the exact value: refuse rather than store a rounded amount.
        raise MappingError(
            f"column {column!r}: decimal arrived as a float; the connector must "
            "use decimal.handling.mode=string"
        )
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MappingError(f"column {column!r}: expected a decimal string, got {value!r}")
    text = str(value)
    if text.lstrip("+-").lower() in ("nan", "snan", "infinity", "inf"):
        raise MappingError(f"column {column!r}: {value!r} has no DynamoDB number form")
    if not _PLAIN_NUMBER.fullmatch(text):
        # Also refuses what Decimal() would forgive (" 1.5 ", "1_000"): DynamoDB would not.
        raise MappingError(f"column {column!r}: {value!r} is not a decimal number")
    number = Decimal(text)
    if number and not -130 <= number.adjusted() <= 125:
        raise MappingError(f"column {column!r}: {value!r} is outside DynamoDB's number range")
    digits = len(number.as_tuple().digits)
    if digits > MAX_NUMBER_DIGITS:
        raise MappingError(
            f"column {column!r}: {digits} significant digits, DynamoDB keeps "
            f"{MAX_NUMBER_DIGITS}; refusing to round"
        )
    return str(value)


def _attribute(column: str, kind: ColumnType, value: Any) -> AttributeValue:
    text = canonical(column, kind, value)
    if kind in ("int", "bigint", "decimal"):
        return {"N": text}
    if kind == "bool":
        return {"BOOL": value}
    return {"S": text}


@functools.lru_cache(maxsize=1024)
def _parsed(template: str) -> tuple[tuple[str, str | None, str | None], ...]:
    return tuple((literal, name, spec) for literal, name, spec, _ in _FORMATTER.parse(template))


def render(
    template: str,
    row: dict[str, Any],
    types: dict[str, ColumnType],
    texts: dict[str, str] | None = None,
    shards: int = 1,
) -> str | None:
    """Fill a template from a row; None when a column it names is NULL. ``texts`` memoizes
    canonical column texts across the templates of one row; ``shards`` is the mapping's, for
    {column:shard} (the column's value mod shards, 0..shards-1 for negative values too)."""
    out = []
    for literal, name, spec in _parsed(template):
        out.append(literal)
        if name is None:
            continue
        value = row.get(name)
        if value is None:
            return None
        if value == UNAVAILABLE:
            raise MappingError(
                f"template {template!r} needs {name!r}, which the source did not "
                "send (TOAST); use REPLICA IDENTITY FULL"
            )
        kind = types[name]
        if texts is None:
            texts = {}
        whole = texts.get(name)
        if whole is None:
            whole = texts[name] = canonical(name, kind, value)
        if spec == "date":
            text = whole[:10]
        elif spec == SHARD:
            if kind not in ("int", "bigint"):
                raise MappingError(f"template {template!r}: a shard suffix needs an integer column")
            text = str(int(whole) % shards)
        elif spec:
            if kind not in ("int", "bigint"):
                raise MappingError(f"template {template!r}: zero-padding needs an integer column")
            text = f"{int(whole):{spec}d}"  # canonical refused non-integers
        else:
            text = whole
        out.append(text)
    return "".join(out)


# --- items ----------------------------------------------------------------------------------


def item_key(
    mapping: TableMapping,
    row: dict[str, Any],
    texts: dict[str, str] | None = None,
    types: dict[str, ColumnType] | None = None,
) -> Item:
    """The DynamoDB primary key of the item a row maps to."""
    if types is None:
        types = mapping.column_types()
    key: Item = {}
    for attr in filter(None, [mapping.partition_key, mapping.sort_key]):
        text = render(attr.template, row, types, texts, mapping.shards)
        if not text:
            raise MappingError(f"key attribute {attr.attribute!r} is empty or NULL for this row")
        if attr.type == "N":
            key[attr.attribute] = {"N": _exact_number(attr.attribute, text)}
        else:
            key[attr.attribute] = {"S": text}
    return key


def to_item(mapping: TableMapping, row: dict[str, Any]) -> tuple[Item, set[str]]:
    """Map a full row to an item, plus the attributes whose value the source did not send.

    Attributes in the second set must keep the value already stored (TOAST); NULL columns are
    simply absent, so a full write removes them.
    """
    types = mapping.column_types()  # once: a private attribute is slow to reach on a model
    texts: dict[str, str] = {}  # canonical texts of the columns the key templates used
    item = item_key(mapping, row, texts, types)
    unavailable: set[str] = set()
    for column in mapping.columns:
        value = row.get(column.name)
        if value is None:
            continue
        if value == UNAVAILABLE:
            unavailable.add(column.attribute)
            continue
        known = texts.get(column.name)
        if known is not None and column.type not in ("int", "bigint", "decimal", "bool"):
            item[column.attribute] = {"S": known}  # canonicalised for a key already
        else:
            item[column.attribute] = _attribute(column.name, column.type, value)
    for attr in mapping.derived:
        if not _conditions_hold(attr, row):
            continue
        text = render(attr.template, row, types, texts, mapping.shards)
        if text is None:
            continue
        item[attr.attribute] = (
            {"N": _exact_number(attr.attribute, text)} if attr.type == "N" else {"S": text}
        )
    if mapping.retention:
        micros = row.get(mapping.retention.column)
        if isinstance(micros, int) and not isinstance(micros, bool):
            expires = micros // 1_000_000 + mapping.retention.days * 86_400
            item[mapping.ttl_attribute] = {"N": str(expires)}
    if size_bound(item) > MAX_ITEM_BYTES:  # the common case needs no encoding to know
        fit(mapping, item)
    return item, unavailable


def fit(mapping: TableMapping, item: Item) -> None:
    """An item over the cheap size bound: its exact size, compressed in place when the mapping
    says so, refused when it is still over DynamoDB's 400 KB."""
    size = item_size(item)
    if size > MAX_ITEM_BYTES and mapping.large_items == "compress":
        size = _compress_to_fit(mapping, item, size)
    if size > MAX_ITEM_BYTES:
        raise MappingError(f"item is {size} bytes, over DynamoDB's 400 KB limit")


def _conditions_hold(attr: DerivedAttribute, row: dict[str, Any]) -> bool:
    for name in attr.when_set:
        if row.get(name) is None:
            return False
    return all(row.get(name) == wanted for name, wanted in attr.when_equal.items())


def _compress_to_fit(mapping: TableMapping, item: Item, size: int) -> int:
    """Gzip text columns, largest first, until the item fits; returns the new size.

    A compressed column is stored as binary (B) under its usual name: readers gunzip a B value
    of a text column. Compression is deterministic (no timestamp in the header), so the same row
    always gives the same item.
    """
    texts = [c.attribute for c in mapping.columns if c.type in ("text", "json")]
    for name in sorted(
        (a for a in texts if "S" in item.get(a, {})), key=lambda a: -len(item[a]["S"])
    ):
        raw = item[name]["S"].encode()
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        if len(packed) >= len(raw):
            continue
        item[name] = {"B": packed}
        size -= len(raw) - len(packed)
        if size <= MAX_ITEM_BYTES:
            break
    return size
