"""Topic replay (`replicator backfill`): a table's compacted topic applied again into DynamoDB,
the same table or a new one, through the same pipeline as `run` with a bounded source.

Each table gets a consumer group of its own, named from the table and the target, so the same
command run again resumes from the offsets it committed; it stops at the topic's ends captured
when it started (or follows live). Writes are throttled to a number of write units per second
if asked, and, when the target is the table the live consumer writes, pause while the live
group falls behind. Beside the live consumer it is safe by the position guard: an older copy
of a row never overwrites a newer one, and, since a replay into the live table refuses events
older than the no-resurrection horizon, a deleted row never comes back.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.core.items import POS, SOURCE_MS, delete_marker, item_size
from replicator.core.mapping import TableMapping
from replicator.errors import ConfigError, ReplicatorError
from replicator.observe.lag import consumer_lag
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.pipeline import Pipeline
from replicator.stream.sink import Write
from replicator.stream.source import BoundedSource

log = structlog.get_logger("replicator.ops.backfill")

# DynamoDB sizes an item as its attribute names plus values; the position and source-time
# attributes the sink adds are about this much.
_META_BYTES = len(POS) + 36 + len(SOURCE_MS) + 8
# A delete marker is sized as if written at this time, so the estimate stays pure: only its
# TTL's digits depend on the time, and these leave no zeros to trim (the TTL at its largest).
_MARKER_NOW_S = 1_999_999_999


# --- write units (pure) ---------------------------------------------------------------------


def write_units(writes: list[Write]) -> int:
    """Write units a planned batch will consume: ceil(size / 1 KB) per item written, doubled for
    the writes of a key move (one transaction; DynamoDB charges transactional writes twice).
    A delete marker is one unit. Estimated before writing, so a rate limit can wait first."""
    per_unit: dict[tuple[Any, ...], int] = {}
    for write in writes:
        per_unit[write.origins] = per_unit.get(write.origins, 0) + 1
    total = 0
    for write in writes:
        if write.item is None:
            size = item_size(delete_marker(write.mapping, write.key, _MARKER_NOW_S))
        else:
            size = item_size(write.item)
        units = max(1, math.ceil((size + _META_BYTES) / 1024))
        total += units * (2 if per_unit[write.origins] > 1 else 1)
    return total


class TokenBucket:
    """At most ``rate`` tokens per second on average, bursts up to ``burst``. A take larger than
    what is left goes into debt and returns how long to wait, so a batch bigger than one
    second's budget still passes, just later. Thread-safe (parallel tables share one)."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ConfigError("--rate-limit must be more than 0 write units per second")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()
        self.lock = threading.Lock()

    def take(self, amount: float) -> float:
        """Take ``amount`` tokens; return the seconds to wait before using them."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= amount
            return max(0.0, -self.tokens / self.rate)


# --- plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    mapping: TableMapping  # the table's mapping as configured (the live consumer's)
    target: TableMapping  # the same mapping, named after the table to write
    group_id: str

    @property
    def shares_live_table(self) -> bool:
        return self.target.name == self.mapping.name

    @property
    def refuses_old_events(self) -> bool:
        """Whether the replay refuses events older than the no-resurrection horizon (their
        source commit time before now - tombstone_days, replicator.stream.horizon).

        Into the live table, yes: readers see it, and a row deleted longer ago than its marker
        lives has no marker left, so an older event of it would pass the guard and bring it
        back. Rows unchanged for longer are left as they are; `verify --repair` rewrites those
        against PostgreSQL.

        Into another table, no. Nobody reads it before it is verified (the hybrid-read gate),
        and the replay applies each key's surviving history in partition order: compaction
        never keeps an older record of a key without its newer ones, so an older upsert is
        followed by the delete that superseded it (an expired marker of an earlier run of the
        same replay is rewritten the same way). Refusing there would leave out every row not
        changed within the horizon, which is the point of the load. One race is left: the log
        cleaner removing a delete after the replay read the row's older upsert and before it
        reached the delete leaves only the Kafka tombstone, which names no DynamoDB key; the
        verify before cutover reports such an item.
        """
        return self.shares_live_table


def group_for(settings: Settings, mapping: TableMapping, target: str) -> str:
    return f"{settings.backfill.group_prefix}.{mapping.name}.{target}"


def plan_jobs(settings: Settings, tables: list[str] | None, into: str | None) -> list[Job]:
    """One job per table (every mapped table when none is named). ``into`` names the target:
    a table name for one table, or a pattern with ``{name}`` (the mapping's name) for several."""
    mappings = [settings.mapping_named(t) for t in tables] if tables else list(settings.tables)
    if not mappings:
        raise ConfigError("no tables are mapped: nothing to backfill")
    seen = {m.name for m in mappings}
    if len(seen) != len(mappings):
        raise ConfigError("a table is named twice")
    if into is not None and "{name}" not in into and len(mappings) > 1:
        raise ConfigError(
            "--into names one table, but several are backfilled: use a pattern with {name}, "
            "e.g. --into '{name}_v2'"
        )
    jobs = []
    for mapping in mappings:
        name = mapping.name if into is None else into.replace("{name}", mapping.name)
        try:
            target = mapping.model_copy(update={"name": name})
            TableMapping.model_validate(target.model_dump())  # the name rules of a mapping
        except Exception as exc:  # pydantic's ValidationError, named for the user
            raise ConfigError(
                f"--into {into!r}: {name!r} is not a valid table name: {exc}"
            ) from exc
        jobs.append(Job(mapping, target, group_for(settings, mapping, name)))
    return jobs


def parse_time(text: str) -> int:
    """--from-time: ISO 8601 (a date, or a date and time; UTC unless it says otherwise), as
    epoch milliseconds."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"--from-time {text!r} is not an ISO 8601 time (e.g. 2026-11-25T14:00:00Z)"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when > dt.datetime.now(dt.UTC):
        raise ConfigError(f"--from-time {text!r} is in the future")
    return int(when.timestamp() * 1000)


# --- yielding to the live consumer ------------------------------------------------------------


@dataclass
class LiveLag:
    """What the live group's lag was while the backfill ran (for the summary)."""

    samples: int = 0
    max_events: int = 0
    max_seconds: float = 0.0
    paused_s: float = 0.0


class LiveYield:
    """Before each batch (at most every ``live_check_s``): while the live group has members and
    is more than the configured bound behind on the table, wait. The live consumer's lag is
    what users feel; a backfill is never urgent."""

    def __init__(
        self,
        settings: Settings,
        table: str,
        stopping: threading.Event,
        lag: Callable[[], tuple[int, float] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.table = table
        self.stopping = stopping
        self.bound = settings.backfill
        self.lag = lag or self._live_lag
        self.seen = LiveLag()
        self.paused = False  # for the progress display
        self._checked = float("-inf")

    def __call__(self) -> None:
        every = self.bound.live_check_s
        if time.monotonic() - self._checked < every:
            return
        paused_at: float | None = None
        while True:
            self._checked = time.monotonic()
            behind = self._sample()
            if behind is None:
                break
            events, seconds = behind
            if events <= self.bound.live_lag_events and seconds <= self.bound.live_lag_s:
                break
            if paused_at is None:
                paused_at = time.monotonic()
                self.paused = True
                log.info(
                    "backfill pauses: the live consumer is behind",
                    table=self.table,
                    live_lag_events=events,
                    live_lag_s=round(seconds, 1),
                )
            if self.stopping.wait(every):
                break
        self.paused = False
        if paused_at is not None:
            self.seen.paused_s += time.monotonic() - paused_at
            log.info("backfill resumes", table=self.table)

    def _sample(self) -> tuple[int, float] | None:
        try:
            behind = self.lag()
        except ReplicatorError as exc:  # cannot tell: go on, the guard keeps it safe anyway
            log.warning("live lag unknown; not yielding", table=self.table, error=str(exc))
            return None
        if behind is not None:
            self.seen.samples += 1
            self.seen.max_events = max(self.seen.max_events, behind[0])
            self.seen.max_seconds = max(self.seen.max_seconds, behind[1])
        return behind

    def _live_lag(self) -> tuple[int, float] | None:
        """The live group's lag on the table, or None when no live consumer runs (then there
        is nothing to yield to, and a group that once ran would only look ever further behind)."""

        if not _group_has_members(self.settings, self.settings.kafka.group_id):
            return None
        lag = consumer_lag(self.settings).get(self.table)
        return None if lag is None else (lag.events, lag.seconds)


def _group_has_members(settings: Settings, group: str) -> bool:
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra}
    )
    try:
        (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        return bool(future.result().members)
    except Exception as exc:  # KafkaException, or the group is unknown to the broker
        log.debug("live group not described", group=group, error=str(exc))
        return False


# --- running ----------------------------------------------------------------------------------


@dataclass
class Summary:
    table: str
    target: str
    group_id: str
    resumed: bool
    events: int = 0  # records read and committed by this run
    written: int = 0  # items written (a key move writes two)
    stale: int = 0  # refused by the position guard: a newer change was already stored
    skipped: int = 0
    dead_lettered: int = 0
    refused: int = 0  # older than the no-resurrection horizon (into the live table only)
    seconds: float = 0.0
    finished: bool = False
    live: LiveLag | None = None
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Running:
    job: Job
    source: Any  # BoundedSource
    pipeline: Any  # Pipeline
    summary: Summary
    live: LiveYield | None = None
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> tuple[int, int]:
        return self.source.progress()  # type: ignore[no-any-return]


class Backfill:
    """Every job's pipeline, built up front (so a missing topic fails before anything runs),
    then run in parallel threads by ``run``."""

    def __init__(
        self,
        settings: Settings,
        jobs: list[Job],
        *,
        from_ms: int | None = None,
        restart: bool = False,
        follow: bool = False,
        rate_limit: float | None = None,
        build: Callable[..., Pipeline],
    ) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.bucket = TokenBucket(rate_limit) if rate_limit is not None else None
        kafka = settings.kafka
        if rate_limit is not None:  # one batch holds at most about a second of the budget
            kafka = kafka.model_copy(
                update={"batch_size": max(1, min(kafka.batch_size, int(rate_limit)))}
            )
        client = dynamodb_client(settings.dynamodb)
        self.running: list[Running] = []
        try:
            for job in jobs:
                did = ensure_table(client, job.target)
                log.info(
                    "backfill target", table=job.mapping.name, target=job.target.name, table_was=did
                )
                own = settings.model_copy(
                    update={
                        "tables": [job.target],
                        "kafka": kafka.model_copy(update={"group_id": job.group_id}),
                    }
                )
                source = BoundedSource(
                    own.kafka,
                    settings.topic_of(job.mapping),
                    job.group_id,
                    from_ms=from_ms,
                    restart=restart,
                    follow=follow,
                )
                summary = Summary(job.mapping.name, job.target.name, job.group_id, source.resumed)
                live = (
                    LiveYield(settings, job.mapping.name, self.stopping)
                    if job.shares_live_table
                    else None
                )
                try:
                    pipeline = build(
                        own,
                        source=source,
                        before_write=self._gate(live),
                        refuse_older_than_horizon=job.refuses_old_events,
                    )
                except BaseException:
                    source.close()
                    raise
                self.running.append(Running(job, source, pipeline, summary, live))
        except BaseException:
            self.close()
            raise

    def _gate(self, live: LiveYield | None) -> Callable[[list[Write]], None]:
        bucket, stopping = self.bucket, self.stopping

        def before_write(writes: list[Write]) -> None:
            if live is not None:
                live()
            if bucket is not None:
                wait = bucket.take(write_units(writes))
                if wait > 0:
                    stopping.wait(wait)

        return before_write

    def stop(self) -> None:
        """Finish the batches in hand, commit, and stop (SIGTERM/SIGINT): a rerun resumes."""
        self.stopping.set()
        for running in self.running:
            running.pipeline.stop()

    def close(self) -> None:
        for running in getattr(self, "running", []):
            try:
                running.pipeline.close()
            except Exception as exc:  # closing must not hide the run's own outcome
                log.warning("closing a backfill pipeline failed", error=str(exc))

    def run(
        self, on_tick: Callable[[list[Running]], None] | None = None, tick_s: float = 0.5
    ) -> list[Summary]:
        """Run every job in its own thread until each reached its end (or stop()); calls
        ``on_tick`` every ``tick_s`` for progress. Returns one summary per table."""
        threads = [
            threading.Thread(
                target=self._run_one, args=(r,), name=f"backfill-{r.job.mapping.name}", daemon=True
            )
            for r in self.running
        ]
        for thread in threads:
            thread.start()
        last_log = time.monotonic()
        every = self.settings.backfill.progress_log_s
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(tick_s / max(1, len(threads)))
            if on_tick is not None:
                on_tick(self.running)
            if time.monotonic() - last_log >= every:
                last_log = time.monotonic()
                for r in self.running:
                    done, total = r.progress()
                    log.info(
                        "backfill progress",
                        table=r.job.mapping.name,
                        target=r.job.target.name,
                        done=done,
                        total=total,
                    )
        if on_tick is not None:
            on_tick(self.running)
        return [r.summary for r in self.running]

    def _run_one(self, running: Running) -> None:
        pipeline, source, summary = running.pipeline, running.source, running.summary
        started = time.monotonic()
        try:
            pipeline.run(until=lambda _stats: source.finished)
            summary.finished = source.finished
        except Exception as exc:  # reported in the summary; the other tables go on
            log.error("backfill failed", table=summary.table, error=str(exc)[:500])
            summary.error = str(exc)
        finally:
            stats = pipeline.stats
            summary.events = stats.consumed
            summary.written = stats.applied
            summary.stale = stats.stale
            summary.skipped = stats.skipped
            summary.dead_lettered = stats.dead_lettered
            summary.refused = stats.refused
            summary.seconds = time.monotonic() - started
            summary.live = running.live.seen if running.live is not None else None
