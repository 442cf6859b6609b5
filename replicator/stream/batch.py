"""The batch lane: unconditional BatchWriteItem puts, for loads into a table nobody reads and
nobody else writes (a `backfill --into` a table the backfill created or found empty).

Why it is safe there: every key of a row is written only by that row's changes, and a row's
changes are all in one partition, read in order. The pipeline hands the sink one planned batch
at a time and the next only once every request of this one is acknowledged, and ``plan`` has
already collapsed the batch per row by source position, so one batch never holds a key twice.
Every key therefore ends at the newest change the partition holds for it, as under the guard.
Items still carry ``_pos``, so the guarded lane can take over the table at any time.

What would break the argument is guarded here: a change whose position is older than one this
lane already wrote from its partition (a `dlq replay` appended later, a redelivery) goes through
the guarded sink instead, as does a write that must keep stored attributes (TOAST). The
partition's newest position written is carried in the committed offsets' metadata, so a killed
load resumes with it.

Item refusals: DynamoDB refuses a whole BatchWriteItem when one item is invalid, writing
nothing. The request's units (a row's item and the markers of the keys it left) are then sent
one unit per request, so only the refused units are parked, each whole (a key move refused in
part is applied in no part), and the others are written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from replicator.core.events import Origin, Position
from replicator.core.items import POS, SOURCE_MS, delete_marker
from replicator.errors import SinkError, SystemicSinkError
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import (
    _CAPACITY,
    DynamoSink,
    SinkResult,
    Verdict,
    Write,
    _account,
    _sink_error,
    _verdict,
)

MAX_BATCH = 25  # BatchWriteItem's limit of items per request
# Committed offsets of a batch-lane load carry "batch-lane <newest position written>".
METADATA_PREFIX = "batch-lane "

Partition = tuple[str, int]
Unit = list[Write]  # a row's writes: its item and the markers of the keys it left


def put_request(write: Write, now_s: int) -> dict[str, Any]:
    """The unconditional put of a write: the item, or its delete marker, with ``_pos``."""
    if write.item is None:
        item = delete_marker(write.mapping, write.key, now_s)
    else:
        item = dict(write.item)
    item[POS] = {"S": write.position.encode()}
    item[SOURCE_MS] = {"N": str(write.source_ts_ms)}
    return {"PutRequest": {"Item": item}}


def units_of(writes: Iterable[Write]) -> list[Unit]:
    """A row's writes stand for the same events: group them, in plan order."""
    units: dict[tuple[Origin, ...], Unit] = {}
    for write in writes:
        units.setdefault(write.origins, []).append(write)
    return list(units.values())


def requests_of(units: list[Unit], size: int = MAX_BATCH) -> list[list[Unit]]:
    """Units packed greedily into requests of at most ``size`` writes, a unit whole in one
    request where it fits (so a refused item takes its whole unit down with it)."""
    out: list[list[Unit]] = []
    current: list[Unit] = []
    count = 0
    for unit in units:
        if len(unit) > size:  # only a row that moved more than 24 times within one batch
            out += [[unit[i : i + size]] for i in range(0, len(unit), size)]
            continue
        if count + len(unit) > size:
            out.append(current)
            current, count = [], 0
        current.append(unit)
        count += len(unit)
    if current:
        out.append(current)
    return out


