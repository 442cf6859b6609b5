"""A refused commit is kept and sent again for the partitions still held (stream.checkpoint).

Seen in the fault suite's rebalance storm: a member's last commit was refused while the group
rebalanced (ILLEGAL_GENERATION), it kept the partitions, nothing more arrived on them, and
their committed offsets stayed behind what was applied for good."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from replicator.stream.checkpoint import Checkpoint

LOGS, PAYMENTS = "loans.dbo.integrationlogs", "loans.dbo.payments"


class Record:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


class Group:
    """A consumer whose first ``refusals`` commits the group refuses."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.committed: dict[tuple[str, int], TopicPartition] = {}
        self.calls = 0

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        assert not asynchronous
        self.calls += 1
        if self.refusals:
            self.refusals -= 1
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp
        return offsets

    def offsets(self) -> dict[tuple[str, int], int]:
        return {key: tp.offset for key, tp in self.committed.items()}


BATCH = [Record(LOGS, 0, 10), Record(LOGS, 0, 11), Record(PAYMENTS, 1, 4)]
HELD = {(LOGS, 0), (PAYMENTS, 1)}


def test_a_refused_commit_is_sent_again_once_the_group_takes_it() -> None:
    group, checkpoint = Group(refusals=2), Checkpoint()
    assert not checkpoint.commit(group, BATCH)  # type: ignore[arg-type]
    checkpoint.retry(group, HELD)  # type: ignore[arg-type]  # still rebalancing: refused again
    assert group.offsets() == {} and checkpoint.pending
    checkpoint.retry(group, HELD)  # type: ignore[arg-type]
    assert group.offsets() == {(LOGS, 0): 12, (PAYMENTS, 1): 5}
    assert not checkpoint.pending
    calls = group.calls
    checkpoint.retry(group, HELD)  # type: ignore[arg-type]  # nothing kept: no request
    assert group.calls == calls


def test_a_revoked_partition_s_kept_offset_is_dropped() -> None:
    """Its new owner commits its own progress; a late commit from here would move it back."""
    group, checkpoint = Group(refusals=1), Checkpoint()
    assert not checkpoint.commit(group, BATCH)  # type: ignore[arg-type]
    checkpoint.forget([(PAYMENTS, 1)])  # revoked in the rebalance
    checkpoint.retry(group, {(LOGS, 0)})  # type: ignore[arg-type]
    assert group.offsets() == {(LOGS, 0): 12}


def test_a_partition_no_longer_held_at_the_retry_is_not_committed() -> None:
    group, checkpoint = Group(refusals=1), Checkpoint()
    assert not checkpoint.commit(group, BATCH)  # type: ignore[arg-type]
    checkpoint.retry(group, {(PAYMENTS, 1)})  # type: ignore[arg-type]
    assert group.offsets() == {(PAYMENTS, 1): 5}
    assert not checkpoint.pending


def test_the_next_batch_carries_the_kept_offsets_and_supersedes_its_own_partitions() -> None:
    group, checkpoint = Group(refusals=1), Checkpoint()
    meta = {(LOGS, 0): "pos-a", (PAYMENTS, 1): "pos-b"}
    assert not checkpoint.commit(group, BATCH, meta)  # type: ignore[arg-type]
    assert checkpoint.commit(group, [Record(LOGS, 0, 12)], {(LOGS, 0): "pos-c"})  # type: ignore[arg-type]
    assert group.offsets() == {(LOGS, 0): 13, (PAYMENTS, 1): 5}
    assert group.committed[(PAYMENTS, 1)].metadata == "pos-b"  # the batch lane's position
    assert group.committed[(LOGS, 0)].metadata == "pos-c"
