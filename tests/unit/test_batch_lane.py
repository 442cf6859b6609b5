"""The batch lane (replicator.stream.batch) against a fake client of our own: how planned writes
become unconditional BatchWriteItem puts, what goes through the guard instead, UnprocessedItems,
refusals; and the backfill's choice of lane and its hand-over offsets (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from factories import (
    Record,
    create_record,
    delete_record,
    log_row,
    payment_row,
    update_record,
)

from replicator.config import default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Position
from replicator.core.items import DELETED, POS
from replicator.errors import ReplicatorError, SinkError, SystemicSinkError
from replicator.ops.backfill import Job, batch_lane_refusal, batch_marks, handoff_offsets
from replicator.stream.batch import BatchSink, high_water, requests_of, units_of
from replicator.stream.pipeline import to_change
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import DynamoSink, Write, plan
from replicator.stream.source import Span

LOGS = "dbo.integrationlogs"
MAPPINGS = {m.source: m for m in default_tables()}
TABLE = MAPPINGS[LOGS].name


def writes(*records: Record) -> list[Write]:
    changes = []
    for rec in records:
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        mapping = MAPPINGS[event.table]
        for row in (event.row, event.before):
            if row is not None and mapping.lookups:
                row["customerid"] = 77  # as the enrichment lookup gives it
        changes.append(to_change(mapping, event))
    return plan(changes)


def refusal(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "BatchWriteItem")


def where(item: dict[str, Any]) -> str:
    """An item's key, whichever table."""
    return str(sorted((k, v) for k, v in item.items() if k in KEY_ATTRIBUTES))


KEY_ATTRIBUTES = {a for m in MAPPINGS.values() for a in m.key_attributes}


