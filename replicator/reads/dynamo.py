"""The declared patterns as DynamoDB queries on the mapped tables and their GSIs.

DynamoDB's GSIs are eventually consistent: right after a write an index may still show the old
state for a moment. Items fetched by key after an index lookup use strongly consistent reads.

A pattern whose key carries a shard suffix (``shards`` > 1) queries every shard's partition,
the first pages all at once, and merges them newest first by the order attribute. That
attribute ends in the primary key, so it orders every item of the pattern one way whatever its
shard: the last key returned is where each shard goes on (the next page asks every shard for
keys below it), and the cursor stays the same plain sort key, valid on either store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from replicator.config import Settings
from replicator.core.mapping import Item
from replicator.reads.patterns import (
    DYNAMODB,
    Pattern,
    PatternReads,
    Query,
    Store,
    StoreError,
    day_of,
)
from replicator.reads.rows import Page, Row
from replicator.stream.dynamo import dynamodb_client


class DynamoReads(PatternReads):
    store: Store = DYNAMODB

    def __init__(self, settings: Settings, client: Any = None) -> None:
        super().__init__(settings)
        self.client = client or reads_client(settings)
        # Told the read units DynamoDB reports for every request (table, units): `cost` prices
        # them. ReadPath points it at its metrics.
        self.on_capacity: Callable[[str, float], None] | None = None
        self._pool: ThreadPoolExecutor | None = None  # first queries of the shards, at once
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _account(self, response: dict[str, Any]) -> None:
        consumed = response.get("ConsumedCapacity")
        if consumed is None or self.on_capacity is None:
            return
        for entry in consumed if isinstance(consumed, list) else [consumed]:
            units = entry.get("CapacityUnits")
            if units:
                self.on_capacity(entry.get("TableName", ""), float(units))

    @staticmethod
    @contextlib.contextmanager
    def _errors(operation: str, table: str) -> Iterator[None]:
        """boto3's failures as StoreError (what hybrid-read falls back on)."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StoreError(
                DYNAMODB,
                f"{operation} on {table}: {error.get('Code')}: {error.get('Message')}",
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(DYNAMODB, f"{operation} on {table}: {exc}") from exc

    def _items(
        self,
        table: str,
        index: str | None,
        pk: str,
        pk_value: dict[str, str],
        sk: str | None,
        lo: str | None,
        hi: str | None,
        page: int,
    ) -> Iterator[Item]:
        """Items of one partition key, newest first, with ``lo <= sk <= hi`` (inclusive)."""
        names = {"#pk": pk}
        values: dict[str, Any] = {":pk": pk_value}
        condition = "#pk = :pk"
        if sk is not None and (lo is not None or hi is not None):
            names["#sk"] = sk
            if lo is not None and hi is not None:
                condition += " AND #sk BETWEEN :lo AND :hi"
                values |= {":lo": {"S": lo}, ":hi": {"S": hi}}
            elif lo is not None:
                condition += " AND #sk >= :lo"
                values[":lo"] = {"S": lo}
            else:
                condition += " AND #sk <= :hi"
                values[":hi"] = {"S": hi}
        request: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": page,
            "ReturnConsumedCapacity": "TOTAL",
        }
        if index:
            request["IndexName"] = index
        while True:
            with self._errors("Query", table):
                response = self.client.query(**request)
            self._account(response)
            yield from response.get("Items", [])
            start = response.get("LastEvaluatedKey")
            if not start:
                return
            request["ExclusiveStartKey"] = start

    def _candidates(self, p: Pattern, q: Query, page: int) -> Iterator[Item]:
        """The pattern's items newest first by its order attribute, possibly a few too many."""
        assert p.order is not None
        order = p.order
        if p.decl.fan_out == "days":
            return self._by_day(p, q, page)
        page = shard_page(page, p.shards)
        pk, _, sk = p.key
        index = p.index.name if p.index else None
        upper = q.upper
        if p.regroup:  # a date index: each date's items are re-ordered by the order attribute
            assert sk is not None
            group = sk
            hi = q.end
            if upper and q.after:  # the cursor's date (or time) bounds the index key too
                head = upper[: 10 if p.range_type == "date" else 27]
                hi = min(hi, head) if hi else head

            def regrouped(key: dict[str, str]) -> Iterator[Item]:
                raw = self._items(p.table, index, pk, key, group, q.start, hi, page)
                return _by_sort_key(raw, group, order)

            return self._merged(order, [regrouped(key) for key in p.partitions(q.value)])
        return self._merged(
            order,
            [
                self._items(p.table, index, pk, key, sk, q.lo, upper, page)
                for key in p.partitions(q.value)
            ],
        )

    def _by_day(self, p: Pattern, q: Query, page: int) -> Iterator[Item]:
        """One query per day of the range (the partition key holds the day), newest day first;
        the days' items are already in sort-key order one after another (each day's shards
        merged)."""
        assert p.order is not None
        page = shard_page(page, p.shards)
        pk, _, sk = p.key
        upper = q.upper or ""
        last = day_of(upper) if q.after else day_of(q.end or "")
        if not q.after and (q.end or "").endswith("T00:00:00.000000Z"):
            last -= dt.timedelta(days=1)  # an end at midnight excludes that day
        first = day_of(q.start or "")
        day = last
        while day >= first:
            streams = [
                self._items(p.table, None, pk, key, sk, q.lo, upper, page)
                for key in p.partitions(q.value, day.isoformat())
            ]
            yield from self._merged(p.order, streams)
            day -= dt.timedelta(days=1)

    def _merged(self, order: str, streams: list[Iterator[Item]]) -> Iterator[Item]:
        """One partition's items as they come; several shards' merged newest first, after their
        first queries were sent together (a page costs one round trip, not one per shard)."""
        if len(streams) == 1:
            return streams[0]
        with self._pool_lock:
            if self._pool is None:
                workers = max(16, self.settings.reads.postgres_pool_size)
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="shard-read")
        heads = list(self._pool.map(_first, streams))  # re-raises a shard's StoreError here
        started = [
            itertools.chain([head], stream)
            for head, stream in zip(heads, streams, strict=True)
            if head is not _END
        ]
        return merge_newest_first(started, order)

    def _list(self, p: Pattern, q: Query) -> Page:
        assert p.order is not None
        page = min(q.limit + 1, 1000)
        upper = q.upper
        # An index that projects only some attributes: the whole items by key.
        partial = p.index is not None and p.index.projection != "ALL"
        rows: list[tuple[str, Row]] = []
        pending: list[Item] = []
        for item in self._candidates(p, q, page):
            key = item.get(p.order, {}).get("S")
            if key is None or (upper is not None and key >= upper) or (q.lo and key < q.lo):
                continue
            pending.append(item)
            if len(rows) + len(pending) > q.limit:
                rows += self._rows(p, self._whole(p, q, pending) if partial else pending)
                pending = []
                if len(rows) > q.limit:
                    break
        if pending:
            rows += self._rows(p, self._whole(p, q, pending) if partial else pending)
        return self._page(p, q, rows[: q.limit], len(rows) > q.limit)

    @staticmethod
    def _rows(p: Pattern, items: Iterable[Item]) -> list[tuple[str, Row]]:
        assert p.order is not None
        out = []
        for item in items:
            row = p.shape.row(item)
            if row is not None:
                out.append((item[p.order]["S"], row))
        return out

    def _matches(self, p: Pattern, q: Query, item: Item) -> bool:
        """Whether a whole item still matches the query (the index it was found by may lag)."""
        columns = {c.name: c.attribute for c in p.mapping.columns}
        attribute = columns.get(p.decl.param.column)
        if attribute is not None and not p.decl.param.day:
            stored = item.get(attribute, {})
            if (stored.get("S") or stored.get("N")) != str(q.value):
                return False
        if p.decl.range is not None:
            value = item.get(columns[p.decl.range.column], {}).get("S", "")
            if q.start and value < q.start:
                return False
            if q.end and (value >= q.end if p.range_type == "timestamp" else value > q.end):
                return False
        return True

    def _whole(self, p: Pattern, q: Query, items: list[Item]) -> list[Item]:
        """The whole items of index entries (BatchGetItem, consistent) that still match."""
        table = p.table
        names = p.mapping.key_attributes

        def ident(item: Item) -> tuple[str, ...]:
            return tuple(next(iter(item[a].values())) for a in names)

        keys = [{a: i[a] for a in names} for i in items]
        found: dict[tuple[str, ...], Item] = {}
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {
                table: {"Keys": keys[start : start + 100], "ConsistentRead": True}
            }
            for _ in range(10):
                with self._errors("BatchGetItem", table):
                    response = self.client.batch_get_item(
                        RequestItems=request, ReturnConsumedCapacity="TOTAL"
                    )
                self._account(response)
                for item in response.get("Responses", {}).get(table, []):
                    found[ident(item)] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05)
            if request:
                raise StoreError(DYNAMODB, f"BatchGetItem on {table}: keys left unprocessed")
        out = []
        for key in keys:
            item = found.get(ident(key))
            if item is not None and self._matches(p, q, item):
                out.append(item)
        return out

    def _one(self, p: Pattern, value: Any) -> Row | None:
        pk, _, _ = p.key
        wanted = p.partition(value)
        if p.index is None:  # the table's own key: one GetItem
            entries: Iterable[Item] = [{pk: wanted}]
        else:
            # KEYS_ONLY index, then the item itself. Right after a key move the index may
            # still list the old key for a moment: take the live item that has this id.
            entries = self._items(p.table, p.index.name, pk, wanted, None, None, None, 10)
        for entry in entries:
            item_key = {a: entry[a] for a in p.mapping.key_attributes}
            with self._errors("GetItem", p.table):
                found = self.client.get_item(
                    TableName=p.table,
                    Key=item_key,
                    ConsistentRead=True,
                    ReturnConsumedCapacity="TOTAL",
                )
            self._account(found)
            item = found.get("Item")
            if item and item.get(pk) == wanted:
                row = p.shape.row(item)
                if row is not None:
                    return row
        return None


