"""Scenario 11: the captured tables idle while another table of the database churns.

The slot decodes the churn's WAL but the publication holds none of it, so without heartbeats
Debezium would receive nothing to confirm and the slot would retain every byte written. The
connector's heartbeat (``connector.heartbeat_interval_ms``, 10 s, with an action query that
writes the published heartbeat table) gives it a change to confirm each interval, so the
retained WAL stays about one interval of churn. Measured every second over the idle window
(2 minutes in CI; ``FAULTS_IDLE_S``, 30 minutes from ``bench/faults.py``), then the workload
resumes and the usual invariants are checked."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.faults.harness import SCALE, FaultRun

pytestmark = [pytest.mark.stack, pytest.mark.faults]
IDLE_S = float(os.environ.get("FAULTS_IDLE_S", str(120 * SCALE)))
MB = 1024 * 1024


class Churn:
    """Updates of a table outside the publication, as fast as one connection goes with a
    short pause: WAL the slot must read past, none of it for the connector."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS dbo.fault_churn (id int PRIMARY KEY, pad text NOT NULL)"
        )
        self.conn.execute(
            "INSERT INTO dbo.fault_churn SELECT n, repeat('x', 500) FROM generate_series(1, 2000) "
            "AS n ON CONFLICT (id) DO NOTHING"
        )
        self.statements = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="churn", daemon=True)

    def _loop(self) -> None:
        n = 0
        while not self.stop_event.wait(0.05):
            n += 1
            self.conn.execute(
                "UPDATE dbo.fault_churn SET pad = repeat(%s, 500) WHERE id %% 10 = %s",
                [chr(97 + n % 26), n % 10],
            )
            self.statements += 1

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        self.conn.close()


def _slot(conn: psycopg.Connection[Any], slot: str) -> tuple[int, int, int]:
    """(current WAL position, bytes behind confirmed_flush_lsn, bytes behind restart_lsn)."""
    row = conn.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) "
        "FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    ).fetchone()
    assert row is not None, f"no replication slot {slot}"
    return int(row[0]), int(row[1]), int(row[2])


def test_idle_tables_while_another_churns(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    slot = settings.connector.slot_name
    interval_s = settings.connector.heartbeat_interval_ms / 1000
    run = FaultRun(
        "11 idle tables, other table churns",
        healthy,
        settings,
        dynamodb,
        consumer_factory,
        seed=1111,
    )
    churn = Churn(run.dsn)
    samples: list[tuple[float, int, int]] = []
    try:
        run.start_workload(rate_tx_s=20)
        run.wait_events(200)
        run.workload.stop()  # the captured tables idle from here
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            start_lsn, _, _ = _slot(conn, slot)
            churn.start()
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < IDLE_S:
                _now, confirmed, restart = _slot(conn, slot)
                samples.append((elapsed, confirmed, restart))
                time.sleep(1)
            churn.stop()
            end_lsn, _, _ = _slot(conn, slot)
        run.start_workload(rate_tx_s=20)  # the captured tables change again
        run.fault_over()
        outcome = run.finish()
    finally:
        if not churn.stop_event.is_set():
            churn.stop()
        run.close()
    written = end_lsn - start_lsn
    rate = written / IDLE_S
    worst_confirmed = max(s[1] for s in samples)
    worst_restart = max(s[2] for s in samples)
    # confirmed_flush_lsn: a heartbeat each interval, Connect's 1 s offset flush, and the
    # walsender decoding the churn behind the WAL's end: 3 intervals of churn, at least 16 MB.
    # restart_lsn moves to a running-transactions record (PostgreSQL logs one every 15 s) only
    # once a confirmation passes the point where the walsender read it, so it can trail by a
    # few of those records more: 60 s of churn more (a 5-minute run came to 59 s past).
    bound = max(16 * MB, int(3 * interval_s * rate))
    restart_bound = bound + int(60 * rate)
    quarters = [
        max((s[2] for s in samples if q * IDLE_S / 4 <= s[0] < (q + 1) * IDLE_S / 4), default=0)
        for q in range(4)
    ]
    print(
        f"FAULTS 11 idle {IDLE_S:.0f} s: churn wrote {written / MB:.0f} MB of WAL "
        f"({rate / MB:.2f} MB/s, {churn.statements} statements); slot retained at most "
        f"{worst_confirmed / MB:.1f} MB behind confirmed_flush_lsn (bound {bound / MB:.1f} MB), "
        f"{worst_restart / MB:.1f} MB behind restart_lsn (bound {restart_bound / MB:.1f} MB), "
        f"per quarter of the window {' / '.join(f'{q / MB:.0f}' for q in quarters)} MB; "
        f"heartbeat every {interval_s:.0f} s"
    )
    outcome.assert_clean()
    # Without heartbeats the slot would retain everything the churn wrote.
    assert written > 2 * bound, f"the churn wrote too little WAL to tell ({written / MB:.0f} MB)"
    assert worst_confirmed <= bound, (
        f"confirmed_flush_lsn fell {worst_confirmed / MB:.1f} MB behind"
    )
    assert worst_restart <= restart_bound, f"restart_lsn fell {worst_restart / MB:.1f} MB behind"
