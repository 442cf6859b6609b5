from __future__ import annotations

import orjson
import pytest
from factories import (
    Record,
    create_record,
    delete_record,
    envelope,
    fixture_records,
    log_row,
    payment_row,
    record,
    snapshot_record,
    tombstone,
    update_record,
)
from hypothesis import given
from hypothesis import strategies as st

from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Op, Origin, Position, Skip
from replicator.errors import DecodeError

LOGS = "dbo.integrationlogs"
PAYMENTS = "dbo.payments"
FIXTURE = fixture_records()
INITIAL_SNAPSHOT_MARKS = [
    "true",
    "first",
    "last",
    "first_in_data_collection",
    "last_in_data_collection",
    "last_in_data_collection_and_table",
]


def decoded(rec: Record) -> ChangeEvent | Skip:
    return decode(rec.key, rec.value, rec.origin)


def event_of(rec: Record) -> ChangeEvent:
    result = decoded(rec)
    assert isinstance(result, ChangeEvent)
    return result


def fixture_id(rec: Record) -> str:
    return f"{rec.topic}@{rec.partition}:{rec.offset}"


# --- the captured envelopes -------------------------------------------------------------


@pytest.mark.parametrize("rec", FIXTURE, ids=fixture_id)
def test_every_captured_record_decodes(rec: Record) -> None:
    assert isinstance(decoded(rec), ChangeEvent | Skip)


@pytest.mark.parametrize("rec", FIXTURE, ids=fixture_id)
def test_captured_op_maps_to_upsert_delete_or_skip(rec: Record) -> None:
    expected = (
        Skip
        if rec.value is None
        else {"c": Op.UPSERT, "u": Op.UPSERT, "r": Op.UPSERT, "d": Op.DELETE}[
            orjson.loads(rec.value)["op"]
        ]
    )
    result = decoded(rec)
    if expected is Skip:
        assert isinstance(result, Skip)
    else:
        assert isinstance(result, ChangeEvent)
        assert result.op is expected


def test_captured_insert_decodes_to_the_exact_event() -> None:
    rec = FIXTURE[0]
    assert decoded(rec) == ChangeEvent(
        table=LOGS,
        op=Op.UPSERT,
        key={"logid": 1},
        row={
            "logid": 1,
            "applicationid": 1,
            "logtype": "Credit Check",
            "servicename": "CreditCheckService",
            "requestdata": '{"a":1}',
            "responsedata": None,
            "statuscode": None,
            "issuccess": True,
            "errormessage": None,
            "processingtimems": None,
            "logtimestamp": 1705314600123456,
            "correlationid": "c-1",
            "userid": None,
        },
        before=None,
        position=Position(last_commit=26642568, streamed=1, lsn=26643984),
        source_ts_ms=1795616300205,
        snapshot=False,
        origin=Origin("loans.dbo.integrationlogs", 1, 0),
    )


def test_captured_update_carries_the_old_row() -> None:
    event = event_of(FIXTURE[5])
    assert event.before is not None
    assert event.before["paymentstatus"] == "Completed"
    assert event.row["paymentstatus"] == "Failed"


def test_captured_delete_carries_the_deleted_row() -> None:
    event = event_of(FIXTURE[2])
    assert event.op is Op.DELETE
    assert event.key == {"logid": 2}
    assert event.row["servicename"] == "SmsService"
    assert event.before is None


def test_captured_tombstone_is_skipped_with_its_origin() -> None:
    assert decoded(FIXTURE[3]) == Skip("tombstone", Origin("loans.dbo.integrationlogs", 1, 3))


def test_later_captured_events_of_a_key_have_larger_positions() -> None:
    history: dict[tuple[str, bytes | None], list[Position]] = {}
    for rec in FIXTURE:
        result = decoded(rec)
        if isinstance(result, ChangeEvent):
            history.setdefault((rec.topic, rec.key), []).append(result.position)
    assert any(len(positions) > 1 for positions in history.values())
    for positions in history.values():
        assert positions == sorted(positions)
        assert len(set(positions)) == len(positions)


