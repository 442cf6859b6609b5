"""The dead-letter stage: the original record bytes, with the reason and origin in headers."""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from replicator.config import KafkaSettings
from replicator.errors import ReplicatorError

log = structlog.get_logger("replicator.stream.deadletter")

# The part of kafka.extra that every client needs to reach the brokers (TLS, SASL); the rest
# (session timeouts and the like) is the consumer's own.
_CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.")
# The connector sends change events up to 16 MiB (connectors/postgres-source.json); a parked
# event carries them whole plus its headers, so the topic and producer allow a little more. A
# parking that Kafka refused would hold the batch (and the partition) forever.
MAX_PARKED_BYTES = 17 * 1024 * 1024


def connection_settings(extra: dict[str, str]) -> dict[str, str]:
    """The librdkafka settings of ``extra`` that the producer and admin client need too."""
    return {k: v for k, v in extra.items() if k.startswith(_CONNECTION_PREFIXES)}


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
                "message.max.bytes": MAX_PARKED_BYTES,
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


def dead_letter_topic_config(kafka: KafkaSettings) -> dict[str, str]:
    """The dead-letter topic's configs when the replicator creates it: kept for a long time (it
    is evidence), but not beyond the delete markers' life (replicator.stream.horizon checks
    that)."""
    return {
        "retention.ms": str(kafka.dead_letter_retention_ms),
        "max.message.bytes": str(MAX_PARKED_BYTES),
    }


def ensure_topic(
    kafka: KafkaSettings,
    partitions: int = 1,
    extra: dict[str, str] | None = None,
) -> None:
    """Create the dead-letter topic if missing."""
    topic = kafka.dead_letter_topic
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **(extra or {})})
    try:
        if topic in admin.list_topics(timeout=10).topics:
            _check_size_limit(admin, topic)
            return
        futures = admin.create_topics(
            [NewTopic(topic, partitions, config=dead_letter_topic_config(kafka))]
        )
        futures[topic].result(timeout=30)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        raise ReplicatorError(f"cannot create dead-letter topic {topic}: {exc}") from exc


def _check_size_limit(admin: AdminClient, topic: str) -> None:
    """A topic made before the limit was raised (or by hand) may refuse large events: say so at
    start rather than stall on the first one."""
    resource = ConfigResource("topic", topic)
    try:
        configs = admin.describe_configs([resource])[resource].result(timeout=10)
    except KafkaException as exc:  # no DescribeConfigs permission: only the check is lost
        log.info("dead-letter topic limits not readable", topic=topic, error=str(exc))
        return
    entry = configs.get("max.message.bytes")
    if entry is not None and entry.value is not None and int(entry.value) < MAX_PARKED_BYTES:
        log.warning(
            "dead-letter topic takes smaller events than the connector sends; parking a larger "
            "one would stall its partition until the topic's max.message.bytes is raised",
            topic=topic,
            max_message_bytes=int(entry.value),
            wanted=MAX_PARKED_BYTES,
        )
