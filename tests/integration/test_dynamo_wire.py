"""The wire client against the real local DynamoDB endpoint: guarded puts, updates that REMOVE,
cancelled transactions with their reasons in order, and DynamoSink ending in exactly the same
table state, with the same counts, on the wire client as on boto3's."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from replicator.config import Settings, default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.core.items import DELETED, POS
from replicator.core.mapping import UNAVAILABLE, TableMapping
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo_wire import DynamoWireClient
from replicator.stream.pipeline import to_change
from replicator.stream.sink import DynamoSink, SinkResult, Write, action, plan
from tests.integration.helpers import get_item
from tests.unit.factories import (
    Record,
    create_record,
    delete_record,
    log_row,
    micros,
    payment_row,
    update_record,
)

pytestmark = pytest.mark.stack

LOGS_SOURCE, PAYMENTS_SOURCE = "dbo.integrationlogs", "dbo.payments"
CUSTOMER = 77
NOW_S = 1_800_000_000
_lsns = itertools.count(90_000_000, 1_000)


def renamed(suffix: str) -> dict[str, TableMapping]:
    return {m.source: m.model_copy(update={"name": f"{m.name}{suffix}"}) for m in default_tables()}


@pytest.fixture(scope="module")
def tables(stack: Any, dynamodb: Any) -> Iterator[dict[str, dict[str, TableMapping]]]:
    """Fresh tables of this module only, deleted at the end: one set for single calls, and
    one each for DynamoSink on the wire client and on boto3's."""
    run = uuid.uuid4().hex[:6]
    sets = {
        "calls": renamed(f"_wire{run}"),
        "wire": renamed(f"_wiresink{run}"),
        "boto3": renamed(f"_wireref{run}"),
    }
    made = [m for mappings in sets.values() for m in mappings.values()]
    try:
        for mapping in made:
            ensure_table(dynamodb, mapping)
        yield sets
    finally:
        for mapping in made:
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=mapping.name)


@pytest.fixture(scope="module")
def wire(settings: Settings) -> Iterator[DynamoWireClient]:
    client = DynamoWireClient.from_settings(settings.dynamodb)
    yield client
    client.close()


def source(last_commit: int | None = None) -> dict[str, int]:
    lsn = next(_lsns)
    return {"lsn": lsn, "last_commit": lsn if last_commit is None else last_commit}


def writes(mappings: dict[str, TableMapping], *records: Record) -> list[Write]:
    """Decode, enrich (payments' customer), map and plan, as the pipeline does."""
    changes = []
    for rec in records:
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        mapping = mappings[event.table]
        for row in (event.row, event.before):
            if row is not None and mapping.lookups:
                row["customerid"] = CUSTOMER
        changes.append(to_change(mapping, event))
    return plan(changes)


def request(write: Write) -> tuple[str, dict[str, Any]]:
    ((kind, body),) = action(write, NOW_S).items()
    return kind, body


def test_guarded_put_applies_then_refuses_a_stale_one(
    tables: dict[str, dict[str, TableMapping]], wire: DynamoWireClient, dynamodb: Any
) -> None:
    mappings = tables["calls"]
    older = create_record(LOGS_SOURCE, log_row(logid=101, statuscode="old"), **source())
    newer = create_record(LOGS_SOURCE, log_row(logid=101, statuscode="new"), **source())
    (new_write,) = writes(mappings, newer)
    (old_write,) = writes(mappings, older)

    kind, body = request(new_write)
    assert kind == "Put"
    result = wire.put_item(**body)
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200

    for stale in (old_write, new_write):  # older, and the same position again (redelivery)
        with pytest.raises(ClientError) as caught:
            wire.put_item(**request(stale)[1])
        assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"

    stored = get_item(dynamodb, mappings[LOGS_SOURCE].name, new_write.key)
    assert stored is not None
    assert stored["StatusCode"] == {"S": "new"}
    assert stored[POS] == {"S": new_write.position.encode()}


