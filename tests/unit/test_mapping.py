from __future__ import annotations

import datetime as dt
import gzip
import random
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import (
    create_record,
    days,
    fixture_records,
    log_row,
    micros,
    payment_row,
    snapshot_record,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from replicator.config import default_tables, load_settings
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.core.items import item_size
from replicator.core.mapping import UNAVAILABLE, TableMapping, to_item
from replicator.errors import ConfigError, MappingError

LOGS = "dbo.integrationlogs"
PAYMENTS = "dbo.payments"
MAPPINGS = {m.name: m for m in default_tables()}
INTEGRATION_LOGS = MAPPINGS["IntegrationLogs"]
PAYMENT_MAPPING = MAPPINGS["Payments"]


@pytest.fixture(autouse=True)
def _no_replicator_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("REPLICATOR_"):
            monkeypatch.delenv(name)


def log_item(**values: Any) -> dict[str, Any]:
    return to_item(INTEGRATION_LOGS, log_row(**values))[0]


def payment_item(customerid: int = 42, **values: Any) -> dict[str, Any]:
    return to_item(PAYMENT_MAPPING, {**payment_row(**values), "customerid": customerid})[0]


# --- IntegrationLogs: the whole item --------------------------------------------------------

SK_1 = {"S": "2024-01-15T10:30:00.123456Z#0000000000000000001"}
SK_MAX = {"S": "2024-12-31T23:59:59.000001Z#9223372036854775807"}
SK_MIDNIGHT = {"S": "2024-03-01T00:00:00.000000Z#0000000000000000042"}

INTEGRATION_LOG_CASES = [
    pytest.param(
        log_row(),
        {
            "PK": {"S": "CreditCheckService-2024-01-15"},
            "SK": SK_1,
            "LogId": {"N": "1"},
            "ApplicationId": {"N": "1"},
            "LogType": {"S": "Credit Check"},
            "ServiceName": {"S": "CreditCheckService"},
            "RequestData": {"S": '{"a":1}'},
            "IsSuccess": {"BOOL": True},
            "LogTimestamp": {"S": "2024-01-15T10:30:00.123456Z"},
            "CorrelationId": {"S": "c-1"},
            "GSI1PK": {"S": "APP#1"},
            "GSI1SK": SK_1,
            "GSI2PK": {"S": "CORR#c-1"},
            "GSI2SK": SK_1,
        },
        id="success-with-application-and-correlation",
    ),
    pytest.param(
        log_row(
            logid=9223372036854775807,
            applicationid=None,
            logtype="Payment Processing",
            servicename="PaymentGateway",
            requestdata='{"amount":"10.00"}',
            responsedata='{"error":"timeout"}',
            statuscode="504",
            issuccess=False,
            errormessage="upstream timed out",
            processingtimems=30000,
            logtimestamp=micros(2024, 12, 31, 23, 59, 59, 1),
            correlationid=None,
            userid="user-7",
        ),
        {
            "PK": {"S": "PaymentGateway-2024-12-31"},
            "SK": SK_MAX,
            "LogId": {"N": "9223372036854775807"},
            "LogType": {"S": "Payment Processing"},
            "ServiceName": {"S": "PaymentGateway"},
            "RequestData": {"S": '{"amount":"10.00"}'},
            "ResponseData": {"S": '{"error":"timeout"}'},
            "StatusCode": {"S": "504"},
            "IsSuccess": {"BOOL": False},
            "ErrorMessage": {"S": "upstream timed out"},
            "ProcessingTimeMs": {"N": "30000"},
            "LogTimestamp": {"S": "2024-12-31T23:59:59.000001Z"},
            "UserId": {"S": "user-7"},
            "GSI3PK": {"S": "ERROR#2024-12-31"},
            "GSI3SK": SK_MAX,
        },
        id="failure-without-application-or-correlation",
    ),
    pytest.param(
        log_row(
            logid=42,
            applicationid=0,
            logtype="SMS Notification",
            servicename="SmsService",
            requestdata=None,
            issuccess=False,
            processingtimems=0,
            logtimestamp=micros(2024, 3, 1),
            correlationid="corr-42",
        ),
        {
            "PK": {"S": "SmsService-2024-03-01"},
            "SK": SK_MIDNIGHT,
            "LogId": {"N": "42"},
            "ApplicationId": {"N": "0"},
            "LogType": {"S": "SMS Notification"},
            "ServiceName": {"S": "SmsService"},
            "IsSuccess": {"BOOL": False},
            "ProcessingTimeMs": {"N": "0"},
            "LogTimestamp": {"S": "2024-03-01T00:00:00.000000Z"},
            "CorrelationId": {"S": "corr-42"},
            "GSI1PK": {"S": "APP#0"},
            "GSI1SK": SK_MIDNIGHT,
            "GSI2PK": {"S": "CORR#corr-42"},
            "GSI2SK": SK_MIDNIGHT,
            "GSI3PK": {"S": "ERROR#2024-03-01"},
            "GSI3SK": SK_MIDNIGHT,
        },
        id="failure-in-every-index-at-midnight",
    ),
]


@pytest.mark.parametrize(("row", "expected"), INTEGRATION_LOG_CASES)
def test_integration_log_row_maps_to_the_design_item(row: dict, expected: dict) -> None:
    assert to_item(INTEGRATION_LOGS, row) == (expected, set())


def test_integration_log_retention_adds_expires_at() -> None:
    mapping = TableMapping.model_validate(
        {
            **INTEGRATION_LOGS.model_dump(),
            "retention": {"column": "logtimestamp", "days": 90},
        }
    )
    item, _ = to_item(mapping, log_row())
    # 2024-01-15T10:30:00Z is 1705314600; plus 90 days.
    assert item["ExpiresAt"] == {"N": str(1705314600 + 90 * 86_400)}


def test_integration_log_has_no_expires_at_without_retention() -> None:
    assert "ExpiresAt" not in log_item()


# --- Payments: the whole item ---------------------------------------------------------------

PAYMENT_CASES = [
    pytest.param(
        {**payment_row(), "customerid": 42},
        {
            "CustomerId": {"N": "42"},
            "PaymentDateId": {"S": "2024-02-01#0000000001"},
            "PaymentId": {"N": "1"},
            "LoanId": {"N": "1"},
            "PaymentNumber": {"N": "1"},
            "PaymentDate": {"S": "2024-02-01"},
            "PaymentAmount": {"N": "100.10"},
            "PrincipalAmount": {"N": "90.00"},
            "InterestAmount": {"N": "10.10"},
            "PaymentMethod": {"S": "ACH"},
            "PaymentStatus": {"S": "Completed"},
            "CreatedDate": {"S": "2024-02-01T09:15:00.233593Z"},
        },
        id="completed-ach-without-transaction",
    ),
    pytest.param(
        {
            **payment_row(
                paymentid=2147483647,
                loanid=77,
                paymentnumber=360,
                paymentdate=days(1999, 12, 31),
                paymentamount="99999999.99",
                principalamount="-0.01",
                interestamount="0.00",
                paymentmethod="Online",
                paymentstatus="Reversed",
                transactionid="TX-ß-1",
                createddate=micros(2000, 1, 1),
            ),
            "customerid": 1234567,
        },
        {
            "CustomerId": {"N": "1234567"},
            "PaymentDateId": {"S": "1999-12-31#2147483647"},
            "PaymentId": {"N": "2147483647"},
            "LoanId": {"N": "77"},
            "PaymentNumber": {"N": "360"},
            "PaymentDate": {"S": "1999-12-31"},
            "PaymentAmount": {"N": "99999999.99"},
            "PrincipalAmount": {"N": "-0.01"},
            "InterestAmount": {"N": "0.00"},
            "PaymentMethod": {"S": "Online"},
            "PaymentStatus": {"S": "Reversed"},
            "TransactionId": {"S": "TX-ß-1"},
            "CreatedDate": {"S": "2000-01-01T00:00:00.000000Z"},
        },
        id="reversed-online-extremes",
    ),
]


@pytest.mark.parametrize(("row", "expected"), PAYMENT_CASES)
def test_payment_row_maps_to_the_design_item(row: dict, expected: dict) -> None:
    assert to_item(PAYMENT_MAPPING, row) == (expected, set())


def test_captured_payment_update_maps_to_the_exact_item() -> None:
    rec = fixture_records()[6]
    event = decode(rec.key, rec.value, rec.origin)
    assert isinstance(event, ChangeEvent)
    assert to_item(PAYMENT_MAPPING, {**event.row, "customerid": 5}) == (
        {
            "CustomerId": {"N": "5"},
            "PaymentDateId": {"S": "2024-02-01#0000000001"},
            "PaymentId": {"N": "1"},
            "LoanId": {"N": "1"},
            "PaymentNumber": {"N": "1"},
            "PaymentDate": {"S": "2024-02-01"},
            "PaymentAmount": {"N": "0.10"},
            "PrincipalAmount": {"N": "90.00"},
            "InterestAmount": {"N": "10.10"},
            "PaymentMethod": {"S": "ACH"},
            "PaymentStatus": {"S": "Failed"},
            "CreatedDate": {"S": "2026-11-25T14:18:20.233593Z"},
        },
        set(),
    )


@pytest.mark.parametrize("value", ["1", 1.0, True])
def test_padded_key_column_of_the_wrong_type_is_a_mapping_error(value: Any) -> None:
    with pytest.raises(MappingError, match="'logid': expected an integer"):
        log_item(logid=value)


def test_payment_without_customer_id_has_no_partition_key() -> None:
    with pytest.raises(MappingError, match="'CustomerId' is empty or NULL"):
        to_item(PAYMENT_MAPPING, payment_row())


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column", ["applicationid", "responsedata", "statuscode", "errormessage", "userid"]
)
def test_null_column_is_an_absent_attribute(column: str) -> None:
    attribute = INTEGRATION_LOGS.model_dump()["columns"]
    name = next(c["attribute"] for c in attribute if c["name"] == column)
    assert name not in log_item(**{column: None})


