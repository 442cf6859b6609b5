"""Debezium envelope (JSON converter, schemas off) -> ChangeEvent | Skip. Pure."""

from __future__ import annotations

from typing import Any

import orjson

from replicator.core.events import ChangeEvent, Op, Origin, Position, Skip
from replicator.errors import DecodeError

_UPSERT_OPS = {"c", "u", "r"}
# Debezium marks initial-snapshot reads with one of these; "incremental" reads carry the
# streaming position where their window closed.
_INITIAL_SNAPSHOT_MARKS = {
    "true",
    "first",
    "last",
    "first_in_data_collection",
    "last_in_data_collection",
    "last_in_data_collection_and_table",
}


def decode(key: bytes | None, value: bytes | None, origin: Origin) -> ChangeEvent | Skip:
    """Decode one Kafka record. Raises DecodeError for anything that is not a change we apply."""
    if value is None:
        # Kafka tombstone that follows a delete, for compaction: the delete already carried it.
        return Skip("tombstone", origin)
    envelope = _loads(value, "value")
    if not isinstance(envelope, dict):
        raise DecodeError(f"value is JSON {type(envelope).__name__}, not an envelope object")
    if "payload" in envelope and "schema" in envelope:
        envelope = envelope["payload"]  # converter with schemas enabled
        if not isinstance(envelope, dict):
            raise DecodeError("payload is not an envelope object")
    op = envelope.get("op")
    if op == "m":
        return Skip("logical decoding message", origin)
    if op == "t":
        raise DecodeError(
            "TRUNCATE is not replicated: delete the items deliberately, then replay or re-snapshot"
        )
    if op not in _UPSERT_OPS and op != "d":
        raise DecodeError(f"unknown op {op!r}")
    source = envelope.get("source")
    if not isinstance(source, dict):
        raise DecodeError("envelope has no source block")
    schema, table = source.get("schema"), source.get("table")
    if not isinstance(schema, str) or not isinstance(table, str):
        raise DecodeError("source block names no schema and table")

    before, after = envelope.get("before"), envelope.get("after")
    row = before if op == "d" else after
    if not isinstance(row, dict):
        raise DecodeError(f"op {op!r} without its {'before' if op == 'd' else 'after'} row")
    if before is not None and not isinstance(before, dict):
        raise DecodeError("before is not a row object")

    if key is None:
        raise DecodeError("record has no key (primary key expected)")
    key_row = _loads(key, "key")
    if isinstance(key_row, dict) and "payload" in key_row and "schema" in key_row:
        key_row = key_row["payload"]
    if not isinstance(key_row, dict) or not key_row:
        raise DecodeError("key is not a non-empty object of primary-key columns")

    snapshot_mark = str(source.get("snapshot", "false")).lower()
    read = op == "r"
    ts_ms = source.get("ts_ms")
    # Positional arguments: a keyword call costs more, once per event.
    return ChangeEvent(
        f"{schema}.{table}",
        Op.DELETE if op == "d" else Op.UPSERT,
        key_row,
        row,
        before if op == "u" else None,
        _position(source, read and snapshot_mark in _INITIAL_SNAPSHOT_MARKS, read),
        ts_ms if isinstance(ts_ms, int) else 0,
        read,
        origin,
        # Debezium (3.5+, pgoutput) names the transaction's replication origin, null when none.
        source_origin
        if isinstance(source_origin := source.get("origin"), str) and source_origin
        else None,
    )


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{what} is not JSON: {exc}") from exc


def _position(source: dict[str, Any], initial_snapshot: bool, read: bool) -> Position:
    """Where the event sits in commit order; DecodeError (the event parks) when the source block
    does not say, rather than a guess that could rank it wrongly for good."""
    lsn = source.get("lsn")
    if initial_snapshot:
        if not _is_lsn(lsn):
            raise DecodeError("source block has no LSN")
        # The lowest rank: any streamed change of the row is newer than the snapshot's copy.
        return Position(0, 0, lsn)
    sequence = source.get("sequence")
    if sequence is None:
        raise DecodeError(
            "source block has no source.sequence [lastCommitLsn, lsn]: the change's place in "
            "commit order is unknown"
        )
    last_commit, sequence_lsn = _sequence(sequence)
    if lsn is None and str(source.get("snapshot", "")).lower() == "incremental":
        # Debezium 3.6 (pgoutput) sends incremental-snapshot reads with "lsn": null and
        # "sequence": [x, x], x being where the read's window closed: the read ranks there.
        lsn = sequence_lsn
    # The common case of _is_lsn inline (this runs once per event); the rest asks _is_lsn.
    if (type(lsn) is not int or not 0 <= lsn < _LSN_END) and not _is_lsn(lsn):
        raise DecodeError("source block has no LSN")
    if sequence_lsn != lsn:
        raise DecodeError(f"source.sequence {sequence!r} does not end with the change's LSN {lsn}")
    if last_commit is None:
        # A new connector's offsets start with no last commit (Debezium's initialContext), so
        # the first transaction it streams carries [null, lsn] until its COMMIT. Every later
        # transaction's lastCommitLsn is at least that COMMIT's end, past all of its changes'
        # LSNs; so its own LSN ranks the change below them, and above every transaction that
        # committed before the change was written. 0 would rank it below everything an earlier
        # connector (a renamed one, a recreated slot) ever stored, and the guard would drop it.
        last_commit = lsn
    elif not _is_lsn(last_commit):
        raise DecodeError(f"source.sequence {sequence!r}: {last_commit} is no LSN")
    # A read (an incremental snapshot's copy of the row) ranks below a change at the same
    # place: there the change is the first of the next transaction, so it is the newer.
    return Position(last_commit, 0 if read else 1, lsn)


_LSN_END = 2**64


def _is_lsn(value: Any) -> bool:
    """A PostgreSQL LSN: 64 bits unsigned (Position.encode is fixed-width on that)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _sequence(sequence: Any) -> tuple[int | None, int | None]:
    """source.sequence, [lastCommitLsn, lsn] as text (either may be null)."""
    try:
        parsed = orjson.loads(sequence) if isinstance(sequence, str) else sequence
        first = int(parsed[0]) if parsed and parsed[0] is not None else None
        second = int(parsed[1]) if len(parsed) > 1 and parsed[1] is not None else None
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError) as exc:
        raise DecodeError(f"source.sequence {sequence!r} is not [lastCommitLsn, lsn]") from exc
    return first, second
