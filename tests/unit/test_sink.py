"""DynamoSink against fake clients of our own: what a key move's transaction does when part of
it is refused or stale."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError
from factories import Record, create_record, log_row, update_record

from replicator.config import default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.errors import SinkError, SystemicSinkError
from replicator.stream.pipeline import to_change
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import DynamoSink, Write, plan

LOGS = "dbo.integrationlogs"
MAPPINGS = {m.source: m for m in default_tables()}


def writes(*records: Record) -> list[Write]:
    changes = []
    for rec in records:
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        changes.append(to_change(MAPPINGS[event.table], event))
    return plan(changes)


def key_move() -> list[Write]:
    """One row moved to another key: the new item first, then the marker at the old key."""
    row = log_row(logid=4)
    moved = writes(update_record(LOGS, row, {**row, "servicename": "EmailService"}))
    assert [w.item is not None for w in moved] == [True, False]
    return moved


def cancelled(*reasons: dict[str, str]) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
            "CancellationReasons": list(reasons),
        },
        "TransactWriteItems",
    )


class Transactions:
    """Answers each TransactWriteItems with the next scripted error, then acknowledges."""

    def __init__(self, *errors: ClientError) -> None:
        self.errors = list(errors)
        self.sent: list[list[dict[str, Any]]] = []

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        self.sent.append(request["TransactItems"])
        if self.errors:
            raise self.errors.pop(0)
        return {}


def sink(client: Any) -> DynamoSink:
    return DynamoSink(client, concurrency=1)


# --- a key move is all or nothing -----------------------------------------------------------


def test_a_key_move_refused_in_part_is_parked_whole_and_nothing_is_applied() -> None:
    move = key_move()
    refused = {"Code": "ValidationError", "Message": "Item size has exceeded the maximum"}
    client = Transactions(cancelled(refused, {"Code": "None"}))
    result = sink(client).write(move)
    assert len(client.sent) == 1  # the marker is not retried alone: the row would be nowhere
    assert result.applied == 0 and result.stale == 0
    assert [w for w, _ in result.failed] == move
    assert all("ValidationError" in reason for _, reason in result.failed)
    assert result.tables["IntegrationLogs"].applied == 0


def test_a_key_move_refused_after_a_stale_action_is_still_parked_whole() -> None:
    """The marker fails its guard (a newer change at the old key) and is dropped; the put then
    comes back refused: the unit is failed whole, none of it counted as applied or stale."""
    move = key_move()
    refused = {"Code": "ValidationError", "Message": "Item size has exceeded the maximum"}
    client = Transactions(
        cancelled({"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"}),
        cancelled(refused),
    )
    result = sink(client).write(move)
    assert len(client.sent) == 2
    assert (result.applied, result.stale) == (0, 0)
    assert [w for w, _ in result.failed] == move


def test_a_transaction_refused_outright_fails_every_write_of_the_unit() -> None:
    move = key_move()
    client = Transactions(
        cancelled({"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"}),
        ClientError(
            {"Error": {"Code": "ValidationException", "Message": "Item size has exceeded"}},
            "TransactWriteItems",
        ),
    )
    result = sink(client).write(move)
    assert [w for w, _ in result.failed] == move
    assert (result.applied, result.stale) == (0, 0)


def test_a_stale_action_lets_the_rest_of_the_move_proceed() -> None:
    """The old key already holds a newer change of this row: the put goes ahead alone."""
    move = key_move()
    client = Transactions(
        cancelled({"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"})
    )
    result = sink(client).write(move)
    assert len(client.sent) == 2
    assert client.sent[1] == client.sent[0][:1]  # the put alone
    assert (result.applied, result.stale, result.failed) == (1, 1, [])


class Stores(Transactions):
    """Acknowledges transactions and single puts alike, recording both."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[dict[str, Any]] = []

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.puts.append(request)
        return {}