# --- ops ----------------------------------------------------------------------------------


def test_create_is_an_upsert_of_the_new_row() -> None:
    row = log_row(logid=7)
    event = event_of(create_record(LOGS, row, lsn=500, last_commit=400))
    assert (event.op, event.key, event.row, event.before) == (Op.UPSERT, {"logid": 7}, row, None)


def test_update_is_an_upsert_of_the_new_row_with_the_old_row() -> None:
    old, new = payment_row(paymentstatus="Pending"), payment_row(paymentstatus="Completed")
    event = event_of(update_record(PAYMENTS, old, new, lsn=500, last_commit=400))
    assert (event.op, event.row, event.before) == (Op.UPSERT, new, old)


def test_snapshot_read_is_an_upsert() -> None:
    row = payment_row()
    event = event_of(snapshot_record(PAYMENTS, row, lsn=500))
    assert (event.op, event.row, event.snapshot) == (Op.UPSERT, row, True)


def test_delete_is_a_delete_of_the_old_row() -> None:
    row = log_row(logid=3)
    event = event_of(delete_record(LOGS, row, lsn=500, last_commit=400))
    assert (event.op, event.key, event.row) == (Op.DELETE, {"logid": 3}, row)


def test_tombstone_is_skipped() -> None:
    assert isinstance(decoded(tombstone(LOGS, {"logid": 3})), Skip)


def test_logical_decoding_message_is_skipped() -> None:
    rec = record(LOGS, {"op": "m", "source": {}, "message": {}}, {"logid": 1})
    assert isinstance(decoded(rec), Skip)


def test_table_is_schema_dot_table() -> None:
    assert event_of(create_record(PAYMENTS, payment_row())).table == "dbo.payments"


def test_source_ts_ms_is_the_commit_time() -> None:
    event = event_of(create_record(LOGS, log_row(), ts_ms=1_700_000_000_123))
    assert event.source_ts_ms == 1_700_000_000_123


def test_origin_is_kept() -> None:
    rec = create_record(LOGS, log_row(), lsn=500)
    rec = Record("loans.dbo.integrationlogs", 2, 41, rec.key, rec.value)
    assert event_of(rec).origin == Origin("loans.dbo.integrationlogs", 2, 41)


# --- positions ----------------------------------------------------------------------------


def test_streamed_position_is_last_commit_then_lsn() -> None:
    event = event_of(create_record(LOGS, log_row(), lsn=26644616, last_commit=26644512))
    assert event.position == Position(last_commit=26644512, streamed=1, lsn=26644616)


def test_later_change_of_one_transaction_is_newer() -> None:
    first = event_of(update_record(LOGS, log_row(), log_row(), lsn=1000, last_commit=900))
    second = event_of(update_record(LOGS, log_row(), log_row(), lsn=1100, last_commit=900))
    assert first.position < second.position


def test_change_of_a_later_transaction_is_newer_even_with_a_lower_lsn() -> None:
    # Transactions stream in commit order; a later one may hold changes with lower LSNs.
    earlier = event_of(update_record(LOGS, log_row(), log_row(), lsn=5000, last_commit=900))
    later = event_of(update_record(LOGS, log_row(), log_row(), lsn=1200, last_commit=5100))
    assert earlier.position < later.position


@pytest.mark.parametrize("mark", INITIAL_SNAPSHOT_MARKS)
def test_initial_snapshot_read_has_the_lowest_rank(mark: str) -> None:
    event = event_of(snapshot_record(LOGS, log_row(), snapshot=mark, lsn=26700000))
    assert event.position == Position(last_commit=0, streamed=0, lsn=26700000)


