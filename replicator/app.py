"""The composition root: the one place that wires stages together from the settings.

``pipeline`` builds the loop of `run`, `demo` and every backfill job; ``Consumer`` is `run`'s
process (the pipeline with its metrics endpoint, probes and source monitor); ``backfill``
builds a topic replay over bounded sources. Commands call these; modules below never build
one another.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import structlog

from replicator.config import Settings
from replicator.core.events import Position
from replicator.errors import ReplicatorError
from replicator.observe.health import Server
from replicator.observe.metrics import Metrics, SourceMonitor
from replicator.observe.probes import Health
from replicator.observe.status import Sources
from replicator.observe.status_page import History
from replicator.ops.backfill import Backfill, Job
from replicator.ops.connector import ConnectClient
from replicator.ops.phases import PhaseStore
from replicator.ops.postgres import replica_identities, require_replica_identity
from replicator.reads.router import ReadPath
from replicator.stream.batch import BatchSink
from replicator.stream.deadletter import DeadLetters, connection_settings, ensure_topic
from replicator.stream.dynamo import dynamodb_client, dynamodb_writer
from replicator.stream.horizon import check_horizon, read_limits
from replicator.stream.layout import check_shards
from replicator.stream.lookup import Lookups
from replicator.stream.pipeline import Pipeline, Stats
from replicator.stream.retry import RetryPolicy
from replicator.stream.schema import Catalog
from replicator.stream.sink import DynamoSink, Sink, Write
from replicator.stream.source import KafkaSource

log = structlog.get_logger("replicator.app")


# Young objects the cyclic collector lets accumulate before a collection (Python's default:
# 700). Every event allocates a few dozen containers (the decoded row, the item's attribute
# values) that a batch keeps until it is written, so at 700 the collector ran every ~20 events
# and re-scanned the batch each time: a third of decode + map's CPU (bench/RESULTS.md). Nothing
# here relies on the collector to free memory promptly; reference counting frees the events.
GC_YOUNG_OBJECTS = 50_000


def collect_less_often() -> None:
    """For the long-lived processes (`run`, `backfill`), once their objects are built: move
    what exists to the collector's permanent generation, so that full collections no longer
    walk the clients, settings and modules, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_OBJECTS, older, oldest)


def pipeline(
    settings: Settings,
    group_id: str | None = None,
    metrics: Metrics | None = None,
    health: Health | None = None,
    source: KafkaSource | None = None,
    before_write: Callable[[list[Write]], None] | None = None,
    refuse_older_than_horizon: bool = False,
    batch_lane: dict[tuple[str, int], Position] | None = None,
) -> Pipeline:
    """Wire the stages from the settings; a replay passes its own (bounded) source, and a load
    into a table nobody reads or else writes ``batch_lane``: it then writes through the batch
    lane (replicator.stream.batch), seeded with each partition's newest position written by an
    earlier run of the load. Refuses to start when a table's delete markers would expire before
    Kafka lets go of what could bring its deleted rows back (replicator.stream.horizon)."""
    topics = [settings.topic_of(t) for t in settings.tables]
    if not topics:
        raise ReplicatorError("no tables are mapped: nothing to consume")
    kafka = settings.kafka
    connection = connection_settings(kafka.extra)  # TLS and SASL reach every client
    ensure_topic(kafka, extra=connection)
    check_horizon(settings, read_limits(settings))  # before anything joins or connects
    # One quick attempt: an endpoint that does not answer is the writes' to report.
    check_shards(settings, dynamodb_client(settings.dynamodb, max_attempts=1))
    if source is None:
        source = KafkaSource(settings.kafka, topics, group_id)
    health = health or Health(settings.metrics.live_within_s)
    # One retry policy for every write and lookup; between attempts it tells liveness.
    retry = RetryPolicy.from_settings(settings.dynamodb, health.turned)
    concurrency = settings.dynamodb.concurrency
    writer = dynamodb_writer(settings.dynamodb, concurrency, retry)
    sink: Sink = DynamoSink(writer, concurrency, retry, settings.dynamodb.guarded_lane)
    if batch_lane is not None:
        sink = BatchSink(writer, sink, concurrency, retry, batch_lane)
    lookups = Lookups(settings.postgres.lookups(), retry=retry)
    dead_letters = DeadLetters(kafka.bootstrap_servers, kafka.dead_letter_topic, connection)
    return Pipeline(
        settings,
        source,
        sink,
        lookups,
        dead_letters,
        metrics,
        health,
        before_write,
        refuse_older_than_horizon,
        retry,
        # The source database's catalog (not the lookup DSN's): unmapped columns' types.
        Catalog(settings.postgres.dsn(), retry=retry),
    )


class Consumer:
    """`run`'s process: refuses a source whose REPLICA IDENTITY hides key moves, serves
    /metrics, /healthz, /readyz and the status page (unless ``serve`` is off or the settings
    disable metrics), watches the slot and the connector off the loop, and runs the pipeline."""

    def __init__(self, settings: Settings, *, serve: bool = True) -> None:
        # Before anything is consumed: under REPLICA IDENTITY DEFAULT key moves are invisible.
        require_replica_identity(settings)
        tables = [t.name for t in settings.tables]
        self.metrics = Metrics(tables=tables, connector=settings.metrics.connector_state)
        self.health = Health(settings.metrics.live_within_s)
        self.server: Server | None = None
        self.monitor: SourceMonitor | None = None
        if serve and settings.metrics.enabled:  # first: a port in use fails before joining
            history = History(
                self.metrics,
                {settings.topic_of(t): t.name for t in settings.tables},
                settings.metrics.history_interval_s,
                settings.metrics.history_s,
            )
            self.server = Server(
                settings.metrics.host, settings.metrics.port, self.metrics, self.health, history
            ).start()
            log.info(
                "serving /metrics, /healthz, /readyz, status page /",
                host=settings.metrics.host,
                port=self.server.port,
            )
            connector = ConnectClient(settings).status if settings.metrics.connector_state else None
            self.monitor = SourceMonitor(settings, self.metrics, read_connector=connector)
            self.monitor.start()
        try:
            self.pipeline = pipeline(settings, metrics=self.metrics, health=self.health)
        except BaseException:
            self._close_observers()
            raise

    def run(self, until: Callable[[Stats], bool] | None = None) -> Stats:
        return self.pipeline.run(until)

    def stop(self) -> None:
        """Finish the batch in hand, commit, leave the group (safe from a signal handler)."""
        self.pipeline.stop()

    def close(self) -> None:
        try:
            self.pipeline.close()
        finally:
            self._close_observers()

    def _close_observers(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.server is not None:
            self.server.close()


def backfill(settings: Settings, jobs: list[Job], **options: Any) -> Backfill:
    """A replay of the jobs' topics, each over a bounded source through ``pipeline``."""
    return Backfill(settings, jobs, build=pipeline, **options)


def status_sources(settings: Settings) -> Sources:
    """What `lag` and `status` ask beyond the consumers' metrics."""

    def phases() -> dict[str, Any]:
        store = PhaseStore(settings)
        try:
            return dict(store.current())
        finally:
            store.close()

    return Sources(
        phases=phases,
        connector=ConnectClient(settings).status,
        identities=lambda: replica_identities(settings),
    )


def read_path(settings: Settings) -> ReadPath:
    """The read path of `read` and `reads serve`: both stores, routed by the phase store."""
    return ReadPath(settings, PhaseStore(settings), own_phases=True)