def test_a_row_moved_more_than_a_transaction_holds_keeps_its_move_atomic() -> None:
    """120 moves of one row in one batch: 121 writes, more than TransactWriteItems' 100. The
    new item and the marker at the key the row held before the batch are one transaction; the
    keys it only passed through get their markers alone. (It was one transaction of 121
    actions, which DynamoDB refuses: a systemic stall of the whole consumer.)"""
    services = [f"Service{i:03}" for i in range(121)]
    rows = [log_row(logid=9, servicename=name) for name in services]
    moves = writes(*(update_record(LOGS, old, new) for old, new in itertools.pairwise(rows)))
    assert len(moves) == 121
    client = Stores()
    result = sink(client).write(moves)
    assert len(client.sent) == 1 and len(client.sent[0]) == 2
    put, marker = (action["Put"]["Item"] for action in client.sent[0])
    assert put["ServiceName"] == {"S": "Service120"} and put["PK"]["S"].startswith("Service120-")
    assert marker["PK"]["S"].startswith("Service000-")  # where the row was before the batch
    assert marker["_deleted"] == {"BOOL": True}
    passed = sorted(p["Item"]["PK"]["S"].split("-")[0] for p in client.puts)
    assert passed == services[1:120]  # each key passed through, once
    assert all("ConditionExpression" in p for p in client.puts)  # guarded like any write
    assert result.failed == []
    assert result.tables["IntegrationLogs"].applied == 120  # the move's events, counted once


# --- refusals that never reach DynamoDB -------------------------------------------------------


class Raises:
    """A client whose every write raises the same error."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def put_item(self, **request: Any) -> dict[str, Any]:
        raise self.error

    update_item = transact_write_items = put_item


def test_a_request_boto3_refuses_before_sending_stops_the_batch() -> None:
    """boto3 checks a request against its model before sending (ParamValidationError, a
    BotoCoreError like a connection failure); DynamoDB refuses the same request with a
    ValidationException that the wire client raises. Neither is the item's fault, and neither
    is the network's: both stop the batch with the reason."""
    row = writes(create_record(LOGS, log_row(logid=1)))
    boto3_refusal = ParamValidationError(report="Invalid length for parameter TableName")
    wire_refusal = ClientError(
        {
            "Error": {
                "Code": "ValidationException",
                "Message": "1 validation error detected: Value '' at 'tableName' failed to "
                "satisfy constraint: Member must have length greater than or equal to 3",
            }
        },
        "PutItem",
    )
    for refusal in (boto3_refusal, wire_refusal):
        with pytest.raises(SystemicSinkError):
            sink(Raises(refusal)).write(row)


def test_an_unreachable_endpoint_is_transient_not_systemic() -> None:
    row = writes(create_record(LOGS, log_row(logid=1)))
    with pytest.raises(SinkError) as caught:
        sink(Raises(EndpointConnectionError(endpoint_url="http://dynamodb"))).write(row)
    assert not isinstance(caught.value, SystemicSinkError)


# --- the transaction loop follows the retry policy ----------------------------------------------


def test_a_conflicting_key_move_is_retried_by_the_policy_then_fails_the_batch() -> None:
    """TransactionConflict on every try: as many transactions as the policy's attempts, full
    jitter waits between them, liveness told around each wait, then a (transient) SinkError."""
    conflict = cancelled({"Code": "TransactionConflict", "Message": "ongoing"}, {"Code": "None"})
    client = Transactions(*[conflict] * 10)
    sleeps: list[float] = []
    turns: list[int] = []
    retry = RetryPolicy(
        attempts=4, base_s=0.5, cap_s=1.0, sleep=sleeps.append, turned=lambda: turns.append(1)
    )
    with pytest.raises(SinkError) as caught:
        DynamoSink(client, concurrency=1, retry=retry).write(key_move())
    assert not isinstance(caught.value, SystemicSinkError)
    assert len(client.sent) == 4
    assert len(sleeps) == 3 and len(turns) == 6
    assert all(0.0 <= w <= min(1.0, 0.5 * 2**n) for n, w in enumerate(sleeps))
