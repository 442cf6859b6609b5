"""`replicator report`'s evaluation, from measured values to pass/fail (pure), and its page."""

from __future__ import annotations

import datetime as dt
import re

from replicator.config import CostSettings
from replicator.ops.report import (
    CRITERIA,
    CostEvidence,
    Evidence,
    HistoryEvent,
    PatternLatency,
    TableEvidence,
    ValidateEvidence,
    VerifyEvidence,
    evaluate,
    postgres_monthly,
)
from replicator.ops.report_page import DYNAMODB_COLOUR, LAG_COLOUR, POSTGRES_COLOUR, page_html

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def hours_ago(h: float) -> dt.datetime:
    return NOW - dt.timedelta(hours=h)


def move(h: float, a: str, b: str) -> HistoryEvent:
    return HistoryEvent(hours_ago(h), a, b, "ops", "why", False)


HISTORY = [
    move(100, "postgres-only", "dual-write"),
    move(90, "dual-write", "hybrid-read"),
    move(60, "hybrid-read", "dual-write"),  # a rollback, 30 min back
    move(59.5, "dual-write", "hybrid-read"),
    move(30, "hybrid-read", "dynamodb-only"),
]


def table(**changes: object) -> TableEvidence:
    base = dict(
        table="Payments",
        phase="dynamodb-only",
        verify=VerifyEvidence(hours_ago(1), 10_000, 10_000, 3),
        validate=ValidateEvidence(
            hours_ago(2),
            (True, "appeared in 0.4 s, gone in 0.5 s"),
            [
                PatternLatency("payments_by_loan", (4.0, 9.0), (1.5, 3.0), 0),
                PatternLatency("payment_by_id", (2.0, 4.0), (0.9, 2.0), 0),
            ],
        ),
        history=HISTORY,
        hybrid_fallbacks=7,
        cost=CostEvidence(
            {"writes": 1.0, "reads": 0.5, "storage": 0.5},
            {"instance": 20.0, "storage": 1.0, "io": 1.0},
            "window of 10 s",
        ),
        ttl="ExpiresAt",
        retention_days=None,
        tombstone_days=40,
    )
    base.update(changes)
    return TableEvidence(**base)  # type: ignore[arg-type]


def evidence(*tables: TableEvidence, local: str | None = None) -> Evidence:
    return Evidence(
        tables=list(tables),
        local_endpoint=local,
        alert_rules=16,
        consumers=(1, 1),
        lag={"Payments": [(0.0, 5.0), (1.0, 0.0)]},
        now=NOW,
    )


def by_name(criteria: list) -> dict:
    return {c.name: c for c in criteria}


def test_every_criterion_passes_on_good_evidence_with_its_value_and_threshold() -> None:
    report = evaluate(evidence(table()))
    assert [c.name for c in report.overall] == list(CRITERIA)
    assert report.passed, [c for c in report.overall if not c.passed]
    c = by_name(report.tables[0].criteria)
    assert c["data integrity"].measured.startswith("99.97% (3 divergent of 10000 rows")
    assert c["data integrity"].threshold == ">= 99% consistent (latest full verify)"
    assert (
        "payments_by_loan: DynamoDB 1.50 / PostgreSQL 4.00 ms p50 (38%)"
        in c["performance"].measured
    )
    assert c["cost"].measured.startswith("DynamoDB $2.00 vs PostgreSQL $22.00 per month (91% less")
    assert c["graceful degradation"].measured == (
        "59.50 h in hybrid-read, 7 fallbacks served by PostgreSQL"
    )
    assert c["rollback tested"].measured.startswith("hybrid-read -> dual-write by ops")
    assert "back for 30.0 min until moved forward again" in c["rollback tested"].measured
    assert c["audit trail and retention"].measured.startswith("5 history entries; TTL on")