def test_null_transaction_id_is_absent_from_a_payment() -> None:
    assert "TransactionId" not in payment_item(transactionid=None)


@pytest.mark.parametrize(
    "amount",
    [
        "0.10",
        "0.01",
        "0.00",
        "0",
        "99999999.99",
        "-99999999.99",
        "-0.01",
        "12345678901234567890123456789.012345678",
    ],
)
def test_decimal_is_stored_exactly(amount: str) -> None:
    assert payment_item(paymentamount=amount)["PaymentAmount"] == {"N": amount}


@pytest.mark.parametrize("amount", [0.1, 100.10, 0.0])
def test_decimal_as_float_is_refused(amount: float) -> None:
    with pytest.raises(MappingError, match="decimal arrived as a float"):
        payment_item(paymentamount=amount)


def test_decimal_over_38_significant_digits_is_refused() -> None:
    with pytest.raises(MappingError, match="39 significant digits"):
        payment_item(paymentamount="123456789012345678901234567890.123456789")


@pytest.mark.parametrize("amount", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity"])
def test_decimal_without_a_number_form_is_refused(amount: str) -> None:
    with pytest.raises(MappingError, match="no DynamoDB number form"):
        payment_item(paymentamount=amount)


@pytest.mark.parametrize("amount", ["ten", "", "1,00"])
def test_decimal_that_is_not_a_number_is_refused(amount: str) -> None:
    with pytest.raises(MappingError, match="is not a decimal number"):
        payment_item(paymentamount=amount)


@pytest.mark.parametrize("value", [True, "7", 7.0])
def test_integer_column_refuses_a_non_integer(value: Any) -> None:
    with pytest.raises(MappingError, match="'paymentnumber': expected an integer"):
        payment_item(paymentnumber=value)


def test_timestamp_as_text_is_refused() -> None:
    with pytest.raises(MappingError, match="MicroTimestamp"):
        payment_item(createddate="2024-01-01T00:00:00")


def test_timestamp_past_year_9999_is_refused() -> None:
    with pytest.raises(MappingError, match="out of range"):
        payment_item(createddate=micros(9999, 12, 31, 23, 59, 59, 999999) + 1)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (micros(1970, 1, 1), "1970-01-01T00:00:00.000000Z"),
        (micros(1969, 12, 31, 23, 59, 59, 999999), "1969-12-31T23:59:59.999999Z"),
        (micros(1, 1, 1), "0001-01-01T00:00:00.000000Z"),
        (micros(9999, 12, 31, 23, 59, 59, 999999), "9999-12-31T23:59:59.999999Z"),
        (micros(2024, 2, 29, 12, 0, 0, 500000), "2024-02-29T12:00:00.500000Z"),
    ],
)
def test_timestamp_is_fixed_width_utc_with_microseconds(value: int, text: str) -> None:
    assert payment_item(createddate=value)["CreatedDate"] == {"S": text}


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "1970-01-01"), (-1, "1969-12-31"), (days(2024, 2, 29), "2024-02-29")],
)
def test_date_is_year_month_day(value: int, text: str) -> None:
    assert payment_item(paymentdate=value)["PaymentDate"] == {"S": text}


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "naïve café",
        "日本語のログ",
        "emoji 😀🚀 and clef 𝄞",
        "e\u0301 combining",
        "עברית RTL",
        "line\nbreak\ttab",
        'quote " backslash \\',
    ],
)
def test_text_is_kept_exactly(text: str) -> None:
    row = log_row(errormessage=text, userid=text, servicename=text or "s")
    event = decode_one(create_record(LOGS, row))
    item, _ = to_item(INTEGRATION_LOGS, event.row)
    assert item["ErrorMessage"] == {"S": text}
    assert item["UserId"] == {"S": text}


