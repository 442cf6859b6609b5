"""The read path's pure parts: parameters, cursors, items as rows (the same row from either
store), the order of non-unique index keys, JSON, routes and the OpenAPI description."""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from replicator.config import ReadsSettings, Settings
from replicator.core.mapping import to_item
from replicator.reads.api import ApiError, ReadApi, call_arguments, openapi, routes, to_json
from replicator.reads.dynamo import DynamoReads, _by_sort_key
from replicator.reads.patterns import (
    Query,
    QueryError,
    StoreError,
    catalog,
    decode_cursor,
    encode_cursor,
    parse_date,
    parse_int,
    parse_text,
    parse_timestamp,
)
from replicator.reads.router import ReadMetrics, ReadPath, Served
from replicator.reads.rows import Page, RowShape, miss, same
from replicator.stream.rows import source_row

SETTINGS = Settings()
PAYMENTS = next(m for m in SETTINGS.tables if m.name == "Payments")
LOGS = next(m for m in SETTINGS.tables if m.name == "IntegrationLogs")
PATTERNS = catalog(SETTINGS)
ROUTES = routes(SETTINGS)
LOG_SORT = PATTERNS["logs_by_application"].sort_key
PAY_SORT = PATTERNS["payments_by_status"].sort_key


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "stored"),
    [
        ("2024-01-15", "2024-01-15T00:00:00.000000Z"),
        ("2024-01-15T10:30:00Z", "2024-01-15T10:30:00.000000Z"),
        ("2024-01-15T10:30:00.123456", "2024-01-15T10:30:00.123456Z"),
        ("2024-01-15T10:30:00.5+02:00", "2024-01-15T08:30:00.500000Z"),
        ("2024-01-01T01:00:00+03:00", "2023-12-31T22:00:00.000000Z"),
        (" 2024-01-15 ", "2024-01-15T00:00:00.000000Z"),
    ],
)
def test_time_parameters_become_the_stored_text(given_text: str, stored: str) -> None:
    assert parse_timestamp("start", given_text) == stored


@pytest.mark.parametrize("bad", ["", "yesterday", "2024-13-01", "2024-01-15T25:00", "15/01/2024"])
def test_bad_time_parameters_are_refused(bad: str) -> None:
    with pytest.raises(QueryError, match="start"):
        parse_timestamp("start", bad)


def test_dates() -> None:
    assert parse_date("day", "2024-02-29") == "2024-02-29"
    for bad in ("2024-02-30", "2024-2-3", "20240203", "2024-02-03T00:00", ""):
        with pytest.raises(QueryError, match=r"day: .* is not a date"):
            parse_date("day", bad)


def test_integers_and_texts() -> None:
    assert parse_int("id", "42") == 42 and parse_int("id", -7) == -7
    for bad in ("4.2", "x", True, None, 2**31):
        with pytest.raises(QueryError, match="id"):
            parse_int("id", bad)
    assert parse_int("id", 2**40, (0, 2**63 - 1)) == 2**40
    assert parse_text("status", "Failed", 20, ("Failed", "Pending")) == "Failed"
    with pytest.raises(QueryError, match="not one of Failed, Pending"):
        parse_text("status", "failed", 20, ("Failed", "Pending"))
    with pytest.raises(QueryError, match="non-empty"):
        parse_text("service", "", 100)
    with pytest.raises(QueryError, match="at most 5"):
        parse_text("service", "x" * 6, 5)


def test_query_upper_bound_is_the_tighter_of_range_and_cursor() -> None:
    q = Query("payments_by_customer", 1, 10, lo="2024-01-01", hi="2024-02-01")
    assert q.upper == "2024-02-01"
    assert q.__class__(**{**q.__dict__, "after": "2024-01-10#0000000005"}).upper == (
        "2024-01-10#0000000005"
    )
    assert Query("payments_by_loan", 1, 10).upper is None


# --- cursors --------------------------------------------------------------------------------


LOG_KEY = "2024-01-15T10:30:00.123456Z#0000000000000000042"
PAY_KEY = "2024-01-15#0000000042"


