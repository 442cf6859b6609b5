"""The lag/status screens' and the status page's pure parts: reading an exposition, quantiles
from histogram buckets (as Prometheus computes them), rates between two scrapes, the ring
buffer sampled from the real metrics, the SVG charts and the page; and the source monitor's
gauges from the slot and connector answers."""

from __future__ import annotations

import re
import time
from collections import Counter as Tally

import pytest
from typer.testing import CliRunner

from replicator.cli import app
from replicator.errors import ConnectorError, LookupUnavailableError
from replicator.observe.lag import SlotLag
from replicator.observe.metrics import Metrics, SourceMonitor
from replicator.observe.probes import Health
from replicator.observe.status import (
    LAG_COLOUR,
    SPEED_COLOUR,
    History,
    Report,
    TableStatus,
    chart_svg,
    from_registry,
    histogram_quantile,
    page_html,
    parse_exposition,
    rates,
    render,
)
from replicator.stream.sink import SinkResult, TableResult

EXPOSITION = """\
# TYPE replicator_events_consumed_total counter
replicator_events_consumed_total{table="Payments"} 100
replicator_events_consumed_total{table="IntegrationLogs"} 7
# TYPE replicator_end_to_end_seconds histogram
replicator_end_to_end_seconds_bucket{table="Payments",le="0.1"} 10
replicator_end_to_end_seconds_bucket{table="Payments",le="1.0"} 90
replicator_end_to_end_seconds_bucket{table="Payments",le="10.0"} 100
replicator_end_to_end_seconds_bucket{table="Payments",le="+Inf"} 100
replicator_end_to_end_seconds_count{table="Payments"} 100
replicator_end_to_end_seconds_sum{table="Payments"} 55
"""


def test_parse_exposition_sums_replicas() -> None:
    scrape = parse_exposition(EXPOSITION, at=1.0)
    parse_exposition(EXPOSITION, into=scrape)  # a second replica
    assert scrape.total("replicator_events_consumed_total", table="Payments") == 200
    assert scrape.by_label("replicator_events_consumed_total", "table") == {
        "Payments": 200,
        "IntegrationLogs": 14,
    }
    assert scrape.buckets("replicator_end_to_end_seconds", table="Payments")[-1] == (
        float("inf"),
        200,
    )


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (1.0, 90.0), (10.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.9 * (50 - 10) / 80)
    assert histogram_quantile(0.99, buckets) == pytest.approx(1.0 + 9.0 * (99 - 90) / 10)
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.05)  # first bucket from 0
    # Past the last finite bound: the largest finite bound, as Prometheus answers.
    assert histogram_quantile(0.99, [(1.0, 1.0), (float("inf"), 10.0)]) == 1.0
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


def test_rates_use_the_window_and_fall_back_to_all_time_latency() -> None:
    before = parse_exposition(EXPOSITION, at=100.0)
    after = parse_exposition(
        EXPOSITION.replace("} 100\n", "} 120\n", 1)  # 20 more Payments events
        .replace('le="10.0"} 100', 'le="10.0"} 120')
        .replace('le="+Inf"} 100', 'le="+Inf"} 120'),
        at=110.0,
    )
    r = rates(before, after, "Payments")
    assert r.events_per_s == pytest.approx(2.0)
    # The window's 20 writes all took 1-10 s: its p50 is in that bucket, not the all-time one.
    assert r.latency_window == "window"
    assert 1.0 < (r.p50_s or 0) <= 10.0
    quiet = rates(before, before, "Payments")
    assert quiet.latency_window == "since start" and quiet.events_per_s is None
    nothing = rates(None, after, "IntegrationLogs")
    assert nothing.latency_window == "none" and nothing.p50_s is None


def test_chart_svg_draws_the_series_in_its_colour() -> None:
    now = 1000.0
    svg = chart_svg("lag", [(now - 60 + i, float(i)) for i in range(61)], "#123456", now, 60, "ev")
    (line,) = re.findall(r'<polyline points="([^"]+)" fill="none" stroke="#123456"', svg)
    xs = [float(p.split(",")[0]) for p in line.split()]
    ys = [float(p.split(",")[1]) for p in line.split()]
    assert xs == sorted(xs) and ys[0] > ys[-1]  # time to the right, higher values up
    assert ">100<" in svg  # the y axis ends at a round number above the peak (60)
    empty = chart_svg("lag", [], "#123456", now, 60, "ev")
    assert "polyline" not in empty and "collecting" in empty


def test_history_samples_lag_per_table_and_throughput_from_the_real_metrics() -> None:
    metrics = Metrics(tables=["Payments"])
    now = [1000.0]
    history = History(
        metrics, {"loans.dbo.payments": "Payments"}, every_s=1, keep_s=10, clock=lambda: now[0]
    )
    metrics.lag.labels("loans.dbo.payments", "0").set(30)
    metrics.lag.labels("loans.dbo.payments", "1").set(12)
    history.sample()
    metrics.batch(Tally({"Payments": 50}), Tally(), Tally())
    now[0] += 0.05
    point = history.sample()
    assert point.lag == {"Payments": 42} and point.at == 1000.05
    assert point.events_per_s["Payments"] == pytest.approx(1000)  # 50 events in 0.05 s
    for _ in range(20):
        history.sample()
    assert len(history.snapshot()) == 11  # keep_s / every_s + 1: a ring, not a leak


