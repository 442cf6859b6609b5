"""Phase 5's pure parts: the consumer drops a purge's changes by their replication origin,
the purge's gates, its window in both stores' forms, verify not counting purged items as
extra, and the rate limit."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from factories import create_record, delete_record, envelope, key_of, log_row, record
from test_metrics import FakeDynamo, FakeMessage, pipeline, value

from replicator.config import Settings, default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Origin
from replicator.core.mapping import to_item
from replicator.errors import ConfigError
from replicator.ops.phases import Phase
from replicator.ops.purge import pace, parse_before, purge_checks, time_column
from replicator.ops.purged import in_purged_window, item_bound
from replicator.ops.verify import Expectation, VerifyRun, judge
from replicator.ops.verify import key_text as verify_key_text

LOGS_SOURCE = "dbo.integrationlogs"
LOGS, PAYMENTS = default_tables()
ORIGIN = Settings().purge.origin
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def purge_delete(row: dict[str, Any], origin: str | None = ORIGIN) -> Any:
    return record(
        LOGS_SOURCE,
        envelope("d", LOGS_SOURCE, row, None, origin=origin),
        key_of(LOGS_SOURCE, row),
    )


# --- the consumer's origin filter -----------------------------------------------------------


def test_decode_carries_the_transactions_replication_origin() -> None:
    row = log_row(logid=5)
    at = Origin("t", 0, 1)
    tagged = purge_delete(row)
    event = decode(tagged.key, tagged.value, at)
    assert isinstance(event, ChangeEvent) and event.source_origin == ORIGIN
    plain = delete_record(LOGS_SOURCE, row)
    event = decode(plain.key, plain.value, at)
    assert isinstance(event, ChangeEvent) and event.source_origin is None


def test_the_consumer_drops_the_purges_changes_and_applies_everything_else() -> None:
    client = FakeDynamo()
    p = pipeline(client)
    rows = [log_row(logid=n) for n in (1, 2, 3)]
    p.process(
        [
            FakeMessage(purge_delete(rows[0])),  # the purge: dropped
            FakeMessage(purge_delete(rows[1], origin="pg_16386")),  # another origin: applied
            FakeMessage(delete_record(LOGS_SOURCE, rows[2])),  # an ordinary delete: applied
            FakeMessage(create_record(LOGS_SOURCE, log_row(logid=4))),
        ]
    )
    m = p.metrics
    table = LOGS.name
    assert client.requests == 3  # two delete markers and one item; nothing for the purge
    assert p.stats.purged == 1 and p.stats.skipped == 1
    assert value(m, "replicator_events_purged_total", table=table) == 1
    assert value(m, "replicator_events_skipped_total", table=table) == 1
    assert sum(
        value(m, f"replicator_events_{what}_total", table=table)
        for what in ("applied", "stale", "skipped", "dead_lettered")
    ) == value(m, "replicator_events_consumed_total", table=table)


def test_the_purged_counter_starts_at_zero_for_every_table() -> None:
    from replicator.observe.metrics import Metrics

    m = Metrics(tables=[LOGS.name, PAYMENTS.name])
    text = m.exposition().decode()
    for name in (LOGS.name, PAYMENTS.name):
        assert f'replicator_events_purged_total{{table="{name}"}} 0.0' in text


# --- gates ----------------------------------------------------------------------------------


def run(clean: bool = True, hours_ago: float = 1.0, divergent: int = 0) -> VerifyRun:
    at = NOW - dt.timedelta(hours=hours_ago)
    return VerifyRun(1, LOGS.name, "full", at, at, 10, 10, divergent, 0, clean)


def failed(checks: list[Any]) -> dict[str, str]:
    return {c.name: c.value for c in checks if not c.ok}


def test_a_table_long_enough_in_dynamodb_only_and_verified_clean_may_be_purged() -> None:
    checks = purge_checks(
        phase=Phase.DYNAMODB_ONLY,
        entered_at=NOW - dt.timedelta(hours=25),
        last_verify=run(),
        now=NOW,
        window_h=24,
        verify_within_h=24,
    )
    assert [c.name for c in checks] == ["in dynamodb-only", "dynamodb-only soak", "clean verify"]
    assert all(c.ok for c in checks) and checks[1].value == "25.00 h"


def test_each_failed_condition_is_named_with_its_value() -> None:
    checks = purge_checks(
        phase=Phase.HYBRID_READ,
        entered_at=NOW - dt.timedelta(hours=100),
        last_verify=None,
        now=NOW,
        window_h=24,
        verify_within_h=24,
    )
    assert failed(checks) == {
        "in dynamodb-only": "hybrid-read",
        "dynamodb-only soak": "in hybrid-read",
        "clean verify": "no full verify recorded",
    }
    short = purge_checks(
        phase=Phase.DYNAMODB_ONLY,
        entered_at=NOW - dt.timedelta(hours=2),
        last_verify=run(clean=False, divergent=3),
        now=NOW,
        window_h=24,
        verify_within_h=24,
    )
    values = failed(short)
    assert values["dynamodb-only soak"] == "2.00 h"
    assert values["clean verify"].startswith("3 divergent keys at ")
    old = purge_checks(
        phase=Phase.DYNAMODB_ONLY,
        entered_at=NOW - dt.timedelta(hours=48),
        last_verify=run(hours_ago=30),
        now=NOW,
        window_h=24,
        verify_within_h=24,
    )
    assert failed(old)["clean verify"].endswith("(30.0 h ago)")


# --- the window -----------------------------------------------------------------------------


def test_the_window_column_defaults_as_verifys_and_must_be_a_time() -> None:
    assert time_column(LOGS, None)[:2] == ("logtimestamp", "timestamp")
    assert time_column(PAYMENTS, "paymentdate") == ("paymentdate", "date", "PaymentDate")
    with pytest.raises(ConfigError, match="not a timestamp or date column"):
        time_column(PAYMENTS, "paymentamount")


def test_before_is_utc_and_a_date_column_takes_a_date() -> None:
    assert parse_before("2024-01-01", "timestamp") == dt.datetime(2024, 1, 1)
    assert parse_before("2024-01-01T02:00:00+02:00", "timestamp") == dt.datetime(2024, 1, 1)
    assert parse_before("2024-01-01T00:00:00Z", "date") == dt.date(2024, 1, 1)
    with pytest.raises(ConfigError, match="give a date"):
        parse_before("2024-01-01T10:00:00", "date")
    with pytest.raises(ConfigError, match="not a date or an ISO-8601 time"):
        parse_before("last tuesday", "timestamp")


def test_an_item_is_in_a_purged_window_when_its_time_is_before_the_bound() -> None:
    bound = item_bound("timestamp", dt.datetime(1988, 1, 1))
    assert bound == "1988-01-01T00:00:00.000000Z"
    bounds = [("LogTimestamp", bound)]
    old = to_item(LOGS, log_row(logid=1, logtimestamp=_micros(1987, 12, 31, 23)))[0]
    edge = to_item(LOGS, log_row(logid=2, logtimestamp=_micros(1988, 1, 1, 0)))[0]
    assert in_purged_window(old, bounds) and not in_purged_window(edge, bounds)
    assert not in_purged_window({"LogId": {"N": "3"}}, bounds)  # no time attribute
    assert item_bound("date", dt.date(1988, 1, 1)) == "1988-01-01"


def _micros(*args: int) -> int:
    return (dt.datetime(*args) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)


def test_verify_does_not_count_an_item_of_a_purged_window_as_extra() -> None:
    old = to_item(LOGS, log_row(logid=1, logtimestamp=_micros(1987, 6, 1)))[0]
    new = to_item(LOGS, log_row(logid=2, logtimestamp=_micros(2024, 6, 1)))[0]
    items = {verify_key_text(LOGS, i): i for i in (old, new)}
    rows = [Expectation({"logid": 1}), Expectation({"logid": 2})]  # both rows are gone
    bounds = [("LogTimestamp", item_bound("timestamp", dt.datetime(1988, 1, 1)))]
    assert [d.source_key for d in judge(LOGS, rows, items)] == [{"logid": 1}, {"logid": 2}]
    assert [d.source_key for d in judge(LOGS, rows, items, bounds)] == [{"logid": 2}]


def test_the_rate_limit_paces_rows_per_second() -> None:
    assert pace(done=1000, rate=500, started=10.0, now=10.5) == pytest.approx(1.5)
    assert pace(done=1000, rate=500, started=10.0, now=13.0) == 0.0
