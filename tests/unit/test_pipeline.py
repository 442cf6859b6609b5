from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from factories import create_record, log_row, update_record
from test_metrics import FakeDynamo, FakeMessage, pipeline

from replicator.errors import LookupUnavailableError, SystemicSinkError

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


class RefusesEverything(FakeDynamo):
    """DynamoDB answers every write with the same refusal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__()
        self.error = {"Error": {"Code": code, "Message": message}}

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.requests += 1
        raise ClientError(self.error, "PutItem")  # type: ignore[arg-type]

    update_item = put_item


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ValidationException", "One or more parameter values were invalid: Missing the key SK"),
        ("ResourceNotFoundException", "Requested resource not found"),
    ],
)
def test_a_systemic_refusal_commits_nothing_parks_nothing_and_is_not_ready(
    code: str, message: str
) -> None:
    p = pipeline(RefusesEverything(code, message))
    p.health.assignment(True, 3)
    p.stopping.set()  # the wait before the next attempt returns at once: the batch gives up
    with pytest.raises(SystemicSinkError):
        p.process([FakeMessage(create_record(LOGS, log_row(logid=5)))])
    assert p.source.consumer.commits == []  # type: ignore[attr-defined]
    assert p.dead_letters.parked == []  # type: ignore[attr-defined]
    ready, body = p.health.ready()
    assert not ready and message in body["reason"]