def test_cursor_round_trip_and_scope() -> None:
    cursor = encode_cursor("logs_by_application", (5, None, None), LOG_KEY)
    assert decode_cursor("logs_by_application", (5, None, None), cursor, LOG_SORT) == LOG_KEY
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # URL-safe as is
    # Only the listing that made it: another value, pattern or range is refused.
    for pattern, params in (
        ("logs_by_application", (6, None, None)),
        ("logs_by_correlation", (5, None, None)),
    ):
        with pytest.raises(QueryError, match="cursor"):
            decode_cursor(pattern, params, cursor, LOG_SORT)
    pay = encode_cursor("payments_by_status", ("Failed", "2024-01-01", "2024-02-01"), PAY_KEY)
    params = ("Failed", "2024-01-01", "2024-02-01")
    assert decode_cursor("payments_by_status", params, pay, PAY_SORT) == PAY_KEY
    with pytest.raises(QueryError, match="cursor"):
        decode_cursor("payments_by_status", ("Failed", "2024-01-01", "2024-03-01"), pay, PAY_SORT)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64 !",
        "eyJ4IjoxfQ",  # {"x":1}
        encode_cursor("logs_by_application", (5, None, None), "2024-01-15T10:30:00Z#42"),
        encode_cursor("logs_by_application", (5, None, None), "x' OR 1=1 --#0000000000000000042"),
        encode_cursor("logs_by_application", (5, None, None), PAY_KEY),
        "A" * 600,
    ],
)
def test_malformed_or_forged_cursors_are_refused(bad: str) -> None:
    with pytest.raises(QueryError, match="cursor"):
        decode_cursor("logs_by_application", (5, None, None), bad, LOG_SORT)


# --- items as rows --------------------------------------------------------------------------


def payment_item(amount: str = "12.50") -> dict[str, Any]:
    return {
        "PaymentDateId": {"S": "2024-01-15#0000000042"},  # out of order on purpose
        "CustomerId": {"N": "7"},
        "PaymentId": {"N": "42"},
        "LoanId": {"N": "3"},
        "PaymentNumber": {"N": "1"},
        "PaymentDate": {"S": "2024-01-15"},
        "PaymentAmount": {"N": amount},
        "PrincipalAmount": {"N": "100.00"},
        "InterestAmount": {"N": "0.00"},
        "PaymentMethod": {"S": "ACH"},
        "PaymentStatus": {"S": "Completed"},
        "CreatedDate": {"S": "2024-01-15T10:30:00.000000Z"},
        "_pos": {"S": "0000000000000001.1.0000000000000002"},
        "_src_ms": {"N": "1700000000000"},
        "ExpiresAt": {"N": "1800000000"},
    }


def test_a_row_has_keys_and_columns_only_with_python_values_in_a_fixed_order() -> None:
    row = RowShape.of(PAYMENTS).row(payment_item())
    assert row == {
        "CustomerId": 7,
        "PaymentDateId": "2024-01-15#0000000042",
        "PaymentId": 42,
        "LoanId": 3,
        "PaymentNumber": 1,
        "PaymentDate": "2024-01-15",
        "PaymentAmount": Decimal("12.50"),
        "PrincipalAmount": Decimal("100.00"),
        "InterestAmount": Decimal("0.00"),
        "PaymentMethod": "ACH",
        "PaymentStatus": "Completed",
        "CreatedDate": "2024-01-15T10:30:00.000000Z",
    }
    assert list(row) == [  # keys first, then the mapping's columns; TransactionId is NULL
        "CustomerId", "PaymentDateId", "PaymentId", "LoanId", "PaymentNumber", "PaymentDate",
        "PaymentAmount", "PrincipalAmount", "InterestAmount", "PaymentMethod", "PaymentStatus",
        "CreatedDate",
    ]  # fmt: skip
    assert type(row["CustomerId"]) is int and type(row["PaymentAmount"]) is Decimal
    # The columns' declared scale (numeric(10,2)), whatever DynamoDB sent back.
    assert str(row["PrincipalAmount"]) == "100.00" and str(row["InterestAmount"]) == "0.00"
    assert to_json(RowShape.of(PAYMENTS).row(payment_item("2.5E+3"))).count(b":2500.00,") == 1


def test_a_decimal_without_a_scale_reads_without_trailing_zeros() -> None:
    shape = RowShape({"Amount": "decimal"})
    assert to_json(shape.row({"Amount": {"N": "12.50"}})) == b'{"Amount":12.5}'
    assert to_json(shape.row({"Amount": {"N": "2.5E+3"}})) == b'{"Amount":2500}'
    # More digits than a (wrong) declared scale: kept, never rounded.
    scaled = RowShape({"Amount": "decimal"}, {"Amount": 2})
    assert to_json(scaled.row({"Amount": {"N": "0.125"}})) == b'{"Amount":0.125}'