def test_status_page_shows_health_numbers_and_two_charts_per_table() -> None:
    metrics = Metrics(tables=["Payments", "IntegrationLogs"])
    result = SinkResult()
    result.tables["Payments"] = TableResult(applied=3, e2e_s=[0.2, 0.3, 5.0], capacity=3.0)
    metrics.written(result.tables)
    metrics.connector({"connector": {"state": "RUNNING"}, "tasks": [{"state": "RUNNING"}]})
    metrics.slot(SlotLag("replicator", True, 4096, "0/1"))
    topics = {"loans.dbo.payments": "Payments", "loans.dbo.integrationlogs": "IntegrationLogs"}
    history = History(metrics, topics, every_s=1, keep_s=600)
    history.sample()
    history.sample()
    health = Health()
    health.started()
    health.assignment(True, 3)
    page = page_html(
        history.snapshot(),
        list(topics.values()),
        health,
        time.time(),
        600,
        from_registry(metrics),
    )
    assert "<title>replicator status</title>" in page
    assert "http-equiv='refresh'" in page
    assert page.count(f'stroke="{LAG_COLOUR}"') == 2
    assert page.count(f'stroke="{SPEED_COLOUR}"') == 2
    assert ">live<" in page and ">ready<" in page
    assert "<b id='connector'>RUNNING</b> (tasks: 1 RUNNING)" in page and "4.0 KiB" in page
    assert "applied <b>3</b>" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_source_monitor_sets_slot_and_connector_gauges() -> None:
    from replicator.config import Settings

    metrics = Metrics()
    answers: list[object] = [
        {"connector": {"state": "RUNNING"}, "tasks": [{"state": "RUNNING"}, {"state": "FAILED"}]}
    ]

    def connector() -> dict[str, object] | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    slots: list[object] = [SlotLag("replicator", True, 123, None)]

    def slot() -> SlotLag | None:
        answer = slots.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    monitor = SourceMonitor(Settings(), metrics, read_slot=slot, read_connector=connector)
    monitor.once()
    s = from_registry(metrics)
    assert s.total("replicator_slot_retained_wal_bytes") == 123
    assert s.total("replicator_slot_active") == 1
    assert s.total("replicator_connector_state", state="RUNNING") == 1
    assert s.total("replicator_connector_tasks", state="FAILED") == 1
    assert s.total("replicator_connector_tasks", state="RUNNING") == 1

    # PostgreSQL does not answer: the slot keeps its last values, the failure is counted.
    # Connect does not answer: the state is UNKNOWN, not a stale RUNNING.
    slots.append(LookupUnavailableError("postgresql down"))
    answers.append(ConnectorError("Kafka Connect did not answer"))
    monitor.once()
    s = from_registry(metrics)
    assert s.total("replicator_slot_retained_wal_bytes") == 123
    assert s.total("replicator_slot_probe_failures_total") == 1
    assert s.total("replicator_connector_state", state="RUNNING") == 0
    assert s.total("replicator_connector_state", state="UNKNOWN") == 1
    assert s.total("replicator_connector_tasks", state="FAILED") == 0

    # The slot was dropped and the connector deleted.
    slots.append(None)
    answers.append(None)
    monitor.once()
    s = from_registry(metrics)
    assert s.total("replicator_slot_active") == 0
    assert s.total("replicator_slot_retained_wal_bytes") == 0
    assert s.total("replicator_connector_state", state="MISSING") == 1


def _report(**changes: object) -> Report:
    table = TableStatus(
        table="Payments",
        source="dbo.payments",
        topic="loans.dbo.payments",
        phase="unknown",
        connector="RUNNING",
        tasks=["RUNNING"],
        slot={"name": "replicator", "active": True, "retained_wal_bytes": 2048},
        lag_events=5,
        lag_seconds=1.5,
        p50_s=0.2,
        p99_s=1.2,
        latency_window="window",
        events_per_s=3.0,
        applied_per_s=2.5,
        replica_identity="FULL",
        replica_identity_ok=True,
    )
    report = Report(
        at="2026-01-01T00:00:00+00:00",
        consumers=["http://127.0.0.1:9108/metrics"],
        consumer_reachable=True,
        connector={"name": "c", "state": "RUNNING", "tasks": ["RUNNING"]},
        slot=table.slot,
        tables=[table],
    )
    for k, v in changes.items():
        setattr(report, k, v)
    return report


