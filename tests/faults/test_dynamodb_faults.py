"""Scenarios 6 and 7: DynamoDB misbehaving between the consumer and the endpoint (throttling,
500s, connection resets, timeouts, ambiguous successes), then the endpoint unreachable for a
minute."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.harness import SCALE, FaultRun
from tests.faults.proxy import Faults

pytestmark = [pytest.mark.stack, pytest.mark.faults]

RATES = Faults(throttle=0.05, error=0.03, reset=0.03, timeout=0.01, ambiguous=0.04)
CLIENTS = ["wire", "boto3"] if SCALE > 1 else ["wire"]


@pytest.mark.parametrize("client", CLIENTS)
def test_dynamodb_fault_proxy(
    client: str, healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    def use_client(data: dict[str, Any]) -> None:
        data["dynamodb"]["client"] = client

    run = FaultRun(
        f"6 DynamoDB faults {client} ({RATES.describe()})",
        healthy,
        settings,
        dynamodb,
        consumer_factory,
        seed=606,
        change=use_client,
    )
    try:
        run.start_workload(rate_tx_s=20, burst_every=40, burst_rows=20)
        run.wait_events(100)
        run.proxy.set(RATES)
        time.sleep(40 * SCALE)
        run.proxy.set(Faults())
        run.fault_over()
        outcome = run.finish()
        counts = dict(run.proxy.counts)
    finally:
        run.close()
    injected = {
        kind: sum(n for k, n in counts.items() if k.endswith(f":{kind}"))
        for kind in ("throttle", "error", "reset", "timeout", "ambiguous")
    }
    print(f"FAULTS 6 injected: {injected}")
    outcome.assert_clean()
    assert all(injected.values()), f"some fault was never injected: {injected}"


def test_dynamodb_unreachable_for_a_minute(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = FaultRun("7 DynamoDB unreachable 60 s", healthy, settings, dynamodb, consumer_factory)
    try:
        run.start_workload(rate_tx_s=20, burst_every=40, burst_rows=20)
        run.wait_events(100)
        run.proxy.down()
        time.sleep(60)
        # Let through after the cut (requests in flight at it were let through before it).
        during = run.proxy.admitted - run.proxy.admitted_at_down
        run.proxy.up()
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    outcome.assert_clean()
    assert during == 0, f"{during} requests reached the endpoint while it was unreachable"
