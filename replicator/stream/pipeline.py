"""The one loop: poll -> decode -> enrich -> map -> plan -> guarded write -> dead-letter ->
commit. `run` and bounded replays share it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from confluent_kafka import Message

from replicator.config import Settings
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Op, Origin, Skip
from replicator.core.items import item_size, size_bound
from replicator.core.mapper import mapper
from replicator.core.mapping import MAX_ITEM_BYTES, TableMapping
from replicator.core.schema import Included, included_attributes
from replicator.errors import (
    DecodeError,
    LookupMissError,
    LookupUnavailableError,
    MappingError,
    SinkError,
    SystemicSinkError,
)
from replicator.observe.metrics import Metrics
from replicator.observe.probes import Health
from replicator.stream.deadletter import DeadLetters
from replicator.stream.horizon import cutoff_ms
from replicator.stream.lookup import Lookups
from replicator.stream.retry import RetryPolicy
from replicator.stream.schema import Catalog, SchemaError, SchemaWatch
from replicator.stream.sink import Change, Sink, Write, plan
from replicator.stream.source import KafkaSource

log = structlog.get_logger("replicator.stream.pipeline")
_T = TypeVar("_T")


@dataclass
class Stats:
    consumed: int = 0
    skipped: int = 0
    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    purged: int = 0  # changes of a purge (its replication origin), dropped; part of skipped
    refused: int = 0  # older than the no-resurrection horizon (replays into a live table)
    batches: int = 0
    last_record_at: float = field(default_factory=time.monotonic)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        source: KafkaSource,
        sink: Sink,
        lookups: Lookups,
        dead_letters: DeadLetters,
        metrics: Metrics | None = None,
        health: Health | None = None,
        before_write: Callable[[list[Write]], None] | None = None,
        refuse_older_than_horizon: bool = False,
        retry: RetryPolicy | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.sink = sink
        self.lookups = lookups
        self.dead_letters = dead_letters
        self.metrics = metrics or Metrics()
        self.health = health or Health(settings.metrics.live_within_s)
        self.by_topic = {settings.topic_of(t): t for t in settings.tables}
        self.stats = Stats()
        # Called with each batch's writes before they go out: a backfill's rate limit and its
        # yielding to the live consumer. It may wait; it must not change the writes.
        self.before_write = before_write
        # A replay into a table that readers see: an event older than the table's delete
        # markers live could bring a deleted row back (replicator.stream.horizon). The live consumer
        # reads each row's changes in order, its delete after them: it refuses nothing.
        self.refuse_older_than_horizon = refuse_older_than_horizon
        self.stopping = threading.Event()
        # Between attempts of a batch: the policy's backoff (the cap for a systemic refusal),
        # waited on ``stopping``, so that stop() ends the wait at once.
        self.retry = retry or RetryPolicy.from_settings(settings.dynamodb, self.health.turned)
        self._dead_lettered: Counter[str] = Counter()  # this batch's, per table
        self._purged: Counter[str] = Counter()  # this batch's purge events, per table
        # Changes of a purge's transactions (tagged with this replication origin) deleted rows
        # from PostgreSQL only: DynamoDB keeps them (Phase 5, replicator.ops.purge).
        self.purge_origin = settings.purge.origin
        # Source schema changes: unmapped columns, dropped ones, changed types (stream.schema).
        self.catalog = catalog
        self.schema = SchemaWatch(catalog.columns if catalog else None, self.metrics)

    def run(self, until: Callable[[Stats], bool] | None = None) -> Stats:
        """Process batches until stop() or ``until(stats)``; commits after every batch."""
        log.info(
            "consumer started", topics=sorted(self.by_topic), group=self.settings.kafka.group_id
        )
        self.health.started()
        lag_every = self.settings.metrics.lag_interval_s
        try:
            while not self.stopping.is_set():
                messages = self.source.poll()
                self.health.turned()
                self.health.assignment(self.source.joined, len(self.source.assigned))
                self.metrics.polled(self.source.rejoins)
                self.metrics.refresh_lag(
                    self.source.consumer,
                    self.source.assigned,
                    lag_every,
                    self.settings.kafka.new_group_starts_at,
                )
                if messages:
                    self.process(messages)
                if until is not None and until(self.stats):
                    break
        finally:
            self.health.stopped()
            log.info(
                "consumer stopping",
                consumed=self.stats.consumed,
                applied=self.stats.applied,
                stale=self.stats.stale,
                dead_lettered=self.stats.dead_lettered,
            )
        return self.stats

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        """Leave the consumer group and release connections (after the last commit)."""
        self.source.close()
        self.sink.close()
        self.lookups.close()
        if self.catalog is not None:
            self.catalog.close()
        self.dead_letters.flush()

    def process(self, messages: list[Message]) -> None:
        """Apply one batch; commit its offsets only when every record is written or parked."""
        self.stats.consumed += len(messages)
        self._dead_lettered.clear()
        self._purged.clear()
        changes, skipped = self._changes(messages)
        writes = plan(changes)
        if self.before_write is not None and writes:
            self.before_write(writes)
        attempt = 0
        while True:
            try:
                result = self.sink.write(writes)
                if writes:
                    self.health.write_ok()
                break
            except SinkError as exc:
                # Never skip and never commit past an unwritten change: wait and try again,
                # forever. Retrying is the loop at work: alive, not ready.
                self.metrics.sink_failures.inc()
                self.health.write_failed(str(exc))
                if isinstance(exc, SystemicSinkError):
                    pause = self.retry.cap_s
                    log.error(
                        "DynamoDB refuses the batch for a reason retrying does not fix; "
                        "nothing is committed and the consumer is not ready; the batch is "
                        "retried at this interval, so the consumer goes on by itself once "
                        "the cause is fixed",
                        retry_in_s=pause,
                        error=str(exc)[:300],
                    )
                else:
                    pause = self.retry.backoff(attempt)
                    self._log_retry(messages, exc, pause)
                attempt += 1
                self.health.turned()
                if self.stopping.wait(pause):
                    raise
                self.health.turned()
        by_origin = {(m.topic(), m.partition(), m.offset()): m for m in messages}
        parked: set[tuple[str, int, int]] = set()
        for write, reason in result.failed:
            for origin in write.origins:
                where = (origin.topic, origin.partition, origin.offset)
                if where not in parked:  # a refused key move fails all its writes: park once
                    parked.add(where)
                    self._park(by_origin[where], "write-refused", reason)
        self.stats.applied += result.applied
        self.stats.stale += result.stale
        self.stats.batches += 1
        self.dead_letters.flush()
        self.source.commit(messages, self.sink.commit_metadata())
        self.stats.last_record_at = time.monotonic()
        self.metrics.batch(self._consumed(messages), skipped, self._dead_lettered, self._purged)
        self.metrics.written(result.tables)

    def _table_of(self, topic: str | None) -> str:
        mapping = self.by_topic.get(topic or "")
        return mapping.name if mapping is not None else "(unmapped)"

    def _consumed(self, messages: list[Message]) -> Counter[str]:
        per_topic = Counter(m.topic() for m in messages)
        return Counter({self._table_of(t): n for t, n in per_topic.items()})

    def _log_retry(self, messages: list[Message], exc: SinkError, pause: float) -> None:
        """One line per partition of the batch: where the unwritten records are."""
        ranges: dict[tuple[str, int], list[int]] = {}
        for m in messages:
            offsets = ranges.setdefault((m.topic() or "", m.partition() or 0), [])
            offsets.append(m.offset() or 0)
        for (topic, partition), offsets in sorted(ranges.items()):
            log.warning(
                "sink failed; retrying batch",
                table=self._table_of(topic),
                topic=topic,
                partition=partition,
                offset=min(offsets),
                last_offset=max(offsets),
                retry_in_s=round(pause, 3),
                error=str(exc)[:300],
            )

    def _changes(self, messages: list[Message]) -> tuple[list[Change], Counter[str]]:
        decoded: list[tuple[Message, TableMapping, ChangeEvent, list[Included]]] = []
        skipped: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        now_ms = int(time.time() * 1000)
        for message in messages:
            topic = message.topic() or ""
            origin = Origin(topic, message.partition() or 0, message.offset() or 0)
            mapping = self.by_topic.get(topic)
            if mapping is None:
                self._park(message, "unknown-table", f"no mapping for topic {topic!r}")
                continue
            try:
                event = decode(message.key(), message.value(), origin)
            except DecodeError as exc:
                self._park(message, "decode", str(exc))
                continue
            if isinstance(event, Skip):
                self.stats.skipped += 1
                skipped[mapping.name] += 1
                continue
            if event.table != mapping.source:
                self._park(
                    message,
                    "unknown-table",
                    f"event of {event.table!r} on the topic of {mapping.source!r}",
                )
                continue
            if event.source_origin is not None and event.source_origin == self.purge_origin:
                # Checked before anything else is done with it: a purge's delete never
                # becomes a delete marker (the row's item is all that is left of it).
                self.stats.skipped += 1
                self.stats.purged += 1
                skipped[mapping.name] += 1
                self._purged[mapping.name] += 1
                continue
            if self.refuse_older_than_horizon and event.source_ts_ms < cutoff_ms(mapping, now_ms):
                refused[mapping.name] += 1
                continue
            included: list[Included] = _NO_COLUMNS
            if event.op is Op.UPSERT:  # a delete's old row may hold only the key
                try:
                    included = self._schema_checked(mapping, event)
                except SchemaError as exc:
                    self._park(message, "schema", str(exc))
                    continue
            decoded.append((message, mapping, event, included))
        for table, count in refused.items():
            log.warning(
                "events older than the no-resurrection horizon not applied",
                table=table,
                refused=count,
            )
            self.stats.refused += count
            skipped[table] += count  # in the metrics: consumed = applied + stale + skipped + ...

        for mapping in {id(m): m for _, m, _, _ in decoded}.values():
            rows = [r for _, m, e, _ in decoded if m is mapping for r in (e.row, e.before) if r]
            self._until_available(mapping.name, lambda m=mapping, r=rows: self.lookups.fill(m, r))

        changes = []
        for message, mapping, event, included in decoded:
            try:
                changes.append(to_change(mapping, event, included))
            except LookupMissError as exc:
                self._park(message, "lookup-miss", str(exc))
            except MappingError as exc:
                # "schema" when the source's column types no longer fit the mapping.
                self._park(message, *self.schema.explain(mapping, exc))
        return changes, skipped

    def _schema_checked(self, mapping: TableMapping, event: ChangeEvent) -> list[Included]:
        """The unmapped columns to write; SchemaError when the event parks. The catalog is
        asked only when a table's shape changes: waiting for it is the rare path."""
        try:
            return self.schema.check(mapping, event)
        except LookupUnavailableError:
            return self._until_available(mapping.name, lambda: self.schema.check(mapping, event))

    def _until_available(self, table: str, call: Callable[[], _T]) -> _T:
        """``call``, again and again while the PostgreSQL it asks does not answer."""
        attempt = 0
        while True:
            try:
                return call()
            except LookupUnavailableError as exc:
                # A database outage is not the events' fault: wait, never dead-letter.
                self.health.write_failed(str(exc))
                pause = self.retry.backoff(attempt)
                log.warning(
                    "lookup database unavailable; waiting",
                    table=table,
                    retry_in_s=round(pause, 3),
                    error=str(exc)[:300],
                )
                attempt += 1
                self.health.turned()
                if self.stopping.wait(pause):
                    raise
                self.health.turned()

    def _park(self, message: Message, reason: str, detail: str) -> None:
        # The detail can quote a value of the row: it goes to the dead-letter record's headers
        # (`replicator dlq show`), never to the log.
        table = self._table_of(message.topic())
        log.warning(
            "event dead-lettered",
            reason=reason,
            table=table,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )
        self.dead_letters.park(message, reason, detail)
        self.stats.dead_lettered += 1
        self._dead_lettered[table] += 1


