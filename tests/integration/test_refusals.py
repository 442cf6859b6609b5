"""Refusals of the real DynamoDB endpoint, on both of the sink's clients: an item it cannot store
parks (alone, or with its whole key move), a write to a missing table stops the batch and
commits nothing."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from replicator.config import Settings, default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.core.mapping import TableMapping
from replicator.errors import SystemicSinkError
from replicator.observe.probes import Health
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo import dynamodb_writer
from replicator.stream.pipeline import Pipeline, to_change
from replicator.stream.sink import DynamoSink, Write, plan
from tests.integration.helpers import get_item
from tests.unit.factories import (
    FakeDeadLetters,
    FakeMessage,
    NoLookups,
    Record,
    create_record,
    log_row,
    update_record,
)

pytestmark = pytest.mark.stack

LOGS = "dbo.integrationlogs"
CLIENTS = ["wire", "boto3"]


def logs_mapping(name: str) -> TableMapping:
    (mapping,) = [m for m in default_tables() if m.source == LOGS]
    return mapping.model_copy(update={"name": name})


@pytest.fixture(scope="module")
def logs(dynamodb: Any) -> Iterator[TableMapping]:
    mapping = logs_mapping(f"IntegrationLogs_refusals{uuid.uuid4().hex[:6]}")
    ensure_table(dynamodb, mapping)
    try:
        yield mapping
    finally:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=mapping.name)


def sink(settings: Settings, kind: str) -> DynamoSink:
    dynamo = settings.dynamodb.model_copy(update={"client": kind})
    return DynamoSink(dynamodb_writer(dynamo, 4), concurrency=4)


def writes(mapping: TableMapping, *records: Record) -> list[Write]:
    changes = []
    for rec in records:
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        changes.append(to_change(mapping, event))
    return plan(changes)


def oversize(write: Write) -> Write:
    """The same write with a text DynamoDB cannot store: random, so it does not compress
    either (the mapping would have gzipped a real row's text to fit)."""
    assert write.item is not None
    big = base64.b64encode(os.urandom(450_000)).decode()
    return dataclasses.replace(write, item={**write.item, "RequestData": {"S": big}})


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_item_dynamodb_cannot_store_parks_and_the_rest_is_written(
    settings: Settings, dynamodb: Any, logs: TableMapping, kind: str
) -> None:
    base = 1000 if kind == "wire" else 2000
    fine, refused = writes(
        logs,
        create_record(LOGS, log_row(logid=base + 1)),
        create_record(LOGS, log_row(logid=base + 2)),
    )
    writer = sink(settings, kind)
    try:
        result = writer.write([fine, oversize(refused)])
    finally:
        writer.close()
    assert result.applied == 1
    assert [w.key for w, _ in result.failed] == [refused.key]
    assert "ValidationException" in result.failed[0][1]
    assert get_item(dynamodb, logs.name, fine.key) is not None
    assert get_item(dynamodb, logs.name, refused.key) is None


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_key_move_whose_new_item_is_refused_is_parked_whole(
    settings: Settings, dynamodb: Any, logs: TableMapping, kind: str
) -> None:
    row = log_row(logid=3000 if kind == "wire" else 4000)
    (stored,) = writes(logs, create_record(LOGS, row))
    put, marker = writes(logs, update_record(LOGS, row, {**row, "servicename": "EmailService"}))
    assert marker.key == stored.key and marker.item is None
    writer = sink(settings, kind)
    try:
        assert writer.write([stored]).applied == 1
        result = writer.write([oversize(put), marker])
    finally:
        writer.close()
    assert (result.applied, result.stale) == (0, 0)
    assert [w.key for w, _ in result.failed] == [put.key, marker.key]
    # Nothing of the move applied: the row is still whole at its old key, no marker there.
    before = get_item(dynamodb, logs.name, stored.key)
    assert before is not None and "_deleted" not in before
    assert get_item(dynamodb, logs.name, put.key) is None


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_write_to_a_missing_table_stops_the_batch(settings: Settings, kind: str) -> None:
    missing = logs_mapping(f"IntegrationLogs_missing{uuid.uuid4().hex[:6]}")
    writer = sink(settings, kind)
    try:
        with pytest.raises(SystemicSinkError) as caught:
            writer.write(writes(missing, create_record(LOGS, log_row(logid=5000))))
    finally:
        writer.close()
    assert "ResourceNotFoundException" in str(caught.value)


# --- the whole pipeline, Kafka faked ------------------------------------------------------------


class Commits:
    def __init__(self) -> None:
        self.commits: list[Any] = []

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append(offsets)


class Source:
    def __init__(self) -> None:
        self.consumer = Commits()
        self.assigned: set[tuple[str, int]] = set()
        self.joined = True


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_batch_for_a_missing_table_commits_nothing_and_is_not_ready(
    settings: Settings, kind: str
) -> None:
    missing = logs_mapping(f"IntegrationLogs_missing{uuid.uuid4().hex[:6]}")
    own = settings.model_copy(update={"tables": [missing]})
    health = Health()
    health.assignment(True, 1)
    source, dead_letters = Source(), FakeDeadLetters()
    p = Pipeline(own, source, sink(own, kind), NoLookups(), dead_letters, health=health)  # type: ignore[arg-type]
    p.stopping.set()  # the wait before the next attempt returns at once: the batch gives up
    try:
        with pytest.raises(SystemicSinkError):
            p.process([FakeMessage(create_record(LOGS, log_row(logid=6000)))])  # type: ignore[list-item]
    finally:
        p.sink.close()
    assert source.consumer.commits == []
    assert dead_letters.parked == []
    ready, body = health.ready()
    assert not ready and "ResourceNotFoundException" in body["reason"]
