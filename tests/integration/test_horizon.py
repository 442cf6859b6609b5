"""The no-resurrection horizon on the real stack: the consumer refuses to start when a topic
keeps a deleted row's events longer than the delete markers live (the topics' real configs,
read from Kafka), and replays into a live table (`dlq replay`, `backfill`) refuse events older
than the horizon, while a backfill into a new table takes them. Topics of its own (prefix
"hztest"), fed record by record."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from replicator.config import Settings
from replicator.stream.horizon import DAY_MS, FOREVER_MS
from tests.integration.helpers import cli, get_item, visible
from tests.unit.factories import create_record, log_row

pytestmark = pytest.mark.stack

WEEK_MS = 7 * DAY_MS


def isolated(consumer_factory: Any, suffix: str) -> tuple[Any, Settings, str]:
    prefix = f"hztest{uuid.uuid4().hex[:6]}"

    def isolate(data: dict[str, Any]) -> None:
        data["connector"]["topic_prefix"] = prefix
        data["kafka"]["dead_letter_topic"] = f"{prefix}.dead-letter"

    consumer, own = consumer_factory(suffix, isolate)
    return consumer, own, prefix


def create_source_topics(bootstrap: str, prefix: str, max_compaction_lag_ms: int) -> None:
    """The two tables' topics as Connect would make them, with this compaction bound."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {
        "cleanup.policy": "compact",
        "max.compaction.lag.ms": str(max_compaction_lag_ms),
        "delete.retention.ms": str(DAY_MS),
    }
    topics = [
        NewTopic(f"{prefix}.dbo.{t}", 1, config=config) for t in ("integrationlogs", "payments")
    ]
    for future in admin.create_topics(topics).values():
        future.result(30)


def log_key(logid: int) -> dict[str, Any]:
    return {
        "PK": {"S": "CreditCheckService-2024-01-15"},
        "SK": {"S": f"2024-01-15T10:30:00.123456Z#{logid:019d}"},
    }


def test_run_refuses_topics_that_keep_deleted_rows_longer_than_the_markers(
    consumer_factory: Any, settings: Settings
) -> None:
    consumer, own, prefix = isolated(consumer_factory, "_hzrun")
    bootstrap = settings.kafka.bootstrap_servers
    create_source_topics(bootstrap, prefix, FOREVER_MS)  # Kafka's default: no bound at all

    refused = cli(consumer.config, "run", "--until-idle", "1")
    assert refused.returncode == 1, refused.stderr[-3000:]
    text = " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr
    for mapping in own.tables:
        assert f"{mapping.name}: topic {own.topic_of(mapping)}" in text
    assert "max.compaction.lag.ms" in text and "forever" in text and "read from Kafka" in text

    # Bounded within the markers' life, the same consumer starts.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resources = [
        ConfigResource(
            "topic",
            own.topic_of(m),
            incremental_configs=[
                ConfigEntry(
                    "max.compaction.lag.ms",
                    str(WEEK_MS),
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        for m in own.tables
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(30)
    started = cli(consumer.config, "run", "--until-idle", "2")
    assert started.returncode == 0, started.stderr[-3000:]


def test_dlq_replay_refuses_records_older_than_the_horizon(
    consumer_factory: Any, settings: Settings
) -> None:
    consumer, own, prefix = isolated(consumer_factory, "_hzdlq")
    bootstrap = settings.kafka.bootstrap_servers
    create_source_topics(bootstrap, prefix, WEEK_MS)
    logs_topic = f"{prefix}.dbo.integrationlogs"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(own.kafka.dead_letter_topic, 1)]).values():
        future.result(30)
    horizon_days = own.tables[0].tombstone_days
    now_ms = int(time.time() * 1000)
    old = create_record(
        "dbo.integrationlogs", log_row(logid=920001), ts_ms=now_ms - (horizon_days + 5) * DAY_MS
    )
    recent = create_record("dbo.integrationlogs", log_row(logid=920002), ts_ms=now_ms)
    producer = Producer({"bootstrap.servers": bootstrap})
    for record in (old, recent):
        producer.produce(
            own.kafka.dead_letter_topic,
            key=record.key,
            value=record.value,
            headers=[
                ("dlq.reason", b"lookup-miss"),
                ("dlq.error", b"test"),
                ("dlq.topic", logs_topic.encode()),
                ("dlq.partition", b"0"),
                ("dlq.offset", b"0"),
                ("dlq.time_ms", str(now_ms).encode()),
            ],
        )
    assert producer.flush(30) == 0

    replay = cli(consumer.config, "dlq", "replay", "--all")
    assert replay.returncode == 1, replay.stderr[-3000:]
    text = " ".join(replay.stderr.split())
    assert "Traceback" not in replay.stderr
    assert "replayed 1 record(s)" in text and "1 record(s) not replayed" in text
    assert "Not replayed: 0:0" in text and "verify --table T --repair" in text

    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import TopicPartition

    probe = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "hz-probe"})
    low, high = probe.get_watermark_offsets(TopicPartition(logs_topic, 0), timeout=10)
    probe.assign([TopicPartition(logs_topic, 0, low)])
    message = probe.poll(10)
    probe.close()
    assert high - low == 1 and message is not None and message.value() == recent.value


def test_backfill_into_the_live_table_refuses_old_events_a_new_table_takes_them(
    consumer_factory: Any, settings: Settings, dynamodb: Any
) -> None:
    consumer, own, prefix = isolated(consumer_factory, "_hzbf")
    bootstrap = settings.kafka.bootstrap_servers
    create_source_topics(bootstrap, prefix, WEEK_MS)
    logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")
    now_ms = int(time.time() * 1000)
    old = create_record(
        "dbo.integrationlogs",
        log_row(logid=930001),
        ts_ms=now_ms - (logs.tombstone_days + 5) * DAY_MS,
    )
    recent = create_record("dbo.integrationlogs", log_row(logid=930002), ts_ms=now_ms)
    producer = Producer({"bootstrap.servers": bootstrap})
    for record in (old, recent):
        producer.produce(own.topic_of(logs), key=record.key, value=record.value, partition=0)
    assert producer.flush(30) == 0

    live = cli(consumer.config, "backfill", "--table", logs.name)
    assert live.returncode == 0, live.stderr[-3000:]
    (line,) = [x for x in live.stdout.splitlines() if x.startswith(f"{logs.name} -> ")]
    assert "1 written" in line and "1 refused (older than the no-resurrection horizon)" in line
    assert f"verify --table {logs.name} --repair" in " ".join(live.stderr.split())
    assert visible(get_item(dynamodb, logs.name, log_key(930001))) is None
    assert visible(get_item(dynamodb, logs.name, log_key(930002))) is not None

    target = f"{logs.name}_{uuid.uuid4().hex[:6]}"
    try:
        fresh = cli(consumer.config, "backfill", "--table", logs.name, "--into", target)
        assert fresh.returncode == 0, fresh.stderr[-3000:]
        (line,) = [x for x in fresh.stdout.splitlines() if x.startswith(f"{logs.name} -> ")]
        assert "2 written" in line and "refused" not in line
        for logid in (930001, 930002):
            assert visible(get_item(dynamodb, target, log_key(logid))) is not None
    finally:
        dynamodb.delete_table(TableName=target)
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)
