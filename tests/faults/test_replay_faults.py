"""Scenario 12: a key deleted and inserted again, then its old events replayed, first straight
into its topic (a redelivery, as Debezium does after a connector restart) and then through
the dead-letter topic and `replicator dlq replay`. The old events must all be refused by the
guard: the old key keeps its delete marker, the new one its newest version."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.faults.harness import FaultRun
from tests.faults.model import log_key
from tests.faults.workload import FaultWorkload
from tests.integration.helpers import cli

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def _write_history(workload: FaultWorkload) -> tuple[int, list[dict[str, Any]]]:
    """Row L: insert, update, key move, delete, then L inserted again elsewhere; the keys it
    held, oldest first."""
    with psycopg.connect(workload.dsn, autocommit=True) as conn:  # not the writer thread's
        return _history(conn, workload)


def _history(conn: psycopg.Connection[Any], workload: FaultWorkload) -> tuple[int, list[Any]]:
    first = dt.datetime(2024, 4, 1, 8, 0, 0, 250)
    row = conn.execute(
        "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, logtimestamp, "
        "correlationid) VALUES ('Credit Check', 'ReplayService', false, %s, 'corr-r') "
        "RETURNING logid",
        [first],
    ).fetchone()
    assert row is not None
    logid = row[0]
    conn.execute("UPDATE dbo.integrationlogs SET correlationid = NULL WHERE logid = %s", [logid])
    moved = first + dt.timedelta(days=1)
    conn.execute(
        "UPDATE dbo.integrationlogs SET logtimestamp = %s WHERE logid = %s", [moved, logid]
    )
    conn.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
    again = first + dt.timedelta(days=3)
    conn.execute(
        "INSERT INTO dbo.integrationlogs (logid, logtype, servicename, issuccess, logtimestamp) "
        "VALUES (%s, 'Credit Check', 'ReplayService', true, %s)",
        [logid, again],
    )
    keys = [log_key(logid, "ReplayService", when) for when in (first, moved, again)]
    with workload.lock:
        workload.touched.logs.add(logid)
        workload.touched.keys.extend(("logs", k) for k in keys)
    return logid, keys


def _old_records(bootstrap: str, topic: str, logid: int, count: int) -> list[Any]:
    """The row's records in its topic (tombstones left out), waited for until ``count``."""
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "fault-replay-probe", "log_level": 3}
    )
    found: list[Any] = []
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        probe.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + 120
        while len(found) < count and time.monotonic() < deadline:
            for m in probe.consume(500, 1.0):
                if m.error() or m.value() is None:
                    continue
                if json.loads(m.key()).get("logid") == logid:
                    found.append(m)
    finally:
        probe.close()
    return found