class Client:
    """BatchWriteItem answers from a script (an answer dict, or an exception, or a function of
    the request), then acknowledges; guarded PutItems fail their condition when the stored
    position (kept per key) is not older."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.batches: list[list[dict[str, Any]]] = []
        self.puts: list[dict[str, Any]] = []
        self.stored: dict[str, str] = {}

    def batch_write_item(self, **request: Any) -> dict[str, Any]:
        ((table, puts),) = request["RequestItems"].items()
        assert table in {m.name for m in MAPPINGS.values()} and len(puts) <= 25
        self.batches.append(puts)
        answer = self.script.pop(0) if self.script else {}
        if callable(answer):
            answer = answer(puts)
        if isinstance(answer, Exception):
            raise answer
        left = {id(p) for p in answer.get("UnprocessedItems", {}).get(table, [])}
        for put in puts:
            if id(put) not in left:
                item = put["PutRequest"]["Item"]
                self.stored[where(item)] = item[POS]["S"]
        return answer

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.puts.append(request)
        item = request["Item"]
        stored = self.stored.get(where(item))
        if stored is not None and not stored < request["ExpressionAttributeValues"][":pos"]["S"]:
            raise ClientError(
                {"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}, "PutItem"
            )
        self.stored[where(item)] = request["ExpressionAttributeValues"][":pos"]["S"]
        return {}

    def update_item(self, **request: Any) -> dict[str, Any]:
        self.puts.append(request)
        return {}


def lane(client: Client, **kwargs: Any) -> BatchSink:
    retry = RetryPolicy(attempts=4, sleep=lambda _s: None)
    return BatchSink(client, DynamoSink(client, 1, retry), 2, retry, **kwargs)


def inserts(count: int, start: int = 1, **source: Any) -> list[Record]:
    return [create_record(LOGS, log_row(logid=i), **source) for i in range(start, start + count)]


# --- puts, no conditions, 25 to a request ---------------------------------------------------


def test_writes_go_25_to_a_request_as_unconditional_puts_each_with_its_position() -> None:
    client = Client()
    planned = writes(*inserts(60))
    result = lane(client).write(planned)
    assert sorted(len(b) for b in client.batches) == [10, 25, 25]
    assert result.applied == 60 and not result.failed and not client.puts
    assert result.tables[TABLE].applied == 60
    items = [p["PutRequest"]["Item"] for b in client.batches for p in b]
    assert {i[POS]["S"] for i in items} == {w.position.encode() for w in planned}
    assert all(set(p) == {"PutRequest"} for b in client.batches for p in b)  # no condition


def test_delete_markers_and_key_move_markers_are_puts_in_the_rows_request() -> None:
    row = log_row(logid=7)
    moved = {**row, "servicename": "EmailService"}
    client = Client()
    result = lane(client).write(
        writes(update_record(LOGS, row, moved), delete_record(LOGS, log_row(logid=8)))
    )
    assert result.applied == 3
    ((a, b, c),) = client.batches  # the move's item and marker together, then the delete's
    assert DELETED not in a["PutRequest"]["Item"]
    assert b["PutRequest"]["Item"][DELETED] == {"BOOL": True}
    assert b["PutRequest"]["Item"]["PK"]["S"].startswith(row["servicename"])
    assert c["PutRequest"]["Item"][DELETED] == {"BOOL": True}
    assert a["PutRequest"]["Item"][POS] == b["PutRequest"]["Item"][POS]


def test_each_request_writes_one_table() -> None:
    client = Client()
    logs = inserts(3)
    pays = [create_record("dbo.payments", payment_row(paymentid=i)) for i in (1, 2)]
    planned = writes(logs[0], pays[0], logs[1], pays[1], logs[2])
    result = lane(client).write(planned)
    assert result.applied == 5
    assert sorted(len(b) for b in client.batches) == [2, 3]
    for batch in client.batches:
        assert len({"LogId" in p["PutRequest"]["Item"] for p in batch}) == 1


def test_a_unit_stays_whole_in_one_request() -> None:
    units = units_of(writes(*inserts(24)) + writes(update_record(LOGS, log_row(logid=99), {
        **log_row(logid=99), "servicename": "EmailService"})))  # fmt: skip
    packed = requests_of(units)
    assert [sum(len(u) for u in r) for r in packed] == [24, 2]


# --- across batches: the newest position wins -------------------------------------------------


def test_an_older_change_after_a_newer_one_goes_through_the_guard_across_batches() -> None:
    client = Client()
    sink = lane(client)
    row = log_row(logid=5)
    newer = create_record(LOGS, {**row, "statuscode": "201"}, lsn=9_000, last_commit=9_000)
    older = create_record(LOGS, row, lsn=100, last_commit=100)  # a redelivery, later in line
    sink.write(writes(newer))
    result = sink.write(writes(older))
    assert len(client.batches) == 1  # only the newer one went unconditionally
    (guarded,) = client.puts
    assert "ConditionExpression" in guarded
    assert result.stale == 1 and result.applied == 0  # the stored newer item stays
    assert client.stored and set(client.stored.values()) == {writes(newer)[0].position.encode()}


def test_newer_changes_of_later_batches_keep_the_batch_lane() -> None:
    client = Client()
    sink = lane(client)
    sink.write(writes(*inserts(3, lsn=None)))
    sink.write(writes(*inserts(3, start=10)))
    assert len(client.batches) == 2 and not client.puts


def test_the_newest_position_rides_on_the_committed_offsets_and_seeds_a_resumed_load() -> None:
    client = Client()
    first = lane(client)
    newer = writes(create_record(LOGS, log_row(logid=5), lsn=9_000, last_commit=9_000))
    first.write(newer)
    metadata = first.commit_metadata()
    ((where, text),) = metadata.items()
    assert high_water(text) == newer[0].position
    span = Span(where[0], where[1], 0, 10, 20, text)
    resumed = lane(client, marks=batch_marks([span]))
    resumed.write(writes(create_record(LOGS, log_row(logid=5), lsn=50, last_commit=50)))
    assert len(client.batches) == 1 and len(client.puts) == 1  # the older one: guarded


def test_a_change_that_keeps_stored_values_is_written_guarded() -> None:
    row = log_row(logid=6)
    toasted = {**row, "requestdata": "__debezium_unavailable_value"}
    client = Client()
    result = lane(client).write(writes(update_record(LOGS, row, toasted)))
    assert not client.batches and result.applied == 1
    assert "UpdateExpression" in client.puts[0]


# --- UnprocessedItems -------------------------------------------------------------------------


def test_unprocessed_items_are_sent_again_until_written() -> None:
    def leave_two(puts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"UnprocessedItems": {TABLE: puts[:2]}}

    client = Client(leave_two)
    result = lane(client).write(writes(*inserts(5)))
    first, second = client.batches
    assert len(first) == 5 and second == first[:2]
    assert result.applied == 5 and result.tables[TABLE].throttled == 1


def test_items_still_unprocessed_after_the_policy_fail_the_batch() -> None:
    def leave_all(puts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"UnprocessedItems": {TABLE: puts}}

    client = Client(*[leave_all] * 10)
    with pytest.raises(SinkError, match="unprocessed"):
        lane(client).write(writes(*inserts(3)))
    assert len(client.batches) == 4  # the policy's attempts


# --- refusals ---------------------------------------------------------------------------------


def test_a_refused_item_is_parked_and_the_rest_of_its_request_written() -> None:
    def refuse_13(puts: list[dict[str, Any]]) -> Any:
        if any(p["PutRequest"]["Item"]["LogId"] == {"N": "13"} for p in puts):
            return refusal("ValidationException", "Item size has exceeded the maximum allowed")
        return {}

    client = Client(*[refuse_13] * 30)
    planned = writes(*inserts(20, start=1))
    result = lane(client).write(planned)
    assert result.applied == 19
    ((write, reason),) = result.failed
    assert write.item is not None and write.item["LogId"] == {"N": "13"}
    assert "Item size" in reason
    assert len(client.batches) == 1 + 20  # the refused request, then one unit each


def test_a_key_move_refused_in_part_is_parked_whole() -> None:
    row = log_row(logid=7)
    moved = {**row, "servicename": "EmailService"}
    client = Client(*[refusal("ValidationException", "Item size has exceeded the maximum")] * 2)
    planned = writes(update_record(LOGS, row, moved))
    result = lane(client).write(planned)
    assert result.applied == 0 and [w for w, _ in result.failed] == planned


def test_a_systemic_refusal_stops_the_batch() -> None:
    client = Client(refusal("ResourceNotFoundException", "Requested resource not found"))
    with pytest.raises(SystemicSinkError):
        lane(client).write(writes(*inserts(3)))


# --- which lane a backfill takes --------------------------------------------------------------


def job(into: str) -> Job:
    mapping = MAPPINGS[LOGS]
    return Job(mapping, mapping.model_copy(update={"name": into}), "g")


def span(start: int = 0, metadata: str | None = None) -> Span:
    return Span("t", 0, 0, start, 100, metadata)


MARK = "batch-lane " + Position(5, 1, 5).encode()


def test_the_batch_lane_loads_a_new_or_empty_table_other_than_the_live_one() -> None:
    assert batch_lane_refusal(job("T_v2"), "created", False, [span()]) is None
    assert batch_lane_refusal(job("T_v2"), "exists", True, [span()]) is None
    assert batch_lane_refusal(job("T_v2"), "exists", False, [span(40, MARK)]) is None  # resumed


def test_the_batch_lane_is_refused_for_the_live_table_and_tables_with_other_items() -> None:
    live = batch_lane_refusal(job(TABLE), "created", True, [span()])
    assert live is not None and "live consumer" in live
    assert batch_lane_refusal(job("T_v2"), "exists", False, [span()]) is not None
    guarded_before = batch_lane_refusal(job("T_v2"), "exists", False, [span(40)])
    assert guarded_before is not None and "already holds items" in guarded_before


# --- where the live group goes on after a load ---------------------------------------------


def spans() -> list[Span]:
    return [Span("t", 0, 0, 0, 100), Span("t", 1, 0, 0, 50), Span("t", 2, 0, 0, 0)]


def test_a_live_group_without_offsets_or_behind_goes_on_where_the_load_ended() -> None:
    loaded = {0: 100, 1: 48, 2: -1}
    low = {0: 0, 1: 0, 2: 0}
    assert handoff_offsets(spans(), loaded, {0: -1, 1: -1, 2: -1}, low, "T", "g") == {
        0: 100,
        1: 48,
        2: 0,
    }
    assert handoff_offsets(spans(), loaded, {0: 30, 1: 48, 2: -1}, low, "T", "g")[0] == 100


def test_a_live_group_ahead_of_the_load_is_left_alone() -> None:
    with pytest.raises(ReplicatorError, match="ahead of the load"):
        handoff_offsets(spans(), {0: 100, 1: 48}, {0: 101, 1: 0}, {0: 0, 1: 0}, "T", "g")


def test_a_load_that_began_after_the_live_groups_position_is_not_handed_over() -> None:
    late = [Span("t", 0, 40, 40, 100)]  # --from-time
    with pytest.raises(ReplicatorError, match=r"applied by\s+neither"):
        handoff_offsets(late, {0: 100}, {0: -1}, {0: 0}, "T", "g")
    assert handoff_offsets(late, {0: 100}, {0: 45}, {0: 0}, "T", "g") == {0: 100}