def high_water(metadata: str | None) -> Position | None:
    """The newest position a batch-lane load wrote from a partition, from its committed
    offset's metadata; None when the offset was not committed by the batch lane."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return None
    try:
        return Position.decode(metadata[len(METADATA_PREFIX) :])
    except ValueError:
        return None


def is_batch_lane(metadata: str | None) -> bool:
    return high_water(metadata) is not None


class BatchSink:
    """The batch lane; writes that need a condition go through ``guarded`` (a DynamoSink on the
    same client). ``marks`` seeds each partition's newest written position (a resumed load)."""

    def __init__(
        self,
        client: Any,
        guarded: DynamoSink,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        marks: dict[Partition, Position] | None = None,
    ) -> None:
        self.client = client
        self.guarded = guarded
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batch")
        self.marks: dict[Partition, Position] = dict(marks or {})

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.guarded.close()  # closes the shared client

    def commit_metadata(self) -> dict[Partition, str]:
        """What each partition's committed offset carries: the newest position written."""
        return {p: METADATA_PREFIX + pos.encode() for p, pos in self.marks.items()}

    def split(self, writes: list[Write]) -> tuple[list[Write], list[Unit]]:
        """The writes the guard must check, and the units the batch lane may put."""
        guarded: list[Write] = []
        fast: list[Unit] = []
        marks = self.marks
        for unit in units_of(writes):
            first = unit[0]
            behind = any(
                (mark := marks.get((o.topic, o.partition))) is not None and first.position < mark
                for o in first.origins
            )
            if behind or any(w.keep for w in unit):
                guarded += unit
            else:
                fast.append(unit)
        return guarded, fast

    def write(self, writes: list[Write]) -> SinkResult:
        guarded, fast = self.split(writes)
        result = self.guarded.write(guarded) if guarded else SinkResult()
        if fast:
            now_s = int(time.time())
            per_table: dict[str, list[Unit]] = {}
            for unit in fast:  # one table per request: its items, its unprocessed ones
                per_table.setdefault(unit[0].mapping.name, []).append(unit)
            requests = [r for units in per_table.values() for r in requests_of(units)]
            lanes = [
                requests[i :: self.concurrency] for i in range(min(self.concurrency, len(requests)))
            ]
            futures = [self.pool.submit(self._write_lane, lane, now_s) for lane in lanes]
            wait(futures)  # every lane ends before a failure goes up (a retry never overlaps)
            errors = [e for e in (f.exception() for f in futures) if e is not None]
            if errors:
                raise next((e for e in errors if isinstance(e, SystemicSinkError)), errors[0])
            for future in futures:
                result.merge(future.result())
        # Only now, with every write acknowledged: the newest position of each partition.
        for write in writes:
            for o in write.origins:
                where = (o.topic, o.partition)
                mark = self.marks.get(where)
                if mark is None or mark < write.position:
                    self.marks[where] = write.position
        return result

    def _write_lane(self, lane: list[list[Unit]], now_s: int) -> SinkResult:
        result = SinkResult()
        for request in lane:
            self._write_request(result, request, now_s)
        return result

    def _write_request(self, result: SinkResult, request: list[Unit], now_s: int) -> None:
        table = request[0][0].mapping.name
        puts = [put_request(w, now_s) for unit in request for w in unit]
        try:
            self._send(result, table, puts)
        except (ClientError, BotoCoreError) as exc:
            verdict, text = _verdict(exc)
            if verdict is not Verdict.REFUSED:
                text = f"DynamoDB batch write to {table} failed: {text}"
                raise _sink_error(verdict, text, exc) from exc
            if len(request) > 1:
                # Which item? Nothing of the request was written: one unit per request.
                for unit in request:
                    self._write_request(result, [unit], now_s)
                return
            result.failed += [(w, text) for w in request[0]]  # the unit, parked whole
            return
        part = result.table(table)
        now = time.time()
        for unit in request:
            result.applied += len(unit)
            part.applied += len(unit[0].origins)
            part.e2e_s.append(now - unit[0].source_ts_ms / 1000)

    def _send(self, result: SinkResult, table: str, puts: list[dict[str, Any]]) -> None:
        """One BatchWriteItem, then what DynamoDB left unprocessed (throughput), again with the
        retry policy's backoff until its attempts or deadline are spent."""
        part = result.table(table)
        pending = puts
        started = self.retry.clock()
        for attempt in range(self.retry.attempts):
            sent = time.perf_counter()
            response = self.client.batch_write_item(
                RequestItems={table: pending}, ReturnConsumedCapacity=_CAPACITY
            )
            part.write_s.append(time.perf_counter() - sent)
            if response:
                _account(part, response)
            pending = (response or {}).get("UnprocessedItems", {}).get(table) or []
            if not pending:
                return
            part.throttled += 1  # unprocessed: DynamoDB's answer to too much throughput
            if not self.retry.wait_for(attempt, started):
                break
        raise SinkError(
            f"DynamoDB batch write to {table}: {len(pending)} items still unprocessed after the "
            "retry policy's attempts or deadline"
        )