def test_a_delete_marker_is_no_row() -> None:
    marker = {"CustomerId": {"N": "7"}, "PaymentDateId": {"S": "x"}, "_deleted": {"BOOL": True}}
    assert RowShape.of(PAYMENTS).row(marker) is None


def test_gzipped_text_reads_as_text_and_sparse_index_keys_are_left_out() -> None:
    text = '{"blob": "' + "Zoë 東京 " * 10 + '"}'
    item = {
        "PK": {"S": "Svc-2024-01-15"},
        "SK": {"S": "2024-01-15T10:30:00.000000Z#0000000000000000009"},
        "LogId": {"N": "9"},
        "IsSuccess": {"BOOL": False},
        "RequestData": {"B": gzip.compress(text.encode(), mtime=0)},
        "GSI3PK": {"S": "ERROR#2024-01-15"},
        "GSI3SK": {"S": "2024-01-15T10:30:00.000000Z#0000000000000000009"},
    }
    row = RowShape.of(LOGS).row(item)
    assert row == {
        "PK": "Svc-2024-01-15",
        "SK": "2024-01-15T10:30:00.000000Z#0000000000000000009",
        "LogId": 9,
        "RequestData": text,
        "IsSuccess": False,
    }


SOURCE_PAYMENT = {
    "paymentid": 42,
    "loanid": 3,
    "paymentnumber": 1,
    "paymentdate": 19737,  # 2024-01-15 as Debezium sends it
    "principalamount": "100.00",
    "interestamount": "0.00",
    "paymentmethod": "ACH",
    "paymentstatus": "Completed",
    "transactionid": None,
    "createddate": 1705314600000000,
    "customerid": 7,
}


def dynamodb_number(text: str) -> str:
    """How DynamoDB hands a stored number back: its value without trailing zeros."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@given(
    cents=st.integers(min_value=-(10**10) + 1, max_value=10**10 - 1),
)
def test_both_stores_give_the_same_row_for_any_amount(cents: int) -> None:
    amount = f"{Decimal(cents) / 100:.2f}"
    item, _ = to_item(PAYMENTS, {**SOURCE_PAYMENT, "paymentamount": amount})
    from_postgres = RowShape.of(PAYMENTS).row(item)  # PostgresReads builds rows this way
    stored = {k: ({"N": dynamodb_number(v["N"])} if "N" in v else v) for k, v in item.items()}
    from_dynamo = RowShape.of(PAYMENTS).row(dict(reversed(list(stored.items()))))
    assert from_postgres is not None and from_dynamo is not None
    assert to_json(from_postgres) == to_json(from_dynamo)
    assert from_postgres["PaymentAmount"] == Decimal(amount)  # exact, never a float
    assert f'"PaymentAmount":{amount},'.encode() in to_json(from_dynamo)  # and its scale


def test_source_rows_map_through_the_pipelines_mapping() -> None:
    import datetime as dt

    record = {
        "logid": 9,
        "applicationid": None,
        "logtype": "Credit Check",
        "servicename": "CreditCheckService",
        "requestdata": "{}",
        "responsedata": None,
        "statuscode": "200",
        "issuccess": True,
        "errormessage": None,
        "processingtimems": 12,
        "logtimestamp": dt.datetime(2024, 1, 15, 10, 30, 0, 123456),
        "correlationid": None,
        "userid": None,
    }
    item, _ = to_item(LOGS, source_row(record))
    row = RowShape.of(LOGS).row(item)
    assert row is not None
    assert row["PK"] == "CreditCheckService-2024-01-15"
    assert row["SK"] == "2024-01-15T10:30:00.123456Z#0000000000000000009"
    assert row["LogTimestamp"] == "2024-01-15T10:30:00.123456Z"
    assert "ApplicationId" not in row and "CorrelationId" not in row  # NULL = absent
    assert not [k for k in row if k.startswith("GSI")]


# --- order of a non-unique index key --------------------------------------------------------


def test_items_of_one_index_date_are_ordered_by_the_payment_key() -> None:
    def item(date: str, pid: int) -> dict[str, Any]:
        return {"PaymentDate": {"S": date}, "PaymentDateId": {"S": f"{date}#{pid:010d}"}}

    # As an index may return them: dates descending, ids within a date in any order.
    arrived = [item("2024-03-02", 5), item("2024-03-02", 9), item("2024-03-02", 7),
               item("2024-03-01", 1), item("2024-03-01", 30), item("2024-02-28", 4)]  # fmt: skip
    ordered = [
        i["PaymentDateId"]["S"] for i in _by_sort_key(arrived, "PaymentDate", "PaymentDateId")
    ]
    assert ordered == sorted(ordered, reverse=True)
    assert list(_by_sort_key([], "PaymentDate", "PaymentDateId")) == []


# --- results --------------------------------------------------------------------------------


def test_what_hybrid_read_calls_a_miss() -> None:
    assert miss(None)
    assert miss(Page([]))
    assert not miss(Page([]), query_after="cursor")  # a later page may be empty
    assert not miss(Page([{"a": 1}]))
    assert not miss({"a": 1})


def test_same_ignores_which_store_served() -> None:
    assert same(Page([{"a": 1}], "n", "postgres"), Page([{"a": 1}], "n", "dynamodb"))
    assert not same(Page([{"a": 1}], "n"), Page([{"a": 1}], None))
    assert not same(Page([{"a": 1}, {"a": 2}]), Page([{"a": 2}, {"a": 1}]))
    assert same(None, None) and not same(None, {"a": 1})


# --- JSON, routes, OpenAPI ------------------------------------------------------------------


def test_json_keeps_decimals_exact() -> None:
    value = {
        "amount": Decimal("99999999.99"),
        "tiny": Decimal("0.000001"),
        "n": 3,
        "ok": False,
        "none": None,
        "text": 'Zoë "東京"\n',
        "list": [Decimal("1"), "x"],
    }
    text = to_json(value)
    assert b'"amount":99999999.99' in text and b'"tiny":0.000001' in text
    assert json.loads(text, parse_float=Decimal) == value
    with pytest.raises(ValueError, match="no JSON form"):
        to_json({"x": Decimal("NaN")})
    with pytest.raises(TypeError):
        to_json({"x": 1.5})  # a float never gets here: refuse rather than round


class FakePath:
    """What the ASGI app needs of a ReadPath, answering from memory."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.config = settings.reads
        self.metrics = ReadMetrics()
        self.calls: list[tuple[Any, ...]] = []

    def read(self, pattern: str, *args: Any, **kwargs: Any) -> Served:
        self.calls.append((pattern, *args))
        if pattern.endswith("_by_id"):
            return Served(None if args[0] == "404" else {"Amount": Decimal("2500.00")}, "dynamodb")
        if args[0] == "down":
            raise StoreError("dynamodb", "Query: timed out")
        parse_int("limit", kwargs["limit"], (1, 500))
        return Served(Page([{"Amount": Decimal("2500.00")}], None), "postgres")

    def current_phases(self) -> dict[str, str]:
        return {"Payments": "postgres-only"}


