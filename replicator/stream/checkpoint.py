"""Offsets are committed only after every record before them is applied or dead-lettered."""

from __future__ import annotations

from collections.abc import Iterable

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


class Checkpoint:
    """One consumer's commits, synchronous.

    A commit can be refused while the group rebalances (ILLEGAL_GENERATION,
    REBALANCE_IN_PROGRESS) or while the coordinator is away. The records were applied, so the
    offsets are kept and sent again after each poll for the partitions this consumer still
    holds, until the group takes them. Without that, a partition that receives nothing more
    keeps its old committed offset for good: its lag never reaches zero and a restart re-reads
    what was applied. A revoked partition's kept offset is dropped: its new owner reads from
    the last accepted commit and commits its own progress, which a late commit from here
    would move back."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int], TopicPartition] = {}

    def commit(
        self,
        consumer: Consumer,
        messages: list[Message],
        metadata: dict[tuple[str, int], str] | None = None,
    ) -> bool:
        """Commit a batch's offsets (with any kept from a refused commit)."""
        for tp in next_offsets(messages, metadata):
            self.pending[(tp.topic, tp.partition)] = tp
        if not self.pending:
            return True
        try:
            self._send(consumer)
            return True
        except KafkaException as exc:
            log.warning(
                "offset commit refused; the offsets are kept and sent again after the next "
                "poll, for the partitions this consumer still holds",
                error=str(exc),
            )
            return False

    def retry(self, consumer: Consumer, assigned: set[tuple[str, int]]) -> None:
        """After a poll (rebalance callbacks have run): send the kept offsets again."""
        self.forget(key for key in list(self.pending) if key not in assigned)
        if not self.pending:
            return
        kept = sorted(self.pending)
        try:
            self._send(consumer)
        except KafkaException as exc:
            log.debug("kept offsets refused again", error=str(exc))
            return
        log.info("kept offsets committed", partitions=kept)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        for key in partitions:
            self.pending.pop(key, None)

    def _send(self, consumer: Consumer) -> None:
        offsets = [self.pending[key] for key in sorted(self.pending)]
        consumer.commit(offsets=offsets, asynchronous=False)
        self.pending.clear()
