from __future__ import annotations

import re
from typing import Any

import pytest
from factories import (
    Record,
    create_record,
    days,
    delete_record,
    log_row,
    payment_row,
    snapshot_record,
    update_record,
)

from replicator.config import default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Position
from replicator.core.mapping import UNAVAILABLE, TableMapping
from replicator.errors import LookupMissError
from replicator.stream.pipeline import to_change
from replicator.stream.sink import Change, Write, action, plan

LOGS = "dbo.integrationlogs"
PAYMENTS = "dbo.payments"
MAPPINGS = {m.source: m for m in default_tables()}
GUARD = "attribute_not_exists(#pos) OR #pos < :pos"
NOW_S = 1_800_000_000
CUSTOMER = 42


def change(rec: Record, customerid: int | None = CUSTOMER) -> Change:
    """Decode and map one record as the pipeline does, enriching payments first."""
    event = decode(rec.key, rec.value, rec.origin)
    assert isinstance(event, ChangeEvent)
    mapping = MAPPINGS[event.table]
    if mapping.lookups and customerid is not None:
        for row in (event.row, event.before):
            if row is not None:
                row["customerid"] = customerid  # what Lookups.fill adds in place
    return to_change(mapping, event)


def payment_key(paymentid: int, year: int, month: int, day: int) -> dict[str, Any]:
    date = f"{year:04d}-{month:02d}-{day:02d}"
    return {
        "CustomerId": {"N": str(CUSTOMER)},
        "PaymentDateId": {"S": f"{date}#{paymentid:010d}"},
    }


def summary(writes: list[Write]) -> list[tuple[Any, ...]]:
    """(key, put or marker, position) per write, in plan order."""
    return [(w.key, "put" if w.item else "marker", w.position) for w in writes]


# --- collapsing -----------------------------------------------------------------------------


def test_changes_of_one_row_collapse_to_the_last() -> None:
    first = log_row(statuscode="100")
    second = log_row(statuscode="200")
    third = log_row(statuscode="300")
    changes = [
        change(create_record(LOGS, first, lsn=100, last_commit=90)),
        change(update_record(LOGS, first, second, lsn=200, last_commit=190)),
        change(update_record(LOGS, second, third, lsn=300, last_commit=290)),
    ]
    writes = plan(changes)
    assert len(writes) == 1
    assert writes[0].item == changes[-1].item
    assert writes[0].item is not None and writes[0].item["StatusCode"] == {"S": "300"}
    assert writes[0].position == Position(290, 1, 300)
    assert writes[0].source_ts_ms == changes[-1].event.source_ts_ms


def test_collapsed_write_stands_for_every_origin() -> None:
    recs = [
        create_record(LOGS, log_row(), lsn=100),
        update_record(LOGS, log_row(), log_row(userid="u"), lsn=200),
    ]
    (write,) = plan([change(r) for r in recs])
    assert write.origins == tuple(r.origin for r in recs)


def test_update_then_delete_collapses_to_a_delete_marker() -> None:
    old, new = log_row(), log_row(statuscode="500")
    changes = [
        change(update_record(LOGS, old, new, lsn=100, last_commit=90)),
        change(delete_record(LOGS, new, lsn=200, last_commit=190)),
    ]
    (write,) = plan(changes)
    assert (write.key, write.item, write.position) == (changes[0].key, None, Position(190, 1, 200))


def test_delete_then_reinsert_of_one_key_ends_with_the_put() -> None:
    row = payment_row()
    changes = [
        change(delete_record(PAYMENTS, row, lsn=100, last_commit=90)),
        change(create_record(PAYMENTS, row, lsn=200, last_commit=190)),
    ]
    assert summary(plan(changes)) == [
        (payment_key(1, 2024, 2, 1), "put", Position(190, 1, 200)),
    ]