def test_update_keeps_unsent_values_and_removes_nulled_ones(
    tables: dict[str, dict[str, TableMapping]], wire: DynamoWireClient, dynamodb: Any
) -> None:
    mappings = tables["calls"]
    failed = log_row(logid=102, issuccess=False, errormessage="boom", requestdata='{"big": 1}')
    fixed = log_row(logid=102, issuccess=True, errormessage=None, requestdata=UNAVAILABLE)
    (insert,) = writes(mappings, create_record(LOGS_SOURCE, failed, **source()))
    (update,) = writes(mappings, update_record(LOGS_SOURCE, None, fixed, **source()))
    wire.put_item(**request(insert)[1])
    before = get_item(dynamodb, mappings[LOGS_SOURCE].name, insert.key)
    assert before is not None and "GSI3PK" in before and "ErrorMessage" in before

    kind, body = request(update)
    assert kind == "Update" and " REMOVE " in body["UpdateExpression"]
    wire.update_item(**body)

    after = get_item(dynamodb, mappings[LOGS_SOURCE].name, update.key)
    assert after is not None
    assert after["RequestData"] == {"S": '{"big": 1}'}  # not sent (TOAST): kept
    assert after["IsSuccess"] == {"BOOL": True}
    assert "ErrorMessage" not in after and "GSI3PK" not in after and "GSI3SK" not in after
    assert after[POS] == {"S": update.position.encode()}


def test_a_cancelled_transaction_returns_its_reasons_in_order(
    tables: dict[str, dict[str, TableMapping]], wire: DynamoWireClient, dynamodb: Any
) -> None:
    mappings = tables["calls"]
    later = source()
    stored = create_record(LOGS_SOURCE, log_row(logid=105), **later)
    (guard,) = writes(mappings, stored)
    wire.put_item(**request(guard)[1])
    batch = writes(
        mappings,
        create_record(LOGS_SOURCE, log_row(logid=103), **source()),
        create_record(LOGS_SOURCE, log_row(logid=105), lsn=later["lsn"] - 1, last_commit=1),
        create_record(LOGS_SOURCE, log_row(logid=104), **source()),
    )
    with pytest.raises(ClientError) as caught:
        wire.transact_write_items(TransactItems=[action(w, NOW_S) for w in batch])
    response = caught.value.response
    assert response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in response["CancellationReasons"]] == [
        "None",
        "ConditionalCheckFailed",
        "None",
    ]
    name = mappings[LOGS_SOURCE].name
    assert get_item(dynamodb, name, batch[0].key) is None  # all or nothing
    assert get_item(dynamodb, name, batch[2].key) is None


def scenario() -> list[list[Record]]:
    """Batches of a realistic stream: inserts (one item over 400 KB, gzipped to binary), exact
    amounts, updates that move keys (transactions), deletes (markers), and a replay of the
    first batch (all stale)."""
    logs = [
        log_row(
            logid=200 + i,
            servicename=["CreditCheckService", "SmsService", "PaymentGateway"][i % 3],
            issuccess=i % 4 != 0,
            errormessage=None if i % 4 else "upstream unavailable",
            correlationid=None if i % 2 else f"corr-{i}",
            logtimestamp=micros(2024, 1, 10 + i % 5, 8, 0, i, 1000 * i),
        )
        for i in range(12)
    ]
    logs[3] = {**logs[3], "requestdata": '{"rows": [' + ",".join(['"Zoë 🙂 ok"'] * 60_000) + "]}"}
    amounts = ["0.10", "99999999.99", "-5.00", "0.00", "12345.67"]
    payments = [
        payment_row(paymentid=300 + i, paymentamount=a, loanid=7) for i, a in enumerate(amounts)
    ]
    first = [create_record(LOGS_SOURCE, row, **source()) for row in logs] + [
        create_record(PAYMENTS_SOURCE, row, **source()) for row in payments
    ]
    moved_log = {**logs[5], "servicename": "EmailService"}
    moved_payment = {**payments[1], "paymentdate": payments[1]["paymentdate"] + 1}
    second = [
        update_record(LOGS_SOURCE, logs[5], moved_log, **source()),
        update_record(PAYMENTS_SOURCE, payments[1], moved_payment, **source()),
        update_record(
            PAYMENTS_SOURCE, payments[2], {**payments[2], "paymentstatus": "Reversed"}, **source()
        ),
        delete_record(LOGS_SOURCE, logs[6], **source()),
        delete_record(PAYMENTS_SOURCE, payments[3], **source()),
    ]
    return [first, second, first]


