"""Every Prometheus metric of the consumer, in one place, on a registry of its own.

Labels are low-cardinality only: ``table`` (the DynamoDB table of a mapping), ``topic`` and
``partition``. Counters move once per batch and table, not per event; the latency histograms
take one observation per DynamoDB request (timed by the sink, observed after the batch);
consumer lag is refreshed at most every ``metrics.lag_interval_s``, not per record.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

import structlog
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from replicator.sink import SinkResult

# Seconds: a single conditional write is milliseconds; a throttled one backs off for seconds.
_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Seconds from the commit in PostgreSQL to DynamoDB's acknowledgement: normally sub-second,
# minutes during a catch-up.
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_OFFSET_INVALID = 0  # offsets below this are librdkafka's logical offsets (none known yet)

log = structlog.get_logger("replicator.metrics")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self._lag_labels: set[tuple[str, str]] = set()
        self._lag_refreshed = float("-inf")

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # The pipeline's calls: one per batch, or per table and batch.

    def batch(self, consumed: Tally[str], skipped: Tally[str], dead_lettered: Tally[str]) -> None:
        """Counts of one batch per table (``consumed`` also sets the batch size)."""
        self.batch_size.observe(sum(consumed.values()))
        for counter, tally in (
            (self.consumed, consumed),
            (self.skipped, skipped),
            (self.dead_lettered, dead_lettered),
        ):
            for table, n in tally.items():
                if n:
                    counter.labels(table).inc(n)

    def written(self, result: SinkResult) -> None:
        for table, part in result.tables.items():
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
        self.batches.inc()

    def polled(self) -> None:
        self.last_poll.set(time.time())

    def refresh_lag(self, consumer: Any, assigned: set[tuple[str, int]], every_s: float) -> None:
        """High watermark minus position for every assigned partition, at most every
        ``every_s`` seconds. Watermarks come from librdkafka's cache of the last fetch; only a
        partition nothing was fetched from yet costs a request to the broker."""
        now = time.monotonic()
        if now - self._lag_refreshed < every_s:
            return
        self._lag_refreshed = now
        self.assigned.set(len(assigned))
        try:
            self._refresh_lag(consumer, assigned)
        except KafkaException as exc:  # a broker slow to answer: keep the last values
            log.warning("consumer lag not refreshed", error=str(exc))

    def _refresh_lag(self, consumer: Any, assigned: set[tuple[str, int]]) -> None:
        partitions = [TopicPartition(t, p) for t, p in sorted(assigned)]
        positions = consumer.position(partitions) if partitions else []
        unknown = [tp for tp in positions if tp.offset < _OFFSET_INVALID]
        committed = {}
        if unknown:  # nothing consumed here yet: the committed offset is where reading starts
            for tp in consumer.committed(unknown, timeout=2.0):
                committed[(tp.topic, tp.partition)] = tp.offset
        labels = set()
        for tp in positions:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < _OFFSET_INVALID:
                low, high = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
            position = tp.offset
            if position < _OFFSET_INVALID:
                position = committed.get((tp.topic, tp.partition), -1)
                if position < _OFFSET_INVALID:
                    position = low  # nothing committed: the group starts at the earliest
            key = (tp.topic, str(tp.partition))
            self.lag.labels(*key).set(max(0, high - position))
            labels.add(key)
        for gone in self._lag_labels - labels:  # revoked: its lag is another consumer's now
            self.lag.remove(*gone)
        self._lag_labels = labels