@pytest.mark.parametrize("mark", INITIAL_SNAPSHOT_MARKS)
def test_initial_snapshot_read_loses_against_a_streamed_change(mark: str) -> None:
    read = event_of(snapshot_record(LOGS, log_row(), snapshot=mark, lsn=26700000))
    # Began before the snapshot, committed after it: its own LSN is below the snapshot's.
    streamed = event_of(update_record(LOGS, log_row(), log_row(), lsn=100, last_commit=0))
    assert read.position < streamed.position


def test_incremental_snapshot_read_has_a_streamed_position() -> None:
    # Ranked as a read (streamed=0) at its streamed sequence: below a change at the same place.
    event = event_of(
        snapshot_record(LOGS, log_row(), snapshot="incremental", lsn=9000, last_commit=8800)
    )
    assert event.position == Position(last_commit=8800, streamed=0, lsn=9000)
    assert event.snapshot is True


def test_incremental_snapshot_read_beats_an_older_streamed_change() -> None:
    older = event_of(update_record(LOGS, log_row(), log_row(), lsn=8000, last_commit=7900))
    read = event_of(
        snapshot_record(LOGS, log_row(), snapshot="incremental", lsn=9000, last_commit=8800)
    )
    assert older.position < read.position


def test_incremental_snapshot_read_without_lsn_ranks_at_its_sequence() -> None:
    # Debezium 3.6 with pgoutput sends incremental reads with "lsn": null and "sequence":
    # [x, x] (seen on the local stack); they used to be dead-lettered as undecodable.
    row = log_row()
    value = envelope(
        "r", LOGS, None, row, snapshot="incremental", sequence='["1147606008","1147606008"]'
    )
    value["source"]["lsn"] = None
    read = event_of(record(LOGS, value, {"logid": row["logid"]}))
    assert read.position == Position(last_commit=1147606008, streamed=0, lsn=1147606008)
    earlier = event_of(update_record(LOGS, row, row, lsn=1147605000, last_commit=1147604000))
    later = event_of(update_record(LOGS, row, row, lsn=1147606100, last_commit=1147606008))
    assert earlier.position < read.position < later.position
    value["source"]["snapshot"] = "false"  # a streamed change without an LSN stays an error
    with pytest.raises(DecodeError, match="no LSN"):
        decode(orjson.dumps({"logid": row["logid"]}), orjson.dumps(value), Origin("t", 0, 0))


def test_incremental_snapshot_read_ranks_below_a_streamed_change_at_the_same_position() -> None:
    # Both at [x, x]: the read closed its window at a commit ending at x; the change is the
    # first of the next transaction, whose record starts right there. The change is newer.
    row = log_row()
    value = envelope(
        "r", LOGS, None, row, snapshot="incremental", sequence='["1147606008","1147606008"]'
    )
    value["source"]["lsn"] = None
    read = event_of(record(LOGS, value, {"logid": row["logid"]}))
    change = event_of(update_record(LOGS, row, row, lsn=1147606008, last_commit=1147606008))
    assert read.position < change.position
    assert read.position.encode() < change.position.encode()


@pytest.mark.parametrize("mark", INITIAL_SNAPSHOT_MARKS)
def test_incremental_snapshot_read_ranks_above_every_initial_snapshot_read(mark: str) -> None:
    initial = event_of(snapshot_record(LOGS, log_row(), snapshot=mark, lsn=2**63))
    read = event_of(
        snapshot_record(LOGS, log_row(), snapshot="incremental", lsn=9000, last_commit=8800)
    )
    assert initial.position < read.position


