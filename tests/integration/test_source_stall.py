"""A consumer that keeps its assignment but fetches nothing while its partitions have records
to read is closed and made again, and reads on from the committed offsets: nothing lost,
nothing skipped. Seen under the fault suite's broker SIGSTOP (scenario 5b): the group took the
partitions away and gave them back, and the client never fetched them again. Here the stall is
made with ``pause()``, which leaves the client exactly so: assigned, behind, fetching nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from replicator.config import Settings
from replicator.stream import checkpoint
from replicator.stream.source import KafkaSource

pytestmark = pytest.mark.stack

STALL_AFTER_S = 2.0


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
            assert checkpoint.commit(source.consumer, batch)
    return got


def _values(messages: list[Message]) -> list[int]:
    return sorted(int(m.value() or b"") for m in messages)


def test_a_consumer_that_stops_fetching_is_made_again(stack: Any, settings: Settings) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    topic = f"test-stall-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    kafka = settings.kafka.model_copy(update={"stall_after_s": STALL_AFTER_S})
    source = KafkaSource(kafka, [topic], f"test-stall-{uuid.uuid4().hex[:8]}")
    try:
        _produce(bootstrap, topic, range(10))
        assert _values(_read(source, 10, 60)) == list(range(10))
        assert source.stalls == 0

        # A quiet stream is no stall: nothing to read, however long nothing comes.
        assert _read(source, 1, 3 * STALL_AFTER_S) == []
        assert source.stalls == 0

        # The stalled client: assigned, behind, fetching nothing.
        stuck = source.consumer
        stuck.pause(stuck.assignment())
        _produce(bootstrap, topic, range(10, 15))
        recovered = _read(source, 5, 30)
        assert source.stalls == 1
        assert source.consumer is not stuck
        assert _values(recovered) == list(range(10, 15))  # from the committed offsets on

        # The consumer made anew reads on as any other does.
        _produce(bootstrap, topic, range(15, 20))
        assert _values(_read(source, 5, 30)) == list(range(15, 20))
        assert source.stalls == 1
    finally:
        source.close()
        admin.delete_topics([topic])[topic].result(timeout=30)
