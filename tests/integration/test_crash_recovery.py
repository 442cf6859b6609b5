"""A consumer killed with SIGKILL in the middle of a stream of changes, then started again,
loses nothing and leaves nothing extra: DynamoDB ends equal to PostgreSQL, row for row."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from replicator.config import Settings, load_settings
from replicator.ops.workload import Workload
from tests.integration.helpers import (
    caught_up,
    expected_items,
    live_count,
    replica_items,
    wait_for,
)

pytestmark = pytest.mark.stack


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    consumer_factory: Any, settings: Settings, dynamodb: Any
) -> None:
    consumer, own = consumer_factory("_kill")
    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=42)
        workload.ensure_loans(30)
        done = threading.Event()
        steps = [0]

        def write() -> None:
            with psycopg.connect(settings.postgres.dsn(), autocommit=True) as writer_conn:
                # Few key moves: each is a transaction, and the local endpoint copies the whole
                # table for every transaction item, which would dominate the test's time.
                writer = Workload(writer_conn, seed=43, key_move_share=0.1)
                writer.loans = workload.loans
                for _ in range(400):
                    writer.step()
                    steps[0] += 1
                    time.sleep(0.02)
                workload.counts = writer.counts
            done.set()

        writer_thread = threading.Thread(target=write, daemon=True)
        consumer.start()
        writer_thread.start()
        kills = 0
        logs = own.tables[0]
        for third in (1, 2):  # kill at a third and two thirds of the workload, while applying
            before = live_count(dynamodb, logs.name)
            wait_for(lambda t=third: steps[0] >= 130 * t or None, 120, what="workload progress")
            wait_for(
                lambda b=before: live_count(dynamodb, logs.name) > b,
                120,
                what="consumer applying changes",
            )
            consumer.kill()
            kills += 1
            time.sleep(1.0)
            consumer.start()
        writer_thread.join(120)
        assert done.is_set(), "workload did not finish"
        assert kills == 2

        def converged() -> bool:
            return all(replica_items(dynamodb, m)[0] == expected_items(conn, m) for m in own.tables)

        wait_for(converged, 300, interval_s=2.0, what="DynamoDB equal to PostgreSQL")
        for mapping in own.tables:
            replica, _markers = replica_items(dynamodb, mapping)
            expected = expected_items(conn, mapping)
            assert replica.keys() == expected.keys()  # nothing lost, nothing extra
            assert replica == expected
        counts = workload.counts
        assert counts.key_moves > 0 and counts.deletes > 0 and counts.updates > 0
        assert consumer.stop() == 0

        # Replaying both topics from the beginning (a new group) changes nothing.
        before = {m.name: replica_items(dynamodb, m)[0] for m in own.tables}
        replay = consumer_factory("_kill", keep_tables=True)[0]
        replay.start()
        group = load_settings(replay.config).kafka.group_id
        wait_for(
            lambda: caught_up(
                settings.kafka.bootstrap_servers, group, [settings.topic_of(m) for m in own.tables]
            ),
            300,
            interval_s=1.0,
            what="replay caught up",
        )
        assert replay.stop() == 0
        assert {m.name: replica_items(dynamodb, m)[0] for m in own.tables} == before
