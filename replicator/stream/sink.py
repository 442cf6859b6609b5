"""Guarded, batched DynamoDB writes.

Every write carries the source position of the change it applies, and is conditional on the
stored position being older (or absent), so redelivery and replays never move an item back.
A batch is first collapsed per source row (the change with the newest source position wins,
whatever the arrival order; every other key the row occupied in the batch gets a delete marker),
then written concurrently: one conditional request per row, or one transaction per key move. A
failed condition means a newer change is already stored: the write is stale and skipped, which
is the point of the guard.

Why one module of this size: the plan, the guarded actions and the lanes that send them
(single writes, transactions of independent rows, key-move transactions) share the write
format and the classification of refusals; split, each lane would re-derive them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from replicator.core.events import ChangeEvent, Op, Origin, Position
from replicator.core.items import DELETED, GUARD, POS, SOURCE_MS, delete_marker
from replicator.core.mapping import Item, TableMapping
from replicator.errors import SinkError, SystemicSinkError
from replicator.stream.dynamo_wire import RETRYABLE_CODES, THROTTLE_CODES, is_retryable
from replicator.stream.retry import RetryPolicy

GuardedLane = Literal["single", "transact"]
MAX_TRANSACTION = 100  # TransactWriteItems' limit of actions per request
_THROTTLE_REASONS = {"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
# Asked on every write: DynamoDB adds ~60 bytes to the answer, and it is the only way to know
# the write units an item really cost (size, GSIs) for `replicator cost`.
_CAPACITY = "TOTAL"


class Verdict(Enum):
    """What a refused write means for the events it stands for."""

    STALE = "stale"  # the guard's condition failed: a newer change is stored (its very point)
    REFUSED = "refused"  # this item can never be stored as it is: park its events
    SYSTEMIC = "systemic"  # no write can succeed until someone acts: stop the batch, commit nothing
    TRANSIENT = "transient"  # throughput, conflicts, DynamoDB's own failures, the network: retry


# How DynamoDB words a refusal, and what it means here: (codes, message fragment, verdict), the
# first row whose code matches and whose fragment is in the message (case-insensitive) wins.
# Codes are an error's Error.Code ("...Exception") or a cancelled transaction's per-action
# reason (no suffix: ValidationError, ConditionalCheckFailed). DynamoDB answers
# ValidationException both for an item it cannot store and for a request that cannot fit the
# table at all; only the message tells them apart. The systemic wordings come first; any other
# validation message is taken to be about the item, which parks (and can be replayed) rather
# than stopping every partition on one row.
_VALIDATION = frozenset({"ValidationException", "ValidationError"})
_VERDICTS: tuple[tuple[frozenset[str], str, Verdict], ...] = (
    (frozenset({"ConditionalCheckFailedException", "ConditionalCheckFailed"}), "", Verdict.STALE),
    # The table's key schema is not the mapping's: every write to it fails alike.
    # "One or more parameter values were invalid: Missing the key SK in the item"
    (_VALIDATION, "missing the key", Verdict.SYSTEMIC),
    # UpdateItem's Key names other attributes than the table's key
    (_VALIDATION, "the provided key element does not match the schema", Verdict.SYSTEMIC),
    # "... Type mismatch for key PK expected: S actual: N"; "... for Index Key GSI1PK ..."
    (_VALIDATION, "type mismatch for key", Verdict.SYSTEMIC),
    (_VALIDATION, "type mismatch for index key", Verdict.SYSTEMIC),
    # The request does not fit the API's model (what boto3 checks before sending, as
    # ParamValidationError): "1 validation error detected: Value '' at 'tableName' failed to
    # satisfy constraint: Member must have length greater than or equal to 3"
    (_VALIDATION, "failed to satisfy constraint", Verdict.SYSTEMIC),
    # Any other: the item. "Item size has exceeded the maximum allowed size" (UpdateItem: "Item
    # size to update has ..."); "... The AttributeValue for a key attribute cannot contain an
    # empty string value" (of the table's key or a GSI's); "Number overflow." / "Number
    # underflow. Attempting to store a number with magnitude ..."; "Attempting to store more
    # than 38 significant digits in a Number"; "The parameter cannot be converted to a numeric
    # value"; "Size of hashkey has exceeded the maximum size limit of 2048 bytes"
    (_VALIDATION, "", Verdict.REFUSED),
    # An item collection (items sharing a partition key, with a local index) over 10 GB
    (
        frozenset({"ItemCollectionSizeLimitExceededException", "ItemCollectionSizeLimitExceeded"}),
        "",
        Verdict.REFUSED,
    ),
    # Nothing can be written until someone acts: a missing table ("Requested resource not
    # found", also while it is being created), access, credentials, not DynamoDB at that URL.
    (
        frozenset(
            {
                "ResourceNotFoundException",
                "AccessDeniedException",
                "UnrecognizedClientException",
                "InvalidSignatureException",
                "IncompleteSignatureException",
                "MissingAuthenticationTokenException",
                "ExpiredTokenException",
                "UnknownOperationException",
                "SerializationException",
            }
        ),
        "",
        Verdict.SYSTEMIC,
    ),
    # Worth another attempt.
    (
        THROTTLE_CODES
        | RETRYABLE_CODES
        | {
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "TransactionConflict",
            "TransactionConflictException",
            "ReplicatedWriteConflictException",
            "InternalServerError",
            "ServiceUnavailable",
        },
        "",
        Verdict.TRANSIENT,
    ),
)


def classify(code: str, message: str = "", status: int = 0) -> Verdict:
    """What DynamoDB's refusal (error code, message, HTTP status) means, by ``_VERDICTS``.
    Anything unlisted is transient when DynamoDB failed itself (5xx), else systemic: an unknown
    refusal stops the batch with its reason, never parks or drops events on a guess."""
    text = message.lower()
    for codes, fragment, verdict in _VERDICTS:
        if code in codes and fragment in text:
            return verdict
    return Verdict.TRANSIENT if status >= 500 else Verdict.SYSTEMIC


def _verdict(exc: BaseException) -> tuple[Verdict, str]:
    """An exception of either client, classified, with a short description."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return classify(code, message, status), f"{code}: {message}"
    # botocore's own: the endpoint not reached (transient), or the request never sent (boto3's
    # ParamValidationError, no credentials, a certificate refused): systemic.
    return (Verdict.TRANSIENT if is_retryable(exc) else Verdict.SYSTEMIC), str(exc)


