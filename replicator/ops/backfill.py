"""Topic replay (`replicator backfill`): a table's compacted topic applied again into DynamoDB,
the same table or a new one, through the same pipeline as `run` with a bounded source.

Each table gets a consumer group of its own, named from the table and the target, so the same
command run again resumes from the offsets it committed; it stops at the topic's ends captured
when it started (or follows live). Writes are throttled to a number of write units per second
if asked, and, when the target is the table the live consumer writes, pause while the live
group falls behind. Beside the live consumer it is safe by the position guard: an older copy
of a row never overwrites a newer one, and, since a replay into the live table refuses events
older than the no-resurrection horizon, a deleted row never comes back.

Why one module of this size: the job plan, the live-lag pacing, the lane choice and the
hand-over all read the same per-table job and its committed offsets.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from replicator.config import Settings
from replicator.core.events import Position
from replicator.core.items import POS, SOURCE_MS, delete_marker, item_size
from replicator.core.mapping import TableMapping
from replicator.core.times import utc_moment
from replicator.errors import ConfigError, ReplicatorError
from replicator.observe.lag import consumer_lag
from replicator.ops.tables import ensure_table
from replicator.stream.batch import high_water, is_batch_lane
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.pipeline import Pipeline
from replicator.stream.sink import Write
from replicator.stream.source import BoundedSource, Span

log = structlog.get_logger("replicator.ops.backfill")

# DynamoDB sizes an item as its attribute names plus values; the position and source-time
# attributes the sink adds are about this much.
_META_BYTES = len(POS) + 36 + len(SOURCE_MS) + 8
# A delete marker is sized as if written at this time, so the estimate stays pure: only its
# TTL's digits depend on the time, and these leave no zeros to trim (the TTL at its largest).
_MARKER_NOW_S = 1_999_999_999


# --- write units (pure) ---------------------------------------------------------------------


def write_units(writes: list[Write], lane: str = "single") -> int:
    """Write units a planned batch will consume: ceil(size / 1 KB) per item written, doubled for
    the writes of a key move (one transaction; DynamoDB charges transactional writes twice),
    and for every write in the transact lane (``dynamodb.guarded_lane: transact``); the batch
    lane writes a key move as plain puts, once each. A delete marker is one unit. Estimated
    before writing, so a rate limit can wait first."""
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
        moved = per_unit[write.origins] > 1
        twice = lane == "transact" or (moved and lane != "batch")
        total += units * (2 if twice else 1)
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


# --- lanes ------------------------------------------------------------------------------------

Lane = Literal["auto", "batch", "guarded"]


def batch_lane_refusal(
    job: Job, table_was: str, table_empty: bool, spans: list[Span]
) -> str | None:
    """Why the batch lane (unconditional BatchWriteItem puts, replicator.stream.batch) may not
    write this load, or None when it may: the target is not the table the live consumer writes
    and readers read, and the load starts on a table it created or found empty, or resumes a
    load the batch lane began (its committed offsets say so; nobody else writes a backfill's
    own table). Pure: the caller looked at the table and the group's offsets."""
    if job.shares_live_table:
        return (
            f"{job.target.name} is the table the live consumer writes (and readers read, or "
            "will): only guarded writes go there"
        )
    if table_was == "created" or table_empty:
        return None
    committed = [s for s in spans if s.metadata is not None or s.start > s.origin]
    if committed and all(is_batch_lane(s.metadata) for s in committed):
        return None  # a batch-lane load of this table, resumed
    return (
        f"{job.target.name} already holds items that this load did not write with the batch "
        "lane: only guarded writes keep a newer item from being overwritten by an older one"
    )


def batch_marks(spans: list[Span]) -> dict[tuple[str, int], Position]:
    """Each partition's newest position an earlier run of the batch-lane load wrote."""
    marks = {}
    for span in spans:
        mark = high_water(span.metadata)
        if mark is not None:
            marks[(span.topic, span.partition)] = mark
    return marks


def _is_empty(client: Any, table: str) -> bool:
    try:
        page = client.scan(TableName=table, Limit=1, ConsistentRead=True)
    except (ClientError, BotoCoreError) as exc:
        raise ReplicatorError(f"DynamoDB table {table}: {exc}") from exc
    return not page.get("Items") and not page.get("LastEvaluatedKey")