def test_row_moving_k1_k2_k3_puts_at_k3_and_marks_k1_and_k2() -> None:
    k1 = payment_row(paymentdate=days(2024, 2, 1))
    k2 = payment_row(paymentdate=days(2024, 3, 1))
    k3 = payment_row(paymentdate=days(2024, 4, 1))
    changes = [
        change(update_record(PAYMENTS, k1, k2, lsn=100, last_commit=90)),
        change(update_record(PAYMENTS, k2, k3, lsn=200, last_commit=190)),
    ]
    final = Position(190, 1, 200)
    writes = plan(changes)
    assert sorted(summary(writes), key=repr) == sorted(
        [
            (payment_key(1, 2024, 4, 1), "put", final),
            (payment_key(1, 2024, 3, 1), "marker", final),
            (payment_key(1, 2024, 2, 1), "marker", final),
        ],
        key=repr,
    )
    put = next(w for w in writes if w.item)
    assert put.item == changes[-1].item


def test_row_moving_back_to_its_first_key_marks_only_the_key_it_left() -> None:
    k1 = payment_row(paymentdate=days(2024, 2, 1))
    k2 = payment_row(paymentdate=days(2024, 3, 1))
    changes = [
        change(update_record(PAYMENTS, k1, k2, lsn=100, last_commit=90)),
        change(update_record(PAYMENTS, k2, k1, lsn=200, last_commit=190)),
    ]
    final = Position(190, 1, 200)
    assert sorted(summary(plan(changes)), key=repr) == sorted(
        [
            (payment_key(1, 2024, 2, 1), "put", final),
            (payment_key(1, 2024, 3, 1), "marker", final),
        ],
        key=repr,
    )


def test_row_moved_then_deleted_marks_both_keys() -> None:
    k1 = payment_row(paymentdate=days(2024, 2, 1))
    k2 = payment_row(paymentdate=days(2024, 3, 1))
    changes = [
        change(update_record(PAYMENTS, k1, k2, lsn=100, last_commit=90)),
        change(delete_record(PAYMENTS, k2, lsn=200, last_commit=190)),
    ]
    final = Position(190, 1, 200)
    assert sorted(summary(plan(changes)), key=repr) == sorted(
        [
            (payment_key(1, 2024, 3, 1), "marker", final),
            (payment_key(1, 2024, 2, 1), "marker", final),
        ],
        key=repr,
    )


def test_single_key_move_marks_the_old_key() -> None:
    old = payment_row(paymentdate=days(2024, 2, 1))
    new = payment_row(paymentdate=days(2024, 2, 2))
    moved = change(update_record(PAYMENTS, old, new, lsn=100, last_commit=90))
    assert moved.old_key == payment_key(1, 2024, 2, 1)
    assert summary(plan([moved])) == [
        (payment_key(1, 2024, 2, 2), "put", Position(90, 1, 100)),
        (payment_key(1, 2024, 2, 1), "marker", Position(90, 1, 100)),
    ]


def test_update_that_keeps_its_key_has_no_old_key() -> None:
    old, new = payment_row(), payment_row(paymentstatus="Failed")
    assert change(update_record(PAYMENTS, old, new)).old_key is None


def test_changes_of_different_rows_are_independent() -> None:
    a1, a2 = log_row(logid=1, statuscode="a1"), log_row(logid=1, statuscode="a2")
    b1 = log_row(logid=2, statuscode="b1")
    p = payment_row(paymentid=1)
    changes = [
        change(create_record(LOGS, a1, lsn=100, last_commit=90)),
        change(create_record(LOGS, b1, lsn=110, last_commit=90)),
        change(create_record(PAYMENTS, p, lsn=120, last_commit=90)),
        change(update_record(LOGS, a1, a2, lsn=200, last_commit=190)),
        change(delete_record(LOGS, b1, lsn=210, last_commit=190)),
    ]
    writes = {(w.mapping.name, repr(w.key)): w for w in plan(changes)}
    assert len(writes) == 3
    a = writes[("IntegrationLogs", repr(changes[0].key))]
    b = writes[("IntegrationLogs", repr(changes[1].key))]
    pay = writes[("Payments", repr(changes[2].key))]
    assert (a.item, a.position) == (changes[3].item, Position(190, 1, 200))
    assert (b.item, b.position) == (None, Position(190, 1, 210))
    assert (pay.item, pay.position) == (changes[2].item, Position(90, 1, 120))


def test_same_key_values_in_different_tables_are_different_rows() -> None:
    log = change(create_record(LOGS, log_row(logid=1), lsn=100))
    pay = change(create_record(PAYMENTS, payment_row(paymentid=1), lsn=110))
    log_then_pay = plan([log, pay])
    assert [w.mapping.name for w in log_then_pay] == ["IntegrationLogs", "Payments"]


