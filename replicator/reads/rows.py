"""Items as rows, the same row from either store, and pages of rows (pure).

A row is the item the sink writes for a PostgreSQL row, cut down to the table's key attributes
and its columns: index keys, the TTL attribute and meta attributes are plumbing and left out.
Values: ``str``; ``bool``; ``int`` for integer columns and keys; ``Decimal`` for decimals,
without trailing zeros (DynamoDB keeps a number's value, not its scale), never a float.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from replicator.core.mapping import Item, TableMapping
from replicator.stream.sink import DELETED

Row = dict[str, Any]


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next: str | None = None
    source: str = field(default="", compare=False)  # which store served it


Result = Page | Row | None


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


def same(a: Result, b: Result) -> bool:
    """Equal results: the same rows (values and order) and the same continuation."""
    if isinstance(a, Page) and isinstance(b, Page):
        return a.rows == b.rows and a.next == b.next
    return a == b
