"""PostgreSQL rows in the shape the pipeline maps: values as Debezium's JSON converter sends them
(with our connector settings), plus the enrichment-lookup columns. Verify and the tests build
the expected DynamoDB item of a row through these and ``mapping.to_item``, so that what they
expect is exactly what the sink writes."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from replicator.core.events import Row
from replicator.core.mapping import TableMapping
from replicator.stream.lookup import Lookups

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.UTC)


def as_debezium(value: Any) -> Any:
    """A psycopg value as Debezium's JSON converter sends it: ``timestamp`` as microseconds
    since the epoch (MicroTimestamp), ``date`` as days, ``numeric`` as its exact text
    (decimal.handling.mode=string), ``timestamptz`` as ISO-8601 UTC text, ``time`` as
    microseconds of the day, ``bytea`` as base64, ``uuid`` as text."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:  # ZonedTimestamp
            return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return (value - _EPOCH.date()).days
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.time):
        return (
            (value.hour * 60 + value.minute) * 60 + value.second
        ) * 1_000_000 + value.microsecond
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def source_row(record: Mapping[str, Any]) -> Row:
    """One row as read by psycopg (column name -> value) in the pipeline's row shape, before
    lookups."""
    return {name: as_debezium(value) for name, value in record.items()}


def source_rows(
    mapping: TableMapping, records: Iterable[Mapping[str, Any]], lookups: Lookups
) -> list[Row]:
    """Rows of ``mapping.source`` in the pipeline's shape, enriched as the pipeline enriches
    them (one lookup query per call, cached). A row whose lookup finds nothing gets no lookup
    column; ``Lookups.require`` raises for it, as the pipeline does (it would dead-letter it)."""
    rows = [source_row(r) for r in records]
    if rows and mapping.lookups:
        lookups.fill(mapping, rows)
    return rows
