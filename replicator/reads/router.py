"""Routing by phase: each declared pattern is read from the store its table's phase names.

postgres-only and dual-write read PostgreSQL; hybrid-read reads DynamoDB and falls back to
PostgreSQL on an error or a miss (a single item not found, or an empty first page) and counts
it; dynamodb-only reads DynamoDB only. The phase is cached for ``reads.cache_s``. Shadow mode
also reads the other store in the background and records mismatches that persist after
``reads.shadow_recheck_s``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.observe.metrics import start_time_gauge
from replicator.reads.dynamo import DynamoReads
from replicator.reads.patterns import (
    DYNAMODB,
    POSTGRES,
    PatternReads,
    QueryError,
    Store,
    StoreError,
    catalog,
)
from replicator.reads.postgres import PostgresReads
from replicator.reads.rows import Result, miss, same

log = structlog.get_logger("replicator.reads.router")


class PhaseSource(Protocol):
    """What the router needs of replicator.ops.phases.PhaseStore."""

    def current(self) -> dict[str, Any]: ...

    def record_incidents(self, table: str, kind: Any, count: int) -> None: ...


_READ_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ReadMetrics:
    """The read path's Prometheus metrics, on a registry of their own. Labels: ``table``,
    ``store``, ``pattern`` and ``reason`` (each a small fixed set)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reads = Counter(
            "replicator_reads",
            "Reads served, by the store that served them.",
            ["table", "pattern", "store"],
            registry=r,
        )
        self.seconds = Histogram(
            "replicator_read_seconds",
            "Latency of one read on one store.",
            ["table", "store"],
            buckets=_READ_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "replicator_read_errors", "Reads a store failed.", ["table", "store"], registry=r
        )
        self.fallbacks = Counter(
            "replicator_read_fallbacks",
            "hybrid-read reads served by PostgreSQL: DynamoDB failed (error) or lacked what "
            "PostgreSQL has (miss).",
            ["table", "reason"],
            registry=r,
        )
        self.mismatches = Counter(
            "replicator_read_shadow_mismatches",
            "Shadow reads whose stores still disagreed after the recheck.",
            ["table"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "replicator_read_shadow_skipped",
            "Shadow comparisons not made (too many in flight, or the other store failed).",
            ["table"],
            registry=r,
        )
        self.start_time = start_time_gauge(r)  # `replicator cost` without --window
        self.read_units = Counter(
            "replicator_dynamodb_consumed_read_units",
            "Read capacity units DynamoDB reported consumed by the read path's requests.",
            ["table"],
            registry=r,
        )
        self.phase_failures = Counter(
            "replicator_read_phase_refresh_failures",
            "Phase look-ups that failed (the last known phases stay in use).",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Served:
    value: Result
    source: Store


class ReadPath:
    """The access patterns, each read from the store its table's phase names (see the module
    docstring). Thread-safe; ``close()`` writes the incidents still buffered."""

    def __init__(
        self,
        settings: Settings,
        phases: PhaseSource,
        *,
        own_phases: bool = False,
        clock: Callable[[], float] = time.monotonic,
        postgres: PostgresReads | None = None,
        dynamo: DynamoReads | None = None,
        shadow: bool | None = None,
        metrics: ReadMetrics | None = None,
    ) -> None:
        self._own_phases = own_phases  # closed with the path
        self._clock = clock  # ages the phase cache (reads.cache_s)
        self.settings = settings
        self.config = settings.reads
        self.phases = phases
        self.postgres = postgres or PostgresReads(settings)
        self.dynamo = dynamo or DynamoReads(settings)
        self.shadow = self.config.shadow if shadow is None else shadow
        self.metrics = metrics or ReadMetrics()
        self.dynamo.on_capacity = self._read_units
        self.patterns = catalog(settings)
        self.tables = {name: p.table for name, p in self.patterns.items()}
        self._phase_lock = threading.Lock()
        self._known: dict[str, str] = {}
        self._fetched = -float("inf")
        self._incidents: dict[tuple[str, str], int] = {}
        self._incident_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._shadow_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadow-read")
        self._shadow_slots = threading.BoundedSemaphore(64)
        self._shadow_futures: set[Future[None]] = set()

    def _read_units(self, table: str, units: float) -> None:
        self.metrics.read_units.labels(table).inc(units)

    # -- phases

    def phase(self, table: str) -> str:
        """The table's phase (a Phase value), at most ``reads.cache_s`` old."""
        if self._clock() - self._fetched >= self.config.cache_s:
            with self._phase_lock:
                if self._clock() - self._fetched >= self.config.cache_s:
                    # Aged from when the look-up began: a change committed while it ran is
                    # then seen within cache_s of its commit, however slow the look-up was.
                    started = self._clock()
                    try:
                        self._known = {k: str(v) for k, v in self.phases.current().items()}
                    except ReplicatorError as exc:
                        # Keep serving by the last known phases; PostgreSQL has every write in
                        # every phase, so it is the safe default when nothing is known yet.
                        self.metrics.phase_failures.inc()
                        log.warning("phase look-up failed", error=str(exc))
                    self._fetched = started
        return self._known.get(table, "postgres-only")

    def current_phases(self) -> dict[str, str]:
        for table in set(self.tables.values()):
            self.phase(table)
        return {t: self._known.get(t, "postgres-only") for t in sorted(set(self.tables.values()))}

    # -- reading

    def read(self, pattern: str, *args: Any, **kwargs: Any) -> Served:
        """One access pattern by name, with the store that served it."""
        if pattern not in self.patterns:
            raise QueryError(f"unknown access pattern {pattern!r}")
        table = self.tables[pattern]
        phase = self.phase(table)
        if phase in ("postgres-only", "dual-write"):
            served = Served(self._on(self.postgres, table, pattern, args, kwargs), POSTGRES)
        elif phase == "dynamodb-only":
            served = Served(self._on(self.dynamo, table, pattern, args, kwargs), DYNAMODB)
        else:
            served = self._hybrid(table, pattern, args, kwargs)
            if served.source == POSTGRES:
                return served  # both stores were read already
        if self.shadow:
            self._shadow(table, pattern, args, kwargs, served)
        return served

    def _on(self, store: PatternReads, table: str, pattern: str, args: Any, kwargs: Any) -> Result:
        started = time.perf_counter()
        try:
            result: Result = store.read(pattern, *args, **kwargs)
        except StoreError:
            self.metrics.errors.labels(table, store.store).inc()
            raise
        self.metrics.seconds.labels(table, store.store).observe(time.perf_counter() - started)
        self.metrics.reads.labels(table, pattern, store.store).inc()
        return result

    def _hybrid(self, table: str, pattern: str, args: Any, kwargs: Any) -> Served:
        reason = "miss"
        try:
            result = self._on(self.dynamo, table, pattern, args, kwargs)
        except StoreError as exc:
            reason = "error"
            log.warning("DynamoDB read failed, falling back", table=table, error=str(exc))
        else:
            if not miss(result, kwargs.get("after")):
                return Served(result, DYNAMODB)
        fallback = self._on(self.postgres, table, pattern, args, kwargs)
        # An empty answer from both is not a replication gap: not counted.
        if reason == "error" or not miss(fallback, kwargs.get("after")):
            self.metrics.fallbacks.labels(table, reason).inc()
            self._incident(table, "fallback")
        return Served(fallback, POSTGRES)

    # -- shadow reads

    def _shadow(self, table: str, pattern: str, args: Any, kwargs: Any, served: Served) -> None:
        if not self._shadow_slots.acquire(blocking=False):
            self.metrics.shadow_skipped.labels(table).inc()
            return
        future = self._shadow_pool.submit(self._compare, table, pattern, args, kwargs, served)
        self._shadow_futures.add(future)

        def done(f: Future[None]) -> None:
            self._shadow_slots.release()
            self._shadow_futures.discard(f)

        future.add_done_callback(done)

    def _compare(self, table: str, pattern: str, args: Any, kwargs: Any, served: Served) -> None:
        other = self.dynamo if served.source == POSTGRES else self.postgres
        first = self.postgres if served.source == POSTGRES else self.dynamo
        try:
            if same(served.value, other.read(pattern, *args, **kwargs)):
                return
            # Replication lag explains a fresh difference: look again once before counting.
            self._stop.wait(self.config.shadow_recheck_s)
            again = first.read(pattern, *args, **kwargs)
            if same(again, other.read(pattern, *args, **kwargs)):
                return
        except ReplicatorError as exc:
            self.metrics.shadow_skipped.labels(table).inc()
            log.info("shadow read failed", table=table, pattern=pattern, error=str(exc))
            return
        self.metrics.mismatches.labels(table).inc()
        self._incident(table, "mismatch")
        log.warning("shadow read mismatch", table=table, pattern=pattern, served=served.source)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the shadow comparisons in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        for future in list(self._shadow_futures):
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))

    # -- incidents: buffered, written every reads.incident_flush_s, not per read

    def _incident(self, table: str, kind: str) -> None:
        with self._incident_lock:
            self._incidents[(table, kind)] = self._incidents.get((table, kind), 0) + 1
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="read-incidents", daemon=True
                )
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.config.incident_flush_s):
            self.flush()

    def flush(self) -> None:
        """Write the buffered incident counts to the phase store; kept for later on failure."""
        with self._incident_lock:
            pending, self._incidents = self._incidents, {}
        for (table, kind), count in pending.items():
            try:
                self.phases.record_incidents(table, kind, count)
            except ReplicatorError as exc:
                log.warning("incidents not recorded yet", table=table, kind=kind, error=str(exc))
                with self._incident_lock:
                    self._incidents[(table, kind)] = self._incidents.get((table, kind), 0) + count

    def pending_incidents(self) -> dict[tuple[str, str], int]:
        with self._incident_lock:
            return dict(self._incidents)

    def close(self) -> None:
        self._stop.set()
        self.drain(5.0)
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        self.flush()
        self.postgres.close()
        self.dynamo.close()
        if self._own_phases and hasattr(self.phases, "close"):
            self.phases.close()

    def __getattr__(self, name: str) -> Callable[..., Result]:
        # path.payments_by_loan(7, limit=5): a declared pattern's value, from the phase's store.
        patterns = self.__dict__.get("patterns", {})
        if name in patterns:
            return lambda *args, **kwargs: self.read(name, *args, **kwargs).value
        raise AttributeError(f"ReadPath has no attribute or pattern {name!r}")