def _sink_error(verdict: Verdict, text: str, exc: BaseException) -> SinkError:
    if verdict is Verdict.SYSTEMIC:
        return SystemicSinkError(text)
    if isinstance(exc, BotoCoreError):
        return SinkError(f"DynamoDB unreachable: {exc}")
    return SinkError(text)


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
class TableResult:
    """One table's part of a batch, for metrics: counted in events (a write stands for every
    event collapsed into it), timed per request."""

    applied: int = 0  # events whose change is now stored
    stale: int = 0  # events a newer stored change made redundant (the guard's condition failed)
    write_s: list[float] = field(default_factory=list)  # each request, send to answer
    e2e_s: list[float] = field(default_factory=list)  # source commit -> acknowledgement
    capacity: float = 0.0  # write units DynamoDB reported consumed (ReturnConsumedCapacity)
    throttled: int = 0  # attempts DynamoDB refused for throughput (retried by the client)


@dataclass
class SinkResult:
    applied: int = 0  # writes (a key move is two)
    stale: int = 0
    failed: list[tuple[Write, str]] = field(default_factory=list)
    tables: dict[str, TableResult] = field(default_factory=dict)

    def table(self, name: str) -> TableResult:
        part = self.tables.get(name)
        if part is None:
            part = self.tables[name] = TableResult()
        return part

    def merge(self, other: SinkResult) -> None:
        self.applied += other.applied
        self.stale += other.stale
        self.failed += other.failed
        for name, theirs in other.tables.items():
            mine = self.table(name)
            mine.applied += theirs.applied
            mine.stale += theirs.stale
            mine.write_s += theirs.write_s
            mine.e2e_s += theirs.e2e_s
            mine.capacity += theirs.capacity
            mine.throttled += theirs.throttled


class Sink(Protocol):
    """What the pipeline writes through: the guarded lanes (DynamoSink) or the batch lane
    (replicator.stream.batch.BatchSink)."""

    def write(self, writes: list[Write]) -> SinkResult: ...

    def commit_metadata(self) -> dict[tuple[str, int], str]: ...

    def close(self) -> None: ...


def _row_id(change: Change) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return change.mapping.name, tuple(sorted(change.event.key.items()))


