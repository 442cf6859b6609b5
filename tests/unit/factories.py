"""Kafka records carrying Debezium envelopes, built by intent.

Shaped like tests/fixtures/envelopes.jsonl, which was captured from the real connector: JSON
converter with schemas disabled, ``source.sequence`` a JSON *string* of two strings
(``"[\\"26644512\\",\\"26644616\\"]"``), ``source.snapshot`` a string, timestamps in
microseconds since the epoch, dates in days since the epoch, decimals as strings.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from replicator.core.events import Origin

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "envelopes.jsonl"
PRIMARY_KEYS = {"dbo.integrationlogs": ("logid",), "dbo.payments": ("paymentid",)}
TOPIC_PREFIX = "loans"
SOURCE_TS_MS = 1795616300205
_EPOCH = dt.datetime(1970, 1, 1)
_lsns = itertools.count(30_000_000, 1_000)
_offsets = itertools.count()


@dataclass(frozen=True)
class Record:
    """One Kafka record as the consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def origin(self) -> Origin:
        return Origin(self.topic, self.partition, self.offset)


# --- values as the JSON converter sends them --------------------------------------------


def micros(*args: int) -> int:
    """datetime(*args), naive UTC, as Debezium's MicroTimestamp."""
    return (dt.datetime(*args) - _EPOCH) // dt.timedelta(microseconds=1)


def days(year: int, month: int, day: int) -> int:
    """date(year, month, day) as Debezium's Date (days since the epoch)."""
    return (dt.date(year, month, day) - dt.date(1970, 1, 1)).days


def log_row(**values: Any) -> dict[str, Any]:
    """A dbo.integrationlogs row (every column present, as with REPLICA IDENTITY FULL)."""
    row: dict[str, Any] = {
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
        "logtimestamp": micros(2024, 1, 15, 10, 30, 0, 123456),
        "correlationid": "c-1",
        "userid": None,
    }
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"integrationlogs has no columns {sorted(unknown)}")
    return {**row, **values}


def payment_row(**values: Any) -> dict[str, Any]:
    """A dbo.payments row (every column present; no customerid, which enrichment adds)."""
    row: dict[str, Any] = {
        "paymentid": 1,
        "loanid": 1,
        "paymentnumber": 1,
        "paymentdate": days(2024, 2, 1),
        "paymentamount": "100.10",
        "principalamount": "90.00",
        "interestamount": "10.10",
        "paymentmethod": "ACH",
        "paymentstatus": "Completed",
        "transactionid": None,
        "createddate": micros(2024, 2, 1, 9, 15, 0, 233593),
    }
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"payments has no columns {sorted(unknown)}")
    return {**row, **values}


# --- IntegrationLogs sharded (hot partitions) ----------------------------------------------
#
# The table key and the application and failure indexes carry a shard suffix (logid mod
# shards); the correlation index does not, so its pattern reads as before. Used by the unit
# and integration tests of sharding.
SHARD_SUFFIX = "#{logid:shard}"
# attribute or pattern -> the partition template with the suffix (patterns: {shard})
SHARDED_KEYS = {
    "PK": "{servicename}-{logtimestamp:date}" + SHARD_SUFFIX,
    "GSI1PK": "APP#{applicationid}" + SHARD_SUFFIX,
    "GSI3PK": "ERROR#{logtimestamp:date}" + SHARD_SUFFIX,
}
SHARDED_PATTERNS = {
    "logs_by_service": "{service}-{day}#{shard}",
    "logs_by_application": "APP#{application_id}#{shard}",
    "failures_of_day": "ERROR#{day}#{shard}",
}


def shard_logs(table: dict[str, Any], shards: int) -> None:
    """Turn the IntegrationLogs mapping (as plain data, in place) into its sharded form."""
    table["shards"] = shards
    table["partition_key"]["template"] = SHARDED_KEYS["PK"]
    for derived in table["derived"]:
        if derived["attribute"] in SHARDED_KEYS:
            derived["template"] = SHARDED_KEYS[derived["attribute"]]
    for pattern in table["reads"]["patterns"]:
        if pattern["name"] in SHARDED_PATTERNS:
            pattern["partition"] = SHARDED_PATTERNS[pattern["name"]]


# --- envelopes ---------------------------------------------------------------------------


