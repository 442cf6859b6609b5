"""The design's data model, written out again for the checker: PostgreSQL rows of the two tables
to the items DynamoDB must hold. On purpose this does not use the sink's mapping (nothing of
replicator.core): a mistake there must show up as a divergence here, not be copied.

IntegrationLogs: PK ``{ServiceName}-{date}``, SK ``{LogTimestamp}#{LogId:019}``, every column
(NULL absent), GSI1 when ApplicationId is set, GSI2 when CorrelationId is set, GSI3 when
IsSuccess is false; no TTL (retention is off by default).
Payments: CustomerId (through loans and applications), PaymentDateId ``{date}#{id:010}``, every
column. Numbers are exact decimals, timestamps fixed-width UTC with microseconds.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

Item = dict[str, dict[str, Any]]
META = ("_pos", "_src_ms")  # the replicator's own attributes on a live item


def ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}Z"


def day(value: dt.date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def log_key(logid: int, service: str, when: dt.datetime) -> dict[str, Any]:
    return {"PK": {"S": f"{service}-{day(when.date())}"}, "SK": {"S": f"{ts(when)}#{logid:019d}"}}


def payment_key(paymentid: int, date: dt.date, customer: int) -> dict[str, Any]:
    return {
        "CustomerId": {"N": str(customer)},
        "PaymentDateId": {"S": f"{day(date)}#{paymentid:010d}"},
    }


def _put(item: Item, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        item[name] = {"BOOL": value}
    elif isinstance(value, int | Decimal):
        item[name] = {"N": str(value)}
    elif isinstance(value, dt.datetime):
        item[name] = {"S": ts(value)}
    elif isinstance(value, dt.date):
        item[name] = {"S": day(value)}
    else:
        item[name] = {"S": str(value)}


def log_item(row: dict[str, Any]) -> Item:
    item: Item = dict(log_key(row["logid"], row["servicename"], row["logtimestamp"]))
    sk = item["SK"]["S"]
    for column, attribute in (
        ("logid", "LogId"),
        ("applicationid", "ApplicationId"),
        ("logtype", "LogType"),
        ("servicename", "ServiceName"),
        ("requestdata", "RequestData"),
        ("responsedata", "ResponseData"),
        ("statuscode", "StatusCode"),
        ("issuccess", "IsSuccess"),
        ("errormessage", "ErrorMessage"),
        ("processingtimems", "ProcessingTimeMs"),
        ("logtimestamp", "LogTimestamp"),
        ("correlationid", "CorrelationId"),
        ("userid", "UserId"),
    ):
        _put(item, attribute, row[column])
    if row["applicationid"] is not None:
        item["GSI1PK"] = {"S": f"APP#{row['applicationid']}"}
        item["GSI1SK"] = {"S": sk}
    if row["correlationid"] is not None:
        item["GSI2PK"] = {"S": f"CORR#{row['correlationid']}"}
        item["GSI2SK"] = {"S": sk}
    if row["issuccess"] is False:
        item["GSI3PK"] = {"S": f"ERROR#{day(row['logtimestamp'].date())}"}
        item["GSI3SK"] = {"S": sk}
    return item


def payment_item(row: dict[str, Any]) -> Item:
    item: Item = dict(payment_key(row["paymentid"], row["paymentdate"], row["customerid"]))
    for column, attribute in (
        ("paymentid", "PaymentId"),
        ("loanid", "LoanId"),
        ("paymentnumber", "PaymentNumber"),
        ("paymentdate", "PaymentDate"),
        ("paymentamount", "PaymentAmount"),
        ("principalamount", "PrincipalAmount"),
        ("interestamount", "InterestAmount"),
        ("paymentmethod", "PaymentMethod"),
        ("paymentstatus", "PaymentStatus"),
        ("transactionid", "TransactionId"),
        ("createddate", "CreatedDate"),
    ):
        _put(item, attribute, row[column])
    return item


def expected(
    conn: psycopg.Connection[Any], logs: set[int], payments: set[int]
) -> dict[str, dict[str, Item]]:
    """The items PostgreSQL's current rows of those keys must be, per table, by key text."""
    out: dict[str, dict[str, Item]] = {"logs": {}, "payments": {}}
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(
            "SELECT * FROM dbo.integrationlogs WHERE logid = ANY(%s)", [sorted(logs)]
        ):
            item = log_item(row)
            out["logs"][key_text("logs", item)] = item
        for row in cur.execute(
            "SELECT p.*, a.customerid FROM dbo.payments p JOIN dbo.loans l USING (loanid) "
            "JOIN dbo.applications a ON a.applicationid = l.applicationid "
            "WHERE p.paymentid = ANY(%s)",
            [sorted(payments)],
        ):
            item = payment_item(row)
            out["payments"][key_text("payments", item)] = item
    return out


KEYS = {"logs": ("PK", "SK"), "payments": ("CustomerId", "PaymentDateId")}
ROW_ID = {"logs": "LogId", "payments": "PaymentId"}


def key_text(table: str, item: Item) -> str:
    return "|".join(next(iter(item[a].values())) for a in KEYS[table])


def differences(want: Item, got: Item) -> list[str]:
    """Field by field: attribute names whose values differ (numbers compared as exact decimals,
    and their text must be a plain decimal, never a float's rendering)."""
    diffs = []
    live = {k: v for k, v in got.items() if k not in META}
    for name in sorted(set(want) | set(live)):
        a, b = want.get(name), live.get(name)
        if a is None or b is None:
            diffs.append(name)
        elif "N" in a and "N" in b:
            if Decimal(a["N"]) != Decimal(b["N"]) or "e" in b["N"].lower():
                diffs.append(name)
        elif a != b:
            diffs.append(name)
    return diffs