def _by_sort_key(
    items: Iterable[Item], group_attribute: str, order_attribute: str
) -> Iterator[Item]:
    """Items that arrive ordered by a non-unique index sort key (a date), reordered so that
    each group of equal keys is ordered by ``order_attribute`` (newest first) too."""
    group: list[Item] = []
    current = None
    for item in items:
        value = item.get(group_attribute, {}).get("S")
        if group and value != current:
            yield from sorted(group, key=lambda i: i[order_attribute]["S"], reverse=True)
            group = []
        current = value
        group.append(item)
    yield from sorted(group, key=lambda i: i[order_attribute]["S"], reverse=True)


_END: Any = object()


def shard_page(want: int, shards: int) -> int:
    """How many items to ask each of ``shards`` shards for in its first query, when ``want``
    make a page: its share with room for an uneven spread, not the whole page from each (N
    times the read units). A shard the merge needs more of is read on by its next query."""
    if shards == 1:
        return want
    return min(want, -(-want * 5 // (shards * 4)) + 2)


def _first(stream: Iterator[Item]) -> Any:
    """A stream's first item (its first query), or _END."""
    return next(stream, _END)


def merge_newest_first(streams: Iterable[Iterable[Item]], order: str) -> Iterator[Item]:
    """Streams each newest first by ``order`` (a string attribute), merged into one, newest
    first. Lazy: a stream is read only as far as the merge needs. Pure."""

    def key(item: Item) -> str:
        return item.get(order, {}).get("S", "")

    return heapq.merge(*streams, key=key, reverse=True)


def reads_client(settings: Settings) -> Any:
    """A boto3 client for reads: few attempts and short timeouts, so that hybrid-read falls
    back within seconds when DynamoDB does not answer."""
    reads = settings.reads
    return dynamodb_client(
        settings.dynamodb,
        max(16, reads.postgres_pool_size),
        max_attempts=reads.dynamodb_attempts,
        connect_timeout_s=reads.dynamodb_timeout_s,
        read_timeout_s=reads.dynamodb_timeout_s,
    )