# --- handing over to the live group -----------------------------------------------------------


def handoff_offsets(
    spans: list[Span],
    loaded: dict[int, int],
    live: dict[int, int],
    low: dict[int, int],
    table: str,
    group: str,
) -> dict[int, int]:
    """The offsets to commit for the live group once a load into its table has finished: per
    partition, where the load ended. Refused (ReplicatorError, nothing changed) when the live
    group is ahead of the load on a partition (it applied more than the load: moving it back
    would apply it all again, and moving only the others would not be one consistent hand-over)
    or when the live group's position lies before where the load began (the records between
    were applied by neither). ``loaded``: the load group's committed offsets; ``live``: the
    live group's (-1: none, it would start at ``low``, the partition's first offset). Pure."""
    out: dict[int, int] = {}
    ahead, gaps = [], []
    for span in spans:
        p = span.partition
        end = loaded.get(p, -1)
        if end < 0:
            end = span.end  # nothing to read there (start == end): ends where it began
        at = live.get(p, -1)
        position = at if at >= 0 else low.get(p, 0)
        if position > end:
            ahead.append(f"partition {p}: live group at {position}, load ended at {end}")
        elif position < span.origin:
            gaps.append(f"partition {p}: live group at {position}, load began at {span.origin}")
        out[p] = end
    if ahead:
        raise ReplicatorError(
            f"--handoff refused for {table}: the live consumer group {group} is ahead of the "
            f"load ({'; '.join(ahead)}), so it has already applied more than the load did. Its "
            "offsets are left as they are; nothing is lost (every write is guarded), and "
            "`replicator run` goes on from its own offsets"
        )
    if gaps:
        raise ReplicatorError(
            f"--handoff refused for {table}: the load began after the live consumer group "
            f"{group}'s position ({'; '.join(gaps)}), so the records between were applied by "
            "neither. Load from the beginning (no --from-time) to hand over; the live group's "
            "offsets are left as they are"
        )
    return out


def parse_time(text: str) -> int:
    """--from-time: ISO 8601 (a date, or a date and time; UTC unless it says otherwise), as
    epoch milliseconds."""
    try:
        when = utc_moment(text).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise ConfigError(
            f"--from-time {text!r} is not an ISO 8601 time (e.g. 2026-11-25T14:00:00Z)"
        ) from exc
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
    lane: str = "guarded"  # "batch": unconditional BatchWriteItem puts (replicator.stream.batch)
    handed_over: dict[int, int] | None = None  # the live group's new offsets, per partition
    handoff_error: str | None = None  # why --handoff left the live group's offsets alone

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
        lane: Lane = "auto",
        handoff: bool = False,
        build: Callable[..., Pipeline],
    ) -> None:
        self.settings = settings
        self.handoff = handoff
        if handoff:
            _check_handoff(settings, jobs, follow)
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
                marks = None
                try:
                    if lane != "guarded":
                        empty = (
                            did == "exists"
                            and not job.shares_live_table
                            and _is_empty(client, job.target.name)
                        )
                        refusal = batch_lane_refusal(job, did, empty, source.spans)
                        if refusal is not None and lane == "batch":
                            raise ConfigError(
                                f"--lane batch refused for {job.mapping.name}: {refusal}. The "
                                "batch lane writes without the position guard, so it only "
                                "loads a table that nobody reads and nobody else writes and "
                                "that this load created or found empty; leave --lane out "
                                "(the guarded lane writes any table safely)"
                            )
                        if refusal is None:
                            marks = batch_marks(source.spans)
                            summary.lane = "batch"
                except BaseException:
                    source.close()
                    raise
                log.info("backfill lane", table=job.mapping.name, lane=summary.lane)
                live = (
                    LiveYield(settings, job.mapping.name, self.stopping)
                    if job.shares_live_table
                    else None
                )
                try:
                    units_lane = "batch" if marks is not None else settings.dynamodb.guarded_lane
                    pipeline = build(
                        own,
                        source=source,
                        before_write=self._gate(live, units_lane),
                        refuse_older_than_horizon=job.refuses_old_events,
                        batch_lane=marks,
                    )
                except BaseException:
                    source.close()
                    raise
                self.running.append(Running(job, source, pipeline, summary, live))
        except BaseException:
            self.close()
            raise

    def _gate(self, live: LiveYield | None, lane: str) -> Callable[[list[Write]], None]:
        bucket, stopping = self.bucket, self.stopping

        def before_write(writes: list[Write]) -> None:
            if live is not None:
                live()
            if bucket is not None:
                wait = bucket.take(write_units(writes, lane))
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
            if self.handoff and summary.finished:
                summary.refused = pipeline.stats.refused
                try:
                    summary.handed_over = _hand_over_running(self.settings, running)
                except ReplicatorError as exc:  # the load itself is done: said apart
                    log.error("hand-over refused", table=summary.table, error=str(exc)[:500])
                    summary.handoff_error = str(exc)
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