def test_json_text_is_kept_byte_for_byte() -> None:
    text = (
        '{ "z" : 1.10,\n  "a": [1e400, 0.1000, "\\u00e9", "é", null],'
        '\t"big": 123456789012345678901234567890 }'
    )
    event = decode_one(create_record(LOGS, log_row(requestdata=text, responsedata="[]")))
    item, _ = to_item(INTEGRATION_LOGS, event.row)
    assert item["RequestData"]["S"].encode() == text.encode()
    assert item["ResponseData"] == {"S": "[]"}


def decode_one(rec: Any) -> ChangeEvent:
    event = decode(rec.key, rec.value, rec.origin)
    assert isinstance(event, ChangeEvent)
    return event


# --- TOAST ----------------------------------------------------------------------------------


def test_toast_placeholder_is_reported_not_written() -> None:
    item, unavailable = to_item(
        INTEGRATION_LOGS, log_row(requestdata=UNAVAILABLE, responsedata=UNAVAILABLE)
    )
    assert unavailable == {"RequestData", "ResponseData"}
    assert "RequestData" not in item
    assert "ResponseData" not in item


def test_toast_placeholder_appears_nowhere_in_the_item() -> None:
    row = log_row(requestdata=UNAVAILABLE, responsedata=UNAVAILABLE, errormessage=UNAVAILABLE)
    item, _ = to_item(INTEGRATION_LOGS, row)
    assert UNAVAILABLE not in repr(item)


