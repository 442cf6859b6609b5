"""A commit the group refused is sent again after the next polls, for the partitions this
consumer still holds; a partition the rebalance moved away keeps its new owner's commits.

Seen in the fault suite's rebalance storm: a member's last commit was refused while the group
rebalanced (ILLEGAL_GENERATION), it kept its partitions, nothing more arrived on them, and
their committed offsets stayed behind what was applied for good (lag never back to zero, a
restart re-reads). The refusal comes from a race of the member's commit with the group's next
generation, which cannot be made on demand: here the group refuses through a wrapper of the
consumer until the test lets it accept. The rebalance and the commits are Kafka's own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from replicator.config import Settings
from replicator.stream.source import KafkaSource

pytestmark = pytest.mark.stack


class RefusingGroup:
    """The real consumer, whose commits are refused while ``refuse`` is set."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.refuse = True
        self.refused = 0

    def commit(self, **kwargs: Any) -> Any:
        if self.refuse:
            self.refused += 1
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        return self.consumer.commit(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def _produce(bootstrap: str, topic: str, per_partition: int, start: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in (0, 1):
        for n in range(start, start + per_partition):
            producer.produce(topic, f"{partition}:{n}".encode(), partition=partition)
    assert producer.flush(30) == 0


def _collect(source: KafkaSource, n: int, timeout_s: float) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += source.poll()
    assert len(got) == n, f"read {len(got)} of {n} records"
    return got


def _poll_until(
    sources: list[KafkaSource], done: Callable[[], bool], timeout_s: float
) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        for source in sources:
            batch = source.poll()
            got += batch
            if batch and source is not sources[0]:
                assert source.commit(batch)
    assert done(), "the condition was not reached in time"
    return got


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = probe.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    finally:
        probe.close()
    return {tp.partition: tp.offset for tp in found}


def test_a_refused_commit_reaches_the_group_and_a_moved_partition_keeps_its_owner_s(
    stack: Any, settings: Settings
) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    topic = f"test-commits-{uuid.uuid4().hex[:8]}"
    group = f"test-commits-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    kafka = settings.kafka.model_copy(update={"poll_timeout_s": 0.5})
    first = KafkaSource(kafka, [topic], group, client_id="first")
    second: KafkaSource | None = None
    try:
        # 1. A refused commit, then nothing more arrives: the kept offsets are sent again.
        _produce(bootstrap, topic, 5, start=0)
        batch = _collect(first, 10, 60)
        group_side = RefusingGroup(first.consumer)
        first.consumer = group_side  # type: ignore[assignment]
        assert not first.commit(batch)
        first.poll()
        assert _committed(bootstrap, group, topic) == {0: -1001, 1: -1001}  # still refused
        group_side.refuse = False
        first.poll()
        assert _committed(bootstrap, group, topic) == {0: 5, 1: 5}

        # 2. Refused again, and a second member takes one partition before the group accepts:
        # its kept offset is dropped, the new owner re-reads from 5 and commits its own.
        _produce(bootstrap, topic, 5, start=5)
        batch = _collect(first, 10, 60)
        group_side.refuse = True
        assert not first.commit(batch)
        second = KafkaSource(kafka, [topic], group, client_id="second")
        reread = _poll_until(
            [first, second], lambda: len(first.assigned) == 1 and len(second.assigned) == 1, 90
        )
        (moved,) = second.assigned
        (kept,) = first.assigned
        assert first.checkpoint.pending.keys() == {kept}
        group_side.refuse = False
        reread += _poll_until(
            [first, second],
            lambda: _committed(bootstrap, group, topic) == {0: 10, 1: 10},
            60,
        )
        assert sorted(m.value() or b"" for m in reread) == sorted(
            f"{moved[1]}:{n}".encode() for n in range(5, 10)
        ), "the new owner re-reads the moved partition from the last accepted commit"
    finally:
        first.close()
        if second is not None:
            second.close()
        admin.delete_topics([topic])[topic].result(timeout=30)