# --- handing over ---------------------------------------------------------------------------


def _check_handoff(settings: Settings, jobs: list[Job], follow: bool) -> None:
    """What --handoff needs before the load starts: a load into the live consumer's own table
    that ends, and no live consumer running (a group with members cannot be handed offsets)."""
    if follow:
        raise ConfigError(
            "--handoff and --follow exclude each other: a hand-over needs the load to end"
        )
    for job in jobs:
        if not job.shares_live_table:
            raise ConfigError(
                f"--handoff hands the live consumer group ({settings.kafka.group_id}) the "
                f"offsets where a load into its own table ended, but this load writes "
                f"{job.target.name}, not {job.mapping.name}: leave out --into (or --handoff)"
            )
    if _group_has_members(settings, settings.kafka.group_id):
        raise ConfigError(
            f"--handoff: the live consumer group {settings.kafka.group_id} has members (a "
            "`replicator run` is consuming): stop it first, so that its offsets can be set when "
            "the load ends, or leave out --handoff"
        )


def _committed(settings: Settings, group: str, topic: str, partitions: list[int]) -> dict:
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra}
    )
    asked = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    (future,) = admin.list_consumer_group_offsets([asked], request_timeout=10).values()
    return {tp.partition: tp.offset for tp in future.result().topic_partitions}


def _hand_over_offsets(settings: Settings, topic: str, offsets: dict[int, int]) -> None:
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.extra}
    )
    given = ConsumerGroupTopicPartitions(
        settings.kafka.group_id, [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
    )
    (future,) = admin.alter_consumer_group_offsets([given], request_timeout=10).values()
    result = future.result()
    failed = [tp for tp in result.topic_partitions if tp.error is not None]
    if failed:
        raise ReplicatorError(
            f"--handoff: Kafka refused the live group's offsets: {failed[0].error}"
        )


def _hand_over_running(settings: Settings, running: Running) -> dict[int, int]:
    """Set the live group's committed offsets on the table's topic to where the finished load
    ended (replicator.ops.backfill.handoff_offsets says when that is refused)."""
    job, source, summary = running.job, running.source, running.summary
    group = settings.kafka.group_id
    if summary.refused:
        raise ReplicatorError(
            f"--handoff refused for {job.mapping.name}: {summary.refused} event(s) older than "
            "the no-resurrection horizon were not applied by the load, and the live group "
            "would apply them: its offsets are left as they are"
        )
    if _group_has_members(settings, group):
        raise ReplicatorError(
            f"--handoff refused for {job.mapping.name}: the live consumer group {group} got "
            "members while the load ran; its offsets are left as they are (the guard makes "
            "its re-reading harmless)"
        )
    topic = settings.topic_of(job.mapping)
    partitions = [s.partition for s in source.spans]
    try:
        loaded = _committed(settings, job.group_id, topic, partitions)
        live = _committed(settings, group, topic, partitions)
        low = {
            p: source.consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[0]
            for p in partitions
        }
        offsets = handoff_offsets(source.spans, loaded, live, low, job.mapping.name, group)
        _hand_over_offsets(settings, topic, offsets)
    except KafkaException as exc:
        raise ReplicatorError(f"--handoff: Kafka did not answer: {exc.args[0]}") from exc
    log.info(
        "handed over to the live group",
        table=job.mapping.name,
        group=group,
        **{f"p{p}": o for p, o in offsets.items()},
    )
    return offsets