def test_toast_placeholder_in_a_key_column_is_refused() -> None:
    with pytest.raises(MappingError, match="REPLICA IDENTITY FULL"):
        to_item(INTEGRATION_LOGS, log_row(servicename=UNAVAILABLE))


# --- size -----------------------------------------------------------------------------------


DEAD_LETTER_LARGE = INTEGRATION_LOGS.model_copy(update={"large_items": "dead-letter"})


def incompressible(n_bytes: int) -> str:
    rng = random.Random(n_bytes)
    return "".join(
        rng.choices(string.ascii_letters + string.digits + string.punctuation, k=n_bytes)
    )


def test_item_over_400_kb_is_refused_under_the_dead_letter_policy() -> None:
    with pytest.raises(MappingError, match="over DynamoDB's 400 KB limit"):
        to_item(DEAD_LETTER_LARGE, log_row(requestdata="x" * (400 * 1024)))


def test_item_size_counts_utf8_bytes() -> None:
    # 110,000 characters, 440,000 bytes.
    with pytest.raises(MappingError, match="400 KB"):
        to_item(DEAD_LETTER_LARGE, log_row(requestdata="😀" * 110_000))


def test_item_over_400_kb_gets_its_largest_text_gzipped_to_fit() -> None:
    body = '{"scan": "' + "Zoë 🚀 " * 90_000 + '"}'
    item = log_item(requestdata=body, responsedata='{"ok": true}')
    assert gzip.decompress(item["RequestData"]["B"]).decode() == body
    assert item["ResponseData"] == {"S": '{"ok": true}'}  # small columns stay text
    assert item_size(item) <= 400 * 1024