def _key_id(key: Item) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, next(iter(value.values()))) for name, value in key.items()))


def plan(changes: Iterable[Change]) -> list[Write]:
    """Collapse a batch per source row, keeping every vacated key as a delete marker.

    The row's newest change is the one with the newest source position, not the last to
    arrive: a `dlq replay`, or Debezium redelivering after a connector restart, puts an older
    change after newer ones in the partition. Arrival order only breaks exact ties (one change
    delivered twice). A row that moved between keys inside the batch (k1 -> k2 -> k3, in any
    arrival order) must leave no item at k1 or k2: each key it occupied at any change of the
    batch, other than the newest change's, gets a delete marker at the newest position.
    """
    rows: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Change]] = {}
    for change in changes:
        rows.setdefault(_row_id(change), []).append(change)
    writes: list[Write] = []
    for arrived in rows.values():
        history = sorted(arrived, key=lambda c: c.event.position)  # stable: ties keep arrival
        final = history[-1]
        event = final.event
        origins = tuple(c.event.origin for c in arrived)
        item, keep = _fill_kept(history)
        writes.append(
            Write(
                final.mapping,
                final.key,
                item if event.op is Op.UPSERT else None,
                event.position,
                event.source_ts_ms,
                keep,
                origins,
            )
        )
        seen = {_key_id(final.key)}
        # The old key first: the first marker is then at the key the row held before the batch,
        # the one that can hold its item (see DynamoSink._write_transaction).
        for change in history:
            for key in (change.old_key, change.key):
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


def _fill_kept(history: list[Change]) -> tuple[Item | None, frozenset[str]]:
    """The newest change's item, with each value it did not send (TOAST) taken from the newest
    older change of the batch that sent it (``history`` is in position order, so a newer change
    is never used). In partition order those changes are newer than the stored item, so keeping
    the stored value would lose them."""
    final = history[-1]
    if final.item is None or not final.keep:
        return final.item, final.keep
    item, keep = dict(final.item), set(final.keep)
    for earlier in reversed(history[:-1]):
        if earlier.item is None:
            break  # a delete: the insert after it sent the full row
        for name in [n for n in keep if n in earlier.item]:
            item[name] = earlier.item[name]
            keep.discard(name)
    return item, frozenset(keep)


