"""The Kafka source: one consumer group over the mapped tables' topics, read in batches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from replicator.config import KafkaSettings
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Origin, Position
from replicator.errors import DecodeError, ReplicatorError
from replicator.stream.checkpoint import Checkpoint

log = structlog.get_logger("replicator.stream.source")


class SourceError(ReplicatorError):
    """A topic to replay is missing, or Kafka did not answer."""


def _config(
    kafka: KafkaSettings, group_id: str | None, client_id: str, starts_at: str = "earliest"
) -> dict[str, Any]:
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group_id or kafka.group_id,
        "client.id": client_id,
        # Offsets move only after the sink acknowledged (see checkpoint.py).
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": starts_at,
    }


class KafkaSource:
    rejoins = 0  # consumers made anew because they stayed out of the group

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        group_id: str | None = None,
        client_id: str = "replicator",
    ) -> None:
        self.settings = kafka
        self.topics = topics
        self.group_id = group_id
        self.client_id = client_id
        if kafka.new_group_starts_at == "latest":
            log.warning(
                "a group with no committed offsets starts at the topics' end: the changes they "
                "hold are not applied (kafka.new_group_starts_at=latest)",
                group=group_id or kafka.group_id,
            )
        self._subscribe()

    def _subscribe(self) -> None:
        self.consumer = Consumer(
            {
                **_config(
                    self.settings, self.group_id, self.client_id, self.settings.new_group_starts_at
                ),
                "partition.assignment.strategy": "cooperative-sticky",
                # A table's topic appears with its first change: notice it within seconds.
                "topic.metadata.refresh.interval.ms": 5000,
                **self.settings.extra,
            }
        )
        self.assigned: set[tuple[str, int]] = set()
        self.checkpoint = Checkpoint()
        # The group has given this member its assignment (perhaps empty: more members than
        # partitions); false again when the assignment is lost.
        self.joined = False
        self.out_since = time.monotonic()  # out of the group since (meaningful while not joined)
        self.consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.joined = True
        log.info("partitions assigned", partitions=sorted(self.assigned))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.joined = False
        self.out_since = time.monotonic()
        self._on_revoke(consumer, partitions)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assigned -= revoked
        self.checkpoint.forget(revoked)
        log.info("partitions revoked", partitions=[(p.topic, p.partition) for p in partitions])

    def _rejoin_if_stuck(self) -> None:
        """Make the consumer anew when it has stayed out of its group past rejoin_timeout_s.
        Seen when the broker was fenced after a pause and its group coordinator reloaded: the
        member's JoinGroup, in flight then, was never answered, and librdkafka waits
        max.poll.interval.ms for it. Safe: out of the group, it holds no partition, and
        nothing is committed that was not written."""
        if self.joined:
            return
        out_s = time.monotonic() - self.out_since
        if out_s < self.settings.rejoin_timeout_s:
            return
        log.error(
            "the Kafka consumer has been out of its group too long; closing it and joining "
            "again (its committed offsets are where it resumes)",
            out_s=round(out_s, 1),
            group=self.group_id or self.settings.group_id,
        )
        self.rejoins += 1
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("the consumer did not close cleanly", error=str(exc))
        self._subscribe()

    def poll(self) -> list[Message]:
        """Up to batch_size records: waits up to poll_timeout_s for the first one, then takes
        only what is already fetched, so a quiet stream is applied at once instead of waiting
        for a full batch. Transport errors are logged (librdkafka retries them)."""
        self._rejoin_if_stuck()
        first = self.consumer.poll(self.settings.poll_timeout_s)
        if self.checkpoint.pending:
            self.checkpoint.retry(self.consumer, self.assigned)
        if first is None:
            return []
        messages = [first]
        if self.settings.batch_size > 1:
            messages += self.consumer.consume(self.settings.batch_size - 1, 0)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                # Normal until a table's first change: Connect creates its topic then.
                log.debug("topic not there yet", error=str(error))
            elif error.code() == KafkaError._PARTITION_EOF:
                self._at_end(message.topic() or "", message.partition() or 0)
            else:
                log.warning("kafka error", error=str(error))
        return good

    def commit(
        self, messages: list[Message], metadata: dict[tuple[str, int], str] | None = None
    ) -> bool:
        """Commit what a batch applied (stream.checkpoint); False when the group refused."""
        return self.checkpoint.commit(self.consumer, messages, metadata)

    def _at_end(self, topic: str, partition: int) -> None:
        """Reached the partition's end (only reported when enable.partition.eof is set)."""

    def close(self) -> None:
        self.consumer.close()  # leaves the group at once, so partitions move without waiting


@dataclass(frozen=True)
class Span:
    """One partition's share of a bounded replay, in offsets."""

    topic: str
    partition: int
    origin: int  # where the replay begins: the beginning, or the first record at --from-time
    start: int  # where this run begins: the group's committed offset when resuming
    end: int  # the partition's end when this run started: it stops there (unless follow)
    metadata: str | None = None  # what the group's committed offset carries (resuming only)


# librdkafka's prefetch for a replay, in KB (its default, 65,536, is most of a backfill's
# resident memory: 195 MiB peak against 125 MiB with this, at the same rate; bench/RESULTS.md).
# A replay writes and commits a batch before it takes the next, so a few seconds of records
# queued ahead are enough. kafka.extra can set it otherwise.
REPLAY_PREFETCH_KB = 16_384