def test_collapse_keeps_a_toast_value_sent_earlier_in_the_batch() -> None:
    # Without REPLICA IDENTITY FULL: the first update changes requestdata, the second leaves it
    # alone so the source sends the placeholder. The stored value is older than both.
    mid = log_row(requestdata='{"v":2}', statuscode="100")
    new = log_row(requestdata=UNAVAILABLE, statuscode="200")
    changes = [
        change(update_record(LOGS, None, mid, lsn=100, last_commit=90)),
        change(update_record(LOGS, None, new, lsn=200, last_commit=190)),
    ]
    assert changes[-1].keep == {"RequestData"}
    (write,) = plan(changes)
    assert write.item is not None
    assert write.item["RequestData"] == {"S": '{"v":2}'}
    assert write.item["StatusCode"] == {"S": "200"}
    assert "RequestData" not in write.keep


def test_collapse_still_keeps_a_toast_value_no_change_of_the_batch_sent() -> None:
    first = log_row(requestdata=UNAVAILABLE, statuscode="100")
    second = log_row(requestdata=UNAVAILABLE, statuscode="200")
    changes = [
        change(update_record(LOGS, None, first, lsn=100, last_commit=90)),
        change(update_record(LOGS, None, second, lsn=200, last_commit=190)),
    ]
    (write,) = plan(changes)
    assert write.keep == {"RequestData"}
    assert write.item == changes[-1].item


def test_payment_without_customer_id_is_a_lookup_miss() -> None:
    with pytest.raises(LookupMissError, match="lookup 'customerid': no row for loanid=1"):
        change(create_record(PAYMENTS, payment_row()), customerid=None)


def test_snapshot_read_and_insert_give_the_same_change_item() -> None:
    row = payment_row()
    read = change(snapshot_record(PAYMENTS, row, lsn=10))
    insert = change(create_record(PAYMENTS, row, lsn=20))
    assert (read.key, read.item) == (insert.key, insert.item)


# --- collapsing by source position, whatever the arrival order ------------------------------
# A `dlq replay` or a Debezium redelivery after a connector restart puts an older change of a
# row after newer ones, even inside one batch.


def test_an_older_change_arriving_after_a_newer_one_does_not_win() -> None:
    old, new = log_row(statuscode="100"), log_row(statuscode="200")
    newer = change(update_record(LOGS, old, new, lsn=200, last_commit=190))
    older = change(update_record(LOGS, old, old, lsn=100, last_commit=90))
    (write,) = plan([newer, older])
    assert write.item == newer.item
    assert write.position == Position(190, 1, 200)
    assert write.source_ts_ms == newer.event.source_ts_ms
    assert set(write.origins) == {newer.event.origin, older.event.origin}


def test_an_older_upsert_arriving_after_the_delete_leaves_the_delete_marker() -> None:
    row = log_row(statuscode="100")
    deleted = change(delete_record(LOGS, row, lsn=200, last_commit=190))
    older = change(create_record(LOGS, row, lsn=100, last_commit=90))
    (write,) = plan([deleted, older])
    assert (write.key, write.item, write.position) == (deleted.key, None, Position(190, 1, 200))


@pytest.mark.parametrize("arrival", [(0, 1), (1, 0)])
def test_markers_cover_every_key_of_the_batch_whatever_the_arrival_order(
    arrival: tuple[int, int],
) -> None:
    k1 = payment_row(paymentdate=days(2024, 2, 1))
    k2 = payment_row(paymentdate=days(2024, 3, 1))
    k3 = payment_row(paymentdate=days(2024, 4, 1))
    changes = [
        change(update_record(PAYMENTS, k1, k2, lsn=100, last_commit=90)),
        change(update_record(PAYMENTS, k2, k3, lsn=200, last_commit=190)),
    ]
    newest = Position(190, 1, 200)
    writes = plan([changes[i] for i in arrival])
    assert sorted(summary(writes), key=repr) == sorted(
        [
            (payment_key(1, 2024, 4, 1), "put", newest),
            (payment_key(1, 2024, 3, 1), "marker", newest),
            (payment_key(1, 2024, 2, 1), "marker", newest),
        ],
        key=repr,
    )
    assert next(w for w in writes if w.item).item == changes[1].item


