"""`replicator dlq`'s tooling over the dead-letter topic: list what was parked, show one
record, replay records to their original partition once the cause is fixed (refusing those
older than the no-resurrection horizon)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from replicator.config import Settings
from replicator.core.decode import decode
from replicator.core.events import Origin, Skip
from replicator.errors import DecodeError, ReplicatorError
from replicator.stream.deadletter import connection_settings
from replicator.stream.horizon import cutoff_ms


@dataclass(frozen=True)
class Parked:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    time_ms: int
    key: bytes | None
    value: bytes | None

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


def _reader(bootstrap_servers: str, extra: dict[str, str] | None) -> Consumer:
    """A consumer that reads by assignment and commits nothing (its group is only a name)."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "replicator-dlq-tool",
            "enable.auto.commit": False,
            "log_level": 3,
            **connection_settings(extra or {}),
        }
    )


def read_parked(
    bootstrap_servers: str, topic: str, extra: dict[str, str] | None = None, timeout_s: float = 15
) -> list[Parked]:
    """Every record in the dead-letter topic, up to the end offsets seen at the start."""
    consumer = _reader(bootstrap_servers, extra)
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise ReplicatorError(f"dead-letter topic {topic} does not exist (nothing parked yet)")
        ends = {}
        for p in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        parked: list[Parked] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                parked.append(_parked(message))
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
        if len(done) < len(ends):
            raise ReplicatorError(f"could not read all of {topic} within {timeout_s:.0f}s")
        return parked
    except KafkaException as exc:
        raise ReplicatorError(f"cannot read dead-letter topic {topic}: {exc}") from exc
    finally:
        consumer.close()


def _parked(message: Message) -> Parked:
    headers = {k: (v or b"").decode(errors="replace") for k, v in (message.headers() or [])}

    def number(name: str) -> int:
        try:
            return int(headers.get(name, "-1"))
        except ValueError:
            return -1

    return Parked(
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        reason=headers.get("dlq.reason", "?"),
        error=headers.get("dlq.error", ""),
        source_topic=headers.get("dlq.topic", ""),
        source_partition=number("dlq.partition"),
        source_offset=number("dlq.offset"),
        time_ms=number("dlq.time_ms"),
        key=message.key(),
        value=message.value(),
    )


def split_by_horizon(
    records: list[Parked], settings: Settings, now_ms: int
) -> tuple[list[Parked], list[Parked]]:
    """The records a replay may send back, and those it refuses: a change whose source commit
    time is older than its table's no-resurrection horizon (tombstone_days). Its row may have
    been deleted since and the delete marker expired, and the guard would then let it bring the
    row back. Records that cannot write anything (undecodable, no change, no table mapped here)
    go back: the consumer parks or skips them again. Pure."""
    by_topic = {settings.topic_of(m): m for m in settings.tables}
    kept: list[Parked] = []
    refused: list[Parked] = []
    for record in records:
        mapping = by_topic.get(record.source_topic)
        if mapping is None:
            kept.append(record)
            continue
        origin = Origin(record.source_topic, record.source_partition, record.source_offset)
        try:
            event = decode(record.key, record.value, origin)
        except DecodeError:
            kept.append(record)
            continue
        if isinstance(event, Skip) or event.source_ts_ms >= cutoff_ms(mapping, now_ms):
            kept.append(record)
        else:
            refused.append(record)
    return kept, refused