@contextlib.contextmanager
def served(path: FakePath) -> Iterator[httpx.Client]:
    """The ASGI app on uvicorn on a free localhost port, as `reads serve` runs it."""
    api = ReadApi(path, port=0).start()  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as client:
            yield client
    finally:
        api.close()


def test_routes_cover_every_pattern_and_the_app_routes_encoded_values() -> None:
    assert sorted(r.pattern for r in ROUTES) == sorted(PATTERNS)
    fake = FakePath()
    with served(fake) as client:
        response = client.get(
            "/logs/by-service/Credit%20Check%2FEU?start=2024-01-01&end=2024-01-02"
        )
        assert response.status_code == 200, response.text
        assert fake.calls[-1] == ("logs_by_service", "Credit Check/EU", "2024-01-01", "2024-01-02")
        assert response.headers["X-Read-Source"] == "postgres"
        assert response.content == b'{"items":[{"Amount":2500.00}],"next":null}'
        one = client.get("/payments/42")
        assert one.status_code == 200 and fake.calls[-1] == ("payment_by_id", "42")
        assert one.headers["X-Read-Source"] == "dynamodb"
        for url in ("/payments/by-customer/7/extra", "/logs/by-application/", "/nothing"):
            missing = client.get(url)
            assert missing.status_code == 404 and missing.json()["error"] == "not_found", url
        assert "no payment with id 404" in client.get("/payments/404").json()["message"]
        bad = client.get("/logs/by-application/5?limit=0")
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
        assert client.get("/logs/by-application/5?x=1").json()["message"].startswith("unknown")
        down = client.get("/payments/by-loan/down")
        assert down.status_code == 503 and down.json()["error"] == "unavailable"
        for method in ("POST", "PUT", "PATCH", "DELETE", "HEAD"):
            refused = client.request(method, "/payments/1")
            assert refused.status_code == 405 and refused.headers["Allow"] == "GET", method
        assert client.get("/phases").json() == {"tables": {"Payments": "postgres-only"}}
        assert client.get("/healthz").json() == {"ok": True}
        assert b"replicator_read_seconds" in client.get("/metrics").content
        assert client.get("/openapi.json").json()["openapi"] == "3.1.0"


