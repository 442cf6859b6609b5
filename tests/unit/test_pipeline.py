from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError
from factories import create_record, log_row, update_record
from test_metrics import FakeDeadLetters, FakeDynamo, FakeMessage, FakeSource, NoLookups, pipeline

from replicator.config import Settings
from replicator.errors import LookupUnavailableError
from replicator.pipeline import Pipeline
from replicator.sink import DynamoSink

LOGS = "dbo.integrationlogs"


class RefusesTransactions(FakeDynamo):
    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        raise ClientError(
            {"Error": {"Code": "ValidationException", "Message": "too big"}}, "TransactWriteItems"
        )


def test_a_refused_key_move_parks_each_of_its_events_once() -> None:
    row = log_row(logid=7)
    moved = {**row, "servicename": "SmsService"}
    records = [create_record(LOGS, row), update_record(LOGS, row, moved)]
    p = pipeline(RefusesTransactions())
    p.process([FakeMessage(r) for r in records])
    parked = [(m.offset(), reason) for m, reason, _ in p.dead_letters.parked]  # type: ignore[attr-defined]
    assert parked == [(records[0].offset, "write-refused"), (records[1].offset, "write-refused")]
    assert p.stats.dead_lettered == 2


class FlakyLookups:
    """The lookup database is down for the first call, then answers."""

    def __init__(self) -> None:
        self.calls = 0

    def fill(self, mapping: Any, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise LookupUnavailableError("lookup 'customerid': PostgreSQL unreachable")

    def close(self) -> None:
        pass


def test_a_lookup_outage_waits_and_dead_letters_nothing() -> None:
    p = pipeline(FakeDynamo())
    p.lookups = FlakyLookups()  # type: ignore[assignment]
    p.process([FakeMessage(create_record(LOGS, log_row(logid=5)))])
    assert p.lookups.calls == 2  # type: ignore[attr-defined]
    assert p.dead_letters.parked == []  # type: ignore[attr-defined]
    assert p.stats.applied == 1


# --- the no-resurrection horizon ------------------------------------------------------------

DAY_MS = 86_400_000


def _aged(logid: int, age_days: float) -> FakeMessage:
    now_ms = int(time.time() * 1000)
    return FakeMessage(
        create_record(LOGS, log_row(logid=logid), ts_ms=now_ms - int(age_days * DAY_MS))
    )


def _replaying_pipeline(client: FakeDynamo, refuse: bool) -> Pipeline:
    return Pipeline(
        Settings(),
        FakeSource(),  # type: ignore[arg-type]
        DynamoSink(client, concurrency=2),
        NoLookups(),  # type: ignore[arg-type]
        FakeDeadLetters(),  # type: ignore[arg-type]
        refuse_older_than_horizon=refuse,
    )


def test_a_replay_into_the_live_table_refuses_events_older_than_the_horizon() -> None:
    # The row may have been deleted long ago and its marker expired: such an event would
    # bring it back. It is counted and committed past, never written nor dead-lettered.
    horizon = Settings().tables[0].tombstone_days
    client = FakeDynamo()
    p = _replaying_pipeline(client, refuse=True)
    old, recent = _aged(8, horizon + 1), _aged(9, horizon - 1)
    p.process([old, recent])
    assert client.requests == 1
    assert (p.stats.refused, p.stats.applied, p.stats.dead_lettered) == (1, 1, 0)
    assert p.dead_letters.parked == []  # type: ignore[attr-defined]
    assert p.source.consumer.commits  # type: ignore[attr-defined]


def test_the_live_consumer_refuses_nothing_for_age() -> None:
    # In partition order a row's delete comes after its older changes: nothing to refuse.
    client = FakeDynamo()
    p = _replaying_pipeline(client, refuse=False)
    p.process([_aged(8, 400)])
    assert client.requests == 1 and p.stats.refused == 0 and p.stats.applied == 1
