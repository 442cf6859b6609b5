"""validate's pure parts: percentiles and the read calls built from real rows."""

from __future__ import annotations

import datetime as dt

from factories import log_row, micros, payment_row

from replicator.config import default_tables
from replicator.ops.validate import Check, TableValidation, _percentiles, read_calls

LOGS, PAYMENTS = default_tables()


def test_percentiles() -> None:
    assert _percentiles([]) == (0.0, 0.0)
    assert _percentiles([4.0]) == (4.0, 4.0)
    p50, p95 = _percentiles([float(ms) for ms in range(1, 101)])
    assert p50 == 50.5 and 94 < p95 <= 96


def test_read_calls_cover_every_access_pattern_with_real_parameters() -> None:
    log = log_row(logid=5, applicationid=77, correlationid="c-5", servicename="SmsService")
    log["logtimestamp"] = micros(2024, 1, 31, 23, 59)
    calls = read_calls(LOGS, [log])
    assert {c[0] for c in calls} == {
        "log_by_id",
        "logs_by_service",
        "failures_of_day",
        "logs_by_application",
        "logs_by_correlation",
    }
    assert ("logs_by_service", ("SmsService", "2024-01-31", "2024-02-01"), {}) in calls
    # NULL application and correlation: those patterns have no parameter from this row.
    bare = read_calls(LOGS, [log_row(logid=6, applicationid=None, correlationid=None)])
    assert {c[0] for c in bare} == {"log_by_id", "logs_by_service", "failures_of_day"}

    payment = {**payment_row(paymentid=9, loanid=3), "customerid": 4711}
    calls = read_calls(PAYMENTS, [payment])
    assert ("payments_by_customer", (4711,), {}) in calls
    assert ("payments_by_status", ("Completed", "2024-02-01", "2024-03-02"), {}) in calls
    assert len(calls) == 5
    # An unmappable row (its lookup found nothing) gives no calls.
    assert read_calls(PAYMENTS, [payment_row(paymentid=10)]) == []


def test_a_validation_passes_only_when_every_check_does() -> None:
    result = TableValidation("T", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    result.checks = [Check("a", True, "", ""), Check("b", True, "", "")]
    assert result.passed
    result.checks.append(Check("c", False, "1 extra", "0"))
    assert not result.passed and result.to_json()["passed"] is False
