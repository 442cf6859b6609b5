"""The item format: what the replicator adds to a mapped item, and how DynamoDB sizes one.

Every stored item carries the position of the change it reflects (``_pos``) and that change's
commit time in PostgreSQL (``_src_ms``). A deleted row leaves a delete marker: its key,
``_deleted`` and a TTL, kept ``tombstone_days`` so that an older change cannot bring the row
back. Every write of the sink is guarded: it applies only if the stored position is older than
its own, or absent. Pure: no I/O.

The request that carries the guard, ``stream.sink.action()``, is not here on purpose: the
least-privilege check of deploy/iam (tests/unit/test_deploy_iam.py) counts a module that holds
a Put or Update request as writing items, and every module that imports ``core.mapping`` (the
tables command among them) imports this one.

Sizing follows DynamoDB's documented rules (``item_size``). Two callers use it: the mapping's
400 KB check and backfill's write-unit estimate; both want DynamoDB's own count, so there is one
rule. DynamoDB calls its number rule approximate (a number can take a byte more than it says),
so an item within a few bytes of 400 KB may still be refused: it then parks, like any item
DynamoDB refuses.
"""

from __future__ import annotations

from typing import Any, Protocol

AttributeValue = dict[str, Any]  # one value in DynamoDB's wire format: {"S": ...}, {"N": ...}
Item = dict[str, AttributeValue]


class Expiring(Protocol):
    """What a delete marker needs of a table's mapping (core.mapping.TableMapping)."""

    @property
    def tombstone_days(self) -> int: ...

    @property
    def ttl_attribute(self) -> str: ...


POS = "_pos"  # encoded Position of the change the item reflects
SOURCE_MS = "_src_ms"  # commit time in PostgreSQL, for end-to-end latency
DELETED = "_deleted"  # delete marker ("tombstone"): kept until TTL so old events cannot revive it
META_ATTRIBUTES = (POS, SOURCE_MS, DELETED)
# Names through placeholders: real DynamoDB is stricter than the local endpoint about names
# that start with '_' inside expressions.
GUARD = "attribute_not_exists(#pos) OR #pos < :pos"
_DAY_S = 86_400


# --- delete markers -------------------------------------------------------------------------


def delete_marker(mapping: Expiring, key: Item, now_s: int) -> Item:
    """The marker that stands for a deleted row: the key (no GSI attributes, so it leaves every
    index), ``_deleted``, and a TTL ``tombstone_days`` from now."""
    expires = now_s + mapping.tombstone_days * _DAY_S
    return {**key, DELETED: {"BOOL": True}, mapping.ttl_attribute: {"N": str(expires)}}


def is_marker(item: Item | None) -> bool:
    """Whether a stored item is a delete marker."""
    return item is not None and item.get(DELETED, {}).get("BOOL") is True


# --- sizing ---------------------------------------------------------------------------------


def number_size(text: str) -> int:
    """A number's size: 1 byte per two significant digits, plus 1. Sign, decimal point and
    exponent are not digits, and leading and trailing zeros are trimmed (DynamoDB stores the
    number normalised, so 100 is one significant digit)."""
    mantissa = text.lower().partition("e")[0]
    digits = "".join(ch for ch in mantissa if ch.isdigit()).strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: AttributeValue) -> int:
    """Bytes DynamoDB counts for one attribute value (its name not included)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return number_size(inner)
    if kind == "B":
        return len(inner)  # raw bytes, not their base64 on the wire
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: v}) for v in inner)
    if kind == "L":  # 3 bytes for the list, 1 per element
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":  # 3 bytes for the map, 1 per element, each element's name
        return 3 + sum(len(k.encode()) + 1 + value_size(v) for k, v in inner.items())
    raise ValueError(f"not a DynamoDB attribute value type: {kind!r}")


def item_size(item: Item) -> int:
    """DynamoDB's item size: every attribute's name in UTF-8 plus its value."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def size_bound(item: Item) -> int:
    """An upper bound of ``item_size`` that costs no encoding: at most 4 UTF-8 bytes per
    character, a number at most one byte per character plus one. Most items are far below
    the 400 KB limit, so the exact size is only worth computing above this bound."""
    total = 0
    for name, value in item.items():
        total += 4 * len(name)
        ((kind, inner),) = value.items()
        if kind == "S":
            total += 4 * len(inner)
        elif kind == "N":
            total += len(inner) + 1
        elif kind in ("BOOL", "NULL"):
            total += 1
        else:
            total += value_size(value)
    return total