def test_a_late_older_change_at_the_old_key_leaves_the_moved_row_at_its_new_key() -> None:
    pending = payment_row(paymentdate=days(2024, 2, 1), paymentstatus="Pending")
    done = payment_row(paymentdate=days(2024, 2, 1), paymentstatus="Completed")
    moved = payment_row(paymentdate=days(2024, 3, 1), paymentstatus="Completed")
    move = change(update_record(PAYMENTS, done, moved, lsn=200, last_commit=190))
    older = change(update_record(PAYMENTS, pending, done, lsn=100, last_commit=90))
    newest = Position(190, 1, 200)
    assert sorted(summary(plan([move, older])), key=repr) == sorted(
        [
            (payment_key(1, 2024, 3, 1), "put", newest),
            (payment_key(1, 2024, 2, 1), "marker", newest),
        ],
        key=repr,
    )


def test_a_toast_value_is_filled_from_the_newest_older_change_not_the_last_arrived() -> None:
    oldest = log_row(requestdata='{"v":1}', statuscode="100")
    middle = log_row(requestdata='{"v":2}', statuscode="200")
    newest = log_row(requestdata=UNAVAILABLE, statuscode="300")
    first = change(update_record(LOGS, None, oldest, lsn=100, last_commit=90))
    second = change(update_record(LOGS, None, middle, lsn=200, last_commit=190))
    third = change(update_record(LOGS, None, newest, lsn=300, last_commit=290))
    (write,) = plan([second, third, first])  # the oldest replayed last
    assert write.position == Position(290, 1, 300)
    assert write.item is not None
    assert write.item["StatusCode"] == {"S": "300"}
    assert write.item["RequestData"] == {"S": '{"v":2}'}
    assert not write.keep


def test_a_toast_value_is_never_filled_from_a_newer_change() -> None:
    # The newest change sent the value; an older one without it must not be the base.
    older = log_row(requestdata=UNAVAILABLE, statuscode="100")
    newer = log_row(requestdata='{"v":9}', statuscode="200")
    late = change(update_record(LOGS, None, older, lsn=100, last_commit=90))
    new = change(update_record(LOGS, None, newer, lsn=200, last_commit=190))
    (write,) = plan([new, late])
    assert write.item == new.item and not write.keep


def test_exact_ties_of_position_are_broken_by_arrival() -> None:
    # Two copies at one position are one change delivered twice; the later copy stands.
    first = change(create_record(LOGS, log_row(statuscode="100"), lsn=100, last_commit=90))
    again = change(create_record(LOGS, log_row(statuscode="101"), lsn=100, last_commit=90))
    (write,) = plan([first, again])
    assert write.item == again.item
    assert write.origins == (first.event.origin, again.event.origin)


# --- actions --------------------------------------------------------------------------------


def only_write(rec: Record) -> Write:
    (write,) = plan([change(rec)])
    return write


def test_upsert_is_a_put_guarded_by_position() -> None:
    write = only_write(create_record(PAYMENTS, payment_row(), lsn=0x2000, last_commit=0x1000))
    pos = {"S": "0000000000001000.1.0000000000002000"}
    assert action(write, NOW_S) == {
        "Put": {
            "TableName": "Payments",
            "Item": {**write.item, "_pos": pos, "_src_ms": {"N": str(write.source_ts_ms)}},
            "ConditionExpression": GUARD,
            "ExpressionAttributeNames": {"#pos": "_pos"},
            "ExpressionAttributeValues": {":pos": pos},
        }
    }


def test_delete_is_a_guarded_marker_with_position_and_expiry() -> None:
    write = only_write(delete_record(PAYMENTS, payment_row(), lsn=0x2000, last_commit=0x1000))
    pos = {"S": "0000000000001000.1.0000000000002000"}
    assert action(write, NOW_S) == {
        "Put": {
            "TableName": "Payments",
            "Item": {
                **payment_key(1, 2024, 2, 1),
                "_pos": pos,
                "_src_ms": {"N": str(write.source_ts_ms)},
                "_deleted": {"BOOL": True},
                "ExpiresAt": {"N": str(NOW_S + 40 * 86_400)},  # tombstone_days, 40 by default
            },
            "ConditionExpression": GUARD,
            "ExpressionAttributeNames": {"#pos": "_pos"},
            "ExpressionAttributeValues": {":pos": pos},
        }
    }