def test_first_streamed_change_of_a_new_connector_ranks_at_its_own_lsn() -> None:
    # Debezium 3.6 starts a new connector's offsets with no last commit (initialContext), so
    # until the first COMMIT it streams, its changes carry [null, lsn]. Every later transaction's
    # lastCommitLsn is at least that transaction's commit end, past all of its changes' LSNs.
    first = event_of(update_record(LOGS, log_row(), log_row(), lsn=5000, sequence='[null,"5000"]'))
    assert first.position == Position(last_commit=5000, streamed=1, lsn=5000)
    same_tx = event_of(
        update_record(LOGS, log_row(), log_row(), lsn=5100, sequence='[null,"5100"]')
    )
    next_tx = event_of(update_record(LOGS, log_row(), log_row(), lsn=5150, last_commit=5200))
    assert first.position < same_tx.position < next_tx.position
    # Newer than what an earlier connector (slot) of the same database stored: those
    # transactions committed before this one's changes were written.
    before = event_of(update_record(LOGS, log_row(), log_row(), lsn=4900, last_commit=4800))
    assert before.position < first.position
    initial = event_of(snapshot_record(LOGS, log_row(), lsn=6000))
    assert initial.position < first.position


def test_streamed_change_without_sequence_is_refused() -> None:
    # Without lastCommitLsn the change's place in commit order cannot be known.
    with pytest.raises(DecodeError, match=r"no source\.sequence"):
        decoded(create_record(LOGS, log_row(), lsn=1000, sequence=None))
    with pytest.raises(DecodeError, match=r"no source\.sequence"):
        decoded(snapshot_record(LOGS, log_row(), snapshot="incremental", lsn=10, sequence=None))


def test_sequence_that_does_not_end_with_the_lsn_is_refused() -> None:
    with pytest.raises(DecodeError, match="does not end with the change's LSN 1000"):
        decoded(create_record(LOGS, log_row(), lsn=1000, sequence='["900","1100"]'))
    with pytest.raises(DecodeError, match="does not end with the change's LSN 1000"):
        decoded(create_record(LOGS, log_row(), lsn=1000, sequence='["900",null]'))
    with pytest.raises(DecodeError, match="-5 is no LSN"):
        decoded(create_record(LOGS, log_row(), lsn=1000, sequence='["-5","1000"]'))


def test_incremental_snapshot_read_with_no_lsn_anywhere_is_refused() -> None:
    for sequence in ('["1147606008",null]', "[null,null]"):
        value = envelope("r", LOGS, None, log_row(), snapshot="incremental", sequence=sequence)
        value["source"]["lsn"] = None
        with pytest.raises(DecodeError, match="no LSN"):
            decoded(record(LOGS, value, {"logid": 1}))


def test_the_encoding_of_stored_positions_is_unchanged() -> None:
    # Items in DynamoDB carry `_pos` as `{last_commit:016x}.{streamed}.{lsn:016x}`; new
    # positions use the same text, so old and new compare in one order.
    assert Position(0x1000, 1, 0x2000).encode() == "0000000000001000.1.0000000000002000"
    assert Position(0, 0, 0x2000).encode() == "0000000000000000.0.0000000000002000"
    read = event_of(
        snapshot_record(LOGS, log_row(), snapshot="incremental", lsn=0x2000, last_commit=0x1000)
    )
    assert (
        "0000000000000fff.1.0000000000009999"  # a change of an earlier transaction
        < read.position.encode()
        < "0000000000001000.1.0000000000002000"  # a change at the read's own place
    )


@given(
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 1), st.integers(0, 2**64 - 1)),
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 1), st.integers(0, 2**64 - 1)),
)
def test_encoded_positions_sort_like_positions(a: tuple, b: tuple) -> None:
    pa, pb = Position(*a), Position(*b)
    assert (pa.encode() < pb.encode()) == (pa < pb)
    assert Position.decode(pa.encode()) == pa


# --- schemas enabled ----------------------------------------------------------------------


def test_schemas_enabled_envelope_decodes_like_a_plain_one() -> None:
    plain = create_record(LOGS, log_row(), lsn=700, last_commit=600)
    wrapped = Record(
        plain.topic,
        plain.partition,
        plain.offset,
        orjson.dumps({"schema": {"type": "struct"}, "payload": orjson.loads(plain.key)}),
        orjson.dumps({"schema": {"type": "struct"}, "payload": orjson.loads(plain.value)}),
    )
    assert decoded(wrapped) == decoded(plain)