def test_report_health_needs_connector_tasks_slot_and_ready_consumers() -> None:
    assert _report().healthy()
    assert not _report(connector={"state": "RUNNING", "tasks": ["FAILED"]}).healthy()
    assert not _report(connector={"state": "RUNNING", "tasks": []}).healthy()
    assert not _report(slot={"active": False}).healthy()
    assert not _report(slot=None).healthy()
    assert not _report(consumer_reachable=False).healthy()
    assert not _report(probes={"http://x": {"live": True, "ready": False}}).healthy()
    table = _report().tables[0]
    for identity, ok in (("DEFAULT", False), (None, None)):  # hides key moves; unknown
        table.replica_identity, table.replica_identity_ok = identity, ok
        assert not _report(tables=[table]).healthy()


def test_render_names_a_replica_identity_that_hides_key_moves() -> None:
    from rich.console import Console

    table = _report().tables[0]
    table.replica_identity, table.replica_identity_ok = "DEFAULT", False
    console = Console(width=120, record=True)
    console.print(render(_report(tables=[table])))
    assert "replica identity  DEFAULT (key moves need FULL" in console.export_text()


def test_render_shows_one_panel_per_table_and_says_when_no_consumer_answers() -> None:
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(render(_report()))
    text = console.export_text()
    assert "Payments" in text and "unknown" in text and "2.0 KiB" in text
    assert "5 events" in text and "p50 200 ms, p99 1.2 s" in text and "3.0 events/s" in text
    console = Console(width=100, record=True)
    console.print(render(_report(consumer_reachable=False)))
    assert "no consumer reachable" in console.export_text()


def test_cli_refuses_bad_options_with_a_message() -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["lag", "--watch", "--json"])
    assert done.exit_code == 1 and "do not go together" in done.output
    done = runner.invoke(app, ["status", "--interval", "0"])
    assert done.exit_code == 1 and "--interval" in done.output
    done = runner.invoke(app, ["lag", "--window", "0"])
    assert done.exit_code == 1 and "--window" in done.output
    done = runner.invoke(app, ["lag", "--table", "Nope"])
    assert done.exit_code == 1 and "no mapped table is named 'Nope'" in done.output
    assert "Traceback" not in done.output


def test_connector_state_off_exports_no_connector_series() -> None:
    from replicator.config import MetricsSettings, Settings

    settings = Settings(metrics=MetricsSettings(connector_state=False))
    metrics = Metrics(connector=False)
    monitor = SourceMonitor(settings, metrics, read_slot=lambda: None)
    assert monitor.read_connector is None
    monitor.once()
    s = from_registry(metrics)
    assert "replicator_connector_state" not in s.names()  # silent alerts, not a false state
    assert "replicator_connector_tasks" not in s.names()
    assert s.total("replicator_slot_active") == 0


def test_replica_identity_full_is_needed_only_where_keys_can_move() -> None:
    from replicator.config import load_settings
    from replicator.ops.postgres import IdentityCheck, key_columns_beyond_pk

    logs, payments = load_settings(None).tables
    assert key_columns_beyond_pk(logs) == {"servicename", "logtimestamp"}
    # CustomerId is looked up by loanid: a payment moved to another loan moves its item.
    assert key_columns_beyond_pk(payments) == {"paymentdate", "loanid"}
    moving = IdentityCheck("dbo.payments", "DEFAULT", frozenset({"paymentdate"}))
    assert not moving.ok
    assert "ALTER TABLE dbo.payments REPLICA IDENTITY FULL;" in moving.describe()
    assert IdentityCheck("dbo.notes", "DEFAULT", frozenset()).ok  # key = primary key only
    assert IdentityCheck("dbo.payments", "FULL", frozenset({"paymentdate"})).ok
    assert not IdentityCheck("dbo.gone", None, frozenset()).ok


def test_the_source_columns_line_names_what_the_consumers_see_not_as_mapped() -> None:
    from rich.console import Console

    from replicator.observe.status import _columns

    metrics = Metrics()
    metrics.schema_column("unmapped", "Payments", "channel", True)
    metrics.schema_column("unmapped", "Payments", "[gone]", True)
    metrics.schema_column("unmapped", "Payments", "[gone]", False)
    metrics.schema_column("missing", "Payments", "transactionid", True)
    metrics.schema_column("unmapped", "IntegrationLogs", "risk", True)
    scrape = from_registry(metrics)
    assert _columns(scrape, "replicator_unmapped_columns", "Payments") == ["channel"]
    assert _columns(scrape, "replicator_missing_columns", "Payments") == ["transactionid"]
    assert _columns(None, "replicator_missing_columns", "Payments") is None

    table = _report().tables[0]
    table.unmapped_columns, table.missing_columns = ["channel"], ["transactionid"]
    console = Console(width=160, record=True)
    console.print(render(_report(tables=[table])))
    assert (
        "source columns    unmapped columns: channel; mapped columns missing from the source: "
        "transactionid" in console.export_text()
    )
    table.unmapped_columns, table.missing_columns = [], []
    console = Console(width=160, record=True)
    console.print(render(_report(tables=[table])))
    assert "source columns    as mapped" in console.export_text()