def test_each_failure_names_what_was_measured() -> None:
    bad = table(
        verify=VerifyEvidence(hours_ago(1), 1000, 1000, 11),
        validate=ValidateEvidence(
            hours_ago(2),
            (False, "did not appear within 30 s"),
            [PatternLatency("payments_by_loan", (4.0, 9.0), (3.0, 5.0), 0)],
        ),
        history=[move(10, "postgres-only", "dual-write")],
        hybrid_fallbacks=None,
        cost=CostEvidence({"writes": 10.0}, {"instance": 20.0}, "w"),
        ttl=None,
    )
    report = evaluate(evidence(bad))
    assert not report.passed
    c = by_name(report.tables[0].criteria)
    assert not any(x.passed for name, x in c.items() if name != "monitoring and alerting")
    assert c["data integrity"].measured.startswith("98.90%")
    assert (
        "payments_by_loan: DynamoDB 3.00 / PostgreSQL 4.00 ms p50 (75%)"
        in c["performance"].measured
    )
    assert c["graceful degradation"].measured == "never in hybrid-read"
    assert c["rollback tested"].measured == "no rollback recorded"
    assert "(50% less" in c["cost"].measured
    overall = by_name(report.overall)
    assert overall["data integrity"].measured == "0 of 1 tables pass (failing: Payments)"


def test_nothing_measured_fails_rather_than_passes() -> None:
    empty = table(verify=None, validate=None, history=[], hybrid_fallbacks=None, cost=None)
    c = by_name(evaluate(evidence(empty)).tables[0].criteria)
    assert c["data integrity"].measured == "no full verify recorded"
    assert c["coordinated operations"].measured == "no validate run recorded"
    assert c["performance"].measured == "no read latencies measured (validate)"
    assert c["cost"].measured == "not measured"
    assert not c["audit trail and retention"].passed
    nobody = Evidence([table()], None, 0, (0, 2), {}, NOW)
    assert by_name(evaluate(nobody).overall)["monitoring and alerting"].measured == (
        "0 alert rules shipped; 0 of 2 consumers answer /metrics"
    )


def test_a_local_endpoints_latency_is_labelled_as_such() -> None:
    c = by_name(evaluate(evidence(table(), local="http://127.0.0.1:18000")).overall)
    assert "local endpoint http://127.0.0.1:18000" in c["performance"].note
    assert "not AWS DynamoDB latencies" in c["performance"].note
    assert by_name(evaluate(evidence(table())).overall)["performance"].note == ""


def test_overall_needs_every_table() -> None:
    worse = table(table="IntegrationLogs", verify=None)
    overall = by_name(evaluate(evidence(table(), worse)).overall)
    assert not overall["data integrity"].passed
    assert overall["data integrity"].measured == "1 of 2 tables pass (failing: IntegrationLogs)"
    assert overall["coordinated operations"].passed


def test_postgres_cost_is_instance_share_storage_and_io() -> None:
    prices = CostSettings()
    cost = postgres_monthly(
        table_bytes=2_000_000_000, database_bytes=8_000_000_000, io_per_s=10.0, prices=prices
    )
    assert cost == {"instance": 47.5, "storage": 0.2, "io": 5.256}
    fixed = CostSettings(postgres_instance_share=0.5)
    assert postgres_monthly(table_bytes=0, database_bytes=0, io_per_s=0, prices=fixed) == {
        "instance": 95.0,
        "storage": 0.0,
        "io": 0.0,
    }


def test_the_page_is_self_contained_and_draws_the_three_charts() -> None:
    page = page_html(evaluate(evidence(table(), local="http://127.0.0.1:18000")))
    assert "<title>replicator success report</title>" in page
    assert not re.search(r"(src|href)=|<script|@import|url\(", page)
    assert page.count('<svg class="latency"') == 1
    assert page.count('<svg class="lag"') == 1 and page.count('<svg class="cost"') == 1
    for colour in (POSTGRES_COLOUR, DYNAMODB_COLOUR, LAG_COLOUR):
        assert colour in page
    assert "not AWS DynamoDB latencies" in page
    assert 'id="verdict"' in page and "every criterion passes" in page