def test_compression_is_deterministic() -> None:
    body = "y" * (500 * 1024)
    assert log_item(requestdata=body) == log_item(requestdata=body)


def test_compression_takes_the_largest_columns_first_and_stops_when_it_fits() -> None:
    item = log_item(requestdata="a" * (300 * 1024), responsedata="b" * (200 * 1024))
    assert "B" in item["RequestData"] and item["ResponseData"] == {"S": "b" * (200 * 1024)}


def test_item_that_does_not_fit_even_compressed_is_refused() -> None:
    with pytest.raises(MappingError, match="over DynamoDB's 400 KB limit"):
        log_item(requestdata=incompressible(700 * 1024))


def test_item_under_400_kb_is_accepted() -> None:
    assert len(log_item(requestdata="x" * (390 * 1024))["RequestData"]["S"]) == 390 * 1024


# --- snapshot and insert --------------------------------------------------------------------


def test_snapshot_read_and_insert_of_a_log_give_identical_items() -> None:
    row = log_row(issuccess=False, userid="u")
    read = decode_one(snapshot_record(LOGS, row, lsn=10))
    insert = decode_one(create_record(LOGS, row, lsn=20))
    assert to_item(INTEGRATION_LOGS, read.row) == to_item(INTEGRATION_LOGS, insert.row)


def test_snapshot_read_and_insert_of_a_payment_give_identical_items() -> None:
    row = payment_row(transactionid="t-1")
    read = decode_one(snapshot_record(PAYMENTS, row, lsn=10))
    insert = decode_one(create_record(PAYMENTS, row, lsn=20))
    assert to_item(PAYMENT_MAPPING, {**read.row, "customerid": 3}) == to_item(
        PAYMENT_MAPPING, {**insert.row, "customerid": 3}
    )


# --- mapping validation ---------------------------------------------------------------------


def small_mapping(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Things",
        "source": "dbo.things",
        "primary_key": ["id"],
        "partition_key": {"attribute": "PK", "template": "{kind}"},
        "sort_key": {"attribute": "SK", "template": "{id:010}"},
        "columns": [
            {"name": "id", "attribute": "Id", "type": "int"},
            {"name": "kind", "attribute": "Kind", "type": "text"},
            {"name": "owner", "attribute": "Owner", "type": "text"},
        ],
        "derived": [{"attribute": "GSI1PK", "template": "OWNER#{owner}", "when_set": ["owner"]}],
        "indexes": [{"name": "ByOwner", "partition_key": {"attribute": "GSI1PK"}}],
    }
    return {**base, **changes}


def test_small_mapping_is_valid() -> None:
    assert TableMapping.model_validate(small_mapping()).key_attributes == ["PK", "SK"]


def test_default_tables_are_the_two_design_tables() -> None:
    assert [(m.name, m.source) for m in default_tables()] == [
        ("IntegrationLogs", "dbo.integrationlogs"),
        ("Payments", "dbo.payments"),
    ]


