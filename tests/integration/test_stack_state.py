"""The local DynamoDB endpoint keeps its state across a restart, and a fresh endpoint over a
Kafka that kept its data gets the replica rebuilt instead of silently staying empty."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.ops.tables import ensure_table
from replicator.stack import LocalStack
from replicator.stream.deadletter import ensure_topic

pytestmark = pytest.mark.stack


def _restart_endpoint(stack: LocalStack, before_start: Any = None) -> list[str]:
    """Stop only the DynamoDB endpoint, then `up` again; returns what `up` said."""
    said: list[str] = []
    stack._stop_recorded("dynamodb")
    if before_start is not None:
        before_start()
    own = LocalStack(stack.s, say=said.append)
    own.up()
    return said


@pytest.fixture
def saved_state(stack: LocalStack) -> Iterator[Path]:
    """Moves the endpoint's state aside for the test and puts it back afterwards, so the
    session's other tables survive."""
    aside = stack.dynamodb_state.with_name(f"kept-{uuid.uuid4().hex[:8]}.db")
    yield aside
    stack._stop_recorded("dynamodb")
    if aside.exists():
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{stack.dynamodb_state}{suffix}").unlink()
            with contextlib.suppress(FileNotFoundError):
                shutil.move(f"{aside}{suffix}", f"{stack.dynamodb_state}{suffix}")
    LocalStack(stack.s).up()


def test_items_survive_a_restart_of_the_endpoint(
    stack: LocalStack, settings: Settings, dynamodb: Any
) -> None:
    mapping = settings.tables[0].model_copy(update={"name": f"Durable{uuid.uuid4().hex[:6]}"})
    ensure_table(dynamodb, mapping)
    key = {"PK": {"S": "svc-2024-01-15"}, "SK": {"S": "2024-01-15T00:00:00.000000Z#1"}}
    dynamodb.put_item(TableName=mapping.name, Item={**key, "LogType": {"S": "kept"}})
    _restart_endpoint(stack)
    found = dynamodb.get_item(TableName=mapping.name, Key=key, ConsistentRead=True)
    assert found["Item"]["LogType"] == {"S": "kept"}
    dynamodb.delete_table(TableName=mapping.name)


def test_a_fresh_endpoint_over_kept_kafka_data_rebuilds_the_replica(
    stack: LocalStack, settings: Settings, dynamodb: Any, saved_state: Path
) -> None:
    """Offsets of the live group say "applied" for records the new endpoint never saw: `up`
    must create the tables and forget those offsets, and say so."""
    topic = settings.kafka.dead_letter_topic  # any existing topic holds a committed offset
    ensure_topic(settings.kafka)
    group = settings.kafka.group_id
    committer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group})
    committer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    committer.close()

    def move_state_aside() -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                shutil.move(f"{stack.dynamodb_state}{suffix}", f"{saved_state}{suffix}")

    said = _restart_endpoint(stack, move_state_aside)
    assert any("reset the consumer groups" in line and group in line for line in said), said
    for mapping in settings.tables:
        table = dynamodb.describe_table(TableName=mapping.name)["Table"]
        assert table["TableStatus"] == "ACTIVE"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    listed = admin.list_consumer_groups().result(timeout=10).valid
    assert group not in {g.group_id for g in listed}
