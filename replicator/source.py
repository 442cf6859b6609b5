"""The Kafka source: one consumer group over the mapped tables' topics, read in batches."""

from __future__ import annotations

from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from replicator.config import KafkaSettings

log = structlog.get_logger("replicator.source")


class KafkaSource:
    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        group_id: str | None = None,
        client_id: str = "replicator",
    ) -> None:
        self.settings = kafka
        self.consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": group_id or kafka.group_id,
                "client.id": client_id,
                # Offsets move only after the sink acknowledged (see checkpoint.py).
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                # A table's topic appears with its first change: notice it within seconds.
                "topic.metadata.refresh.interval.ms": 5000,
                **kafka.extra,
            }
        )
        self.assigned: set[tuple[str, int]] = set()
        # The group has given this member its assignment (perhaps empty: more members than
        # partitions); false again when the assignment is lost.
        self.joined = False
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.joined = True
        log.info("partitions assigned", partitions=sorted(self.assigned))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.joined = False
        self._on_revoke(consumer, partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned -= {(p.topic, p.partition) for p in partitions}
        log.info("partitions revoked", partitions=[(p.topic, p.partition) for p in partitions])

    def poll(self) -> list[Message]:
        """Up to batch_size records: waits up to poll_timeout_s for the first one, then takes
        only what is already fetched, so a quiet stream is applied at once instead of waiting
        for a full batch. Transport errors are logged (librdkafka retries them)."""
        first = self.consumer.poll(self.settings.poll_timeout_s)
        if first is None:
            return []
        messages = [first]
        if self.settings.batch_size > 1:
            messages += self.consumer.consume(self.settings.batch_size - 1, 0)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                # Normal until a table's first change: Connect creates its topic then.
                log.debug("topic not there yet", error=str(error))
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error", error=str(error))
        return good

    def close(self) -> None:
        self.consumer.close()  # leaves the group at once, so partitions move without waiting
