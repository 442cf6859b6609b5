"""`replicator run` serves /metrics, /healthz and /readyz: ready once the group assigned it,
the rows written to PostgreSQL show up as applied events, and a DynamoDB that cannot be reached
makes it unready (with the reason) while it stays alive."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from replicator.config import Settings
from replicator.ops.workload import Workload
from replicator.stream.source import KafkaSource
from tests.integration.helpers import live_count, wait_for

pytestmark = pytest.mark.stack

ROWS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def samples(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == name
    }


def end_offsets(probe: KafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    ends = []
    for topic in topics:
        for p in probe.list_topics(topic, timeout=10).topics[topic].partitions:
            _, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends.append(TopicPartition(topic, p, high))
    return ends


def start_at_the_end(own: Settings) -> None:
    """The group starts at the topics' current end: the test counts its own rows only. A row
    in each table first, waited for, so that the topics exist on a fresh stack and nothing
    written before the test arrives after this."""
    bootstrap = own.kafka.bootstrap_servers
    topics = [own.topic_of(m) for m in own.tables]
    probe = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "probe", "log_level": 3})
    try:

        def per_topic() -> dict[str, int]:
            totals = dict.fromkeys(topics, 0)
            for tp in end_offsets(probe, topics):
                totals[tp.topic] += tp.offset
            return totals

        before = per_topic()
        with psycopg.connect(own.postgres.dsn(), autocommit=True) as conn:
            warm_up = Workload(conn, seed=5)
            warm_up.ensure_loans(2)
            warm_up.insert_log()
            warm_up.insert_payment()
        wait_for(
            lambda: all(n > before[t] for t, n in per_topic().items()),
            60,
            0.5,
            "the warm-up rows in both topics",
        )
        ends = end_offsets(probe, topics)
    finally:
        probe.close()
    group = own.kafka.group_id
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, ends)])[group].result(
        timeout=30
    )


def test_probes_answer_and_metrics_count_the_rows_written(
    consumer_factory: Any, settings: Settings, dynamodb: Any
) -> None:
    port = free_port()

    def change(data: dict[str, Any]) -> None:
        data["metrics"]["port"] = port
        data["metrics"]["lag_interval_s"] = 1.0

    consumer, own = consumer_factory("_metrics", change)
    by_source = own.mapping_for_source()
    logs, payments = by_source["dbo.integrationlogs"], by_source["dbo.payments"]
    start_at_the_end(own)
    consumer.start()
    wait_for(lambda: get(port, "/healthz")[0] == 200, 60, 0.2, "/healthz 200")
    _status, body = wait_for(
        lambda: (r := get(port, "/readyz"))[0] == 200 and r, 90, 0.2, "/readyz 200"
    )
    assert json.loads(body)["ready"] is True

    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=17)
        workload.ensure_loans(5)
        for _ in range(ROWS):
            workload.insert_log()
            workload.insert_payment()

    def applied() -> dict[str, float]:
        return {
            dict(labels)["table"]: v
            for labels, v in samples(port, "replicator_events_applied_total").items()
        }

    # Other developers may write to the shared database meanwhile: at least our rows.
    counted = wait_for(
        lambda: (
            (a := applied()).get(logs.name, 0) >= ROWS and a.get(payments.name, 0) >= ROWS and a
        ),
        90,
        0.5,
        "applied events of the rows written",
    )
    assert live_count(dynamodb, logs.name) == counted[logs.name]
    assert live_count(dynamodb, payments.name) == counted[payments.name]

    consumed = samples(port, "replicator_events_consumed_total")
    assert consumed[(("table", logs.name),)] >= ROWS
    e2e = samples(port, "replicator_end_to_end_seconds_count")
    assert e2e[(("table", logs.name),)] >= 1
    writes = samples(port, "replicator_write_seconds_count")
    assert writes[(("table", payments.name),)] >= 1
    assert samples(port, "replicator_batch_size_count")[()] >= 1
    # caught up: every assigned partition shows a lag, and it drains to 0
    topics = {own.topic_of(m) for m in own.tables}

    def lag() -> dict[tuple[str, str], float]:
        return {
            (dict(k)["topic"], dict(k)["partition"]): v
            for k, v in samples(port, "replicator_consumer_lag").items()
        }

    drained = wait_for(
        lambda: (g := lag()) and {t for t, _ in g} == topics and all(v == 0 for v in g.values()),
        60,
        0.5,
        "consumer lag per partition at 0",
    )
    assert drained
    assert samples(port, "replicator_assigned_partitions")[()] == len(lag())
    assert get(port, "/readyz")[0] == 200
    assert consumer.stop() == 0


def test_failing_dynamodb_writes_make_it_unready_but_not_dead(
    consumer_factory: Any, settings: Settings
) -> None:
    port = free_port()
    closed = free_port()  # nothing listens there

    def change(data: dict[str, Any]) -> None:
        data["metrics"]["port"] = port
        data["dynamodb"]["endpoint_url"] = f"http://127.0.0.1:{closed}"
        data["dynamodb"]["max_attempts"] = 2

    consumer, own = consumer_factory("_unready", change)
    start_at_the_end(own)
    consumer.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 90, 0.2, "/readyz 200 before any write")

    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=23)
        workload.ensure_loans(1)
        workload.insert_log()
        workload.insert_payment()

    _status, body = wait_for(
        lambda: (r := get(port, "/readyz"))[0] == 503 and r, 90, 0.2, "/readyz 503"
    )
    reason = json.loads(body)["reason"]
    assert "DynamoDB" in reason and reason.startswith("last DynamoDB write failed")
    # alive: the loop keeps retrying the batch; a restart would not help
    for _ in range(10):
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz")[0] == 503
        time.sleep(0.5)
    assert samples(port, "replicator_sink_failures_total")[()] >= 1
    assert consumer.alive()
    # SIGTERM while the batch cannot be written: it stops retrying, commits nothing and says
    # why (exit 1, the CLI's error for a failed part).
    assert consumer.stop() == 1


def test_a_member_with_an_empty_assignment_counts_as_joined(stack: Any, settings: Settings) -> None:
    """More consumers than partitions: the group calls the spare member's on_assign with no
    partitions, which is what /readyz reads as "assigned" (a standby is ready)."""
    bootstrap = settings.kafka.bootstrap_servers
    topic = f"test-empty-assignment-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    group = f"test-empty-{uuid.uuid4().hex[:8]}"
    members = [KafkaSource(settings.kafka, [topic], group) for _ in range(2)]
    try:

        def joined() -> bool:
            for member in members:
                member.poll()
            return all(m.joined for m in members)

        wait_for(joined, 60, 0, "both members joined")
        assert sorted(len(m.assigned) for m in members) == [0, 1]
    finally:
        for member in members:
            member.close()
        admin.delete_topics([topic])[topic].result(timeout=30)
