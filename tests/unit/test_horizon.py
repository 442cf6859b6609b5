"""The no-resurrection horizon without Kafka: what a topic's configs let it keep, the start
check against the delete markers' life, and the defaults passing it."""

from __future__ import annotations

import pytest

from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.ops.connector import render
from replicator.stream.deadletter import dead_letter_topic_config
from replicator.stream.horizon import (
    DAY_MS,
    FOREVER_MS,
    TopicLimits,
    check_horizon,
    cutoff_ms,
    expected_limits,
)

LOGS_TOPIC = "loans.dbo.integrationlogs"
PAYMENTS_TOPIC = "loans.dbo.payments"
DEAD_LETTER = "replicator.dead-letter"


def limits(topic: str, **configs: str) -> TopicLimits:
    return TopicLimits.from_configs(topic, configs, source="kafka")


def kafka_like(settings: Settings, **overrides: TopicLimits) -> dict[str, TopicLimits]:
    """The limits the topics get from these settings, some replaced."""
    found = expected_limits(settings)
    found.update({name.replace("_", "."): value for name, value in overrides.items()})
    return found


def test_default_settings_bound_every_topic_within_the_markers_life() -> None:
    s = Settings()
    # Connect creates the source topics from the connector config: compaction is bounded there.
    payload = render(s, "${file:/secret}")
    assert payload["topic.creation.default.cleanup.policy"] == "compact"
    assert int(payload["topic.creation.default.max.compaction.lag.ms"]) == 7 * DAY_MS
    assert int(payload["topic.creation.default.delete.retention.ms"]) == 1 * DAY_MS
    # The replicator creates the dead-letter topic with the configured retention.
    assert dead_letter_topic_config(s.kafka)["retention.ms"] == str(30 * DAY_MS)
    check_horizon(s, expected_limits(s))  # passes
    for mapping in s.tables:
        assert mapping.tombstone_days * DAY_MS >= 30 * DAY_MS


def test_what_a_topic_keeps_follows_its_cleanup_policy() -> None:
    week, day = str(7 * DAY_MS), str(DAY_MS)
    compact = limits("t", **{"cleanup.policy": "compact", "max.compaction.lag.ms": week,
                             "delete.retention.ms": day, "retention.ms": "-1"})  # fmt: skip
    assert compact.deleted_row_kept_ms() == 8 * DAY_MS
    unbounded = limits("t", **{"cleanup.policy": "compact", "delete.retention.ms": day,
                               "max.compaction.lag.ms": str(FOREVER_MS)})  # fmt: skip
    assert unbounded.deleted_row_kept_ms() is None
    delete = limits("t", **{"cleanup.policy": "delete", "retention.ms": week})
    assert delete.deleted_row_kept_ms() == 7 * DAY_MS and delete.record_kept_ms() == 7 * DAY_MS
    forever = limits("t", **{"cleanup.policy": "delete", "retention.ms": "-1"})
    assert forever.record_kept_ms() is None
    both = limits("t", **{"cleanup.policy": "compact,delete", "retention.ms": str(3 * DAY_MS),
                          "max.compaction.lag.ms": week, "delete.retention.ms": day})  # fmt: skip
    assert both.deleted_row_kept_ms() == 3 * DAY_MS
    # A compacted dead-letter topic would keep each key's last parked record for good.
    assert compact.record_kept_ms() is None


def test_markers_shorter_than_the_dead_letter_retention_are_refused_with_names_and_values() -> None:
    s = Settings()
    short = s.model_copy(
        update={"tables": [s.tables[0].model_copy(update={"tombstone_days": 7}), s.tables[1]]}
    )
    with pytest.raises(ConfigError) as err:
        check_horizon(short, expected_limits(short))
    text = str(err.value)
    assert "IntegrationLogs" in text and "Payments" not in text
    assert "7 days" in text and "30 days" in text
    assert "tombstone_days" in text and "kafka.dead_letter_retention_ms" in text


def test_a_source_topic_without_a_compaction_bound_is_refused() -> None:
    s = Settings()
    found = expected_limits(s)
    found[PAYMENTS_TOPIC] = limits(
        PAYMENTS_TOPIC,
        **{"cleanup.policy": "compact", "max.compaction.lag.ms": str(FOREVER_MS),
           "delete.retention.ms": str(DAY_MS)},
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_horizon(s, found)
    text = str(err.value)
    assert "Payments" in text and PAYMENTS_TOPIC in text and "IntegrationLogs" not in text
    assert "max.compaction.lag.ms" in text and "forever" in text


def test_a_source_topic_that_keeps_deleted_rows_longer_than_the_markers_is_refused() -> None:
    s = Settings()
    found = expected_limits(s)
    found[LOGS_TOPIC] = limits(
        LOGS_TOPIC,
        **{"cleanup.policy": "compact", "max.compaction.lag.ms": str(60 * DAY_MS),
           "delete.retention.ms": str(DAY_MS)},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"IntegrationLogs: .*61 days.*40 days"):
        check_horizon(s, found)


def test_a_dead_letter_topic_kept_forever_is_refused() -> None:
    s = Settings()
    found = expected_limits(s)
    found[DEAD_LETTER] = limits(DEAD_LETTER, **{"cleanup.policy": "delete", "retention.ms": "-1"})
    with pytest.raises(ConfigError, match="keeps records forever"):
        check_horizon(s, found)


def test_the_cutoff_is_the_horizon_less_an_hour_for_clocks() -> None:
    mapping = Settings().tables[0]
    now = 1_800_000_000_000
    assert cutoff_ms(mapping, now) == now - mapping.tombstone_days * DAY_MS + 3_600_000
