"""Debezium's initial snapshot: a connector created on a database that already holds rows in
both tables brings every existing row to DynamoDB (then streams what follows). The shared
connector exists from the session's start, so this test uses a source of its own."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.ops.workload import Workload
from tests.integration.helpers import expected_items, replica_items, wait_for
from tests.integration.second_source import SecondSource

pytestmark = pytest.mark.stack

SNAPSHOT_READ = "0000000000000000.0."  # the position prefix of an initial-snapshot read


def test_connector_created_on_a_database_with_rows_brings_them_all(
    stack: Any, settings: Settings, consumer_factory: Any, dynamodb: Any
) -> None:
    source = SecondSource(settings, "isn")
    source.create()
    try:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            # Rows that exist before any connector: inserts, updates, key moves and deletes.
            workload = Workload(conn, seed=11)
            workload.ensure_loans(15)
            for _ in range(120):
                workload.step()
            assert workload.counts.inserts > 100 and workload.counts.deletes > 0
            before = {
                m.name: conn.execute(f"SELECT count(*) FROM {m.source}").fetchone()[0]
                for m in settings.tables
            }
            assert all(n > 20 for n in before.values()), before

            consumer, own = consumer_factory("_isnap", change=source.consumer_config)
            source.start_connector()
            consumer.start()

            def equal() -> bool:
                return all(
                    replica_items(dynamodb, m)[0] == expected_items(conn, m) for m in own.tables
                )

            wait_for(equal, 180, interval_s=2.0, what="every pre-existing row in DynamoDB")
            for mapping in own.tables:
                raw = dynamodb.scan(TableName=mapping.name, ConsistentRead=True)["Items"]
                assert raw and all(i["_pos"]["S"].startswith(SNAPSHOT_READ) for i in raw), (
                    "the rows should have come from the initial snapshot"
                )
                # No delete markers: a snapshot reads only rows that exist.
                assert replica_items(dynamodb, mapping)[1] == 0

            # Streaming follows the snapshot: later changes overwrite snapshot reads.
            for _ in range(30):
                workload.step()
            wait_for(equal, 120, interval_s=2.0, what="changes after the snapshot applied")
            assert consumer.stop() == 0
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)
    finally:
        source.drop()
    source.assert_no_slot()
