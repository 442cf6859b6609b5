"""Idempotence and order against the real DynamoDB endpoint: replaying any prefix, suffix or
duplicated run of a row's ordered change events, in any batching, leaves the table as the full
sequence does; a deleted row never comes back; a key move leaves no stale item, even replayed."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.config import Settings, default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.core.items import DELETED, META_ATTRIBUTES
from replicator.core.mapping import TableMapping, item_key, to_item
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.pipeline import to_change
from replicator.stream.sink import DynamoSink, plan
from tests.integration.helpers import normalized
from tests.unit.factories import (
    Record,
    create_record,
    delete_record,
    log_row,
    micros,
    snapshot_record,
    update_record,
)

pytestmark = pytest.mark.stack

LOGS: TableMapping = default_tables()[0].model_copy(update={"name": "IntegrationLogs_idem"})
SERVICES = ["CreditCheckService", "SmsService"]
TIMES = [micros(2024, 1, 15, 10, 30, 0, 1), micros(2024, 1, 16, 0, 0, 0, 0)]
_logids = itertools.count(5_000_000)


@pytest.fixture(scope="module")
def sink(stack: Any, settings: Settings, dynamodb: Any) -> Iterator[DynamoSink]:
    with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.delete_table(TableName=LOGS.name)
    ensure_table(dynamodb, LOGS)
    writer = DynamoSink(dynamodb_client(settings.dynamodb), concurrency=4)
    yield writer
    writer.close()


def history(logid: int, ops: list[tuple[str, int, int, bool]]) -> tuple[list[Record], dict | None]:
    """Records of one row's life, and the row it ends as (None: deleted).

    ops: (kind, service index, time index, same transaction as the previous op?)."""
    records: list[Record] = []
    row: dict[str, Any] | None = None
    last_commit, lsn = 40_000_000 + logid * 10_000, 40_000_000 + logid * 10_000
    for step, (kind, service, when, same_tx) in enumerate(ops):
        lsn += 100
        if not same_tx:
            last_commit = lsn
            lsn += 100
        source = {"lsn": lsn, "last_commit": last_commit}
        values = {
            "logid": logid,
            "servicename": SERVICES[service],
            "logtimestamp": TIMES[when],
            "statuscode": str(200 + step),
            "issuccess": step % 2 == 0,
        }
        if kind == "insert":
            row = log_row(**values)
            records.append(create_record("dbo.integrationlogs", row, **source))
        elif kind == "delete":
            assert row is not None
            records.append(delete_record("dbo.integrationlogs", row, **source))
            row = None
        else:  # update; it moves the key when the service or the time changes
            assert row is not None
            after = log_row(**values)
            records.append(update_record("dbo.integrationlogs", row, after, **source))
            row = after
    return records, row


@st.composite
def lives(draw: st.DrawFn) -> list[tuple[str, int, int, bool]]:
    """A plausible life of one row: inserted, updated (sometimes moving its key), deleted,
    re-inserted..."""
    ops = [("insert", draw(st.integers(0, 1)), draw(st.integers(0, 1)), False)]
    for _ in range(draw(st.integers(0, 7))):
        alive = ops[-1][0] != "delete"
        kind = draw(st.sampled_from(["update", "update", "delete"])) if alive else "insert"
        ops.append(
            (
                kind,
                draw(st.integers(0, 1)),
                draw(st.integers(0, 1)),
                draw(st.booleans()) if alive else False,
            )
        )
    return ops


def apply(sink: DynamoSink, records: list[Record], cuts: list[int]) -> None:
    """Decode, map, plan and write records, in batches cut at the given points."""
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        events = [decode(r.key, r.value, r.origin) for r in records[start:end]]
        changes = [to_change(LOGS, e) for e in events if isinstance(e, ChangeEvent)]
        result = sink.write(plan(changes))
        assert not result.failed, result.failed


def state_of(client: Any, logid: int) -> dict[str, Any]:
    """Every item of this row in the table, by sort key: visible items, and markers as None."""
    found = {}
    pages = client.get_paginator("scan").paginate(
        TableName=LOGS.name,
        ConsistentRead=True,
        FilterExpression="contains(SK, :id)",
        ExpressionAttributeValues={":id": {"S": f"#{logid:019d}"}},
    )
    for page in pages:
        for item in page["Items"]:
            sk = item["PK"]["S"] + "|" + item["SK"]["S"]
            found[sk] = (
                None
                if item.get(DELETED)
                else normalized({k: v for k, v in item.items() if k not in META_ATTRIBUTES})
            )
    return found


def visible(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if v is not None}


def expected(final: dict[str, Any] | None) -> dict[str, Any]:
    if final is None:
        return {}
    item, _ = to_item(LOGS, final)
    key = item_key(LOGS, final)
    return {key["PK"]["S"] + "|" + key["SK"]["S"]: normalized(item)}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    life=lives(),
    cuts=st.lists(st.integers(0, 20), max_size=4),
    replay=st.tuples(st.integers(0, 20), st.integers(0, 20)),
    replay_cuts=st.lists(st.integers(0, 20), max_size=3),
)
def test_replaying_any_run_of_a_rows_events_changes_nothing(
    sink: DynamoSink,
    dynamodb: Any,
    life: list,
    cuts: list[int],
    replay: tuple[int, int],
    replay_cuts: list[int],
) -> None:
    logid = next(_logids)
    records, final = history(logid, life)
    apply(sink, records, cuts)
    after_full = state_of(dynamodb, logid)
    assert visible(after_full) == expected(final)

    # Any contiguous run again: a prefix, a suffix, the middle, or all of it, twice.
    start, stop = sorted(r % (len(records) + 1) for r in replay)
    run = records[start:stop]
    apply(sink, run + run, replay_cuts)
    assert state_of(dynamodb, logid) == after_full


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(life=lives(), prefix=st.integers(0, 20), cuts=st.lists(st.integers(0, 20), max_size=3))
def test_a_prefix_then_the_whole_sequence_ends_as_the_whole_sequence(
    sink: DynamoSink, dynamodb: Any, life: list, prefix: int, cuts: list[int]
) -> None:
    logid = next(_logids)
    records, final = history(logid, life)
    apply(sink, records[: prefix % (len(records) + 1)], cuts)
    apply(sink, records, [])
    assert visible(state_of(dynamodb, logid)) == expected(final)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    life=lives(),
    shuffle=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 20), max_size=3),
)
def test_a_rows_events_in_any_arrival_order_end_as_its_newest_change(
    sink: DynamoSink, dynamodb: Any, life: list, shuffle: Any, cuts: list[int]
) -> None:
    """A dlq replay or a Debezium redelivery puts older changes after newer ones, in one batch
    or across batches: the newest position wins, and every key the row left is a marker."""
    logid = next(_logids)
    records, final = history(logid, life)
    shuffled = list(records)
    shuffle.shuffle(shuffled)
    apply(sink, shuffled, cuts)
    assert visible(state_of(dynamodb, logid)) == expected(final)


def test_a_deleted_row_never_comes_back(sink: DynamoSink, dynamodb: Any) -> None:
    logid = next(_logids)
    records, final = history(
        logid, [("insert", 0, 0, False), ("update", 0, 0, False), ("delete", 0, 0, False)]
    )
    assert final is None
    apply(sink, records, [])
    for record in records[:-1]:  # the insert and the update, redelivered later
        apply(sink, [record], [])
    assert visible(state_of(dynamodb, logid)) == {}


def test_delete_then_reinsert_ends_with_the_reinserted_row(sink: DynamoSink, dynamodb: Any) -> None:
    logid = next(_logids)
    records, final = history(
        logid, [("insert", 0, 0, False), ("delete", 0, 0, False), ("insert", 1, 1, False)]
    )
    for record in records:
        apply(sink, [record], [])
    apply(sink, records, [])  # and once more, all in one batch
    assert visible(state_of(dynamodb, logid)) == expected(final)


def test_key_move_replayed_leaves_no_stale_item(sink: DynamoSink, dynamodb: Any) -> None:
    logid = next(_logids)
    records, final = history(logid, [("insert", 0, 0, False), ("update", 1, 1, False)])
    apply(sink, records, [1])
    state = state_of(dynamodb, logid)
    assert visible(state) == expected(final) and len(state) == 2  # the old key is a marker
    apply(sink, [records[1], records[0], records[1]], [1, 2])  # replayed, out of order too
    assert state_of(dynamodb, logid) == state


def test_snapshot_read_replayed_after_streaming_changes_nothing(
    sink: DynamoSink, dynamodb: Any
) -> None:
    logid = next(_logids)
    row = log_row(logid=logid, servicename=SERVICES[0], logtimestamp=TIMES[0])
    snapshot = snapshot_record("dbo.integrationlogs", row, lsn=90_000_000)
    # A transaction that began before the snapshot and committed after it: lower LSN.
    later = update_record(
        "dbo.integrationlogs",
        row,
        {**row, "statuscode": "201"},
        lsn=80_000_000,
        last_commit=70_000_000,
    )
    apply(sink, [snapshot, later], [1])
    apply(sink, [snapshot], [])
    item = visible(state_of(dynamodb, logid))
    assert [v["StatusCode"] for v in item.values()] == [("S", "201")]
