"""Scenario 9: schema changes under load. A nullable column added to each table, filled on
some rows, then dropped again. The mapping does not know the column (what to do with unknown
columns is the mapping's policy, not decided here): the consumer must neither crash nor lose
a change, and the items keep exactly the mapped attributes."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.faults.harness import FaultRun

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def test_nullable_column_added_and_dropped(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = FaultRun("9 schema changes", healthy, settings, dynamodb, consumer_factory, seed=909)
    try:
        run.start_workload(rate_tx_s=20, burst_every=40, burst_rows=10)
        run.wait_events(100)
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            for table in ("integrationlogs", "payments"):
                conn.execute(f"ALTER TABLE dbo.{table} ADD COLUMN IF NOT EXISTS faultnote text")
            time.sleep(5)
            # Some rows get a value in it (the workload's rows keep changing meanwhile).
            conn.execute(
                "UPDATE dbo.integrationlogs SET faultnote = 'note' WHERE logid = ANY(%s)",
                [sorted(run.workload.touched.logs)[:50]],
            )
            conn.execute(
                "UPDATE dbo.payments SET faultnote = 'note' WHERE paymentid = ANY(%s)",
                [sorted(run.workload.touched.payments)[:50]],
            )
            time.sleep(5)
            for table in ("integrationlogs", "payments"):
                conn.execute(f"ALTER TABLE dbo.{table} DROP COLUMN IF EXISTS faultnote")
        time.sleep(5)
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            for table in ("integrationlogs", "payments"):
                conn.execute(f"ALTER TABLE dbo.{table} DROP COLUMN IF EXISTS faultnote")
    outcome.assert_clean()
