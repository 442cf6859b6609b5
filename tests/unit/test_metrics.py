"""Metrics and probes without services: one batch through the real pipeline stages (decode,
map, plan, the sink with a fake DynamoDB client), and the HTTP endpoint on a free local port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter as Tally
from typing import Any

import pytest
from botocore.exceptions import ClientError
from confluent_kafka import TopicPartition
from factories import (
    FakeDeadLetters,
    FakeMessage,
    NoLookups,
    create_record,
    log_row,
    record,
    tombstone,
    update_record,
)
from prometheus_client import Counter

from replicator.config import Settings
from replicator.observe.health import Server
from replicator.observe.metrics import CONNECT_STATES, Metrics, consumer_lag
from replicator.observe.probes import Health
from replicator.stream.checkpoint import Checkpoint
from replicator.stream.pipeline import Pipeline
from replicator.stream.sink import DynamoSink

LOGS = "dbo.integrationlogs"
TABLE = "IntegrationLogs"
# le: a histogram's bucket; state: the connector's and its tasks' (a fixed set of values)
ALLOWED_LABELS = {"table", "topic", "partition", "le", "state"}


class FakeDynamo:
    """Acknowledges every put, except that rows whose logid is in ``stale`` fail the guard."""

    def __init__(self, stale: set[int] = frozenset(), down: bool = False) -> None:  # type: ignore[assignment]
        self.stale = stale
        self.down = down
        self.requests = 0

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.requests += 1
        if self.down:
            raise ClientError(
                {"Error": {"Code": "InternalServerError", "Message": "down"}}, "PutItem"
            )
        sort_key = request["Item"]["SK"]["S"]
        if int(sort_key.rsplit("#", 1)[1]) in self.stale:
            raise ClientError(
                {"Error": {"Code": "ConditionalCheckFailedException", "Message": ""}}, "PutItem"
            )
        return {}

    update_item = put_item


class FakeKafkaConsumer:
    def __init__(self) -> None:
        self.commits: list[Any] = []
        self.watermarks: dict[tuple[str, int], tuple[int, int]] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self.calls = 0

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append(offsets)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        self.calls += 1
        return [
            TopicPartition(p.topic, p.partition, self.positions[(p.topic, p.partition)])
            for p in partitions
        ]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        return [TopicPartition(p.topic, p.partition, -1001) for p in partitions]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        return self.watermarks[(tp.topic, tp.partition)]


class FakeSource:
    def __init__(self) -> None:
        self.consumer = FakeKafkaConsumer()
        self.assigned: set[tuple[str, int]] = set()
        self.joined = False
        self.checkpoint = Checkpoint()

    def commit(self, messages: list[Any], metadata: dict[tuple[str, int], str]) -> bool:
        return self.checkpoint.commit(self.consumer, messages, metadata)  # type: ignore[arg-type]


def pipeline(client: FakeDynamo) -> Pipeline:
    return Pipeline(
        Settings(),
        FakeSource(),  # type: ignore[arg-type]
        DynamoSink(client, concurrency=4),
        NoLookups(),  # type: ignore[arg-type]
        FakeDeadLetters(),  # type: ignore[arg-type]
    )


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def a_batch() -> list[FakeMessage]:
    """Eight records: rows 1-3 inserted, row 4 inserted and updated (one collapsed write),
    a Debezium tombstone (nothing to write) and a record that cannot be decoded."""
    row4 = log_row(logid=4)
    records = [
        create_record(LOGS, log_row(logid=1)),
        create_record(LOGS, log_row(logid=2)),
        create_record(LOGS, log_row(logid=3)),
        create_record(LOGS, row4),
        update_record(LOGS, row4, {**row4, "statuscode": "200"}),
        tombstone(LOGS, {"logid": 1}),
        record(LOGS, b"{not json", b'{"logid": 9}'),
    ]
    return [FakeMessage(r) for r in records]


def test_one_batch_moves_each_counter_by_its_events_per_table() -> None:
    client = FakeDynamo(stale={3})
    p = pipeline(client)
    p.process(a_batch())
    m = p.metrics
    assert value(m, "replicator_events_consumed_total", table=TABLE) == 7
    assert value(m, "replicator_events_skipped_total", table=TABLE) == 1
    assert value(m, "replicator_events_dead_lettered_total", table=TABLE) == 1
    # rows 1, 2 and the two collapsed events of row 4; row 3 failed the guard
    assert value(m, "replicator_events_applied_total", table=TABLE) == 4
    assert value(m, "replicator_events_stale_total", table=TABLE) == 1
    # every consumed event is accounted for exactly once
    assert sum(
        value(m, f"replicator_events_{what}_total", table=TABLE)
        for what in ("applied", "stale", "skipped", "dead_lettered")
    ) == value(m, "replicator_events_consumed_total", table=TABLE)
    # one latency per request (4 writes), end to end for what was stored (3 writes)
    assert value(m, "replicator_write_seconds_count", table=TABLE) == client.requests == 4
    assert value(m, "replicator_end_to_end_seconds_count", table=TABLE) == 3
    assert value(m, "replicator_end_to_end_seconds_sum", table=TABLE) > 0
    assert value(m, "replicator_batch_size_count") == 1
    assert value(m, "replicator_batch_size_sum") == 7
    assert value(m, "replicator_batches_total") == 1

    p.process(a_batch())  # the same records again: now counted twice
    assert value(m, "replicator_events_consumed_total", table=TABLE) == 14
    assert value(m, "replicator_batches_total") == 2


def test_counters_move_once_per_batch_not_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    inc = Counter.inc

    def counting(self: Counter, amount: float = 1, exemplar: Any = None) -> None:
        nonlocal calls
        calls += 1
        inc(self, amount, exemplar)

    monkeypatch.setattr(Counter, "inc", counting)
    p = pipeline(FakeDynamo(stale={3}))
    batch = a_batch() * 1  # 7 events
    p.process(batch)
    # consumed, skipped, dead-lettered, applied, stale (one table) and batches
    assert calls == 6
    calls = 0
    bigger = [FakeMessage(create_record(LOGS, log_row(logid=100 + i))) for i in range(200)]
    p.process(bigger)
    assert calls == 3  # consumed, applied, batches: independent of the 200 events


def test_labels_stay_low_cardinality() -> None:
    p = pipeline(FakeDynamo())
    for partition in range(3):
        rows = [log_row(logid=1000 * partition + i) for i in range(50)]
        p.process(
            [
                FakeMessage(
                    record(
                        LOGS,
                        create_record(LOGS, row).value,
                        {"logid": row["logid"]},
                        partition=partition,
                    )
                )
                for row in rows
            ]
        )
    source = p.source
    source.assigned = {(f"loans.{LOGS}", n) for n in range(3)}  # type: ignore[misc]
    for n in range(3):
        source.consumer.watermarks[(f"loans.{LOGS}", n)] = (0, 100)  # type: ignore[attr-defined]
        source.consumer.positions[(f"loans.{LOGS}", n)] = 60 + n  # type: ignore[attr-defined]
    p.metrics.refresh_lag(source.consumer, source.assigned, every_s=5)
    label_names: set[str] = set()
    label_values: dict[str, set[str]] = {}
    for family in p.metrics.registry.collect():
        for sample in family.samples:
            label_names |= set(sample.labels)
            for name, v in sample.labels.items():
                label_values.setdefault(name, set()).add(v)
    assert label_names <= ALLOWED_LABELS
    assert label_values["table"] == {TABLE}  # 150 rows, 3 partitions: one table label
    assert label_values["partition"] == {"0", "1", "2"}
    assert label_values["topic"] == {f"loans.{LOGS}"}
    assert label_values["state"] <= set(CONNECT_STATES)
    for n in range(3):
        assert value(
            p.metrics, "replicator_consumer_lag", topic=f"loans.{LOGS}", partition=str(n)
        ) == (40 - n)


def test_lag_is_refreshed_at_most_every_interval_and_forgets_revoked_partitions() -> None:
    metrics = Metrics()
    consumer = FakeKafkaConsumer()
    topic = "loans.dbo.payments"
    for n in range(3):
        consumer.watermarks[(topic, n)] = (5, 50)
        consumer.positions[(topic, n)] = 10
    consumer.positions[(topic, 2)] = -1001  # nothing consumed, nothing committed: the earliest
    assigned = {(topic, n) for n in range(3)}
    metrics.refresh_lag(consumer, assigned, every_s=60)
    assert value(metrics, "replicator_consumer_lag", topic=topic, partition="0") == 40
    assert value(metrics, "replicator_consumer_lag", topic=topic, partition="2") == 45
    assert value(metrics, "replicator_assigned_partitions") == 3
    metrics.refresh_lag(consumer, {(topic, 0)}, every_s=60)
    assert consumer.calls == 1  # within the interval: nothing asked
    metrics.refresh_lag(consumer, {(topic, 0)}, every_s=0)
    assert consumer.calls == 2
    assert (
        metrics.registry.get_sample_value(
            "replicator_consumer_lag", {"topic": topic, "partition": "1"}
        )
        is None
    )


def test_a_group_that_starts_at_the_end_is_not_behind_before_its_first_record() -> None:
    """kafka.new_group_starts_at=latest with nothing committed: reading starts at the end, so
    the records before it are not lag (nor, for the source's stall guard, unread records)."""
    consumer = FakeKafkaConsumer()
    topic = "loans.dbo.payments"
    consumer.watermarks[(topic, 0)] = (5, 50)
    consumer.positions[(topic, 0)] = -1001
    assert consumer_lag(consumer, {(topic, 0)}, "latest") == {(topic, 0): 0}
    assert consumer_lag(consumer, {(topic, 0)}, "earliest") == {(topic, 0): 45}
    metrics = Metrics()
    metrics.refresh_lag(consumer, {(topic, 0)}, every_s=0, starts_at="latest")
    assert value(metrics, "replicator_consumer_lag", topic=topic, partition="0") == 0


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def _line(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    info = warning = error = debug = _line


def test_dead_letter_log_lines_carry_the_origin_and_never_the_detail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replicator.stream.pipeline

    recording = RecordingLog()
    monkeypatch.setattr(replicator.stream.pipeline, "log", recording)
    p = pipeline(FakeDynamo())
    secret_value = "card 4111-1111-1111-1111"
    rec = create_record(LOGS, log_row(logid=7))
    assert rec.value is not None
    broken = rec.value.replace(
        b'"processingtimems":null', f'"processingtimems":"{secret_value}"'.encode()
    )
    p.process([FakeMessage(record(LOGS, broken, {"logid": 7}, partition=2, offset=77))])
    parked = p.dead_letters.parked  # type: ignore[attr-defined]
    assert len(parked) == 1 and secret_value in parked[0][2]  # the detail goes to the DLQ
    (line,) = [entry for entry in recording.lines if entry["event"] == "event dead-lettered"]
    assert line["table"] == TABLE
    assert line["topic"] == f"loans.{LOGS}"
    assert (line["partition"], line["offset"]) == (2, 77)
    assert secret_value not in json.dumps(recording.lines)


def test_sink_retry_log_lines_carry_table_topic_partition_and_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import replicator.stream.pipeline

    recording = RecordingLog()
    monkeypatch.setattr(replicator.stream.pipeline, "log", recording)
    p = pipeline(FakeDynamo(down=True))
    p.stopping.wait = lambda _seconds: True  # type: ignore[method-assign,assignment,misc]
    messages = [
        FakeMessage(
            record(
                LOGS,
                create_record(LOGS, log_row(logid=n)).value,
                {"logid": n},
                partition=n % 2,
                offset=10 + n,
            )
        )
        for n in range(4)
    ]
    with pytest.raises(Exception, match="InternalServerError"):
        p.process(messages)
    retries = [entry for entry in recording.lines if entry["event"].startswith("sink failed")]
    assert [(r["table"], r["partition"], r["offset"], r["last_offset"]) for r in retries] == [
        (TABLE, 0, 10, 12),
        (TABLE, 1, 11, 13),
    ]
    assert all(r["topic"] == f"loans.{LOGS}" for r in retries)


# --- the HTTP endpoint ------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_and_metrics_over_http() -> None:
    now = [0.0]
    metrics, health = Metrics(), Health(live_within_s=0.5, clock=lambda: now[0])
    server = Server("127.0.0.1", 0, metrics, health).start()
    try:
        port = server.port
        status, body = get(port, "/healthz")
        assert status == 503 and "not running" in json.loads(body)["reason"]
        health.started()
        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/readyz")
        assert status == 503 and "assignment" in json.loads(body)["reason"]
        health.assignment(joined=True, partitions=0)  # more consumers than partitions: ready
        assert get(port, "/readyz") == (200, json.dumps({"ready": True, "partitions": 0}))
        health.assignment(joined=True, partitions=3)
        health.write_failed("DynamoDB unreachable: connection refused")
        status, body = get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["reason"].startswith("last DynamoDB write failed: DynamoDB")
        assert get(port, "/healthz")[0] == 200  # not ready, still alive
        health.write_ok()
        assert get(port, "/readyz")[0] == 200
        now[0] += 0.6  # the loop has not turned within live_within_s
        status, body = get(port, "/healthz")
        assert status == 503 and "not turned" in json.loads(body)["reason"]
        health.turned()
        assert get(port, "/healthz")[0] == 200

        metrics.batch(Tally({TABLE: 3}), Tally(), Tally())
        status, body = get(port, "/metrics")
        assert status == 200
        assert 'replicator_events_consumed_total{table="IntegrationLogs"} 3.0' in body
        assert get(port, "/nothing")[0] == 404
    finally:
        server.close()


def test_a_port_in_use_is_a_clear_error() -> None:
    from replicator.errors import ReplicatorError

    first = Server("127.0.0.1", 0, Metrics(), Health()).start()
    try:
        with pytest.raises(ReplicatorError, match="cannot serve metrics"):
            Server("127.0.0.1", first.port, Metrics(), Health())
    finally:
        first.close()


def test_a_failed_batch_write_makes_the_consumer_unready_but_not_dead() -> None:
    client = FakeDynamo(down=True)
    p = pipeline(client)

    def stop_after_first_retry(_seconds: float) -> bool:
        return True  # the pipeline re-raises instead of waiting for the next attempt

    p.stopping.wait = stop_after_first_retry  # type: ignore[method-assign]
    p.health.started()
    p.health.assignment(joined=True, partitions=1)
    with pytest.raises(Exception, match="InternalServerError"):
        p.process(a_batch())
    ready, body = p.health.ready()
    assert not ready and "InternalServerError" in body["reason"]
    assert p.health.live()[0]
    assert value(p.metrics, "replicator_sink_failures_total") == 1
    assert value(p.metrics, "replicator_events_consumed_total", table=TABLE) == 0  # not committed