def test_delete_reinsert_then_replays(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = FaultRun("12 delete + re-insert, replays", healthy, settings, dynamodb, consumer_factory)
    try:
        run.start_workload(rate_tx_s=15)
        run.wait_events(50)
        logid, keys = _write_history(run.workload)
        table = run.tables["logs"]

        def newest_applied() -> bool:
            item = dynamodb.get_item(TableName=table, Key=keys[2], ConsistentRead=True)
            return "Item" in item

        deadline = time.monotonic() + 120
        while not newest_applied():
            assert time.monotonic() < deadline, "the re-insert never arrived"
            time.sleep(0.5)
        topic = run.topics[0]
        bootstrap = settings.kafka.bootstrap_servers
        records = _old_records(bootstrap, topic, logid, count=5)
        old = records[:-1]  # all but the re-insert: insert, update, move, delete
        assert [json.loads(m.value()).get("payload", json.loads(m.value()))["op"] for m in old] == [
            "c",
            "u",
            "u",
            "d",
        ]
        # A redelivery: the same bytes again, each to its partition.
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for m in old:
            producer.produce(topic, key=m.key(), value=m.value(), partition=m.partition())
        # Dead letters of the same events, as the consumer parks them.
        refs: list[str] = []

        def parked(error: Any, message: Any) -> None:
            assert error is None, error
            refs.append(f"{message.partition()}:{message.offset()}")

        for m in old:
            producer.produce(
                settings.kafka.dead_letter_topic,
                key=m.key(),
                value=m.value(),
                headers=[
                    ("dlq.reason", b"fault-suite"),
                    ("dlq.error", b"parked by the fault suite"),
                    ("dlq.topic", topic.encode()),
                    ("dlq.partition", str(m.partition()).encode()),
                    ("dlq.offset", str(m.offset()).encode()),
                    ("dlq.time_ms", str(int(time.time() * 1000)).encode()),
                ],
                on_delivery=parked,
            )
        assert producer.flush(30) == 0
        replayed = cli(run.consumer.config, "dlq", "replay", *refs)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        run.fault_over()
        outcome = run.finish()
        held = [
            dynamodb.get_item(TableName=table, Key=k, ConsistentRead=True).get("Item") for k in keys
        ]
    finally:
        run.close()
    print(f"FAULTS 12 replayed {len(old)} old events twice (topic, dead-letter topic)")
    outcome.assert_clean()
    assert [bool(i and i.get("_deleted")) for i in held] == [True, True, False]


def test_poison_events_then_older_replay(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    """Scenario 8: undecodable records in both topics under load park and the consumer goes
    on; then `dlq replay` of a row's older update, after a newer one is stored (hole 1): the
    replayed event lands in the row's own partition and the guard refuses it."""
    run = FaultRun("8 poison events, older replay", healthy, settings, dynamodb, consumer_factory)
    bootstrap = settings.kafka.bootstrap_servers
    try:
        run.start_workload(rate_tx_s=15)
        run.wait_events(50)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        poison: set[tuple[str, int, int]] = set()

        def sent(error: Any, message: Any) -> None:
            assert error is None, error
            poison.add((message.topic(), message.partition(), message.offset()))

        for topic, key in (
            (run.topics[0], b'{"logid": -1}'),
            (run.topics[1], b'{"paymentid": -1}'),
        ):
            for value in (b"not json", b'{"payload": {"op": "u"}}', b"\xff\xfe"):
                producer.produce(topic, key=key, value=value, on_delivery=sent)
        assert producer.flush(30) == 0
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, statuscode) "
                "VALUES ('Credit Check', 'ReplayService', true, 'first') RETURNING logid, "
                "logtimestamp"
            ).fetchone()
            assert row is not None
            logid, when = row
            for status in ("second", "third"):
                conn.execute(
                    "UPDATE dbo.integrationlogs SET statuscode = %s WHERE logid = %s",
                    [status, logid],
                )
        key = log_key(logid, "ReplayService", when)
        with run.workload.lock:
            run.workload.touched.logs.add(logid)
            run.workload.touched.keys.append(("logs", key))
        table = run.tables["logs"]

        def third_applied() -> bool:
            item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True)
            return item.get("Item", {}).get("StatusCode", {}).get("S") == "third"

        deadline = time.monotonic() + 120
        while not third_applied():
            assert time.monotonic() < deadline, "the row's last update never arrived"
            time.sleep(0.5)
        records = _old_records(bootstrap, run.topics[0], logid, count=3)
        refs: list[str] = []

        def parked(error: Any, message: Any) -> None:
            assert error is None, error
            refs.append(f"{message.partition()}:{message.offset()}")

        older = records[1]  # the update to 'second'
        producer.produce(
            settings.kafka.dead_letter_topic,
            key=older.key(),
            value=older.value(),
            headers=[
                ("dlq.reason", b"fault-suite"),
                ("dlq.topic", older.topic().encode()),
                ("dlq.partition", str(older.partition()).encode()),
                ("dlq.offset", str(older.offset()).encode()),
                ("dlq.time_ms", str(int(time.time() * 1000)).encode()),
            ],
            on_delivery=parked,
        )
        assert producer.flush(30) == 0
        replayed = cli(run.consumer.config, "dlq", "replay", *refs)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        run.fault_over()
        outcome = run.finish()
        listed = cli(run.consumer.config, "dlq", "list", "--reason", "decode", "--json")
    finally:
        run.close()
    assert listed.returncode == 0, listed.stdout + listed.stderr
    origins = {
        (r["source_topic"], r["source_partition"], r["source_offset"])
        for r in json.loads(listed.stdout)
    }
    print(f"FAULTS 8 poison records {len(poison)}, parked {len(poison & origins)}")
    outcome.assert_clean()
    assert poison <= origins, f"poison records not parked: {poison - origins}"
    assert third_applied()
