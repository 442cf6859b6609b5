"""The item format: what the replicator adds to a mapped item.

Every stored item carries the position of the change it reflects (``_pos``) and that change's
commit time in PostgreSQL (``_src_ms``). A deleted row leaves a delete marker: its key,
``_deleted`` and a TTL, kept ``tombstone_days`` so that an older change cannot bring the row
back. Every write of the sink is guarded: it applies only if the stored position is older than
its own, or absent. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replicator.core.mapping import Item, TableMapping

POS = "_pos"  # encoded Position of the change the item reflects
SOURCE_MS = "_src_ms"  # commit time in PostgreSQL, for end-to-end latency
DELETED = "_deleted"  # delete marker ("tombstone"): kept until TTL so old events cannot revive it
META_ATTRIBUTES = (POS, SOURCE_MS, DELETED)
# Names through placeholders: real DynamoDB is stricter than the local endpoint about names
# that start with '_' inside expressions.
GUARD = "attribute_not_exists(#pos) OR #pos < :pos"
_DAY_S = 86_400


# --- delete markers -------------------------------------------------------------------------


def delete_marker(mapping: TableMapping, key: Item, now_s: int) -> Item:
    """The marker that stands for a deleted row: the key (no GSI attributes, so it leaves every
    index), ``_deleted``, and a TTL ``tombstone_days`` from now."""
    expires = now_s + mapping.tombstone_days * _DAY_S
    return {**key, DELETED: {"BOOL": True}, mapping.ttl_attribute: {"N": str(expires)}}


def is_marker(item: Item | None) -> bool:
    """Whether a stored item is a delete marker."""
    return item is not None and item.get(DELETED, {}).get("BOOL") is True
