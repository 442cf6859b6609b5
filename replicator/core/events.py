"""The one flat change-event type that every stage after decoding works with."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


class Op(enum.StrEnum):
    """What happened to the row. Snapshot reads and inserts are both UPSERTs downstream."""

    UPSERT = "upsert"  # Debezium c, u, r
    DELETE = "delete"  # Debezium d


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """Where a change sits in PostgreSQL's commit order; larger is newer.

    Debezium labels each streamed change with ``sequence = [lastCommitLsn, lsn]``: the commit
    LSN of the transaction streamed before it, then the change's own LSN. Transactions are
    streamed in commit order, so ``last_commit`` strictly grows from one transaction to the next
    and ``lsn`` grows inside one. Rows written by one multi-row statement may share an LSN, but
    they are different rows, so per row the pair is a total order.

    ``streamed`` is 1 for a change (insert, update, delete) and 0 for a read of a snapshot.
    An initial-snapshot read is ``(0, 0, lsn)``: it shows the row as of the snapshot, so any
    streamed change of that row is newer, even one whose own LSN is below the snapshot's (a
    transaction that began before the snapshot and committed after it). A snapshot read
    therefore never overwrites a streamed item. An incremental-snapshot read is
    ``(last_commit, 0, lsn)`` at the streaming position where its window closed: newer than
    every change before it and every initial-snapshot read, older than a change at the same
    ``[last_commit, lsn]`` (the first change of the next transaction can start exactly there).

    The text encoding is the one items have always carried in ``_pos``; only which rank an
    event gets has changed, so stored items compare with new positions as they always did.
    """

    last_commit: int
    streamed: int
    lsn: int

    def encode(self) -> str:
        """Fixed-width text whose string order is the position order (DynamoDB compares strings)."""
        return f"{self.last_commit:016x}.{self.streamed}.{self.lsn:016x}"

    @classmethod
    def decode(cls, text: str) -> Position:
        last_commit, streamed, lsn = text.split(".")
        return cls(int(last_commit, 16), int(streamed), int(lsn, 16))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the record came from in Kafka, for commits, logs and dead letters."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A decoded Debezium change: nothing downstream sees before/after/source envelopes.

    ``row`` is the row after the change (for DELETE, the row before it, which with REPLICA
    IDENTITY FULL is the whole old row). ``before`` is the old row of an UPDATE when the source
    sends it, used to find an item whose key moved. Values are as Debezium's JSON converter
    sends them; the mapping stage gives them types.
    """

    table: str  # source table, "schema.table"
    op: Op
    key: Row  # primary-key columns
    row: Row
    before: Row | None
    position: Position
    source_ts_ms: int  # commit time in PostgreSQL
    snapshot: bool
    origin: Origin
    # The PostgreSQL replication origin of the transaction (Debezium's ``source.origin``),
    # None for ordinary sessions: a purge tags its deletes so that consumers can drop them.
    source_origin: str | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that carries no change to apply (Kafka tombstone, heartbeat, schema change)."""

    reason: str
    origin: Origin
