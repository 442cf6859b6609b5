"""Every Prometheus metric of the consumer, in one place, on a registry of its own.

Labels are low-cardinality only: ``table`` (the DynamoDB table of a mapping), ``topic`` and
``partition``. Counters move once per batch and table, not per event; the latency histograms
take one observation per DynamoDB request (timed by the sink, observed after the batch);
consumer lag is refreshed at most every ``metrics.lag_interval_s``, not per record.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from replicator.errors import ReplicatorError
from replicator.observe.lag import slot_lag

if TYPE_CHECKING:
    from replicator.config import Settings
    from replicator.observe.lag import SlotLag


class TableWrites(Protocol):
    """What the metrics take of one table's part of a batch (the sink's ``TableResult``)."""

    applied: int
    stale: int
    write_s: list[float]
    e2e_s: list[float]
    capacity: float
    throttled: int


# Seconds: a single conditional write is milliseconds; a throttled one backs off for seconds.
_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Seconds from the commit in PostgreSQL to DynamoDB's acknowledgement: normally sub-second,
# minutes during a catch-up.
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_OFFSET_INVALID = 0  # offsets below this are librdkafka's logical offsets (none known yet)
# Kafka Connect's states, plus ours: MISSING (no such connector) and UNKNOWN (no answer).
CONNECT_STATES = (
    "RUNNING",
    "PAUSED",
    "STOPPED",
    "FAILED",
    "UNASSIGNED",
    "RESTARTING",
    "MISSING",
    "UNKNOWN",
)

log = structlog.get_logger("replicator.observe.metrics")


def start_time_gauge(registry: CollectorRegistry) -> Gauge:
    """``replicator_start_time_seconds``, set to now: `replicator cost` divides a process's
    counters by its uptime (the consumer's and the read API's registries both carry it)."""
    gauge = Gauge(
        "replicator_start_time_seconds",
        "Unix time this process started (for rates over its whole life).",
        registry=registry,
    )
    gauge.set(time.time())
    return gauge


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        tables: Iterable[str] = (),
        connector: bool = True,
    ) -> None:
        """``tables``: the mapped tables, whose series start at 0 (a series that appears only
        with its first event hides the first increase from rate() and from alerts).
        ``connector``: whether the connector's state is read at all; if not, its series never
        appear (rather than a state nobody measured)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def events(what: str, help_text: str) -> Counter:
            return Counter(f"replicator_events_{what}", help_text, ["table"], registry=r)

        self.consumed = events("consumed", "Change events read from Kafka.")
        self.applied = events(
            "applied",
            "Change events now stored in DynamoDB (events collapsed into one write count with it).",
        )
        self.skipped = events(
            "skipped", "Events with nothing to write (Debezium tombstones, truncates, heartbeats)."
        )
        self.purged = events(
            "purged",
            "Events of the purge's replication origin (purge.origin), dropped: rows deleted from "
            "PostgreSQL only (Phase 5). Also counted as skipped.",
        )
        self.stale = events(
            "stale", "Events the position guard refused: a newer change is already stored."
        )
        self.dead_lettered = events("dead_lettered", "Events parked on the dead-letter topic.")
        self.write_seconds = Histogram(
            "replicator_write_seconds",
            "Latency of one DynamoDB write request (PutItem, UpdateItem or a key move's "
            "TransactWriteItems), retries included.",
            ["table"],
            buckets=_WRITE_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "replicator_end_to_end_seconds",
            "From the change's commit in PostgreSQL (source ts_ms, stored as _src_ms) to "
            "DynamoDB's acknowledgement of its write.",
            ["table"],
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "replicator_batch_size",
            "Records per polled batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batches = Counter("replicator_batches", "Batches written and committed.", registry=r)
        self.sink_failures = Counter(
            "replicator_sink_failures",
            "Batch writes that failed after the client's retries (the batch is retried whole).",
            registry=r,
        )
        self.consumer_rejoins = Counter(
            "replicator_consumer_rejoins",
            "Kafka consumers closed and made again because they stayed out of their group "
            "longer than kafka.rejoin_timeout_s.",
            registry=r,
        )
        self.lag = Gauge(
            "replicator_consumer_lag",
            "Records behind: the partition's high watermark minus the consumer's position.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned = Gauge(
            "replicator_assigned_partitions", "Partitions assigned to this consumer.", registry=r
        )
        self.last_poll = Gauge(
            "replicator_last_poll_timestamp_seconds",
            "Unix time of the consumer loop's last poll.",
            registry=r,
        )
        self.write_units = Counter(
            "replicator_dynamodb_consumed_write_units",
            "Write capacity units DynamoDB reported for the sink's writes "
            "(ReturnConsumedCapacity=TOTAL; GSI writes included). Writes the position guard "
            "refused also cost a unit each, but DynamoDB does not report them.",
            ["table"],
            registry=r,
        )
        self.throttled = Counter(
            "replicator_dynamodb_throttled_requests",
            "Write attempts DynamoDB refused for throughput (ProvisionedThroughputExceeded, "
            "ThrottlingException, RequestLimitExceeded, or a transaction cancelled for it); "
            "the client retried them.",
            ["table"],
            registry=r,
        )
        self.slot_retained = Gauge(
            "replicator_slot_retained_wal_bytes",
            "WAL PostgreSQL keeps for the connector's replication slot (current LSN minus the "
            "slot's restart_lsn); 0 when the slot does not exist.",
            registry=r,
        )
        self.slot_active = Gauge(
            "replicator_slot_active",
            "1 while a client (Debezium) streams from the replication slot, else 0 (also when "
            "the slot does not exist).",
            registry=r,
        )
        self.slot_probe_failures = Counter(
            "replicator_slot_probe_failures",
            "Reads of pg_replication_slots that failed (the slot gauges keep their last value).",
            registry=r,
        )
        self.connector_state = Gauge(
            "replicator_connector_state",
            "1 for the Debezium connector's current state in Kafka Connect, 0 for the others "
            "(MISSING: no such connector; UNKNOWN: Connect did not answer).",
            ["state"],
            registry=r,
        )
        self.connector_tasks = Gauge(
            "replicator_connector_tasks",
            "The connector's tasks in each state.",
            ["state"],
            registry=r,
        )
        self.unmapped_columns = Gauge(
            "replicator_unmapped_columns",
            "1 for each source column the table's mapping does not name (added by ALTER TABLE; "
            "written only with unmapped_columns: include); gone when the column is.",
            ["table", "column"],
            registry=r,
        )
        self.missing_columns = Gauge(
            "replicator_missing_columns",
            "1 for each mapped column missing from the source rows (dropped or renamed): "
            "its attribute is no longer written, or events are dead-lettered if NOT NULL.",
            ["table", "column"],
            registry=r,
        )
        self.start_time = start_time_gauge(r)
        for table in tables:
            for metric in (
                self.consumed,
                self.applied,
                self.skipped,
                self.purged,
                self.stale,
                self.dead_lettered,
                self.write_units,
                self.throttled,
                self.write_seconds,
                self.end_to_end_seconds,
            ):
                metric.labels(table)
        for state in CONNECT_STATES if connector else ():
            self.connector_state.labels(state).set(0)
            self.connector_tasks.labels(state).set(0)
        self._lag_labels: set[tuple[str, str]] = set()
        self._lag_refreshed = float("-inf")
        self._rejoins_seen = 0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # The pipeline's calls: one per batch, or per table and batch.

    def batch(
        self,
        consumed: Tally[str],
        skipped: Tally[str],
        dead_lettered: Tally[str],
        purged: Tally[str] | None = None,
    ) -> None:
        """Counts of one batch per table (``consumed`` also sets the batch size); ``purged``
        is a part of ``skipped``."""
        self.batch_size.observe(sum(consumed.values()))
        for counter, tally in (
            (self.consumed, consumed),
            (self.skipped, skipped),
            (self.dead_lettered, dead_lettered),
            (self.purged, purged or Tally()),
        ):
            for table, n in tally.items():
                if n:
                    counter.labels(table).inc(n)

    def written(self, tables: Mapping[str, TableWrites]) -> None:
        for table, part in tables.items():
            if part.applied:
                self.applied.labels(table).inc(part.applied)
            if part.stale:
                self.stale.labels(table).inc(part.stale)
            if part.write_s:
                observe = self.write_seconds.labels(table).observe
                for seconds in part.write_s:
                    observe(seconds)
            if part.e2e_s:
                observe = self.end_to_end_seconds.labels(table).observe
                for seconds in part.e2e_s:
                    observe(max(0.0, seconds))  # clocks of two machines: never negative
            if part.capacity:
                self.write_units.labels(table).inc(part.capacity)
            if part.throttled:
                self.throttled.labels(table).inc(part.throttled)
        self.batches.inc()

    def schema_column(self, kind: str, table: str, column: str, present: bool) -> None:
        """``kind`` unmapped or missing: a column seen (1) or gone (the series removed, so
        that no stale 1 stays for a column dropped again)."""
        gauge = self.unmapped_columns if kind == "unmapped" else self.missing_columns
        if present:
            gauge.labels(table, column).set(1)
        else:
            with contextlib.suppress(KeyError):
                gauge.remove(table, column)

    # The source monitor's calls (its own thread, every metrics.source_interval_s).

    def slot(self, lag: SlotLag | None) -> None:
        self.slot_retained.set(lag.retained_wal_bytes if lag else 0)
        self.slot_active.set(1 if lag and lag.active else 0)

    def connector(self, status: dict[str, Any] | None, reachable: bool = True) -> None:
        """Kafka Connect's status answer; None: the connector does not exist."""
        if not reachable:
            state, tasks = "UNKNOWN", []
        elif status is None:
            state, tasks = "MISSING", []
        else:
            state = status.get("connector", {}).get("state", "UNKNOWN")
            tasks = [t.get("state", "UNKNOWN") for t in status.get("tasks", [])]
        for known in {*CONNECT_STATES, state, *tasks}:
            self.connector_state.labels(known).set(1 if known == state else 0)
            self.connector_tasks.labels(known).set(tasks.count(known))

    def polled(self, rejoins: int = 0) -> None:
        """After every poll; ``rejoins``: the source's count of consumers made anew so far."""
        self.last_poll.set(time.time())
        if rejoins > self._rejoins_seen:
            self.consumer_rejoins.inc(rejoins - self._rejoins_seen)
            self._rejoins_seen = rejoins

    def refresh_lag(
        self,
        consumer: Any,
        assigned: set[tuple[str, int]],
        every_s: float,
        starts_at: str = "earliest",
    ) -> None:
        """High watermark minus position for every assigned partition, at most every
        ``every_s`` seconds. Watermarks come from librdkafka's cache of the last fetch; only a
        partition nothing was fetched from yet costs a request to the broker."""
        now = time.monotonic()
        if now - self._lag_refreshed < every_s:
            return
        self._lag_refreshed = now
        self.assigned.set(len(assigned))
        try:
            self._refresh_lag(consumer, assigned, starts_at)
        except KafkaException as exc:  # a broker slow to answer: keep the last values
            log.warning("consumer lag not refreshed", error=str(exc))

    def _refresh_lag(self, consumer: Any, assigned: set[tuple[str, int]], starts_at: str) -> None:
        labels = set()
        for (topic, partition), lag in consumer_lag(consumer, assigned, starts_at).items():
            key = (topic, str(partition))
            self.lag.labels(*key).set(lag)
            labels.add(key)
        for gone in self._lag_labels - labels:  # revoked: its lag is another consumer's now
            self.lag.remove(*gone)
        self._lag_labels = labels


def consumer_lag(
    consumer: Any,
    assigned: set[tuple[str, int]],
    starts_at: str = "earliest",
    cached: bool = True,
) -> dict[tuple[str, int], int]:
    """Per assigned partition, its end minus the consumer's position (the committed offset
    while nothing was consumed since the assignment; with nothing committed, where the group
    starts: ``kafka.new_group_starts_at``). ``cached``: the ends librdkafka saw in its last
    fetch (a partition nothing was fetched from yet is asked); otherwise every end is the
    broker's answer. KafkaException when the broker does not answer."""
    partitions = [TopicPartition(t, p) for t, p in sorted(assigned)]
    positions = consumer.position(partitions) if partitions else []
    unknown = [tp for tp in positions if tp.offset < _OFFSET_INVALID]
    committed = {}
    if unknown:  # nothing consumed here yet: the committed offset is where reading starts
        for tp in consumer.committed(unknown, timeout=2.0):
            committed[(tp.topic, tp.partition)] = tp.offset
    lags = {}
    for tp in positions:
        low, high = consumer.get_watermark_offsets(tp, cached=True) if cached else (-1, -1)
        if high < _OFFSET_INVALID:
            low, high = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
        position = tp.offset
        if position < _OFFSET_INVALID:
            position = committed.get((tp.topic, tp.partition), -1)
            if position < _OFFSET_INVALID:  # nothing committed: where the group starts
                position = high if starts_at == "latest" else low
        lags[(tp.topic, tp.partition)] = max(0, high - position)
    return lags


class SourceMonitor:
    """Reads the replication slot (PostgreSQL) and the connector's state (Kafka Connect REST)
    into the metrics every ``metrics.source_interval_s``, in a daemon thread: a slow database
    or Connect never holds the consumer loop. A failed read is logged and leaves the last slot
    values (Connect's failure is itself a state: UNKNOWN)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        read_slot: Callable[[], SlotLag | None] | None = None,
        read_connector: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.every_s = settings.metrics.source_interval_s
        self.metrics = metrics
        if read_slot is None:

            def read_slot() -> SlotLag | None:
                return slot_lag(settings)

        self.read_slot = read_slot
        self.read_connector = read_connector  # None: not read (metrics.connector_state off)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="source-monitor", daemon=True)

    def start(self) -> SourceMonitor:
        if self.every_s > 0:
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def once(self) -> None:
        try:
            self.metrics.slot(self.read_slot())
        except ReplicatorError as exc:
            self.metrics.slot_probe_failures.inc()
            log.warning("replication slot not read", error=str(exc)[:300])
        if self.read_connector is None:
            return
        try:
            self.metrics.connector(self.read_connector())
        except ReplicatorError as exc:
            self.metrics.connector(None, reachable=False)
            log.warning("connector state not read", error=str(exc)[:300])

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.once()
            except Exception:  # a surprise must not end the thread: the gauges would freeze
                log.exception("source monitor failed; trying again later")
            self.stopping.wait(self.every_s)
