"""How far behind replication is, asked from outside the consumer: the consumer group's
committed offsets against each topic's end (and the age of the oldest record not applied yet),
and the replication slot's retained WAL in PostgreSQL. Used by `lag`/`status`, the phase gates,
verify's re-check and backfill's yielding; the running consumer exports its own view as metrics.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from replicator.config import Settings
from replicator.errors import ReplicatorError

_NO_OFFSET = 0  # librdkafka's logical offsets (nothing committed yet) are negative


class LagUnavailableError(ReplicatorError):
    """Kafka or PostgreSQL did not answer the lag question."""


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int  # where the group resumes (the low watermark when it never committed)
    end: int  # the high watermark
    events: int


@dataclass(frozen=True)
class TableLag:
    table: str  # mapping name
    topic: str
    events: int  # records the group has not committed yet, all partitions
    seconds: float  # age of the oldest uncommitted record (Kafka timestamp); 0.0 when caught up
    partitions: tuple[PartitionLag, ...]


@dataclass(frozen=True)
class SlotLag:
    slot: str
    active: bool
    retained_wal_bytes: int  # WAL PostgreSQL keeps for the slot (current LSN - restart_lsn)
    confirmed_flush_lsn: str | None


def consumer_lag(
    settings: Settings, group_id: str | None = None, timeout_s: float = 10.0
) -> dict[str, TableLag]:
    """Lag of ``group_id`` (the live group by default) on every mapped table's topic.

    Reads committed offsets without joining the group, so asking never disturbs the consumers.
    """
    group = group_id or settings.kafka.group_id
    probe = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": group,
            "client.id": f"replicator-lag-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "log_level": 3,
            **settings.kafka.extra,
        }
    )
    try:
        return {
            mapping.name: _table_lag(probe, mapping.name, settings.topic_of(mapping), timeout_s)
            for mapping in settings.tables
        }
    except KafkaException as exc:
        raise LagUnavailableError(
            f"kafka at {settings.kafka.bootstrap_servers} did not answer: {exc.args[0]}"
        ) from exc
    finally:
        probe.close()


def _table_lag(probe: Consumer, table: str, topic: str, timeout_s: float) -> TableLag:
    metadata = probe.list_topics(topic, timeout=timeout_s).topics[topic]
    if metadata.error is not None:
        if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return TableLag(table, topic, 0, 0.0, ())  # no change yet: nothing to be behind on
        raise KafkaException(metadata.error)
    wanted = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
    partitions = []
    behind = []
    for tp in probe.committed(wanted, timeout=timeout_s):
        low, high = probe.get_watermark_offsets(tp, timeout=timeout_s)
        committed = tp.offset if tp.offset >= _NO_OFFSET else low
        committed = max(committed, low)  # compaction/retention may have removed older records
        events = max(0, high - committed)
        partitions.append(PartitionLag(tp.partition, committed, high, events))
        if events:
            behind.append(TopicPartition(topic, tp.partition, committed))
    return TableLag(
        table,
        topic,
        sum(p.events for p in partitions),
        _oldest_age(probe, behind, timeout_s),
        tuple(partitions),
    )


def _oldest_age(probe: Consumer, behind: list[TopicPartition], timeout_s: float) -> float:
    """Seconds since the oldest of the first unapplied records was produced."""
    if not behind:
        return 0.0
    probe.assign(behind)  # assign, not subscribe: no group membership, no rebalance
    pending = {(tp.topic, tp.partition) for tp in behind}
    oldest: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            message = probe.poll(0.2)
            if message is None or message.error() is not None:
                continue
            where = (message.topic(), message.partition())
            if where not in pending:
                continue
            pending.discard(where)
            _kind, millis = message.timestamp()
            if millis > 0:
                oldest = millis / 1000 if oldest is None else min(oldest, millis / 1000)
    finally:
        probe.unassign()
    if oldest is None:  # records vanished under compaction meanwhile: nothing measurable
        return 0.0
    return max(0.0, time.time() - oldest)


def slot_lag(settings: Settings) -> SlotLag | None:
    """The connector's replication slot: retained WAL and whether a client streams from it."""
    slot = settings.connector.slot_name
    try:
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT active, COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0),"
                " confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()
    except psycopg.Error as exc:
        raise LagUnavailableError(
            f"postgresql at {settings.postgres.host}:{settings.postgres.port} did not answer: "
            f"{str(exc).strip()}"
        ) from exc
    if row is None:
        return None
    active, retained, confirmed = row
    return SlotLag(slot, bool(active), int(retained), confirmed)
