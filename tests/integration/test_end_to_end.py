"""Rows inserted, updated and deleted in PostgreSQL arrive in DynamoDB exactly as the design
says, through the real PostgreSQL -> Debezium -> Kafka -> replicator -> DynamoDB path."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.integration.helpers import caught_up, get_item, normalized, visible, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def live(consumer_factory: Any) -> Any:
    consumer, own = consumer_factory("_e2e")
    consumer.start()
    # A new group reads the topics' history first; the waits below time this test's rows only.
    wait_for(
        lambda: caught_up(
            own.kafka.bootstrap_servers, own.kafka.group_id, [own.topic_of(m) for m in own.tables]
        ),
        600,
        interval_s=1.0,
        what="consumer caught up with the topics' history",
    )
    yield own
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"


def arrives(
    dynamodb: Any,
    table: str,
    key: dict[str, Any],
    expected: dict[str, Any] | None,
    timeout_s: float = 60,
) -> float:
    """Wait until the visible item equals `expected` (None: gone); return seconds waited."""
    started = time.monotonic()
    want = normalized(expected)
    wait_for(
        lambda: normalized(visible(get_item(dynamodb, table, key))) == want or None,
        timeout_s,
        what=f"{table} {key} == {expected}",
    )
    return time.monotonic() - started


def log_key(service: str, ts: str, logid: int) -> dict[str, Any]:
    return {"PK": {"S": f"{service}-{ts[:10]}"}, "SK": {"S": f"{ts}#{logid:019d}"}}


def test_integration_log_insert_update_key_move_delete(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    table = "IntegrationLogs_e2e"
    body = '{"applicant": "Zoë Ångström 🚀", "score": 712, "nested": {"a": [1, 2.50, null]}}'
    logid = pg.execute(
        "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
        "responsedata, statuscode, issuccess, errormessage, processingtimems, logtimestamp, "
        "correlationid, userid) VALUES (4711, 'Credit Check', 'CreditCheckService', %s, '', "
        "'200', true, NULL, 153, '2024-01-15 10:30:00.123456', 'corr-e2e-1', 'agent-7') "
        "RETURNING logid",
        [body],
    ).fetchone()[0]
    ts = "2024-01-15T10:30:00.123456Z"
    sk = f"{ts}#{logid:019d}"
    inserted = {
        "PK": {"S": "CreditCheckService-2024-01-15"},
        "SK": {"S": sk},
        "LogId": {"N": str(logid)},
        "ApplicationId": {"N": "4711"},
        "LogType": {"S": "Credit Check"},
        "ServiceName": {"S": "CreditCheckService"},
        "RequestData": {"S": body},
        "ResponseData": {"S": ""},
        "StatusCode": {"S": "200"},
        "IsSuccess": {"BOOL": True},
        "ProcessingTimeMs": {"N": "153"},
        "LogTimestamp": {"S": ts},
        "CorrelationId": {"S": "corr-e2e-1"},
        "UserId": {"S": "agent-7"},
        "GSI1PK": {"S": "APP#4711"},
        "GSI1SK": {"S": sk},
        "GSI2PK": {"S": "CORR#corr-e2e-1"},
        "GSI2SK": {"S": sk},
    }
    arrives(dynamodb, table, log_key("CreditCheckService", ts, logid), inserted)

    # A failure: GSI3 appears; a NULLed column and its GSI disappear.
    pg.execute(
        "UPDATE dbo.integrationlogs SET issuccess = false, statuscode = '504', "
        "errormessage = 'bureau timeout', correlationid = NULL WHERE logid = %s",
        [logid],
    )
    failed = {k: v for k, v in inserted.items() if k not in ("CorrelationId", "GSI2PK", "GSI2SK")}
    failed |= {
        "IsSuccess": {"BOOL": False},
        "StatusCode": {"S": "504"},
        "ErrorMessage": {"S": "bureau timeout"},
        "GSI3PK": {"S": "ERROR#2024-01-15"},
        "GSI3SK": {"S": sk},
    }
    arrives(dynamodb, table, log_key("CreditCheckService", ts, logid), failed)

    # Key move: the timestamp (part of PK and SK) changes; the old item must vanish.
    pg.execute(
        "UPDATE dbo.integrationlogs SET logtimestamp = '2024-01-16 00:00:00' WHERE logid = %s",
        [logid],
    )
    ts2 = "2024-01-16T00:00:00.000000Z"
    sk2 = f"{ts2}#{logid:019d}"
    moved = failed | {
        "PK": {"S": "CreditCheckService-2024-01-16"},
        "SK": {"S": sk2},
        "LogTimestamp": {"S": ts2},
        "GSI1SK": {"S": sk2},
        "GSI3PK": {"S": "ERROR#2024-01-16"},
        "GSI3SK": {"S": sk2},
    }
    arrives(dynamodb, table, log_key("CreditCheckService", ts2, logid), moved)
    assert visible(get_item(dynamodb, table, log_key("CreditCheckService", ts, logid))) is None

    pg.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
    arrives(dynamodb, table, log_key("CreditCheckService", ts2, logid), None)
    marker = get_item(dynamodb, table, log_key("CreditCheckService", ts2, logid))
    assert marker is not None and marker["_deleted"] == {"BOOL": True}
    assert "GSI1PK" not in marker and "LogType" not in marker  # invisible to every GSI
    assert int(marker["ExpiresAt"]["N"]) > time.time()


def test_payment_insert_update_key_move_delete(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    table = "Payments_e2e"
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (90210) RETURNING applicationid"
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    payment = pg.execute(
        "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
        "principalamount, interestamount, paymentmethod, paymentstatus, transactionid, "
        "createddate) VALUES (%s, 12, '2024-03-01', 99999999.99, 0.10, -0.01, 'Online', "
        "'Pending', 'tx-ÆØÅ-1', '2024-03-01 08:15:30.5') RETURNING paymentid",
        [loan],
    ).fetchone()[0]
    date_id = f"2024-03-01#{payment:010d}"
    key = {"CustomerId": {"N": "90210"}, "PaymentDateId": {"S": date_id}}
    inserted = {
        **key,
        "PaymentId": {"N": str(payment)},
        "LoanId": {"N": str(loan)},
        "PaymentNumber": {"N": "12"},
        "PaymentDate": {"S": "2024-03-01"},
        "PaymentAmount": {"N": "99999999.99"},
        "PrincipalAmount": {"N": "0.10"},
        "InterestAmount": {"N": "-0.01"},
        "PaymentMethod": {"S": "Online"},
        "PaymentStatus": {"S": "Pending"},
        "TransactionId": {"S": "tx-ÆØÅ-1"},
        "CreatedDate": {"S": "2024-03-01T08:15:30.500000Z"},
    }
    latency = arrives(dynamodb, table, key, inserted)
    print(f"payment insert visible in DynamoDB after {latency * 1000:.0f} ms")

    pg.execute(
        "UPDATE dbo.payments SET paymentstatus = 'Completed', paymentamount = 0, "
        "transactionid = NULL WHERE paymentid = %s",
        [payment],
    )
    completed = {k: v for k, v in inserted.items() if k != "TransactionId"}
    completed |= {"PaymentStatus": {"S": "Completed"}, "PaymentAmount": {"N": "0"}}
    arrives(dynamodb, table, key, completed)

    pg.execute("UPDATE dbo.payments SET paymentdate = '2024-02-29' WHERE paymentid = %s", [payment])
    moved_key = {"CustomerId": {"N": "90210"}, "PaymentDateId": {"S": f"2024-02-29#{payment:010d}"}}
    moved = completed | moved_key | {"PaymentDate": {"S": "2024-02-29"}}
    arrives(dynamodb, table, moved_key, moved)
    assert visible(get_item(dynamodb, table, key)) is None

    pg.execute("DELETE FROM dbo.payments WHERE paymentid = %s", [payment])
    arrives(dynamodb, table, moved_key, None)


def test_a_row_moved_120_times_in_one_transaction_is_at_its_last_key_only(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    """More moves of one row than one TransactWriteItems holds (100 actions), in one source
    transaction, so in one batch: the row ends at its last key, every key it passed through
    holds a delete marker, and the consumer goes on (it had stalled on a refused transaction)."""
    table = "IntegrationLogs_e2e"
    ts = "2024-02-01T08:00:00.000000Z"
    with pg.transaction():
        logid = pg.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            "responsedata, statuscode, issuccess, processingtimems, logtimestamp) VALUES "
            "(4712, 'Move', 'Hop000', '{}', '{}', '200', true, 1, '2024-02-01 08:00:00') "
            "RETURNING logid"
        ).fetchone()[0]
        for hop in range(1, 121):
            pg.execute(
                "UPDATE dbo.integrationlogs SET servicename = %s WHERE logid = %s",
                [f"Hop{hop:03}", logid],
            )
    wait_for(
        lambda: visible(get_item(dynamodb, table, log_key("Hop120", ts, logid))) or None,
        120,
        what="the row at its last key",
    )
    for hop in range(120):
        stored = get_item(dynamodb, table, log_key(f"Hop{hop:03}", ts, logid))
        assert stored is None or stored.get("_deleted") == {"BOOL": True}, (hop, stored)
    listed = dynamodb.query(
        TableName=table,
        IndexName="LogIdIndex",
        KeyConditionExpression="LogId = :id",
        ExpressionAttributeValues={":id": {"N": str(logid)}},
    )["Items"]
    assert len(listed) == 1 and listed[0]["PK"]["S"] == "Hop120-2024-02-01"
