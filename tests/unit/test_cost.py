"""`replicator cost`'s arithmetic: units per second to dollars per month at the configured
on-demand prices, rates from a window or a process's lifetime, and clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from replicator.cli import app
from replicator.config import CostSettings, Settings
from replicator.errors import ReplicatorError
from replicator.observe.cost import (
    HOURS_PER_MONTH,
    estimate,
    lifetime_rates,
    measure,
    monthly,
    window_rates,
)
from replicator.observe.status import READ_UNITS, WRITE_UNITS, parse_exposition


def test_default_prices_are_us_east_1_on_demand() -> None:
    prices = Settings().cost
    assert (prices.write_per_million, prices.read_per_million) == (0.625, 0.125)
    assert prices.storage_per_gb_month == 0.25


def test_monthly_is_730_hours_of_the_rate() -> None:
    assert HOURS_PER_MONTH == 730
    # 1 unit/s for a month is 2.628 million units.
    assert monthly(1.0, 1.0) == pytest.approx(2.628)
    assert monthly(100.0, 0.625) == pytest.approx(262.8 * 0.625)


def test_estimate_per_table_with_reads_and_storage() -> None:
    prices = CostSettings(write_per_million=1.25, read_per_million=0.25, storage_per_gb_month=0.25)
    report = estimate(
        ["Payments", "IntegrationLogs"],
        {"Payments": 10.0, "IntegrationLogs": 200.0},
        {"Payments": 40.0},
        {"Payments": 2_000_000_000, "IntegrationLogs": None},
        prices,
        "window of 60 s",
        ["u"],
        [],
    )
    pay, logs = report.tables
    assert pay.write_usd_month == pytest.approx(10 * 2.628 * 1.25)
    assert pay.read_usd_month == pytest.approx(40 * 2.628 * 0.25)
    assert pay.storage_usd_month == pytest.approx(0.5)
    assert pay.total_usd_month == pytest.approx(32.85 + 26.28 + 0.5)
    assert logs.read_units_per_s is None and logs.read_usd_month is None  # not measured
    assert logs.storage_usd_month is None
    assert report.total_usd_month == pytest.approx(pay.total_usd_month + logs.total_usd_month)
    assert report.as_json()["total_usd_month"] == pytest.approx(report.total_usd_month)


def test_rates_from_a_window_and_from_a_lifetime() -> None:
    text = (
        "replicator_start_time_seconds 1000\n"
        f'{WRITE_UNITS}{{table="Payments"}} 500\n'
        f'{READ_UNITS}{{table="Payments"}} 50\n'
    )
    first = parse_exposition(text, at=1100.0)
    later = parse_exposition(text.replace(" 500", " 700"), at=1110.0)
    assert lifetime_rates(first, WRITE_UNITS, now=1100.0) == {"Payments": 5.0}
    assert window_rates(first, later, WRITE_UNITS) == {"Payments": 20.0}
    assert window_rates(first, later, READ_UNITS) == {"Payments": 0.0}
    assert lifetime_rates(parse_exposition("", at=1.0), WRITE_UNITS, now=1.0) == {}


def test_no_reachable_consumer_is_a_clear_error() -> None:
    with pytest.raises(ReplicatorError, match="no consumer reachable"):
        measure(Settings(), ["http://127.0.0.1:9/metrics"], 0, None)
    with pytest.raises(ReplicatorError, match="--window"):
        measure(Settings(), ["http://127.0.0.1:9/metrics"], -1, None)
    done = CliRunner().invoke(app, ["cost", "--metrics-url", "http://127.0.0.1:9/metrics"])
    assert done.exit_code == 1 and "no consumer reachable" in done.output
    assert "Traceback" not in done.output
