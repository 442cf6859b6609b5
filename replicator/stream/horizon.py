"""The no-resurrection horizon: a deleted row stays deleted only while its delete marker lives
(the mapping's ``tombstone_days``, then DynamoDB's TTL removes it). After that the guard admits
any older event of the row, so nothing Kafka can still hand back may be older than the markers:

- at start, the dead-letter topic's retention and the source topics' compaction bound
  (``max.compaction.lag.ms + delete.retention.ms``) must not exceed any table's horizon,
  checked against the topics' real configs when they exist (``check_horizon``);
- a replay into a live table (``dlq replay``, ``backfill``) refuses events older than the
  horizon by their source commit time (``cutoff_ms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.errors import ConfigError
from replicator.stream.deadletter import connection_settings

DAY_MS = 86_400_000
# Kafka's "no bound" for max.compaction.lag.ms (Long.MAX_VALUE).
FOREVER_MS = 2**63 - 1
# Source commit times come from PostgreSQL's clock, "now" from this host's: an hour of slack.
CLOCK_MARGIN_MS = 3_600_000
# Kafka's defaults, for a config the broker did not report.
_DEFAULTS = {
    "cleanup.policy": "delete",
    "retention.ms": str(7 * DAY_MS),
    "max.compaction.lag.ms": str(FOREVER_MS),
    "delete.retention.ms": str(DAY_MS),
}


@dataclass(frozen=True)
class TopicLimits:
    """What a topic's configs let it keep, and where they were read."""

    topic: str
    cleanup_policy: str
    retention_ms: int  # -1: forever
    max_compaction_lag_ms: int  # FOREVER_MS: no bound
    delete_retention_ms: int
    source: str  # "kafka": read from the topic; "settings": what the settings would create

    @classmethod
    def from_configs(cls, topic: str, configs: dict[str, str], source: str) -> TopicLimits:
        values = {**_DEFAULTS, **configs}
        try:
            return cls(
                topic,
                values["cleanup.policy"].replace(" ", ""),
                int(values["retention.ms"]),
                int(values["max.compaction.lag.ms"]),
                int(values["delete.retention.ms"]),
                source,
            )
        except ValueError as exc:
            raise ConfigError(f"topic {topic}: a config is not a number: {exc}") from exc

    def _policies(self) -> set[str]:
        return set(self.cleanup_policy.split(","))

    def record_kept_ms(self) -> int | None:
        """How long any record can stay (the dead-letter topic); None: for good. Compaction is
        no bound here: it keeps each key's last record."""
        if "delete" in self._policies() and self.retention_ms >= 0:
            return self.retention_ms
        return None

    def deleted_row_kept_ms(self) -> int | None:
        """How long an event of a row can stay after the row's delete (a source topic); None:
        for good. Compaction drops a deleted row's events within max.compaction.lag.ms and its
        Kafka tombstone delete.retention.ms later; retention drops anything older."""
        bounds = []
        if "delete" in self._policies() and self.retention_ms >= 0:
            bounds.append(self.retention_ms)
        if "compact" in self._policies() and self.max_compaction_lag_ms < FOREVER_MS:
            bounds.append(self.max_compaction_lag_ms + self.delete_retention_ms)
        return min(bounds) if bounds else None

    def describe(self) -> str:
        where = "read from Kafka" if self.source == "kafka" else "as these settings create it"
        return (
            f"cleanup.policy={self.cleanup_policy}, retention.ms={self.retention_ms}, "
            f"max.compaction.lag.ms={self.max_compaction_lag_ms}, "
            f"delete.retention.ms={self.delete_retention_ms}; {where}"
        )


def horizon_ms(mapping: TableMapping) -> int:
    return mapping.tombstone_days * DAY_MS


def cutoff_ms(mapping: TableMapping, now_ms: int) -> int:
    """A replayed event whose source commit time is before this may outlive its row's delete
    marker: a replay into a live table refuses it."""
    return now_ms - horizon_ms(mapping) + CLOCK_MARGIN_MS


