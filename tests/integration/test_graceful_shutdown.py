"""SIGTERM in the middle of a stream of changes: the consumer stops fetching, finishes the batch
in hand, commits, leaves its group and exits 0 well within a pod's grace period. What it
committed is exactly what it applied: replaying the committed records (and nothing after them)
through the same decode and mapping gives DynamoDB's state, item for item."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.core.decode import decode
from replicator.core.events import Op, Origin, Position, Skip
from replicator.core.items import DELETED, POS
from replicator.errors import DecodeError, MappingError
from replicator.ops.workload import Workload
from replicator.stream.lookup import Lookups
from replicator.stream.pipeline import to_change
from tests.integration.helpers import key_text, live_count, wait_for

pytestmark = pytest.mark.stack

# Half the 60 s terminationGracePeriodSeconds of deploy/k8s/base/deployment.yaml.
EXIT_BOUND_S = 30.0


@dataclass
class Slot:
    """What one DynamoDB key holds: the guard position, a delete marker or a live item, and
    the source row that put it there."""

    pos: Position
    deleted: bool
    row: tuple[str, tuple[tuple[str, Any], ...]]


def test_sigterm_mid_stream_commits_exactly_what_was_applied_and_leaves_the_group(
    consumer_factory: Any, settings: Settings, dynamodb: Any
) -> None:
    dead_letter_topic = f"replicator.dead-letter.test-term-{uuid.uuid4().hex[:8]}"

    def change(data: dict[str, Any]) -> None:
        # Its own dead-letter topic, so the test knows which records were parked; a long
        # session timeout, so a member that did not leave the group would still be listed.
        data["kafka"]["dead_letter_topic"] = dead_letter_topic
        data["kafka"]["extra"] = {"session.timeout.ms": "45000", "heartbeat.interval.ms": "3000"}

    consumer, own = consumer_factory("_term", change)
    group = own.kafka.group_id
    bootstrap = own.kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [own.topic_of(m) for m in own.tables]

    # Start the group at the current end of the topics: the test covers what it writes, not
    # the shared history of the stack.
    start = _end_offsets(bootstrap, topics)
    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for (t, p), o in start])]
    )[group].result(timeout=30)

    try:
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            setup = Workload(conn, seed=81, key_move_share=0.1)
            setup.ensure_loans(30)
            # A backlog, so that the first batches are full and SIGTERM lands while one is
            # being written; then a stream that goes on after the consumer stopped.
            for _ in range(250):
                setup.step()
            stream = Stream(settings.postgres.dsn(), setup.loans)
            consumer.start()
            writer = threading.Thread(target=stream.run, daemon=True)
            writer.start()
            logs = own.tables[0].name
            wait_for(
                lambda: live_count(dynamodb, logs) > 20,
                90,
                what="consumer applying changes",
            )
            assert writer.is_alive(), "the stream ended before SIGTERM: not mid-stream"
            assert consumer.proc is not None
            consumer.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            returncode = consumer.proc.wait(EXIT_BOUND_S + 30)
            took = time.monotonic() - sent
            members = _members(admin, group)
            time.sleep(1.0)  # the stream goes on past the consumer's last commit
            stream.stop.set()
            writer.join(60)
            assert not writer.is_alive(), "the workload did not stop"

        assert returncode == 0, f"consumer exited {returncode}; see {consumer.log}"
        assert took < EXIT_BOUND_S, f"consumer took {took:.1f}s to stop after SIGTERM"
        assert members == [], f"members still in group {group} after exit: {members}"

        committed = _committed(admin, group)
        end = dict(_end_offsets(bootstrap, topics))
        assert set(committed) == set(end)
        assert any(committed[tp] > o for tp, o in start), "nothing was committed"
        # Mid-stream: records the consumer never reached exist after its last commit.
        assert any(end[tp] > committed[tp] for tp in end), "the consumer reached the stream's end"

        parked = _parked(bootstrap, dead_letter_topic)
        records = _read(bootstrap, dict(start), committed)
        expected, positions = _replay(own, records, parked)
        actual = _stored(dynamodb, own)

        assert actual.keys() == expected.keys(), (
            f"{len(actual.keys() - expected.keys())} keys applied but not committed, "
            f"{len(expected.keys() - actual.keys())} committed but not applied"
        )
        for key, want in expected.items():
            got = actual[key]
            assert got.deleted == want.deleted, key
            if want.deleted:
                # A row that left a key twice in one batch marks it with the batch's last
                # position: later than the record-by-record replay, never later than committed.
                assert want.pos <= got.pos <= max(positions[want.row]), key
            else:
                assert got.pos == want.pos, key
    finally:
        admin.delete_topics([dead_letter_topic])


class Stream:
    """The sample workload as a steady stream of small transactions, from a thread, until
    stopped."""

    def __init__(self, dsn: str, loans: list[int]) -> None:
        self.dsn = dsn
        self.loans = loans
        self.stop = threading.Event()
        self.steps = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # Few key moves: each is a transaction, slow on the local endpoint.
            writer = Workload(conn, seed=82, key_move_share=0.1)
            writer.loans = self.loans
            while not self.stop.is_set() and self.steps < 5000:
                writer.step()
                self.steps += 1
                time.sleep(0.01)


def _end_offsets(bootstrap: str, topics: list[str]) -> list[tuple[tuple[str, int], int]]:
    probe = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        metadata = probe.list_topics(timeout=10)
        return [
            ((topic, p), probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for topic in topics
            for p in sorted(metadata.topics[topic].partitions)
        ]
    finally:
        probe.close()


def _members(admin: AdminClient, group: str) -> list[str]:
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return [m.member_id for m in description.members]


def _committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    offsets = result[group].result(timeout=30).topic_partitions
    return {(tp.topic, tp.partition): tp.offset for tp in offsets}


def _read(
    bootstrap: str, start: dict[tuple[str, int], int], stop: dict[tuple[str, int], int]
) -> list[Any]:
    """Every record from start up to (not including) stop, per partition, in order."""
    wanted = {tp: o for tp, o in stop.items() if o > start.get(tp, 0)}
    if not wanted:
        return []
    reader = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(t, p, start.get((t, p), 0)) for t, p in wanted])
    records: list[Any] = []
    deadline = time.monotonic() + 60
    position = dict(start)
    try:
        while any(position.get(tp, 0) < o for tp, o in wanted.items()):
            assert time.monotonic() < deadline, f"could not read up to {wanted}: at {position}"
            for message in reader.consume(500, 1.0):
                if message.error():
                    continue
                tp = (message.topic(), message.partition())
                position[tp] = message.offset() + 1
                if message.offset() < wanted[tp]:
                    records.append(message)
    finally:
        reader.close()
    return records


def _parked(bootstrap: str, topic: str) -> set[tuple[str, int, int]]:
    """Origins of the records the consumer dead-lettered."""
    ends = dict(_end_offsets(bootstrap, [topic]))
    parked = set()
    for message in _read(bootstrap, {}, ends):
        headers = {k: v.decode() for k, v in message.headers() or []}
        origin = (headers["dlq.topic"], int(headers["dlq.partition"]), int(headers["dlq.offset"]))
        parked.add(origin)
    return parked


def _replay(
    own: Settings, records: list[Any], parked: set[tuple[str, int, int]]
) -> tuple[dict[str, Slot], dict[Any, list[Position]]]:
    """DynamoDB's state if exactly these records were applied one by one under the guard."""
    by_topic = {own.topic_of(m): m for m in own.tables}
    state: dict[str, Slot] = {}
    positions: dict[Any, list[Position]] = {}
    lookups = Lookups(own.postgres.dsn())

    def put(mapping: Any, key: Any, pos: Position, deleted: bool, row: Any) -> None:
        name = f"{mapping.name}|{key_text(mapping, key)}"
        if name not in state or state[name].pos < pos:
            state[name] = Slot(pos, deleted, row)

    try:
        for message in records:
            origin = Origin(message.topic(), message.partition(), message.offset())
            mapping = by_topic[origin.topic]
            try:
                event = decode(message.key(), message.value(), origin)
                if isinstance(event, Skip):
                    continue
                lookups.fill(mapping, [r for r in (event.row, event.before) if r])
                change = to_change(mapping, event)
            except (DecodeError, MappingError):
                assert (origin.topic, origin.partition, origin.offset) in parked, origin
                continue
            if (origin.topic, origin.partition, origin.offset) in parked:
                continue
            row = (mapping.name, tuple(sorted(event.key.items())))
            positions.setdefault(row, []).append(event.position)
            if event.op is Op.DELETE:
                put(mapping, change.key, event.position, True, row)
                continue
            put(mapping, change.key, event.position, False, row)
            if change.old_key is not None:
                put(mapping, change.old_key, event.position, True, row)
    finally:
        lookups.close()
    return state, positions


def _stored(client: Any, own: Settings) -> dict[str, Slot]:
    stored: dict[str, Slot] = {}
    for mapping in own.tables:
        pages = client.get_paginator("scan").paginate(TableName=mapping.name, ConsistentRead=True)
        for page in pages:
            for item in page["Items"]:
                name = f"{mapping.name}|{key_text(mapping, item)}"
                deleted = bool(item.get(DELETED, {}).get("BOOL"))
                stored[name] = Slot(Position.decode(item[POS]["S"]), deleted, (mapping.name, ()))
    return stored