def test_schemas_enabled_payload_that_is_not_an_object_is_refused() -> None:
    rec = record(LOGS, {"schema": {"type": "struct"}, "payload": [1]}, {"logid": 1})
    with pytest.raises(DecodeError, match="payload is not an envelope object"):
        decoded(rec)


# --- refusals -----------------------------------------------------------------------------


def test_malformed_json_value_is_refused() -> None:
    rec = record(LOGS, b'{"op": "c", "after": {', {"logid": 1})
    with pytest.raises(DecodeError, match="value is not JSON"):
        decoded(rec)


def test_malformed_json_key_is_refused() -> None:
    rec = create_record(LOGS, log_row())
    with pytest.raises(DecodeError, match="key is not JSON"):
        decode(b"{logid: 1", rec.value, rec.origin)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_value_that_is_not_an_object_is_refused(value: bytes, kind: str) -> None:
    rec = record(LOGS, value, {"logid": 1})
    with pytest.raises(DecodeError, match=f"value is JSON {kind}, not an envelope object"):
        decoded(rec)


def test_envelope_without_source_is_refused() -> None:
    env = envelope("c", LOGS, None, log_row())
    del env["source"]
    with pytest.raises(DecodeError, match="no source block"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_source_without_table_is_refused() -> None:
    env = envelope("c", LOGS, None, log_row())
    del env["source"]["table"]
    with pytest.raises(DecodeError, match="names no schema and table"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_source_without_lsn_is_refused() -> None:
    env = envelope("c", LOGS, None, log_row())
    env["source"]["lsn"] = None
    with pytest.raises(DecodeError, match="no LSN"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_malformed_sequence_is_refused() -> None:
    env = envelope("c", LOGS, None, log_row(), sequence="[not json")
    with pytest.raises(DecodeError, match=r"source\.sequence .* is not \[lastCommitLsn, lsn\]"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_record_without_key_is_refused() -> None:
    rec = create_record(LOGS, log_row())
    with pytest.raises(DecodeError, match="record has no key"):
        decode(None, rec.value, rec.origin)


@pytest.mark.parametrize("key", [b"{}", b"[1]", b"1"])
def test_key_that_is_not_a_non_empty_object_is_refused(key: bytes) -> None:
    rec = create_record(LOGS, log_row())
    with pytest.raises(DecodeError, match="key is not a non-empty object"):
        decode(key, rec.value, rec.origin)


@pytest.mark.parametrize("op", ["x", "C", "", None])
def test_unknown_op_is_refused(op: str | None) -> None:
    env = envelope("c", LOGS, None, log_row())
    env["op"] = op
    with pytest.raises(DecodeError, match=f"unknown op {op!r}"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_envelope_without_op_is_refused() -> None:
    env = envelope("c", LOGS, None, log_row())
    del env["op"]
    with pytest.raises(DecodeError, match="unknown op None"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_truncate_is_refused() -> None:
    env = envelope("t", LOGS, None, None)
    with pytest.raises(DecodeError, match="TRUNCATE is not replicated"):
        decoded(record(LOGS, env, {"logid": 1}))


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_upsert_without_after_row_is_refused(op: str) -> None:
    env = envelope(op, LOGS, log_row(), None)
    with pytest.raises(DecodeError, match=f"op '{op}' without its after row"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_delete_without_before_row_is_refused() -> None:
    env = envelope("d", LOGS, None, None)
    with pytest.raises(DecodeError, match="op 'd' without its before row"):
        decoded(record(LOGS, env, {"logid": 1}))


def test_before_that_is_not_an_object_is_refused() -> None:
    env = envelope("u", LOGS, "old", log_row())
    with pytest.raises(DecodeError, match="before is not a row object"):
        decoded(record(LOGS, env, {"logid": 1}))
