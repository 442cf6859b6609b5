"""Offsets are committed only after every record before them is applied or dead-lettered."""

from __future__ import annotations

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

log = structlog.get_logger("replicator.stream.checkpoint")


def next_offsets(
    messages: list[Message], metadata: dict[tuple[str, int], str] | None = None
) -> list[TopicPartition]:
    """Per partition, the offset after the last record of the batch, with that partition's
    ``metadata`` if given (the batch lane's newest written position)."""
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        last[key] = max(last.get(key, -1), message.offset())
    if not metadata:
        return [
            TopicPartition(topic, partition, offset + 1)
            for (topic, partition), offset in sorted(last.items())
        ]
    return [
        TopicPartition(topic, partition, offset + 1, metadata.get((topic, partition)))
        for (topic, partition), offset in sorted(last.items())
    ]


def commit(
    consumer: Consumer,
    messages: list[Message],
    metadata: dict[tuple[str, int], str] | None = None,
) -> bool:
    """Commit synchronously. A commit refused because the partitions moved to another member
    is not an error: that member re-reads the records, and the position guard makes it safe."""
    offsets = next_offsets(messages, metadata)
    if not offsets:
        return True
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
        return True
    except KafkaException as exc:
        log.warning("offset commit refused; records will be re-read", error=str(exc))
        return False
