"""Items as rows, the same row from either store, and pages of rows (pure).

A row is the item the sink writes for a PostgreSQL row, cut down to the table's key attributes
and its columns: index keys, the TTL attribute and meta attributes are plumbing and left out.
Values: ``str``; ``bool``; ``int`` for integer columns and keys; ``Decimal`` for decimals, never
a float: with the column's declared ``scale`` (``2500.00``), else without trailing zeros
(DynamoDB keeps a number's value, not its scale).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any

from replicator.core.items import DELETED
from replicator.core.mapping import Item, TableMapping

Row = dict[str, Any]


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next: str | None = None
    source: str = field(default="", compare=False)  # which store served it


Result = Page | Row | None


# Wide enough for any DynamoDB number (38 digits) at any scale: quantize never rounds here.
_EXACT = Context(prec=200)


def _number(text: str, kind: str, scale: int | None = None) -> int | Decimal:
    if kind in ("int", "bigint"):
        return int(text)
    number = Decimal(text)
    if kind == "decimal":
        # DynamoDB keeps the value, not the scale (12.50 comes back as 12.5): both stores'
        # values are brought to the column's declared scale, or to none without trailing zeros.
        if scale is not None and -int(number.as_tuple().exponent) <= scale:
            return number.quantize(Decimal(1).scaleb(-scale), context=_EXACT)
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
    scales: dict[str, int] = field(default_factory=dict)  # decimal attribute -> its scale

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
        scales = {c.attribute: c.scale for c in mapping.columns if c.scale is not None}
        return cls(kinds, scales)

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
                out[name] = _number(value["N"], kind, self.scales.get(name))
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


# --- JSON -----------------------------------------------------------------------------------


def to_json(value: Any) -> bytes:
    """JSON text with Decimals as exact JSON numbers (the json module would need floats)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode()


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no JSON form")
        # Plain digits, never an exponent: 2500.00 stays 2500.00, not 2.5E+3.
        out.append(format(value, "f"))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
