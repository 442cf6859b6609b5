"""Scenarios 3, 4 and 5: Kafka Connect, PostgreSQL and the Kafka broker broken under load.

Each signals the process the session's stack recorded (its pid file under the stack's home,
checked against the process's start time), never a process found by name, and brings the part
back with ``LocalStack.up()``, which starts only what is not running."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from replicator.stack import LocalStack
from tests.faults.harness import SCALE, FaultRun

pytestmark = [pytest.mark.stack, pytest.mark.faults]
REPEAT = max(1, int(SCALE))  # rounds of the fault in one scenario


def _pid(stack: LocalStack, part: str) -> int:
    pid = stack._recorded_pid(part)
    assert pid is not None, f"the stack's {part} is not running"
    return pid


def _sigkill(stack: LocalStack, part: str) -> None:
    pid = _pid(stack, part)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack._recorded_pid(part) is not None and time.monotonic() < deadline:
        time.sleep(0.1)  # the record stays, the process (same start time) must be gone


def _scenario(name: str, healthy: Any, settings: Any, dynamodb: Any, factory: Any) -> FaultRun:
    run = FaultRun(name, healthy, settings, dynamodb, factory, seed=hash(name) % 1000)
    run.start_workload(rate_tx_s=20, burst_every=40, burst_rows=20)
    run.wait_events(200)
    return run


def test_broker_sigkill(healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any) -> None:
    run = _scenario("5a Kafka broker SIGKILL", healthy, settings, dynamodb, consumer_factory)
    try:
        for round in range(REPEAT):
            if round:
                time.sleep(10)  # load between rounds
            _sigkill(healthy, "kafka")
            time.sleep(5)
            healthy.up()  # Kafka back on its data; Connect and the consumer reconnect alone
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    outcome.assert_clean()


def test_broker_paused_past_session_timeout(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    pause_s = 15 * SCALE  # the consumers' session timeout is 6 s
    run = _scenario(
        f"5b Kafka broker SIGSTOP {pause_s:g} s", healthy, settings, dynamodb, consumer_factory
    )
    pid = _pid(healthy, "kafka")
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    outcome.assert_clean()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart(
    mode: str, healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = _scenario(
        f"4 PostgreSQL restart -m {mode}", healthy, settings, dynamodb, consumer_factory
    )
    try:
        for round in range(REPEAT):
            if round:
                time.sleep(10)
            healthy._pg(
                ["pg_ctl", "-D", str(healthy._pg_data), "-m", mode, "-w", "stop"],
                "stop postgres",
            )
            time.sleep(2)
            # Not up(): its preparation's DDL (REPLICA IDENTITY, grants) would deadlock with
            # the workload's transactions; the database is prepared already.
            healthy._start_postgres()
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    outcome.assert_clean()


def test_connect_sigkill_while_streaming(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = _scenario("3a Connect SIGKILL streaming", healthy, settings, dynamodb, consumer_factory)
    try:
        for round in range(REPEAT):
            if round:
                time.sleep(10)
            _sigkill(healthy, "connect")
            time.sleep(3)
            healthy.up()  # a new worker: the connector resumes from its committed source offset
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    outcome.assert_clean()