def expected_limits(settings: Settings) -> dict[str, TopicLimits]:
    """The topics' limits as the settings create them: the dead-letter topic by the
    replicator, the source topics by Connect (topic.creation in the connector config)."""
    kafka, connector = settings.kafka, settings.connector
    found = {
        kafka.dead_letter_topic: TopicLimits(
            kafka.dead_letter_topic,
            "delete",
            kafka.dead_letter_retention_ms,
            FOREVER_MS,
            DAY_MS,
            "settings",
        )
    }
    for mapping in settings.tables:
        topic = settings.topic_of(mapping)
        found[topic] = TopicLimits(
            topic,
            "compact",
            -1,
            connector.max_compaction_lag_ms,
            connector.delete_retention_ms,
            "settings",
        )
    return found


def read_limits(settings: Settings) -> dict[str, TopicLimits]:
    """The limits of the topics that exist, from their configs in Kafka (DescribeConfigs);
    the settings' for those not created yet."""

    kafka = settings.kafka
    found = expected_limits(settings)
    admin = AdminClient(
        {"bootstrap.servers": kafka.bootstrap_servers, **connection_settings(kafka.extra)}
    )
    try:
        existing = admin.list_topics(timeout=10).topics
        resources = [ConfigResource("topic", t) for t in found if t in existing]
        if resources:
            for resource, future in admin.describe_configs(resources).items():
                configs = future.result(timeout=15)
                values = {k: e.value for k, e in configs.items() if e.value is not None}
                found[resource.name] = TopicLimits.from_configs(resource.name, values, "kafka")
    except KafkaException as exc:
        raise ConfigError(
            f"cannot read the configs of {', '.join(sorted(found))} to check the "
            "no-resurrection horizon (the replicator's Kafka user needs DescribeConfigs on "
            f"them): {exc}"
        ) from exc
    return found


def _days(ms: int) -> str:
    return f"{ms / DAY_MS:g} days"


def check_horizon(settings: Settings, limits: dict[str, TopicLimits]) -> None:
    """Refuse a table whose delete markers expire before Kafka lets go of what could revive
    its deleted rows: a record of the dead-letter topic, an event of the table's topic."""
    kafka = settings.kafka
    dead_letters = limits[kafka.dead_letter_topic]
    parked_ms = dead_letters.record_kept_ms()
    problems = []
    for mapping in settings.tables:
        horizon = horizon_ms(mapping)
        markers = f"its delete markers live {_days(horizon)} (tables[].tombstone_days)"
        fix = f"raise {mapping.name}'s tombstone_days"
        if parked_ms is None:
            problems.append(
                f"{mapping.name}: the dead-letter topic {dead_letters.topic} keeps records "
                f"forever ({dead_letters.describe()}), and {markers}: give the topic a "
                "retention.ms (kafka.dead_letter_retention_ms when the replicator creates it)"
            )
        elif parked_ms > horizon:
            problems.append(
                f"{mapping.name}: the dead-letter topic {dead_letters.topic} keeps records "
                f"{_days(parked_ms)} ({dead_letters.describe()}), longer than {markers}: "
                f"{fix} to at least {math.ceil(parked_ms / DAY_MS)}, or lower the topic's "
                "retention.ms (kafka.dead_letter_retention_ms when the replicator creates it)"
            )
        topic = limits[settings.topic_of(mapping)]
        kept_ms = topic.deleted_row_kept_ms()
        if kept_ms is None:
            problems.append(
                f"{mapping.name}: topic {topic.topic} can keep an event of a deleted row "
                f"forever ({topic.describe()}), and {markers}: set the topic's "
                "max.compaction.lag.ms (connector.max_compaction_lag_ms for topics Connect "
                "creates; kafka-configs.sh --alter --add-config for one that exists)"
            )
        elif kept_ms > horizon:
            problems.append(
                f"{mapping.name}: topic {topic.topic} can keep an event of a deleted row "
                f"{_days(kept_ms)} (max.compaction.lag.ms + delete.retention.ms: "
                f"{topic.describe()}), longer than {markers}: {fix} to at least "
                f"{math.ceil(kept_ms / DAY_MS)}, or lower the topic's max.compaction.lag.ms "
                "and delete.retention.ms (connector.max_compaction_lag_ms and "
                "connector.delete_retention_ms for topics Connect creates)"
            )
    if problems:
        raise ConfigError(
            "the no-resurrection horizon is too short: past it a replayed or redelivered older "
            "event would bring a deleted row back.\n  " + "\n  ".join(problems)
        )
