from __future__ import annotations

import os
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from factories import create_record, log_row, update_record
from test_metrics import (
    FakeDeadLetters,
    FakeDynamo,
    FakeMessage,
    FakeSource,
    NoLookups,
    RecordingLog,
    pipeline,
)

from replicator.app import pipeline as build
from replicator.config import DynamoSettings, Settings
from replicator.errors import LookupUnavailableError, SinkError, SystemicSinkError
from replicator.stream.pipeline import Pipeline
from replicator.stream.sink import DynamoSink, SinkResult, Write

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


# --- the batch loop retries by the policy, forever ------------------------------------------


class FlakySink:
    """Fails ``failures`` times with ``error``, then writes every write."""

    def __init__(self, failures: int, error: SinkError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def write(self, writes: list[Write]) -> SinkResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return SinkResult(applied=len(writes))

    def commit_metadata(self) -> dict[tuple[str, int], str]:
        return {}

    def close(self) -> None:
        pass


class Waits:
    """The pipeline's wait between attempts: records it and what the probes said, never
    sleeps, never stops."""

    def __init__(self, p: Any) -> None:
        self.p = p
        self.waits: list[float] = []
        self.ready: list[tuple[bool, dict[str, Any]]] = []

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.ready.append(self.p.health.ready())
        return False


def retried(error: SinkError, failures: int) -> tuple[Any, Waits]:
    p = pipeline(FakeDynamo())
    p.sink = FlakySink(failures, error)  # type: ignore[assignment]
    p.health.assignment(True, 1)
    waits = Waits(p)
    p.stopping.wait = waits  # type: ignore[method-assign,assignment]
    p.process([FakeMessage(create_record(LOGS, log_row(logid=5)))])
    return p, waits


def test_transient_failures_back_off_with_full_jitter_up_to_the_cap_and_never_give_up() -> None:
    p, waits = retried(SinkError("DynamoDB unreachable: connection refused"), failures=15)
    assert p.sink.calls == 16
    cap, base = p.settings.dynamodb.backoff_cap_s, p.settings.dynamodb.backoff_base_s
    assert all(0.0 <= w <= min(cap, base * 2**n) for n, w in enumerate(waits.waits))
    assert all(not ready and "unreachable" in body["reason"] for ready, body in waits.ready)
    assert len(p.source.consumer.commits) == 1  # committed once, after the write
    assert p.health.ready()[0]


def test_a_systemic_refusal_is_retried_at_the_cap_until_it_is_fixed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replicator.stream.pipeline

    recording = RecordingLog()
    monkeypatch.setattr(replicator.stream.pipeline, "log", recording)
    refusal = SystemicSinkError("DynamoDB write to IntegrationLogs failed: ResourceNotFound")
    p, waits = retried(refusal, failures=3)
    assert waits.waits == [p.settings.dynamodb.backoff_cap_s] * 3
    assert all(not ready and "ResourceNotFound" in body["reason"] for ready, body in waits.ready)
    assert len(p.source.consumer.commits) == 1  # once the cause is fixed, it goes on by itself
    assert p.health.ready()[0]
    (said,) = {line["event"] for line in recording.lines if line.get("retry_in_s") == 5.0}
    assert "retrying does not fix" in said and "by itself once the cause is fixed" in said


def test_a_lookup_outage_backs_off_by_the_policy() -> None:
    class DownThrice(FlakyLookups):
        def fill(self, mapping: Any, rows: list[dict[str, Any]]) -> None:
            self.calls += 1
            if self.calls <= 3:
                raise LookupUnavailableError("lookup 'customerid': PostgreSQL unreachable")

    p = pipeline(FakeDynamo())
    p.lookups = DownThrice()  # type: ignore[assignment]
    waits = Waits(p)
    p.stopping.wait = waits  # type: ignore[method-assign,assignment]
    p.process([FakeMessage(create_record(LOGS, log_row(logid=5)))])
    base = p.settings.dynamodb.backoff_base_s
    assert len(waits.waits) == 3
    assert all(0.0 <= w <= base * 2**n for n, w in enumerate(waits.waits))
    assert p.stats.applied == 1


def test_build_gives_every_write_and_lookup_path_the_settings_retry_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replicator.app

    monkeypatch.setattr(replicator.app, "ensure_topic", lambda *_a, **_k: None)
    # A unit test: no Kafka to read the topics' limits from (the horizon has tests of its own).
    monkeypatch.setattr(replicator.app, "read_limits", lambda *_a, **_k: {})
    monkeypatch.setattr(replicator.app, "check_horizon", lambda *_a, **_k: None)
    monkeypatch.setattr(replicator.app, "check_shards", lambda *_a, **_k: None)  # no DynamoDB
    monkeypatch.setattr(replicator.app, "DeadLetters", lambda *_a, **_k: FakeDeadLetters())
    # The environment of a stack moved by REPLICATOR_DYNAMODB__* would replace the section.
    for name in [n for n in os.environ if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
    settings = Settings(dynamodb=DynamoSettings(max_attempts=3, backoff_cap_s=7.0))
    p = build(settings, source=FakeSource())  # type: ignore[arg-type]
    try:
        policy = p.retry
        assert (policy.attempts, policy.cap_s) == (3, 7.0)
        assert policy.turned == p.health.turned  # liveness told between attempts
        assert p.sink.retry is policy  # the transaction loop
        assert p.sink.client.retry is policy  # each request
        assert p.lookups.retry is policy
    finally:
        p.sink.close()
