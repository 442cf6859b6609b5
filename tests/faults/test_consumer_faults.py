"""Scenario 1: the consumer SIGKILLed mid-batch again and again, some of the kills while the
key moves of a large transaction are being applied."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.faults.harness import SCALE, FaultRun

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def test_consumer_sigkill_mid_batch(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    kills = max(10, int(10 * SCALE))
    run = FaultRun("1 consumer SIGKILL", healthy, settings, dynamodb, consumer_factory, seed=101)
    rng = random.Random(3)
    after_moves = in_flight = 0
    try:
        run.start_workload(rate_tx_s=30, burst_every=20, burst_rows=40)
        run.wait_events(100)
        for i in range(kills):
            marks = run._committed_marks()
            # Applying again after the last restart: the group commits past where it was.
            assert run.wait_progress(marks, timeout_s=120), "consumer made no progress"
            if i % 2 == 0:  # right after a transaction of 40 key moves reached PostgreSQL
                run.workload.burst_committed.clear()
                assert run.workload.burst_committed.wait(30), "no key-move transaction"
                time.sleep(rng.uniform(0.2, 1.2))
                after_moves += 1
            else:
                time.sleep(rng.uniform(0.5, 2.5))
            ends = run._high_watermarks()
            run.consumer.kill()
            # Killed mid-batch: records it had been given were not committed yet.
            if not run._committed_at_least(ends):
                in_flight += 1
            time.sleep(rng.uniform(0.1, 1.0))
            run.consumer.start()
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    print(
        f"FAULTS 1 kills {kills}: {after_moves} right after a key-move transaction, "
        f"{in_flight} with uncommitted records in hand"
    )
    outcome.assert_clean()
    assert in_flight >= kills // 2, f"only {in_flight} of {kills} kills were mid-batch"


def test_rebalance_storm(healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any) -> None:
    """Scenario 2: members of one group come and go every few seconds under load (between one
    and three; some leave with SIGTERM, some are SIGKILLed)."""
    run = FaultRun("2 rebalance storm", healthy, settings, dynamodb, consumer_factory, seed=202)
    rng = random.Random(2)
    changes = early_terms = 0
    try:
        run.start_workload(rate_tx_s=20, burst_every=30, burst_rows=20)
        run.wait_events(100)
        members = [run.consumer, run.add_consumer(), run.add_consumer()]
        deadline = time.monotonic() + 45 * SCALE
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2.0, 4.0))
            if len(members) > 1 and (len(members) == 3 or rng.random() < 0.5):
                member = members.pop(0)  # the oldest: long past its start-up
                if rng.random() < 0.3:
                    member.kill()
                else:
                    code = member.stop()
                    # -15: SIGTERM came before `run` set its handler (still starting up).
                    assert code in (0, -15), f"a member leaving the group exited with {code}"
                    early_terms += code == -15
                run.removed.append(member)
            else:
                members.append(run.add_consumer())
            changes += 1
        run.fault_over()
        outcome = run.finish()
    finally:
        run.close()
    print(f"FAULTS 2 membership changes: {changes}, SIGTERM during start-up: {early_terms}")
    outcome.assert_clean()
