"""Lag asked from outside the consumer: a group that has not applied new rows is behind by
exactly those records (with their age); once its consumer caught up it is behind by nothing.
The connector's slot is active and its retained WAL is measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.observe.lag import consumer_lag, slot_lag
from replicator.ops.workload import Workload
from tests.integration.helpers import caught_up, wait_for

pytestmark = pytest.mark.stack


def test_lag_counts_unapplied_records_then_none(
    consumer_factory: Callable[..., Any], pg: psycopg.Connection[Any]
) -> None:
    consumer, own = consumer_factory("_lag")
    topics = [own.topic_of(m) for m in own.tables]
    consumer.start()
    with psycopg.connect(own.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=41)
        workload.ensure_loans(2)
        workload.insert_log()
        workload.insert_payment()
    wait_for(lambda: caught_up(own.kafka.bootstrap_servers, own.kafka.group_id, topics), 90)
    consumer.stop()

    before = consumer_lag(own)
    with psycopg.connect(own.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=42)
        for _ in range(3):
            workload.insert_log()
    # The connector delivers the three new log records; nothing consumes them.
    lagging = wait_for(
        lambda: (
            (lag := consumer_lag(own))["IntegrationLogs_lag"].events
            >= before["IntegrationLogs_lag"].events + 3
            and lag
        ),
        60,
        what="three unapplied log records",
    )
    logs = lagging["IntegrationLogs_lag"]
    assert logs.topic == own.topic_of(own.mapping_named("IntegrationLogs_lag"))
    assert logs.events == sum(p.events for p in logs.partitions)
    assert all(p.events == p.end - p.committed for p in logs.partitions)
    assert 0 < logs.seconds < 300
    time.sleep(1.0)
    assert consumer_lag(own)["IntegrationLogs_lag"].seconds >= logs.seconds + 0.5  # it ages

    consumer.start()
    wait_for(
        lambda: all(t.events == 0 and t.seconds == 0.0 for t in consumer_lag(own).values()),
        90,
        what="no lag once the consumer caught up",
    )
    consumer.stop()


def test_slot_is_active_and_retains_little(settings: Settings, stack: Any) -> None:
    slot = slot_lag(settings)
    assert slot is not None
    assert slot.slot == settings.connector.slot_name
    assert slot.active  # the connector streams from it
    assert 0 <= slot.retained_wal_bytes < 1 << 30
    assert slot.confirmed_flush_lsn


def test_a_missing_slot_is_none(settings: Settings, stack: Any) -> None:
    other = settings.model_copy(
        update={"connector": settings.connector.model_copy(update={"slot_name": "no_such_slot"})}
    )
    assert slot_lag(other) is None
