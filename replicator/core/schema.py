"""A source row's shape against its mapping, after the source table's schema changed. Pure.

Debezium's JSON converter (schemas disabled) sends every column of the row, NULLs included,
so the row's keys are the table's columns at the time of the change: a key the mapping does
not name is a column added by ALTER TABLE, and a mapped column without a key was dropped (or
renamed). The row carries no types: an unmapped column's type is its PostgreSQL type
(``format_type()`` of the catalog, e.g. ``numeric(10,2)``), asked of the database by the
caller (replicator.stream.schema).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from replicator.core.items import META_ATTRIBUTES, AttributeValue, Item
from replicator.core.mapping import UNAVAILABLE, ColumnType, TableMapping, _attribute

_TIMESTAMP = re.compile(r"timestamp(\((\d)\))? without time zone")


def column_type(source_type: str) -> ColumnType | None:
    """The mapping type whose rules convert what Debezium sends for a PostgreSQL type (with
    decimal.handling.mode=string and time.precision.mode=adaptive), None when no rule is exact:
    floats (real, double precision) arrive rounded, timestamp(0..3) in milliseconds, and
    intervals, arrays, bytea and the like have no rule here."""
    name = source_type.strip().lower()
    if name in ("smallint", "integer"):
        return "int"
    if name == "bigint":
        return "bigint"
    if name == "numeric" or name.startswith("numeric("):
        return "decimal"
    if name in ("text", "uuid", "timestamp with time zone") or name.startswith(
        ("character varying", "character", "varchar", "char")
    ):
        # timestamptz arrives as ISO-8601 text in UTC (Debezium's ZonedTimestamp).
        return "text"
    if name in ("json", "jsonb"):
        return "json"
    if name == "boolean":
        return "bool"
    if name == "date":
        return "date"
    matched = _TIMESTAMP.fullmatch(name)
    if matched and (matched.group(2) is None or int(matched.group(2)) >= 4):
        return "timestamp"  # MicroTimestamp: microseconds since the epoch
    return None


# What each mapping type accepts: a source column of another type sends values the type's
# rules refuse or read wrongly (a date's days taken as a timestamp's microseconds).
_ACCEPTS: dict[ColumnType, frozenset[ColumnType]] = {
    "int": frozenset({"int", "bigint"}),
    "bigint": frozenset({"int", "bigint"}),
    "decimal": frozenset({"int", "bigint", "decimal"}),
    "text": frozenset({"text"}),
    "json": frozenset({"json", "text"}),
    "bool": frozenset({"bool"}),
    "timestamp": frozenset({"timestamp"}),
    "date": frozenset({"date"}),
}


def compatible(mapped: ColumnType, source_type: str) -> bool:
    """Whether a column mapped as ``mapped`` can take the values of a ``source_type`` column."""
    kind = column_type(source_type)
    return kind is not None and kind in _ACCEPTS[mapped]


def pascal_case(column: str) -> str:
    """The attribute name of an unmapped column: loyalty_points -> LoyaltyPoints (PostgreSQL
    folds unquoted names to lower case, so a name without underscores keeps one capital)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\W]+", column) if part)


@dataclass(frozen=True, slots=True)
class Shape:
    """The columns a row has that the mapping does not name, and the mapped ones it lacks."""

    unknown: tuple[str, ...]
    missing: tuple[str, ...]


def shape(mapping: TableMapping, row: Mapping[str, Any]) -> Shape:
    """Compare a full source row (an insert's, an update's or a read's) with the mapping.
    Lookup columns are not the source's: they are added to the row later."""
    mapped = [c.name for c in mapping.columns]
    lookups = {lk.column for lk in mapping.lookups}
    known = set(mapped) | lookups
    return Shape(
        tuple(sorted(name for name in row if name not in known)),
        tuple(name for name in mapped if name not in row),
    )


def required(mapping: TableMapping, missing: Iterable[str]) -> list[str]:
    """The missing columns that the mapping says are NOT NULL; a primary-key column always is
    (PostgreSQL makes it so)."""
    names = set(missing)
    return [
        c.name
        for c in mapping.columns
        if c.name in names and (not c.nullable or c.name in mapping.primary_key)
    ]


def attribute_names(mapping: TableMapping) -> set[str]:
    """Every attribute name the mapping's items can hold, the replicator's own included."""
    names = {c.attribute for c in mapping.columns}
    names |= {a.attribute for a in filter(None, [mapping.partition_key, mapping.sort_key])}
    names |= {d.attribute for d in mapping.derived}
    return names | {mapping.ttl_attribute, *META_ATTRIBUTES}


@dataclass(frozen=True, slots=True)
class Included:
    """An unmapped column written to the items: its attribute and the type whose rules apply."""

    column: str
    attribute: str
    type: ColumnType


def plan_included(
    mapping: TableMapping, source_types: Mapping[str, str | None]
) -> tuple[list[Included], dict[str, str]]:
    """Which unmapped columns (name -> PostgreSQL type, None when unknown) are written, and
    why each of the others is not."""
    taken = attribute_names(mapping)
    included: list[Included] = []
    left_out: dict[str, str] = {}
    for column, source_type in sorted(source_types.items()):
        kind = column_type(source_type) if source_type is not None else None
        attribute = pascal_case(column)
        if source_type is None:
            left_out[column] = "its type is unknown (not in the catalog)"
        elif kind is None:
            left_out[column] = f"no exact rule for its type {source_type}"
        elif not attribute or attribute in taken:
            left_out[column] = f"its attribute name {attribute!r} is the mapping's already"
        else:
            taken.add(attribute)
            included.append(Included(column, attribute, kind))
    return included, left_out


def included_attributes(
    included: Iterable[Included], row: Mapping[str, Any]
) -> tuple[Item, set[str]]:
    """The included columns' attributes of a row (NULL: absent), each converted by its type's
    rules (MappingError when a value does not fit them), plus the attributes whose value the
    source did not send (TOAST: the stored value stays)."""
    item: Item = {}
    unavailable: set[str] = set()
    for column in included:
        value = row.get(column.column)
        if value is None:
            continue
        if value == UNAVAILABLE:
            unavailable.add(column.attribute)
            continue
        converted: AttributeValue = _attribute(column.column, column.type, value)
        item[column.attribute] = converted
    return item, unavailable


def included_columns(mapping: TableMapping, source_types: Mapping[str, str]) -> list[Included]:
    """The unmapped columns of a table's current columns (name -> PostgreSQL type, from the
    catalog) that the consumers write under ``unmapped_columns: include``: what verify expects."""
    if mapping.unmapped_columns != "include":
        return []
    known = {c.name for c in mapping.columns} | {lk.column for lk in mapping.lookups}
    unknown = {name: kind for name, kind in source_types.items() if name not in known}
    return plan_included(mapping, unknown)[0]