def envelope(
    op: str,
    table: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    lsn: int | None = None,
    last_commit: int | None = None,
    snapshot: str = "false",
    sequence: Any = ...,
    ts_ms: int = SOURCE_TS_MS,
    tx_id: int = 746,
    origin: str | None = None,
) -> dict[str, Any]:
    """The envelope as a dict, for tests that need to bend it before encoding. ``origin``: the
    transaction's replication origin (a purge's session), as Debezium names it."""
    schema, name = table.split(".")
    lsn = next(_lsns) if lsn is None else lsn
    if sequence is ...:
        sequence = _sequence(lsn if last_commit is None else last_commit, lsn)
    return {
        "before": before,
        "after": after,
        "source": {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": TOPIC_PREFIX,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": "loans",
            "sequence": sequence,
            "ts_us": ts_ms * 1_000,
            "ts_ns": ts_ms * 1_000_000,
            "schema": schema,
            "table": name,
            "txId": tx_id,
            "lsn": lsn,
            "xmin": None,
            "origin": origin,
            "origin_lsn": None if origin is None else 0,
        },
        "transaction": None,
        "op": op,
        "ts_ms": ts_ms + 300,
        "ts_us": (ts_ms + 300) * 1_000,
        "ts_ns": (ts_ms + 300) * 1_000_000,
    }


def _sequence(last_commit: int | None, lsn: int) -> str:
    first = None if last_commit is None else str(last_commit)
    return orjson.dumps([first, str(lsn)]).decode()


def key_of(table: str, row: dict[str, Any]) -> dict[str, Any]:
    return {column: row[column] for column in PRIMARY_KEYS[table]}


def record(
    table: str,
    value: dict[str, Any] | bytes | None,
    key: dict[str, Any] | bytes | None,
    *,
    partition: int = 0,
    offset: int | None = None,
) -> Record:
    """Encode an envelope (dict) and key (dict) into a Kafka record."""
    return Record(
        topic=f"{TOPIC_PREFIX}.{table}",
        partition=partition,
        offset=next(_offsets) if offset is None else offset,
        key=orjson.dumps(key) if isinstance(key, dict) else key,
        value=orjson.dumps(value) if isinstance(value, dict) else value,
    )


def create_record(table: str, row: dict[str, Any], **source: Any) -> Record:
    """op c: an INSERT streamed from the WAL."""
    return record(table, envelope("c", table, None, row, **source), key_of(table, row))


def update_record(
    table: str, before: dict[str, Any] | None, after: dict[str, Any], **source: Any
) -> Record:
    """op u: an UPDATE; ``before`` is the whole old row with REPLICA IDENTITY FULL."""
    return record(table, envelope("u", table, before, after, **source), key_of(table, after))


def delete_record(table: str, before: dict[str, Any], **source: Any) -> Record:
    """op d: a DELETE; ``before`` is the deleted row."""
    return record(table, envelope("d", table, before, None, **source), key_of(table, before))


def snapshot_record(
    table: str, row: dict[str, Any], *, snapshot: str = "true", **source: Any
) -> Record:
    """op r: a read of the initial snapshot ("true", "first", "last", ...), or of an
    incremental snapshot with ``snapshot="incremental"`` (which carries a streamed sequence)."""
    if snapshot != "incremental" and "sequence" not in source:
        # The initial snapshot has no commit streamed before it yet: [null, lsn].
        source["sequence"] = _sequence(None, source.setdefault("lsn", next(_lsns)))
    return record(
        table, envelope("r", table, None, row, snapshot=snapshot, **source), key_of(table, row)
    )


def tombstone(table: str, key: dict[str, Any], **kwargs: Any) -> Record:
    """The null-valued record Debezium sends after a delete, for log compaction."""
    return record(table, None, key, **kwargs)


def fixture_records() -> list[Record]:
    """The envelopes captured from the real connector, in file order."""
    records = []
    for line in FIXTURE.read_text().splitlines():
        if not line.strip():
            continue
        raw = orjson.loads(line)
        records.append(
            Record(
                topic=raw["topic"],
                partition=raw["partition"],
                offset=raw["offset"],
                key=None if raw["key"] is None else raw["key"].encode(),
                value=None if raw["value"] is None else raw["value"].encode(),
            )
        )
    return records


# --- doubles of our own contracts -----------------------------------------------------------


class FakeMessage:
    """A Kafka message (confluent_kafka.Message's read side) carrying a Record."""

    def __init__(self, rec: Record) -> None:
        self.rec = rec

    def topic(self) -> str:
        return self.rec.topic

    def partition(self) -> int:
        return self.rec.partition

    def offset(self) -> int:
        return self.rec.offset

    def key(self) -> bytes | None:
        return self.rec.key

    def value(self) -> bytes | None:
        return self.rec.value

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class FakeDeadLetters:
    """The dead-letter stage, keeping what was parked."""

    def __init__(self) -> None:
        self.parked: list[tuple[Any, str, str]] = []

    def park(self, message: Any, reason: str, detail: str) -> None:
        self.parked.append((message, reason, detail))

    def flush(self) -> None:
        pass


class NoLookups:
    """Enrichment lookups for mappings that have none."""

    def fill(self, mapping: Any, rows: Any) -> None:
        pass