def superseded(
    bootstrap_servers: str,
    records: list[Parked],
    extra: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> tuple[list[Parked], list[Parked]]:
    """The records worth replaying, and those a newer record of the same key follows in their
    source partition. Such a row's newer change carries its whole state and is (or will be)
    applied, so the replay would write nothing; appended after it, though, the older record
    would be the one compaction keeps for the key, and a later replay of the topic from the
    beginning (a `backfill --into` a new table) would rebuild the older version.

    Reads each source partition concerned from the oldest parked offset to the end seen at the
    start, keeping only the keys of the records asked about."""
    wanted: dict[tuple[str, int], dict[bytes, int]] = {}
    for r in records:
        if r.source_topic and r.source_partition >= 0 and r.source_offset >= 0 and r.key:
            keys = wanted.setdefault((r.source_topic, r.source_partition), {})
            keys[r.key] = min(keys.get(r.key, r.source_offset), r.source_offset)
    newest: dict[tuple[str, int, bytes], int] = {}  # the last offset of each key seen
    consumer = _reader(bootstrap_servers, extra)
    try:
        for (topic, partition), keys in sorted(wanted.items()):
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if (
                metadata is None
                or metadata.error is not None
                or partition not in metadata.partitions
            ):
                continue  # the replay itself refuses a record that cannot go back (replay_targets)
            start = min(keys.values()) + 1
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(start, low)
            if start >= high:
                continue
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + timeout_s
            position = start
            while position < high:
                if time.monotonic() > deadline:
                    raise ReplicatorError(
                        f"replay refused, nothing was replayed: could not read {topic}[{partition}]"
                        f" from offset {start} to {high} within {timeout_s:.0f}s to check for "
                        "newer changes of the parked rows"
                    )
                for message in consumer.consume(500, 0.5):
                    if message.error():
                        continue
                    offset = message.offset() or 0
                    position = max(position, offset + 1)
                    key = message.key()
                    if offset < high and key in keys:
                        newest[(topic, partition, key)] = offset
    except KafkaException as exc:
        raise ReplicatorError(f"replay: cannot read the source topics: {exc}") from exc
    finally:
        consumer.close()
    fresh: list[Parked] = []
    stale: list[Parked] = []
    for r in records:
        later = newest.get((r.source_topic, r.source_partition, r.key or b""), -1)
        (stale if later > r.source_offset else fresh).append(r)
    return fresh, stale


def replay_targets(records: list[Parked], partitions: dict[str, int]) -> list[tuple[str, int]]:
    """Where each record goes back to: its source topic and its original partition
    (``dlq.partition``), given the source topics' partition counts (a topic that no longer
    exists is absent). Pure.

    Connect partitioned the source topics with Java's murmur2 hash of the key; librdkafka's
    default partitioner hashes differently, so a record produced without a partition could land
    beside other rows and away from its own row's newer changes. Anything that cannot go back
    where it came from refuses the whole replay, before anything is produced."""
    targets: list[tuple[str, int]] = []
    problems: list[str] = []
    for record in records:
        topic, partition = record.source_topic, record.source_partition
        if not topic:
            problems.append(f"{record.ref}: no dlq.topic header")
        elif partition < 0:
            problems.append(f"{record.ref}: no dlq.partition header")
        elif topic not in partitions:
            problems.append(f"{record.ref}: topic {topic} no longer exists")
        elif partition >= partitions[topic]:
            problems.append(
                f"{record.ref}: {topic} has no partition {partition} any more "
                f"(it has {partitions[topic]})"
            )
        else:
            targets.append((topic, partition))
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise ReplicatorError(
            f"replay refused, nothing was replayed: {len(problems)} record(s) cannot go back to "
            f"their original partition: {shown}"
        )
    return targets


def replay(
    bootstrap_servers: str, records: list[Parked], extra: dict[str, str] | None = None
) -> int:
    """Produce the original bytes again to their source topics, each to the partition it came
    from, for the consumers to apply now that the cause is fixed. Safe to repeat: the position
    guard drops anything already newer."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            # Asking for a missing topic's metadata must not create it (the producer's default).
            "allow.auto.create.topics": False,
            **connection_settings(extra or {}),
        }
    )
    partitions: dict[str, int] = {}
    try:
        for topic in sorted({r.source_topic for r in records if r.source_topic}):
            metadata = producer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is not None and metadata.error is None:
                partitions[topic] = len(metadata.partitions)
    except KafkaException as exc:
        raise ReplicatorError(f"replay: cannot read the source topics' partitions: {exc}") from exc
    targets = replay_targets(records, partitions)
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    for record, (topic, partition) in zip(records, targets, strict=True):
        producer.produce(
            topic,
            partition=partition,
            key=record.key,
            value=record.value,
            headers=[("dlq.replayed_from", record.ref.encode())],
            on_delivery=delivered,
        )
    remaining = producer.flush(30)
    if remaining or errors:
        raise ReplicatorError(f"replay: {remaining} undelivered, errors {errors[:3]}")
    return len(records)
