"""verify's pure parts: comparing items as readers see them, judging divergences, windows."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest
from factories import days, log_row, micros, payment_row
from hypothesis import given
from hypothesis import strategies as st

from replicator.config import default_tables
from replicator.core.events import Position
from replicator.core.mapping import TableMapping, to_item
from replicator.errors import ConfigError
from replicator.ops.verify import (
    Divergence,
    Expectation,
    Window,
    _divergence,
    _window_bounds,
    default_time_column,
    differences,
    digest,
    expect,
    judge,
    key_from_shown,
    key_of,
    key_text,
    number_text,
    pk_of_item,
    repair_position,
    shown_key,
)
from replicator.stream.rows import as_debezium, source_row

LOGS, PAYMENTS = default_tables()


def payment(**values: Any) -> dict[str, Any]:
    return {**payment_row(**values), "customerid": 4711}


def item_of(mapping: TableMapping, row: dict[str, Any]) -> dict[str, Any]:
    return to_item(mapping, row)[0]


def with_meta(item: dict[str, Any], pos: str = "0000000000000001.1.0000000000000001") -> Any:
    return {**item, "_pos": {"S": pos}, "_src_ms": {"N": "1700000000000"}}


# --- comparing ------------------------------------------------------------------------------


def test_numbers_compare_by_value_not_by_text() -> None:
    item = item_of(PAYMENTS, payment(paymentamount="10.50"))
    assert item["PaymentAmount"] == {"N": "10.50"}
    # DynamoDB keeps numbers canonical and answers "10.5" for a stored 10.50: the same number.
    same = {**item, "PaymentAmount": {"N": "10.5"}}
    assert differences(item, same) == {}
    assert digest(item) == digest(same)
    # A scale error (cents stored as units) is a different number.
    wrong = {**item, "PaymentAmount": {"N": "1050"}}
    assert differences(item, wrong) == {"PaymentAmount": ({"N": "10.50"}, {"N": "1050"})}
    assert digest(item) != digest(wrong)
    # The right digits as text are not a number.
    text = {**item, "PaymentAmount": {"S": "10.50"}}
    assert differences(item, text) == {"PaymentAmount": ({"N": "10.50"}, {"S": "10.50"})}


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9
    )
)
def test_equal_numbers_have_one_text(value: decimal.Decimal) -> None:
    padded = f"{value:.6f}"
    assert number_text(padded) == number_text(str(value))
    assert decimal.Decimal(number_text(padded)) == value


def test_meta_attributes_are_not_data() -> None:
    item = item_of(LOGS, log_row())
    assert differences(item, with_meta(item)) == {}
    assert digest(item) == digest(with_meta(item))


def test_a_missing_attribute_and_an_extra_one_are_differences() -> None:
    item = item_of(LOGS, log_row(correlationid="c-9"))
    without = {k: v for k, v in item.items() if k != "CorrelationId"}
    assert differences(item, without) == {"CorrelationId": ({"S": "c-9"}, None)}
    assert differences(without, item) == {"CorrelationId": (None, {"S": "c-9"})}


def test_long_text_and_binary_are_cut_in_reports() -> None:
    item = item_of(LOGS, log_row(requestdata="x" * 5000))
    other = {**item, "RequestData": {"B": b"\x1f\x8b" + b"y" * 500}}
    ((expected, actual),) = differences(item, other).values()
    assert expected["S"].endswith("... (5000 characters)") and len(expected["S"]) < 2100
    assert actual["B"].startswith("<502 bytes")


# --- judging --------------------------------------------------------------------------------


def expectation(mapping: TableMapping, row: dict[str, Any]) -> Expectation:
    pk = {c: row[c] for c in mapping.primary_key}
    return expect(mapping, pk, row)


def at(mapping: TableMapping, *items: Any, absent: tuple[Any, ...] = ()) -> dict[str, Any]:
    found: dict[str, Any] = {key_text(mapping, i): i for i in items}
    found.update({key_text(mapping, k): None for k in absent})
    return found


def test_an_equal_item_is_no_divergence() -> None:
    row = payment(paymentid=7)
    item = with_meta(item_of(PAYMENTS, row))
    assert judge(PAYMENTS, [expectation(PAYMENTS, row)], at(PAYMENTS, item)) == []


def test_missing_item_and_a_delete_marker_are_missing() -> None:
    row = payment(paymentid=7)
    item = item_of(PAYMENTS, row)
    marker = {**key_of(PAYMENTS, item), "_deleted": {"BOOL": True}, "_pos": {"S": "p"}}
    for items in (at(PAYMENTS, absent=(item,)), at(PAYMENTS, marker)):
        (found,) = judge(PAYMENTS, [expectation(PAYMENTS, row)], items)
        assert found.kind == "missing"
        assert found.key == {"CustomerId": "4711", "PaymentDateId": "2024-02-01#0000000007"}
        assert found.source_key == {"paymentid": 7}


def test_a_changed_attribute_is_reported_with_both_values() -> None:
    row = payment(paymentid=8, paymentstatus="Pending")
    stored = {**item_of(PAYMENTS, row), "PaymentStatus": {"S": "Completed"}}
    (found,) = judge(PAYMENTS, [expectation(PAYMENTS, row)], at(PAYMENTS, stored))
    assert found.kind == "differs"
    assert found.attributes == {"PaymentStatus": ({"S": "Pending"}, {"S": "Completed"})}


def test_an_item_no_row_claims_is_extra_and_a_delete_marker_never_is() -> None:
    gone = item_of(LOGS, log_row(logid=41))
    marker = {**key_of(LOGS, item_of(LOGS, log_row(logid=42))), "_deleted": {"BOOL": True}}
    found = judge(LOGS, [Expectation({"logid": 41})], at(LOGS, gone, marker))
    assert [(d.kind, d.source_key) for d in found] == [("extra", {"logid": 41})]


def test_a_stale_key_left_after_a_key_move_is_extra() -> None:
    before = payment(paymentid=9, paymentdate=days(2024, 3, 1))
    after = payment(paymentid=9, paymentdate=days(2024, 3, 2))
    old, new = item_of(PAYMENTS, before), item_of(PAYMENTS, after)
    found = judge(PAYMENTS, [expectation(PAYMENTS, after)], at(PAYMENTS, old, new))
    assert [(d.kind, d.key["PaymentDateId"]) for d in found] == [("extra", "2024-03-01#0000000009")]


def test_an_unmappable_row_is_reported_with_its_reason() -> None:
    row = payment_row(paymentid=10)  # no customerid: the lookup found nothing
    (found,) = judge(PAYMENTS, [expectation(PAYMENTS, row)], {})
    assert found.kind == "unmappable" and "customerid" in found.detail
    assert found.source_key == {"paymentid": 10}


def test_divergences_survive_the_spill_format() -> None:
    d = Divergence("differs", {"PK": "a", "SK": "b"}, {"logid": 1}, {"X": ({"S": "1"}, None)})
    assert _divergence(d.to_json()) == d


# --- keys -----------------------------------------------------------------------------------


def test_keys_and_primary_keys_round_trip() -> None:
    for mapping, row, pk in (
        (LOGS, log_row(logid=123456789012), {"logid": 123456789012}),
        (PAYMENTS, payment(paymentid=77), {"paymentid": 77}),
    ):
        item = item_of(mapping, row)
        assert pk_of_item(mapping, item) == pk
        assert key_from_shown(mapping, shown_key(mapping, item)) == key_of(mapping, item)
    assert pk_of_item(LOGS, {"PK": {"S": "x"}, "SK": {"S": "y"}}) is None


def test_a_number_key_is_named_by_its_value() -> None:
    item = item_of(PAYMENTS, payment(paymentid=1))
    assert key_text(PAYMENTS, item) == key_text(PAYMENTS, {**item, "CustomerId": {"N": "4711.0"}})


def test_rows_arrive_in_debeziums_shape() -> None:
    record = {
        "logtimestamp": dt.datetime(2024, 1, 15, 10, 30, 0, 123456),
        "paymentdate": dt.date(2024, 2, 1),
        "paymentamount": decimal.Decimal("10.50"),
        "at": dt.datetime(2024, 1, 15, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "blob": b"\x00\x01",
    }
    assert source_row(record) == {
        "logtimestamp": micros(2024, 1, 15, 10, 30, 0, 123456),
        "paymentdate": days(2024, 2, 1),
        "paymentamount": "10.50",
        "at": "2024-01-15T10:30:00Z",
        "blob": "AAE=",
    }
    assert as_debezium("text") == "text" and as_debezium(None) is None


# --- windows --------------------------------------------------------------------------------


def test_window_bounds_in_both_stores_forms() -> None:
    attribute, bounds = _window_bounds(
        LOGS, Window("logtimestamp", dt.date(2024, 1, 1), dt.datetime(2024, 1, 2, 12))
    )
    assert attribute == "LogTimestamp"
    assert [(op, value) for op, _, value in bounds] == [
        (">=", "2024-01-01T00:00:00.000000Z"),
        ("<", "2024-01-02T12:00:00.000000Z"),
    ]
    _, bounds = _window_bounds(PAYMENTS, Window("paymentdate", None, dt.date(2024, 3, 1)))
    assert [(op, str(b), value) for op, b, value in bounds] == [("<", "2024-03-01", "2024-03-01")]


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (Window("paymentstatus", dt.date(2024, 1, 1)), "not a timestamp or date column"),
        (Window("paymentdate", dt.datetime(2024, 1, 1, 10)), "give dates, not times"),
        (Window("paymentdate", dt.date(2024, 2, 1), dt.date(2024, 1, 1)), "before --until"),
    ],
)
def test_bad_windows_are_refused(window: Window, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _window_bounds(PAYMENTS, window)


def test_default_time_columns() -> None:
    assert default_time_column(LOGS) == "logtimestamp"
    assert default_time_column(PAYMENTS) == "createddate"


# --- the command line (errors found before any store is asked) -------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "-t", "Nope"], "no mapped table is named 'Nope'"),
        (["verify", "-t", "Payments", "--since", "yesterday"], "not an ISO-8601 date"),
        (["verify", "-t", "Payments", "--time-column", "paymentdate"], "needs --since"),
        (["validate", "-t", "Payments", "--threshold", "2"], "sample_threshold"),
        (["validate", "-t", "Payments", "--until", "31/12/2024"], "not an ISO-8601 date"),
        (["validate", "-t", "Payments", "--time-column", "paymentdate"], "needs --since"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from replicator.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_repair_ranks_as_a_read_at_the_newest_position_read_before_it() -> None:
    applied = Position(0x50, 1, 0x58).encode()  # the newest change read from the table
    read_there = Position(0x50, 0, 0x58).encode()
    older = Position(0x20, 1, 0x28).encode()
    newer = Position(0x60, 1, 0x61).encode()
    # A missing item gets a position: an older event replayed later is refused by the guard.
    assert repair_position(None, applied) == read_there
    assert older < read_there
    # Every change the stream delivers later ranks above it, even one at the same position.
    assert read_there < applied < newer
    # A stored item's own position is raised, never lowered.
    assert repair_position(older, applied) == read_there
    assert repair_position(newer, applied) == newer
    # Nothing with a position read: the stored one (or none) as before.
    assert repair_position(None, None) is None and repair_position(older, None) == older
    # An initial-snapshot read stays where it is.
    snapshot = Position(0, 0, 0x30).encode()
    assert repair_position(None, snapshot) == snapshot