def test_mapping_refuses_a_template_naming_an_unknown_column() -> None:
    data = small_mapping(partition_key={"attribute": "PK", "template": "{kind}-{nosuch}"})
    with pytest.raises(ValidationError, match="template of 'PK' names unknown column 'nosuch'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_a_derived_template_naming_an_unknown_column() -> None:
    data = small_mapping(derived=[{"attribute": "G", "template": "X#{nosuch}"}])
    with pytest.raises(ValidationError, match="template of 'G' names unknown column 'nosuch'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_a_condition_naming_an_unknown_column() -> None:
    data = small_mapping(derived=[{"attribute": "G", "template": "X", "when_set": ["nosuch"]}])
    with pytest.raises(ValidationError, match="condition of 'G' names unknown column 'nosuch'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_a_primary_key_column_missing_from_the_key_templates() -> None:
    data = small_mapping(sort_key={"attribute": "SK", "template": "{owner}"})
    with pytest.raises(ValidationError, match=r"must include every primary_key column.*'id'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_a_primary_key_column_that_is_not_a_column() -> None:
    data = small_mapping(primary_key=["id", "version"])
    with pytest.raises(ValidationError, match="primary_key column 'version' is not in columns"):
        TableMapping.model_validate(data)


def test_mapping_refuses_two_columns_with_one_attribute_name() -> None:
    columns = [*small_mapping()["columns"], {"name": "alias", "attribute": "Kind", "type": "text"}]
    with pytest.raises(ValidationError, match=r"attribute names used twice: \['Kind'\]"):
        TableMapping.model_validate(small_mapping(columns=columns))


def test_mapping_refuses_a_column_named_like_a_key_attribute() -> None:
    columns = [*small_mapping()["columns"], {"name": "pk", "attribute": "PK", "type": "text"}]
    with pytest.raises(ValidationError, match=r"attribute names used twice: \['PK'\]"):
        TableMapping.model_validate(small_mapping(columns=columns))


def test_mapping_refuses_a_derived_attribute_named_like_a_column() -> None:
    data = small_mapping(derived=[{"attribute": "Owner", "template": "O#{owner}"}])
    with pytest.raises(ValidationError, match=r"attribute names used twice: \['Owner'\]"):
        TableMapping.model_validate(data)


def test_mapping_refuses_a_column_named_like_the_ttl_attribute() -> None:
    columns = [
        *small_mapping()["columns"],
        {"name": "exp", "attribute": "ExpiresAt", "type": "int"},
    ]
    with pytest.raises(ValidationError, match=r"attribute names used twice: \['ExpiresAt'\]"):
        TableMapping.model_validate(small_mapping(columns=columns))


@pytest.mark.parametrize(
    "changes",
    [
        {"columns": [{"name": "id", "attribute": "_pos", "type": "int"}]},
        {"derived": [{"attribute": "_deleted", "template": "x"}]},
        {"ttl_attribute": "_ttl"},
        {"partition_key": {"attribute": "_pk", "template": "{kind}"}},
    ],
    ids=["column", "derived", "ttl", "key"],
)
def test_mapping_refuses_an_attribute_name_starting_with_underscore(changes: dict) -> None:
    data = small_mapping(**changes)
    if "columns" in changes:
        data["columns"] = [*changes["columns"], *small_mapping()["columns"][1:]]
    with pytest.raises(ValidationError, match=r"attribute '_\w+': names starting with '_'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_an_index_on_an_attribute_nothing_produces() -> None:
    data = small_mapping(indexes=[{"name": "ByColour", "partition_key": {"attribute": "Colour"}}])
    with pytest.raises(
        ValidationError,
        match="index 'ByColour' keys on 'Colour', which no key, derived attribute or column",
    ):
        TableMapping.model_validate(data)


def test_mapping_refuses_an_index_sort_key_nothing_produces() -> None:
    data = small_mapping(
        indexes=[
            {
                "name": "ByOwner",
                "partition_key": {"attribute": "GSI1PK"},
                "sort_key": {"attribute": "GSI1SK"},
            }
        ]
    )
    with pytest.raises(ValidationError, match="index 'ByOwner' keys on 'GSI1SK'"):
        TableMapping.model_validate(data)


def test_mapping_refuses_an_index_key_of_the_wrong_type() -> None:
    data = small_mapping(indexes=[{"name": "ById", "partition_key": {"attribute": "Id"}}])
    with pytest.raises(ValidationError, match="index 'ById': 'Id' is N, not S"):
        TableMapping.model_validate(data)


def test_mapping_refuses_an_unqualified_source() -> None:
    with pytest.raises(ValidationError, match=r"must be 'schema\.table'"):
        TableMapping.model_validate(small_mapping(source="things"))


def test_mapping_refuses_an_unknown_field() -> None:
    with pytest.raises(ValidationError, match="colour"):
        TableMapping.model_validate(small_mapping(colour="red"))


# --- settings files -------------------------------------------------------------------------


def write_config(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "replicator.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_settings_file_is_loaded(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, {"kafka": {"batch_size": 50}}))
    assert settings.kafka.batch_size == 50
    assert [t.name for t in settings.tables] == ["IntegrationLogs", "Payments"]


def test_settings_refuse_an_out_of_range_field_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.batch_size: Input should be greater than 0"):
        load_settings(write_config(tmp_path, {"kafka": {"batch_size": 0}}))


def test_settings_refuse_an_unknown_field_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap: Extra inputs are not permitted"):
        load_settings(write_config(tmp_path, {"kafka": {"bootstrap": "x:9092"}}))


def test_settings_refuse_a_wrongly_typed_field_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"postgres\.port: "):
        load_settings(write_config(tmp_path, {"postgres": {"port": "five"}}))


def test_settings_refuse_a_bad_table_mapping_naming_the_table_and_problem(tmp_path: Path) -> None:
    data = {"tables": [small_mapping(), small_mapping(name="Other", ttl_attribute="_ttl")]}
    with pytest.raises(ConfigError, match=r"tables\.1: .*'_ttl': names starting with '_'"):
        load_settings(write_config(tmp_path, data))


def test_settings_refuse_a_missing_table_field_by_name(tmp_path: Path) -> None:
    table = small_mapping()
    del table["primary_key"]
    with pytest.raises(ConfigError, match=r"tables\.0\.primary_key: Field required"):
        load_settings(write_config(tmp_path, {"tables": [table]}))


def test_settings_refuse_two_tables_with_one_name(tmp_path: Path) -> None:
    data = {"tables": [small_mapping(), small_mapping(source="dbo.other")]}
    with pytest.raises(ConfigError, match=r"name used twice: \['Things'\]"):
        load_settings(write_config(tmp_path, data))


def test_settings_refuse_a_file_that_is_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_settings(write_config(tmp_path, "kafka: [unclosed\n"))


def test_settings_refuse_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_settings(write_config(tmp_path, "- kafka\n- postgres\n"))


def test_settings_refuse_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")


def test_settings_error_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"kafka": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=f"invalid settings in {path}"):
        load_settings(path)


# --- property: rows round-trip --------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
_MIN_TS = micros(1, 1, 1)
_MAX_TS = micros(9999, 12, 31, 23, 59, 59, 999999)
_EPOCH = dt.datetime(1970, 1, 1)

log_rows = st.fixed_dictionaries(
    {
        "logid": st.integers(1, 2**63 - 1),
        "applicationid": st.none() | st.integers(-(2**31), 2**31 - 1),
        "logtype": _TEXT,
        "servicename": _TEXT,
        "requestdata": st.none() | _TEXT,
        "responsedata": st.none() | _TEXT,
        "statuscode": st.none() | _TEXT,
        "issuccess": st.booleans(),
        "errormessage": st.none() | _TEXT,
        "processingtimems": st.none() | st.integers(-(2**31), 2**31 - 1),
        "logtimestamp": st.integers(_MIN_TS, _MAX_TS),
        "correlationid": st.none() | _TEXT,
        "userid": st.none() | _TEXT,
    }
)


def parse_timestamp(text: str) -> int:
    assert len(text) == 27 and text.endswith("Z")
    parsed = dt.datetime.strptime(text[:-1], "%Y-%m-%dT%H:%M:%S.%f")
    return (parsed - _EPOCH) // dt.timedelta(microseconds=1)


def back_to_row(item: dict[str, Any]) -> dict[str, Any]:
    """The row an item says it came from: the inverse of the mapping's column part."""
    row: dict[str, Any] = {}
    for column in INTEGRATION_LOGS.columns:
        value = item.get(column.attribute)
        if value is None:
            row[column.name] = None
        elif column.type in ("int", "bigint"):
            row[column.name] = int(value["N"])
        elif column.type == "bool":
            row[column.name] = value["BOOL"]
        elif column.type == "timestamp":
            row[column.name] = parse_timestamp(value["S"])
        else:
            row[column.name] = value["S"]
    return row


@settings(max_examples=300, deadline=None)
@given(log_rows)
def test_generated_log_rows_round_trip_through_the_item(row: dict[str, Any]) -> None:
    event = decode_one(create_record(LOGS, row))
    item, unavailable = to_item(INTEGRATION_LOGS, event.row)
    assert unavailable == set()
    assert back_to_row(item) == row
    date = item["LogTimestamp"]["S"][:10]
    sk = f"{item['LogTimestamp']['S']}#{row['logid']:019d}"
    assert item["PK"] == {"S": f"{row['servicename']}-{date}"}
    assert item["SK"] == {"S": sk}
    assert ("GSI1PK" in item) == (row["applicationid"] is not None)
    assert ("GSI2PK" in item) == (row["correlationid"] is not None)
    assert ("GSI3PK" in item) == (row["issuccess"] is False)
    for index in ("GSI1", "GSI2", "GSI3"):
        assert item.get(f"{index}SK", {"S": sk}) == {"S": sk}


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(st.integers(_MIN_TS, _MAX_TS), st.integers(1, 2**63 - 1)),
    st.tuples(st.integers(_MIN_TS, _MAX_TS), st.integers(1, 2**63 - 1)),
)
def test_sort_key_sorts_like_timestamp_then_log_id(a: tuple, b: tuple) -> None:
    sk_a = log_item(logtimestamp=a[0], logid=a[1])["SK"]["S"]
    sk_b = log_item(logtimestamp=b[0], logid=b[1])["SK"]["S"]
    assert (sk_a < sk_b) == (a < b)
    assert (sk_a == sk_b) == (a == b)


def test_mapping_refuses_a_column_named_twice() -> None:
    columns = small_mapping()["columns"] + [{"name": "id", "attribute": "Id2", "type": "int"}]
    with pytest.raises(ValidationError, match=r"columns named twice: \['id'\]"):
        TableMapping.model_validate(small_mapping(columns=columns))


@pytest.mark.parametrize("amount", [" 1.5 ", "1_000", "+1.5", ".5"])
def test_decimal_text_that_dynamodb_would_refuse_is_refused(amount: str) -> None:
    with pytest.raises(MappingError, match="is not a decimal number"):
        payment_item(paymentamount=amount)


@pytest.mark.parametrize("amount", ["1E+126", "1E-131"])
def test_decimal_outside_dynamodb_range_is_refused(amount: str) -> None:
    with pytest.raises(MappingError, match="outside DynamoDB's number range"):
        payment_item(paymentamount=amount)


def test_a_key_may_be_a_column_in_its_own_attribute() -> None:
    data = small_mapping(
        partition_key={"attribute": "Id", "type": "N", "template": "{id}"}, sort_key=None
    )
    mapping = TableMapping.model_validate(data)
    item, _ = to_item(mapping, {"id": 7, "kind": "k", "owner": None})
    assert item == {"Id": {"N": "7"}, "Kind": {"S": "k"}}


def test_a_templated_key_may_not_reuse_a_column_attribute() -> None:
    data = small_mapping(partition_key={"attribute": "Kind", "template": "K#{kind}"})
    with pytest.raises(ValidationError, match=r"attribute names used twice: \['Kind'\]"):
        TableMapping.model_validate(data)