def action(write: Write, now_s: int) -> dict[str, Any]:
    """The guarded request for a write, as a TransactWriteItems action ({"Put": {...}} or
    {"Update": {...}}); its body is also a valid PutItem/UpdateItem request."""
    mapping = write.mapping
    values: dict[str, Any] = {":pos": {"S": write.position.encode()}}
    if write.item is None or not write.keep:
        # A delete marker, or the full item.
        item = delete_marker(mapping, write.key, now_s) if write.item is None else dict(write.item)
        item[POS] = values[":pos"]
        item[SOURCE_MS] = {"N": str(write.source_ts_ms)}
        return {
            "Put": {
                "TableName": mapping.name,
                "Item": item,
                "ConditionExpression": GUARD,
                "ExpressionAttributeNames": {"#pos": POS},
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
            "ConditionExpression": GUARD,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }


@dataclass(frozen=True, slots=True)
class _Pack:
    """Independent rows' single writes, sent as one TransactWriteItems (the transact lane)."""

    writes: list[tuple[Write, dict[str, Any]]]


def _refused(result: SinkResult, unit: list[tuple[Write, Any]], reason: str) -> SinkResult:
    """A unit DynamoDB refused: every write of it failed with the reason, none applied (a
    cancelled transaction applies nothing; actions dropped as stale were not applied either)."""
    result.applied = result.stale = 0
    result.failed = [(write, reason) for write, _ in unit]
    return result


def _account(part: TableResult, response: dict[str, Any]) -> None:
    """Consumed write units and throttled attempts from a write's answer: one dict for a
    single write, a list (one per table) for a transaction. ``ThrottledAttempts`` is set by
    the wire client (replicator.stream.dynamo_wire); boto3's answers have no such count."""
    consumed = response.get("ConsumedCapacity")
    if isinstance(consumed, dict):
        part.capacity += consumed.get("CapacityUnits", 0.0)
    elif consumed:
        part.capacity += sum(c.get("CapacityUnits", 0.0) for c in consumed)
    throttled = response.get("ResponseMetadata", {}).get("ThrottledAttempts")
    if throttled:
        part.throttled += throttled


class DynamoSink:
    """Writes planned batches; returns per-write failures instead of raising for bad items.

    Writes that stand for the same events (a row's final item plus the delete markers of the
    keys it left) form one unit. A unit of one write is a single conditional PutItem/UpdateItem
    (one write unit in DynamoDB); a key move is one TransactWriteItems, so readers never see
    the row at both keys or at neither. Units run concurrently, at most ``concurrency`` at once:
    one row's writes are in one unit, so no two requests in flight touch the same item.
    """

    def __init__(
        self,
        client: Any,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        lane: GuardedLane = "single",
    ) -> None:
        self.client = client
        self.retry = retry or RetryPolicy()  # a key move's cancelled transaction, retried
        self.concurrency = concurrency
        self.lane = lane
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sink")

    def commit_metadata(self) -> dict[tuple[str, int], str]:
        """Nothing rides on the committed offsets of the guarded lanes."""
        return {}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def write(self, writes: list[Write]) -> SinkResult:
        now_s = int(time.time())
        units: dict[tuple[Origin, ...], list[tuple[Write, dict[str, Any]]]] = {}
        for w in writes:
            units.setdefault(w.origins, []).append((w, action(w, now_s)))
        result = SinkResult()
        # One task per worker, not per write: a future per write costs more CPU than the write.
        # One row's writes are one unit, in one lane: no two requests in flight touch one item.
        work: list[list[tuple[Write, dict[str, Any]]] | _Pack] = list(units.values())
        if self.lane == "transact":
            # Independent rows, up to 100 to a transaction; key moves stay transactions alone.
            singles = [u[0] for u in work if isinstance(u, list) and len(u) == 1]
            work = [u for u in work if isinstance(u, list) and len(u) > 1]
            work += [
                _Pack(singles[i : i + MAX_TRANSACTION])
                for i in range(0, len(singles), MAX_TRANSACTION)
            ]
        lanes = [work[i :: self.concurrency] for i in range(min(self.concurrency, len(work)))]
        futures = [self.pool.submit(self._write_lane, lane) for lane in lanes]
        # Every lane ends before a failure goes up, so a retried batch never overlaps this one;
        # a systemic failure wins over a transient one: it is what an operator must see.
        wait(futures)
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise next((e for e in errors if isinstance(e, SystemicSinkError)), errors[0])
        for part in (part for f in futures for part in f.result()):
            result.merge(part)
        return result

    def _write_lane(
        self, lane: list[list[tuple[Write, dict[str, Any]]] | _Pack]
    ) -> list[SinkResult]:
        """A lane's units in turn: a single write, a key move's transaction, or a transaction
        of independent rows."""
        result = SinkResult()  # one per lane: nothing allocated per write but the timings
        parts = [result]
        for unit in lane:
            if isinstance(unit, _Pack):
                self._write_packed(result, unit.writes)
            elif len(unit) == 1:
                self._write_one(result, *unit[0])
            else:
                parts.append(self._write_transaction(unit))
        return parts

    def _write_one(self, result: SinkResult, write: Write, act: dict[str, Any]) -> None:
        ((kind, request),) = act.items()
        call = self.client.put_item if kind == "Put" else self.client.update_item
        started = time.perf_counter()
        try:
            # The client retries throttling and 5xx with jittered backoff.
            response = call(**request, ReturnConsumedCapacity=_CAPACITY)
        except (ClientError, BotoCoreError) as exc:
            verdict, text = _verdict(exc)
            if verdict is Verdict.STALE:
                result.stale += 1
                part = result.table(write.mapping.name)
                part.stale += len(write.origins)
                part.write_s.append(time.perf_counter() - started)
                return
            if verdict is Verdict.REFUSED:
                result.failed.append((write, text))
                return
            text = f"DynamoDB write to {write.mapping.name} failed: {text}"
            raise _sink_error(verdict, text, exc) from exc
        result.applied += 1
        part = result.table(write.mapping.name)
        part.applied += len(write.origins)
        part.write_s.append(time.perf_counter() - started)
        part.e2e_s.append(time.time() - write.source_ts_ms / 1000)
        if response:
            _account(part, response)

    def _write_packed(self, result: SinkResult, pack: list[tuple[Write, dict[str, Any]]]) -> None:
        """Independent rows in one TransactWriteItems, each action still guarded by its own
        row's position. One action that fails cancels them all, and the cancellation says
        which: a failed condition is stale (a newer change is stored) and dropped, a refused
        item is parked, and the rest is sent again as a new transaction (new token), after a
        backoff when throughput or a conflict cancelled it. Retries of one request (the
        client's, on 5xx and timeouts) keep its token, so DynamoDB applies it at most once."""
        pending = pack
        started = self.retry.clock()
        for attempt in range(self.retry.attempts):
            if not pending:
                return
            table = pending[0][0].mapping.name
            try:
                sent = time.perf_counter()
                response = self.client.transact_write_items(
                    TransactItems=[a for _, a in pending],
                    ReturnConsumedCapacity=_CAPACITY,
                    ClientRequestToken=str(uuid.uuid4()),
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code != "TransactionCanceledException":
                    verdict, text = _verdict(exc)
                    if verdict is Verdict.REFUSED and len(pending) > 1:
                        # The request as a whole (over 4 MB, say): nothing was written. Halve it.
                        half = len(pending) // 2
                        self._write_packed(result, pending[:half])
                        self._write_packed(result, pending[half:])
                        return
                    if verdict is Verdict.REFUSED:
                        result.failed.append((pending[0][0], text))
                        return
                    text = f"DynamoDB transaction on {table} failed: {text}"
                    raise _sink_error(verdict, text, exc) from exc
                pending, must_wait = self._cancelled(result, pending, exc)
                if not must_wait:
                    continue  # only stale or refused actions dropped: the rest at once
            except BotoCoreError as exc:
                verdict, text = _verdict(exc)
                raise _sink_error(verdict, text, exc) from exc
            else:
                elapsed = time.perf_counter() - sent
                now = time.time()
                part = result.table(table)
                part.write_s.append(elapsed)
                if response:
                    _account(part, response)
                result.applied += len(pending)
                for write, _ in pending:
                    part.applied += len(write.origins)
                    part.e2e_s.append(now - write.source_ts_ms / 1000)
                return
            if not self.retry.wait_for(attempt, started):
                break
        if pending:
            raise SinkError(
                f"DynamoDB transaction on {pending[0][0].mapping.name}: {len(pending)} writes "
                "still cancelled (conflicts or throttling) after the retry policy's attempts "
                "or deadline"
            )

    def _cancelled(
        self,
        result: SinkResult,
        pending: list[tuple[Write, dict[str, Any]]],
        exc: ClientError,
    ) -> tuple[list[tuple[Write, dict[str, Any]]], bool]:
        """A cancelled transaction of independent rows: what is left to send again, and
        whether to back off first."""
        reasons = exc.response.get("CancellationReasons") or []
        if len(reasons) != len(pending):
            raise SinkError(f"transaction cancelled without per-item reasons: {exc}") from exc
        retry: list[tuple[Write, dict[str, Any]]] = []
        must_wait = False
        for pair, reason in zip(pending, reasons, strict=True):
            code = reason.get("Code")
            if code in (None, "None"):  # fine itself: another action cancelled it
                retry.append(pair)
                continue
            message = reason.get("Message") or ""
            verdict = classify(code, message)
            write = pair[0]
            if verdict is Verdict.STALE:
                result.stale += 1
                result.table(write.mapping.name).stale += len(write.origins)
            elif verdict is Verdict.REFUSED:
                result.failed.append((write, f"{code}: {message}"))
            elif verdict is Verdict.SYSTEMIC:
                raise SystemicSinkError(
                    f"DynamoDB transaction on {write.mapping.name} failed: {code}: {message}"
                ) from exc
            else:  # a conflict or throttling
                retry.append(pair)
                must_wait = True
                if code in _THROTTLE_REASONS:
                    result.table(write.mapping.name).throttled += 1
        return retry, must_wait

    def _write_transaction(self, unit: list[tuple[Write, dict[str, Any]]]) -> SinkResult:
        # A transaction holds 100 actions at most. A row that moved through more keys in one
        # batch keeps its move atomic where its item is: the new item and the marker at the key
        # it held before the batch (plan puts it first) go in one transaction. The keys it only
        # passed through hold nothing (or, after a redelivered batch, the item an earlier
        # attempt left there): their markers follow as guarded writes of their own. Until the
        # batch is committed a crash re-runs all of it, so none of them can be skipped.
        passed: list[tuple[Write, dict[str, Any]]] = []
        if len(unit) > MAX_TRANSACTION:
            unit, passed = unit[:2], unit[2:]
        result = self._transact(unit)
        if passed and not result.failed:
            markers = SinkResult()
            for write, act in passed:
                self._write_one(markers, write, act)
            self._passed_markers(result, markers)
        # A key move stands for its events once, whatever number of actions it holds.
        first = unit[0][0]
        part = result.table(first.mapping.name)
        if result.applied:
            part.applied += len(first.origins)
            part.e2e_s.append(time.time() - first.source_ts_ms / 1000)
        elif result.stale and not result.failed:
            part.stale += len(first.origins)
        return result

    @staticmethod
    def _passed_markers(result: SinkResult, markers: SinkResult) -> None:
        """Add the passed-through keys' markers to their move's result: their requests and
        write units count, their events do not (the move stands for them once)."""
        result.failed += markers.failed
        for name, theirs in markers.tables.items():
            part = result.table(name)
            part.write_s += theirs.write_s
            part.capacity += theirs.capacity
            part.throttled += theirs.throttled

    def _transact(self, unit: list[tuple[Write, dict[str, Any]]]) -> SinkResult:
        result = SinkResult()
        pending = unit
        table = unit[0][0].mapping.name
        started = self.retry.clock()
        for attempt in range(self.retry.attempts):
            if not pending:
                return result
            try:
                sent = time.perf_counter()
                response = self.client.transact_write_items(
                    TransactItems=[a for _, a in pending], ReturnConsumedCapacity=_CAPACITY
                )
                part = result.table(pending[0][0].mapping.name)
                part.write_s.append(time.perf_counter() - sent)
                if response:
                    _account(part, response)
                result.applied += len(pending)
                return result
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code != "TransactionCanceledException":
                    verdict, text = _verdict(exc)
                    if verdict is Verdict.REFUSED:
                        return _refused(result, unit, text)
                    text = f"DynamoDB transaction on {table} failed: {text}"
                    raise _sink_error(verdict, text, exc) from exc
                reasons = exc.response.get("CancellationReasons") or []
                if len(reasons) != len(pending):
                    raise SinkError(
                        f"transaction cancelled without per-item reasons: {exc}"
                    ) from exc
                # "None": that action was fine, another one cancelled the transaction.
                verdicts = [
                    None
                    if r.get("Code") in (None, "None")
                    else classify(r["Code"], r.get("Message") or "")
                    for r in reasons
                ]
                for grave in (Verdict.SYSTEMIC, Verdict.REFUSED):  # the gravest reason decides
                    if grave in verdicts:
                        reason = reasons[verdicts.index(grave)]
                        text = f"{reason['Code']}: {reason.get('Message', '')}"
                        if grave is Verdict.SYSTEMIC:
                            raise SystemicSinkError(
                                f"DynamoDB transaction on {table} failed: {text}"
                            ) from exc
                        # Refused (too large, an invalid value): retrying the rest alone would
                        # apply the marker and leave the row at neither key. Park it all.
                        return _refused(result, unit, text)
                retry, must_wait = [], False
                for pair, reason, verdict in zip(pending, reasons, verdicts, strict=True):
                    if verdict is Verdict.STALE:
                        # That key already holds a newer change of this same row (keys contain
                        # the primary key: no other row writes there), applied whole by its own
                        # write. The other actions stay guarded, so each lands only where
                        # nothing newer is stored: every key ends with its newest change, as
                        # if the events had come in order, and the newer change that beat this
                        # one has already placed the row. So the rest may proceed without it.
                        result.stale += 1
                        continue
                    retry.append(pair)
                    if verdict is Verdict.TRANSIENT:  # a conflict or throttling: back off
                        must_wait = True
                        if reason["Code"] in _THROTTLE_REASONS:
                            result.table(pair[0].mapping.name).throttled += 1
                pending = retry
                if not must_wait:
                    continue  # only stale actions dropped: retry the rest at once
            except BotoCoreError as exc:
                # The client has spent its own attempts on it: the batch retries from here.
                verdict, text = _verdict(exc)
                raise _sink_error(verdict, text, exc) from exc
            if not self.retry.wait_for(attempt, started):
                break
        if pending:
            raise SinkError(
                f"DynamoDB transaction on {table}: {len(pending)} writes still cancelled "
                "(conflicts or throttling) after the retry policy's attempts or deadline"
            )
        return result