def table_state(client: Any, mappings: dict[str, TableMapping]) -> dict[str, Any]:
    """Every item of both tables by key, delete markers included (their TTL dropped: it is
    taken from the clock at write time)."""
    state: dict[str, Any] = {}
    for source_name, mapping in mappings.items():
        pages = client.get_paginator("scan").paginate(TableName=mapping.name, ConsistentRead=True)
        for page in pages:
            for item in page["Items"]:
                if item.get(DELETED, {}).get("BOOL"):
                    item.pop(mapping.ttl_attribute)
                key = "|".join(str(item[a]) for a in mapping.key_attributes)
                state[f"{source_name}|{key}"] = item
    return state


def test_dynamo_sink_on_the_wire_client_matches_boto3(
    tables: dict[str, dict[str, TableMapping]], settings: Settings, dynamodb: Any
) -> None:
    from replicator.stream.dynamo import dynamodb_client

    batches = scenario()
    outcomes: dict[str, list[tuple[int, int, int]]] = {}
    for name, client in (
        ("wire", DynamoWireClient.from_settings(settings.dynamodb)),
        ("boto3", dynamodb_client(settings.dynamodb)),
    ):
        sink = DynamoSink(client, concurrency=8)
        try:
            results: list[SinkResult] = [
                sink.write(writes(tables[name], *batch)) for batch in batches
            ]
        finally:
            sink.close()
        outcomes[name] = [(r.applied, r.stale, len(r.failed)) for r in results]

    assert outcomes["wire"] == outcomes["boto3"]
    assert outcomes["wire"] == [(17, 0, 0), (7, 0, 0), (0, 17, 0)]
    wire_state = table_state(dynamodb, tables["wire"])
    assert wire_state == table_state(dynamodb, tables["boto3"])
    big = next(i for i in wire_state.values() if i.get("LogId") == {"N": "203"})
    assert "B" in big["RequestData"]  # the over-400-KB item went out gzipped, base64 on the wire
    assert any(i.get(DELETED) for i in wire_state.values())
    amounts = {
        Decimal(i["PaymentAmount"]["N"]) for i in wire_state.values() if "PaymentAmount" in i
    }
    assert {Decimal("0.10"), Decimal("99999999.99"), Decimal("-5.00")} <= amounts


@pytest.mark.parametrize("lane", ["transact", "batch"])
def test_the_other_lanes_end_in_the_same_state_as_single_guarded_writes(
    settings: Settings, dynamodb: Any, lane: str
) -> None:
    """The same stream through the transact lane or the batch lane leaves every item as single
    guarded writes leave it, with the same counts: the replayed first batch is all stale (the
    batch lane sends it through the guard: older than what it wrote from that partition)."""
    from replicator.stream.batch import BatchSink

    run = uuid.uuid4().hex[:6]
    sets = {"single": renamed(f"_lsingle{run}"), lane: renamed(f"_l{lane}{run}")}
    made = [m for mappings in sets.values() for m in mappings.values()]
    outcomes: dict[str, list[tuple[int, int, int]]] = {}
    batches = scenario()  # one stream, the same positions for both
    try:
        for mapping in made:
            ensure_table(dynamodb, mapping)
        for name in sets:
            client = DynamoWireClient.from_settings(settings.dynamodb)
            guarded = DynamoSink(client, 8, lane="transact" if name == "transact" else "single")
            sink = BatchSink(client, guarded, 8) if name == "batch" else guarded
            try:
                results = [sink.write(writes(sets[name], *batch)) for batch in batches]
            finally:
                sink.close()
            outcomes[name] = [(r.applied, r.stale, len(r.failed)) for r in results]
        assert outcomes[lane] == outcomes["single"] == [(17, 0, 0), (7, 0, 0), (0, 17, 0)]
        assert table_state(dynamodb, sets[lane]) == table_state(dynamodb, sets["single"])
    finally:
        for mapping in made:
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=mapping.name)