def bounded_config(kafka: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    """The replay consumer's librdkafka settings."""
    return {
        **_config(kafka, group_id, client_id),
        # EOF events tell a partition is read to its end even when its last offsets hold no
        # record (transaction markers, compaction).
        "enable.partition.eof": True,
        "queued.max.messages.kbytes": REPLAY_PREFETCH_KB,
        **kafka.extra,
    }


class BoundedSource(KafkaSource):
    """One topic read by assignment, for a replay (`replicator backfill`).

    The group is the replay's own and only holds committed offsets: assignment means no group
    membership and no rebalances, so another member of the group cannot take partitions away
    mid-replay. A run starts where the group committed (a killed replay resumes) unless told to
    start over, and stops at the ends captured when it started, so it finishes although new
    changes keep arriving; with ``follow`` it goes on reading live.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        *,
        from_ms: int | None = None,
        restart: bool = False,
        follow: bool = False,
        client_id: str = "replicator-backfill",
        timeout_s: float = 10.0,
    ) -> None:
        self.settings = kafka
        self.follow = follow
        self.checkpoint = Checkpoint()
        self.consumer = Consumer(bounded_config(kafka, group_id, client_id))
        try:
            self.spans, self.resumed = self._plan(topic, from_ms, restart, timeout_s)
        except KafkaException as exc:
            self.consumer.close()
            raise SourceError(
                f"kafka at {kafka.bootstrap_servers} did not answer for {topic}: {exc.args[0]}"
            ) from exc
        except SourceError:
            self.consumer.close()
            raise
        work = [s for s in self.spans if follow or s.start < s.end]
        self._ends = {(s.topic, s.partition): s.end for s in self.spans}
        self.read_to = {(s.topic, s.partition): s.start for s in self.spans}
        self.remaining = {(s.topic, s.partition) for s in work}
        self.assigned = {(s.topic, s.partition) for s in work}
        self.joined = True
        self.consumer.assign([TopicPartition(s.topic, s.partition, s.start) for s in work])

    def _plan(
        self, topic: str, from_ms: int | None, restart: bool, timeout_s: float
    ) -> tuple[list[Span], bool]:
        metadata = self.consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise SourceError(
                    f"topic {topic} does not exist: the connector has not captured a change of "
                    "this table yet (is the connector running, with the table in its include list?)"
                )
            raise KafkaException(metadata.error)
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        found = self.consumer.committed(partitions, timeout=timeout_s)
        committed = {tp.partition: tp.offset for tp in found}
        metadata = {tp.partition: tp.metadata for tp in found}
        at_time: dict[int, int] = {}
        if from_ms is not None:
            asked = [TopicPartition(topic, tp.partition, from_ms) for tp in partitions]
            found = self.consumer.offsets_for_times(asked, timeout=timeout_s)
            at_time = {tp.partition: tp.offset for tp in found}
        spans = []
        resumed = False
        for tp in partitions:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=timeout_s)
            origin = low
            if from_ms is not None:
                offset = at_time.get(tp.partition, -1)
                origin = offset if offset >= 0 else high  # nothing that recent: nothing to do
            origin = max(origin, low)
            start = origin
            done = committed.get(tp.partition, -1)
            carried = None
            if done >= 0 and not restart:
                start, resumed = max(done, low), True  # compaction may have removed older ones
                carried = metadata.get(tp.partition)
            spans.append(Span(topic, tp.partition, origin, start, high, carried))
        return spans, resumed

    def poll(self) -> list[Message]:
        messages = super().poll()
        kept = []
        for message in messages:
            where = (message.topic() or "", message.partition() or 0)
            offset = message.offset() or 0
            if not self.follow and offset >= self._ends[where]:
                self._at_end(*where)  # past this run's end: left for a later run
                continue
            kept.append(message)
            self.read_to[where] = offset + 1
            if not self.follow and offset + 1 >= self._ends[where]:
                self._at_end(*where)
        return kept

    def _at_end(self, topic: str, partition: int) -> None:
        if self.follow or (topic, partition) not in self.remaining:
            return
        self.remaining.discard((topic, partition))
        self.consumer.pause([TopicPartition(topic, partition)])

    @property
    def finished(self) -> bool:
        return not self.follow and not self.remaining

    def progress(self) -> tuple[int, int]:
        """Records read (and, once the batch in hand is committed, applied) and the total, from
        the replay's origin to the ends captured at start."""
        total = sum(max(0, s.end - s.origin) for s in self.spans)
        done = sum(max(0, self.read_to[(s.topic, s.partition)] - s.origin) for s in self.spans)
        return done, total


def newest_position(
    kafka: KafkaSettings, topic: str, tail: int = 20, timeout_s: float = 10.0
) -> Position | None:
    """The newest source position among the last ``tail`` records of each partition of
    ``topic`` (None: no change there, or no such topic). Debezium streams in commit order, so
    every change committed later ranks above it, whichever partition it lands in."""
    consumer = Consumer(
        {**_config(kafka, "replicator-position-probe", "replicator-position"), **kafka.extra}
    )
    newest: Position | None = None
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            start = max(low, high - tail)
            if start >= high:
                continue
            consumer.assign([TopicPartition(topic, partition, start)])
            seen = start
            deadline = time.monotonic() + timeout_s
            while seen < high and time.monotonic() < deadline:
                for message in consumer.consume(tail, 0.5):
                    if message.error():
                        continue
                    seen = max(seen, (message.offset() or 0) + 1)
                    origin = Origin(topic, partition, message.offset() or 0)
                    try:
                        event = decode(message.key(), message.value(), origin)
                    except DecodeError:
                        continue
                    if isinstance(event, ChangeEvent) and (
                        newest is None or event.position > newest
                    ):
                        newest = event.position
    except KafkaException as exc:
        raise SourceError(f"cannot read the end of {topic}: {exc}") from exc
    finally:
        consumer.close()
    return newest