def test_delete_marker_expiry_follows_the_mapping_horizon() -> None:
    mapping = TableMapping.model_validate(
        {**MAPPINGS[LOGS].model_dump(), "tombstone_days": 30, "ttl_attribute": "Expiry"}
    )
    write = Write(mapping, {"PK": {"S": "k"}, "SK": {"S": "s"}}, None, Position(1, 1, 1), 0, (), ())
    item = action(write, NOW_S)["Put"]["Item"]
    assert item["Expiry"] == {"N": str(NOW_S + 30 * 86_400)}
    assert "ExpiresAt" not in item


def test_vacated_key_gets_a_marker_action() -> None:
    old = payment_row(paymentdate=days(2024, 2, 1))
    new = payment_row(paymentdate=days(2024, 2, 2))
    writes = plan([change(update_record(PAYMENTS, old, new, lsn=0x20, last_commit=0x10))])
    marker = action(writes[1], NOW_S)["Put"]
    assert marker["Item"]["_deleted"] == {"BOOL": True}
    assert marker["Item"]["PaymentDateId"] == {"S": "2024-02-01#0000000001"}
    assert marker["ConditionExpression"] == GUARD


def parse_update(update: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """SET name -> value and REMOVE names of an UpdateExpression."""
    names = update["ExpressionAttributeNames"]
    values = update["ExpressionAttributeValues"]
    match = re.fullmatch(r"SET (.+?)(?: REMOVE (.+))?", update["UpdateExpression"])
    assert match, update["UpdateExpression"]
    sets = {}
    for clause in match.group(1).split(", "):
        name, value = clause.split(" = ")
        sets[names[name]] = values[value]
    removes = [names[n] for n in match.group(2).split(", ")] if match.group(2) else []
    return sets, removes


def toast_write() -> Write:
    row = log_row(requestdata=UNAVAILABLE, responsedata=UNAVAILABLE, statuscode="200")
    return only_write(update_record(LOGS, None, row, lsn=0x20, last_commit=0x10))


def test_toast_update_is_an_update_guarded_by_position() -> None:
    update = action(toast_write(), NOW_S)["Update"]
    assert update["TableName"] == "IntegrationLogs"
    assert update["Key"] == {
        "PK": {"S": "CreditCheckService-2024-01-15"},
        "SK": {"S": "2024-01-15T10:30:00.123456Z#0000000000000000001"},
    }
    assert update["ConditionExpression"] == "attribute_not_exists(#pos) OR #pos < :pos"
    assert update["ExpressionAttributeNames"]["#pos"] == "_pos"
    assert update["ExpressionAttributeValues"][":pos"] == {
        "S": "0000000000000010.1.0000000000000020"
    }


def test_toast_update_never_sets_or_removes_the_kept_attributes() -> None:
    write = toast_write()
    assert write.keep == {"RequestData", "ResponseData"}
    sets, removes = parse_update(action(write, NOW_S)["Update"])
    assert not write.keep & set(sets)
    assert not write.keep & set(removes)
    assert UNAVAILABLE not in repr(action(write, NOW_S))


def test_toast_update_sets_every_sent_attribute_and_the_metadata() -> None:
    write = toast_write()
    sets, _ = parse_update(action(write, NOW_S)["Update"])
    assert write.item is not None
    expected = {k: v for k, v in write.item.items() if k not in ("PK", "SK")}
    expected["_pos"] = {"S": "0000000000000010.1.0000000000000020"}
    expected["_src_ms"] = {"N": str(write.source_ts_ms)}
    assert sets == expected


def test_toast_update_removes_null_columns_and_a_delete_marker() -> None:
    write = toast_write()
    _, removes = parse_update(action(write, NOW_S)["Update"])
    assert sorted(removes) == sorted(
        [
            "ErrorMessage",
            "ProcessingTimeMs",
            "UserId",
            "GSI3PK",
            "GSI3SK",
            "ExpiresAt",
            "_deleted",
        ]
    )


def test_toast_update_never_sets_a_key_attribute() -> None:
    sets, removes = parse_update(action(toast_write(), NOW_S)["Update"])
    assert not {"PK", "SK"} & (set(sets) | set(removes))
