"""Scenario 3b: Kafka Connect SIGKILLed during the initial snapshot of a table of 50k rows.

A database, publication, slot, connector and topic prefix of the scenario's own (the shared
connector's snapshot is long done), so the shared connector's state is not disturbed. An
interrupted initial snapshot starts again from the beginning when the task comes back: the
rows read before the kill arrive twice (duplicates allowed), none may be missing, and changes
the workload made meanwhile must win over the snapshot's reads of the same rows."""

from __future__ import annotations

import time
from typing import Any

import pytest

from replicator.cli._common import connector_payload
from replicator.ops.connector import ConnectClient
from tests.faults.harness import SCALE, FaultRun, topic_records
from tests.faults.test_stack_faults import _sigkill
from tests.integration.second_source import SecondSource

pytestmark = [pytest.mark.stack, pytest.mark.faults]
ROWS = max(50_000, int(50_000 * SCALE))


def _transact(data: dict[str, Any]) -> None:
    # Tens of thousands of independent rows: the transact lane applies them 3-4x faster into
    # the local endpoint than single puts, each row still guarded by its own position.
    data["dynamodb"]["guarded_lane"] = "transact"


def test_connect_sigkill_during_initial_snapshot(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    source = SecondSource(settings, "snapkill")
    source.create()
    run: FaultRun | None = None
    try:
        run = FaultRun(
            "3b Connect SIGKILL initial snapshot",
            healthy,
            settings,
            dynamodb,
            consumer_factory,
            seed=303,
            change=_transact,
            source=source,
        )
        run.workload.bulk_logs(ROWS)  # before any connector: the snapshot's to read
        for _ in range(60):  # and rows of both tables the workload will go on changing
            run.workload.transaction(run.workload.mixed)
        logs_topic = run.topics[0]
        ConnectClient(source.settings).apply(connector_payload(source.settings))
        run.start_workload(rate_tx_s=10)  # changes during the snapshot: streamed after it

        def records() -> int:
            return topic_records(source, logs_topic)

        deadline = time.monotonic() + 180
        while records() < ROWS // 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        before_kill = records()
        assert ROWS // 10 <= before_kill < ROWS, (
            f"the snapshot was not caught in progress: {before_kill} of {ROWS} rows in its topic"
        )
        run.consumer.start()  # the topics exist now; it applies what the first pass sent
        _sigkill(healthy, "connect")
        time.sleep(3)
        healthy.up()  # a new worker: the task finds an unfinished snapshot and starts it over
        ConnectClient(source.settings).wait_running(timeout_s=180)
        run.fault_over()
        outcome = run.finish(quiet_timeout_s=600)
        after = records()
    finally:
        if run is not None:
            run.close()
            for table in run.own.tables:
                dynamodb.delete_table(TableName=table.name)
        source.drop()
    print(
        f"FAULTS 3b snapshot of {ROWS} rows: {before_kill} in the topic at the kill, "
        f"{after} at the end (the snapshot read again)"
    )
    outcome.assert_clean()
    source.assert_no_slot()
