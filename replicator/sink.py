"""Guarded, batched DynamoDB writes.

Every write carries the source position of the change it applies, and is conditional on the
stored position being older (or absent), so redelivery and replays never move an item back.
A batch is first collapsed per source row (last change wins, every key the row left in the
batch gets a delete marker), then written as TransactWriteItems of up to 100 guarded actions.
A transaction cancelled only because some conditions failed is retried without those actions:
they were stale, and skipping them is the point of the guard.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from replicator.errors import SinkError
from replicator.events import ChangeEvent, Op, Origin, Position
from replicator.mapping import Item, TableMapping, item_size

POS = "_pos"  # encoded Position of the change the item reflects
SOURCE_MS = "_src_ms"  # commit time in PostgreSQL, for end-to-end latency
DELETED = "_deleted"  # delete marker ("tombstone"): kept until TTL so old events cannot revive it
META_ATTRIBUTES = (POS, SOURCE_MS, DELETED)
_GUARD = f"attribute_not_exists({POS}) OR {POS} < :pos"
_TRANSACTION_BYTES = 3_500_000  # DynamoDB allows 4 MB per transaction; leave room for overhead
_RETRYABLE_REASONS = {
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
}


@dataclass(frozen=True, slots=True)
class Change:
    """A decoded and mapped event, ready to be planned into writes."""

    mapping: TableMapping
    event: ChangeEvent
    key: Item  # where the row's item is after the change (for DELETE: where it was)
    item: Item | None  # the full item, None for DELETE
    keep: frozenset[str] = frozenset()  # attributes whose stored value stays (TOAST)
    old_key: Item | None = None  # the item's key before an UPDATE that moved it


@dataclass(frozen=True, slots=True)
class Write:
    mapping: TableMapping
    key: Item
    item: Item | None  # None: write a delete marker
    position: Position
    source_ts_ms: int
    keep: frozenset[str]
    origins: tuple[Origin, ...]  # the events this write stands for


@dataclass
class SinkResult:
    applied: int = 0
    stale: int = 0
    failed: list[tuple[Write, str]] = field(default_factory=list)


def _row_id(change: Change) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return change.mapping.name, tuple(sorted(change.event.key.items()))


def _key_id(key: Item) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, next(iter(value.values()))) for name, value in key.items()))


def plan(changes: Iterable[Change]) -> list[Write]:
    """Collapse a batch per source row, keeping every vacated key as a delete marker.

    Changes arrive in partition order, and one row always lives in one partition, so the last
    change of a row is its newest. A row that moved between keys inside the batch (k1 -> k2 -> k3)
    must leave no item at k1 or k2: each key it touched, other than its final one, gets a
    delete marker at the final change's position.
    """
    rows: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Change]] = {}
    for change in changes:
        rows.setdefault(_row_id(change), []).append(change)
    writes: list[Write] = []
    for history in rows.values():
        final = history[-1]
        event = final.event
        origins = tuple(c.event.origin for c in history)
        writes.append(
            Write(
                final.mapping,
                final.key,
                final.item if event.op is Op.UPSERT else None,
                event.position,
                event.source_ts_ms,
                final.keep,
                origins,
            )
        )
        seen = {_key_id(final.key)}
        for change in history:
            for key in (change.key, change.old_key):
                if key is None or _key_id(key) in seen:
                    continue
                seen.add(_key_id(key))
                writes.append(
                    Write(
                        final.mapping,
                        key,
                        None,
                        event.position,
                        event.source_ts_ms,
                        frozenset(),
                        origins,
                    )
                )
    return writes


def action(write: Write, now_s: int) -> dict[str, Any]:
    """One guarded TransactWriteItems action for a write."""
    mapping = write.mapping
    values: dict[str, Any] = {":pos": {"S": write.position.encode()}}
    if write.item is None:
        expires = now_s + mapping.tombstone_days * 86_400
        item = {
            **write.key,
            POS: values[":pos"],
            SOURCE_MS: {"N": str(write.source_ts_ms)},
            DELETED: {"BOOL": True},
            mapping.ttl_attribute: {"N": str(expires)},
        }
        return {
            "Put": {
                "TableName": mapping.name,
                "Item": item,
                "ConditionExpression": _GUARD,
                "ExpressionAttributeValues": values,
            }
        }
    if not write.keep:
        item = {**write.item, POS: values[":pos"], SOURCE_MS: {"N": str(write.source_ts_ms)}}
        return {
            "Put": {
                "TableName": mapping.name,
                "Item": item,
                "ConditionExpression": _GUARD,
                "ExpressionAttributeValues": values,
            }
        }
    # Some values were not sent (unchanged TOAST): update in place and keep those attributes.
    names: dict[str, str] = {}
    sets, removes = [], []
    keys = set(write.key)
    for i, (name, value) in enumerate(write.item.items()):
        if name in keys:
            continue
        names[f"#a{i}"] = name
        values[f":a{i}"] = value
        sets.append(f"#a{i} = :a{i}")
    managed = (
        [c.attribute for c in mapping.columns]
        + [d.attribute for d in mapping.derived]
        + [mapping.ttl_attribute, DELETED]
    )
    for j, name in enumerate(managed):
        if name not in write.item and name not in write.keep:
            names[f"#r{j}"] = name
            removes.append(f"#r{j}")
    names["#pos"], names["#src"] = POS, SOURCE_MS
    values[":src"] = {"N": str(write.source_ts_ms)}
    sets += ["#pos = :pos", "#src = :src"]
    expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
    return {
        "Update": {
            "TableName": mapping.name,
            "Key": write.key,
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_not_exists(#pos) OR #pos < :pos",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }


class DynamoSink:
    """Writes planned batches; returns per-write failures instead of raising for bad items."""

    def __init__(
        self, client: Any, transaction_items: int = 100, parallel: int = 4, max_attempts: int = 8
    ) -> None:
        self.client = client
        self.transaction_items = transaction_items
        self.max_attempts = max_attempts
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sink")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def write(self, writes: list[Write]) -> SinkResult:
        now_s = int(time.time())
        chunks = list(self._chunks([(w, action(w, now_s)) for w in writes]))
        result = SinkResult()
        for part in self.pool.map(self._write_chunk, chunks):
            result.applied += part.applied
            result.stale += part.stale
            result.failed += part.failed
        return result

    def _chunks(
        self, pairs: list[tuple[Write, dict[str, Any]]]
    ) -> Iterable[list[tuple[Write, dict[str, Any]]]]:
        chunk: list[tuple[Write, dict[str, Any]]] = []
        size = 0
        for pair in pairs:
            write = pair[0]
            weight = item_size(write.item or write.key) + 200
            if chunk and (
                len(chunk) >= self.transaction_items or size + weight > _TRANSACTION_BYTES
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(pair)
            size += weight
        if chunk:
            yield chunk

    def _write_chunk(self, chunk: list[tuple[Write, dict[str, Any]]]) -> SinkResult:
        result = SinkResult()
        pending = chunk
        for attempt in range(self.max_attempts):
            if not pending:
                return result
            try:
                self.client.transact_write_items(TransactItems=[a for _, a in pending])
                result.applied += len(pending)
                return result
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "TransactionCanceledException":
                    reasons = exc.response.get("CancellationReasons") or []
                    if len(reasons) != len(pending):
                        raise SinkError(
                            f"transaction cancelled without per-item reasons: {exc}"
                        ) from exc
                    retry = []
                    for pair, reason in zip(pending, reasons, strict=True):
                        reason_code = reason.get("Code") or "None"
                        if reason_code == "ConditionalCheckFailed":
                            result.stale += 1
                        elif reason_code == "None" or reason_code in _RETRYABLE_REASONS:
                            retry.append(pair)
                        else:
                            result.failed.append(
                                (pair[0], f"{reason_code}: {reason.get('Message', '')}")
                            )
                    if len(retry) < len(pending) and not any(
                        (r.get("Code") or "None") in _RETRYABLE_REASONS for r in reasons
                    ):
                        pending = retry  # only stale or failed ones dropped: retry at once
                        continue
                    pending = retry
                elif code == "ValidationException":
                    if len(pending) == 1:
                        result.failed.append((pending[0][0], f"{code}: {exc}"))
                        return result
                    half = len(pending) // 2  # find the bad action by halving
                    for part in (pending[:half], pending[half:]):
                        sub = self._write_chunk(part)
                        result.applied += sub.applied
                        result.stale += sub.stale
                        result.failed += sub.failed
                    return result
                elif code not in _RETRYABLE_REASONS and code not in (
                    "ThrottlingException",
                    "ProvisionedThroughputExceededException",
                    "InternalServerError",
                    "ServiceUnavailable",
                ):
                    raise SinkError(f"DynamoDB refused a batch: {exc}") from exc
            except BotoCoreError as exc:
                if attempt == self.max_attempts - 1:
                    raise SinkError(f"DynamoDB unreachable: {exc}") from exc
            time.sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        if pending:
            raise SinkError(
                f"{len(pending)} writes still failing after {self.max_attempts} "
                "attempts (throttling or conflicts)"
            )
        return result
