"""A consumer that stays out of its group past kafka.rejoin_timeout_s is closed and made again,
and reads on from the committed offsets: nothing lost, nothing read twice that was committed.

Seen under the fault suite's broker SIGSTOP (scenario 5b): the controller fenced the paused
broker, the group coordinator reloaded, the member's JoinGroup in flight then was never
answered, and librdkafka waits max.poll.interval.ms (5 minutes) for it. That loss cannot be
made on demand, so the test puts the source in the state it leaves: assignment lost, out of
the group for longer than the timeout."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from replicator.config import Settings
from replicator.stream.source import KafkaSource

pytestmark = pytest.mark.stack


def _produce(bootstrap: str, topic: str, values: range) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in values:
        producer.produce(topic, str(n).encode(), key=str(n).encode())
    assert producer.flush(30) == 0


def _read(source: KafkaSource, want: int, timeout_s: float) -> list[Message]:
    """Poll, committing what was read, until ``want`` records came (or the time is up)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batch = source.poll()
        if batch:
            got += batch
            assert source.commit(batch)
    return got


def _values(messages: list[Message]) -> list[int]:
    return sorted(int(m.value() or b"") for m in messages)


def test_a_consumer_out_of_its_group_too_long_is_made_again(stack: Any, settings: Settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    topic = f"test-rejoin-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    kafka = settings.kafka.model_copy(update={"rejoin_timeout_s": 5.0})
    source = KafkaSource(kafka, [topic], f"test-rejoin-{uuid.uuid4().hex[:8]}")
    try:
        _produce(bootstrap, topic, range(10))
        assert _values(_read(source, 10, 60)) == list(range(10))
        assert source.joined and source.rejoins == 0

        # Out of the group, but not yet for long: left alone.
        stuck = source.consumer
        source.joined = False
        source.out_since = time.monotonic()
        source.poll()
        assert source.consumer is stuck and source.rejoins == 0

        # Out for longer than the timeout: made again, and it reads on from the commits.
        source.out_since -= 10
        _produce(bootstrap, topic, range(10, 15))
        recovered = _read(source, 5, 60)
        assert source.rejoins == 1
        assert source.consumer is not stuck
        assert source.joined
        assert _values(recovered) == list(range(10, 15))
    finally:
        source.close()
        admin.delete_topics([topic])[topic].result(timeout=30)
