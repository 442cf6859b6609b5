"""The dead-letter stage: the original record bytes, with the reason and origin in headers."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from replicator.errors import ReplicatorError


class DeadLetters:
    def __init__(
        self, bootstrap_servers: str, topic: str, extra: dict[str, str] | None = None
    ) -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                **(extra or {}),
            }
        )
        self.parked = 0
        self._errors: list[KafkaError] = []

    def park(self, message: Message, reason: str, detail: str) -> None:
        headers = [
            ("dlq.reason", reason.encode()),
            ("dlq.error", detail[:4000].encode()),
            ("dlq.topic", (message.topic() or "").encode()),
            ("dlq.partition", str(message.partition()).encode()),
            ("dlq.offset", str(message.offset()).encode()),
            ("dlq.time_ms", str(int(time.time() * 1000)).encode()),
        ]
        self.producer.produce(
            self.topic,
            key=message.key(),
            value=message.value(),
            headers=headers,
            on_delivery=self._delivered,
        )
        self.parked += 1

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._errors.append(error)

    def flush(self, timeout_s: float = 30) -> None:
        """Block until every parked record is acknowledged; raise if any was not, so the batch
        is not committed."""
        remaining = self.producer.flush(timeout_s)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise ReplicatorError(
                f"dead-letter topic {self.topic}: {remaining} undelivered, errors {errors[:3]}"
            )


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int = 1) -> None:
    """Create the dead-letter topic if missing (kept for a long time: it is evidence)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        if topic in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics(
            [NewTopic(topic, partitions, config={"retention.ms": str(30 * 86_400_000)})]
        )
        futures[topic].result(timeout=30)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        raise ReplicatorError(f"cannot create dead-letter topic {topic}: {exc}") from exc