def test_an_answer_later_than_the_request_timeout_is_a_503() -> None:
    import time

    slow = FakePath(Settings(reads={"request_timeout_s": 0.2}))
    answer = slow.read

    def late(*args: Any, **kwargs: Any) -> Served:
        time.sleep(2)  # a valid answer, only too late: the worker must not log a failure
        return answer(*args, **kwargs)

    slow.read = late  # type: ignore[method-assign]
    with served(slow) as client:
        started = time.monotonic()
        response = client.get("/payments/by-loan/1")
        assert response.status_code == 503 and response.json()["error"] == "timeout"
        assert time.monotonic() - started < 1.5


def test_call_arguments() -> None:
    by_status = next(r for r in ROUTES if r.pattern == "payments_by_status")
    args, kwargs = call_arguments(
        by_status, "Failed", {"start": ["2024-01-01"], "end": ["2024-02-01"], "limit": ["5"]}, 50
    )
    assert args == ["Failed", "2024-01-01", "2024-02-01"]
    assert kwargs == {"limit": "5", "after": None}
    by_customer = next(r for r in ROUTES if r.pattern == "payments_by_customer")
    assert call_arguments(by_customer, "7", {}, 50) == (
        ["7", None, None],
        {"limit": 50, "after": None},
    )
    for query, message in (
        ({"start": ["2024-01-01"]}, "'end' is required"),
        ({"start": ["a"], "end": ["b"], "sort": ["asc"]}, "unknown parameter 'sort'"),
        ({"start": ["a", "b"], "end": ["c"]}, "more than once"),
    ):
        with pytest.raises(ApiError, match=message) as caught:
            call_arguments(by_status, "Failed", query, 50)
        assert caught.value.status == 400
    single = next(r for r in ROUTES if r.pattern == "log_by_id")
    with pytest.raises(ApiError, match="unknown parameter 'cursor'"):
        call_arguments(single, "5", {"cursor": ["x"]}, 50)


def test_openapi_lists_every_route_with_schemas_from_the_mappings() -> None:
    spec = openapi(SETTINGS)
    assert spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {r.path for r in ROUTES} | {"/phases"}
    payment = spec["components"]["schemas"]["PaymentsRow"]
    assert payment["properties"]["PaymentAmount"]["type"] == "number"
    assert payment["properties"]["PaymentAmount"]["x-scale"] == 2
    assert "2 decimal places" in payment["properties"]["PaymentAmount"]["description"]
    assert b'"examples":[2500.00]' in to_json(payment["properties"]["PaymentAmount"])
    assert payment["properties"]["CustomerId"]["type"] == "integer"
    assert set(payment["required"]) == {"CustomerId", "PaymentDateId", "PaymentId"}
    log = spec["components"]["schemas"]["IntegrationLogsRow"]
    assert log["properties"]["IsSuccess"]["type"] == "boolean"
    assert "GSI1PK" not in log["properties"] and "ExpiresAt" not in log["properties"]
    for route in ROUTES:
        operation = spec["paths"][route.path]["get"]
        names = {p["name"] for p in operation["parameters"]}
        assert {p.name for p in route.params} <= names
        assert ("cursor" in names) is (not route.single)
        assert {"200", "400", "503"} <= set(operation["responses"])
        assert "X-Read-Source" in operation["responses"]["200"]["headers"]


def test_reads_settings_refuse_a_default_page_over_the_maximum() -> None:
    with pytest.raises(ValidationError, match="default_page_size"):
        ReadsSettings(default_page_size=600, max_page_size=500)
    assert ReadsSettings().host == "127.0.0.1"  # localhost unless configured


# --- patterns as data -----------------------------------------------------------------------