def to_change(
    mapping: TableMapping, event: ChangeEvent, included: list[Included] | None = None
) -> Change:
    """Map a decoded event to the item (or delete marker) it produces, with the unmapped
    columns ``included`` (stream.schema) written too. Pure."""
    compiled = mapper(mapping)  # the mapping interpreted once, not per event
    if mapping.lookups:
        Lookups.require(mapping, event.row)
    if event.op is Op.DELETE:
        return Change(mapping, event, compiled.item_key(event.row), None)
    item, unavailable = compiled.to_item(event.row)
    if included:
        extra, extra_unavailable = included_attributes(included, event.row)
        item.update(extra)
        unavailable |= extra_unavailable
        if size_bound(item) > MAX_ITEM_BYTES and item_size(item) > MAX_ITEM_BYTES:
            raise MappingError(
                f"item is {item_size(item)} bytes with the unmapped columns written "
                "(unmapped_columns: include), over DynamoDB's 400 KB limit"
            )
    key = compiled.key_of(item)
    old_key = None
    # With REPLICA IDENTITY DEFAULT the old row holds only the key columns: no key move can be
    # seen then. With FULL it holds every column.
    # A mapped column dropped from the source leaves the old row without it: what matters is
    # that the old row holds every column the keys are made of.
    if event.before is not None and event.before.keys() >= compiled.key_columns:
        if mapping.lookups:
            Lookups.require(mapping, event.before)
        before_key = compiled.item_key(event.before)
        if before_key != key:
            old_key = before_key
    keep = frozenset(unavailable) if unavailable else _NOTHING_KEPT
    return Change(mapping, event, key, item, keep, old_key)


_NOTHING_KEPT: frozenset[str] = frozenset()
_NO_COLUMNS: list[Included] = []