def test_a_third_tables_declared_patterns_become_routes_cli_names_and_openapi() -> None:
    from tests.integration.test_third_table import NOTES

    settings = Settings(tables=[*SETTINGS.tables, NOTES])
    patterns = catalog(settings)
    notes = patterns["notes_of_application"]
    assert notes.table == "ApplicationNotes" and notes.order == "AppSK" and not notes.regroup
    assert notes.partition(42) == {"S": "APP#42"}
    assert patterns["note_by_id"].single and patterns["note_by_id"].decl.cli_name == "note"
    fake = FakePath(settings)
    with served(fake) as client:
        assert client.get("/notes/by-application/42").status_code == 200
        assert fake.calls[-1] == ("notes_of_application", "42", None, None)
    spec = openapi(settings)
    assert "/notes/{note_id}" in spec["paths"]
    assert spec["components"]["schemas"]["ApplicationNotesRow"]["properties"]["Score"]["type"] == (
        "number"
    )
    q = notes.query(settings, "42", "2024-05-05", None, "10")
    assert (q.value, q.lo, q.hi, q.limit) == (42, "2024-05-05T00:00:00.000000Z", None, 10)
    key = "2024-05-05T05:05:05.000005Z#0000000000000000007"
    assert notes.sort_key is not None and notes.sort_key.values(key)[1] == 7
    with pytest.raises(QueryError, match="cursor"):
        notes.query(settings, "42", after=encode_cursor("notes_of_application", (43,), key))


def test_the_design_patterns_resolve_as_before() -> None:
    assert list(PATTERNS) == [
        "logs_by_application", "logs_by_service", "logs_by_correlation", "failures_of_day",
        "log_by_id", "payments_by_customer", "payments_by_loan", "payments_by_status",
        "payments_by_method", "payment_by_id",
    ]  # fmt: skip
    assert PATTERNS["payments_by_status"].regroup and PATTERNS["payments_by_method"].regroup
    assert not PATTERNS["logs_by_application"].regroup  # GSI1SK has the sort key's template
    assert PATTERNS["logs_by_service"].partition("Svc", "2024-01-15") == {"S": "Svc-2024-01-15"}
    assert PATTERNS["payments_by_loan"].partition(3) == {"N": "3"}
    with pytest.raises(QueryError, match="at most 366"):
        PATTERNS["logs_by_service"].query(SETTINGS, "Svc", "2000-01-01", "2024-01-01")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"index": "NoSuchIndex"}, "no index 'NoSuchIndex'"),
        ({"param": {"name": "x", "column": "nothing"}}, "unknown column 'nothing'"),
        ({"path": "/logs/by-application"}, "path must hold"),
        ({"partition": "APP#{other}"}, "partition names 'other'"),
        ({"order": "GSI1PK"}, "must be made of fixed-width"),
        ({"single": True}, "the key must be the parameter's column"),
        ({"fan_out": "days"}, "fan_out days is on the table key"),
    ],
)
def test_bad_pattern_declarations_are_refused_at_load(change: dict[str, Any], message: str) -> None:
    data = LOGS.model_dump()
    first = data["reads"]["patterns"][0]
    data["reads"]["patterns"] = [{**first, **change}]
    with pytest.raises(ValidationError, match=message):
        type(LOGS).model_validate(data)


def test_shutdown_lets_the_requests_in_flight_finish() -> None:
    import threading
    import time

    slow = FakePath()
    inner = slow.read

    def read(*args: Any, **kwargs: Any) -> Served:
        time.sleep(0.5)
        return inner(*args, **kwargs)

    slow.read = read  # type: ignore[method-assign]
    api = ReadApi(slow, port=0).start()  # type: ignore[arg-type]
    answers: list[int] = []
    url = f"http://127.0.0.1:{api.port}/payments/by-loan/1"
    request = threading.Thread(
        target=lambda: answers.append(httpx.get(url, timeout=10).status_code)
    )
    request.start()
    time.sleep(0.2)  # in flight
    api.close()
    request.join(10)
    assert answers == [200]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


class _Closable:
    def close(self) -> None: ...


def test_the_phase_cache_ages_by_the_paths_clock() -> None:
    class Phases:
        calls = 0

        def current(self) -> dict[str, Any]:
            Phases.calls += 1
            return {"Payments": "dynamodb-only" if Phases.calls > 1 else "dual-write"}

        def record_incidents(self, table: str, kind: Any, count: int) -> None: ...

    now = [0.0]
    settings = Settings(reads=ReadsSettings(cache_s=5))
    path = ReadPath(
        settings,
        Phases(),
        postgres=cast(Any, _Closable()),  # never read here: only closed with the path
        dynamo=DynamoReads(settings, client=object()),
        clock=lambda: now[0],
    )
    try:
        assert path.phase("Payments") == "dual-write"
        now[0] += 4.9
        assert path.phase("Payments") == "dual-write" and Phases.calls == 1  # still fresh
        now[0] += 0.1
        assert path.phase("Payments") == "dynamodb-only" and Phases.calls == 2  # aged out
        assert path.phase("IntegrationLogs") == "postgres-only"  # unknown: the safe default
    finally:
        path.close()
