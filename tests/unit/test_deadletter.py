"""`replicator dlq replay` without Kafka: where each parked record goes back to."""

from __future__ import annotations

from dataclasses import replace

import pytest
from factories import create_record, log_row

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.ops.dlq import Parked, replay_targets, split_by_horizon

DAY = 86_400_000

LOGS_TOPIC = "loans.dbo.integrationlogs"
PAYMENTS_TOPIC = "loans.dbo.payments"


def parked(offset: int, topic: str = LOGS_TOPIC, partition: int = 2) -> Parked:
    return Parked(
        partition=0,
        offset=offset,
        reason="lookup-miss",
        error="",
        source_topic=topic,
        source_partition=partition,
        source_offset=40 + offset,
        time_ms=1,
        key=b'{"logid":1}',
        value=b"{}",
    )


def test_each_record_goes_back_to_its_original_partition() -> None:
    # Connect chose the partition with Java's murmur2 hash of the key; librdkafka's default
    # partitioner hashes differently, so the replay must name the partition itself.
    records = [parked(1, partition=2), parked(2, PAYMENTS_TOPIC, 0), parked(3, partition=1)]
    partitions = {LOGS_TOPIC: 3, PAYMENTS_TOPIC: 3}
    assert replay_targets(records, partitions) == [
        (LOGS_TOPIC, 2),
        (PAYMENTS_TOPIC, 0),
        (LOGS_TOPIC, 1),
    ]


def test_a_partition_that_no_longer_exists_refuses_the_whole_replay() -> None:
    records = [parked(1, partition=0), parked(2, partition=5)]
    with pytest.raises(ReplicatorError, match=r"0:2: .*has no partition 5 .*it has 3") as err:
        replay_targets(records, {LOGS_TOPIC: 3})
    assert "nothing was replayed" in str(err.value)


def test_a_missing_topic_or_origin_header_refuses_the_whole_replay() -> None:
    with pytest.raises(ReplicatorError, match=r"0:1: topic loans\.dbo\.integrationlogs"):
        replay_targets([parked(1)], {})
    with pytest.raises(ReplicatorError, match=r"0:2: no dlq\.partition header"):
        replay_targets([parked(2, partition=-1)], {LOGS_TOPIC: 3})
    with pytest.raises(ReplicatorError, match=r"0:3: no dlq\.topic header"):
        replay_targets([parked(3, topic="")], {LOGS_TOPIC: 3})


def test_replay_leaves_out_records_older_than_their_tables_horizon() -> None:
    # A delete marker lives tombstone_days: past that, an older change of a deleted row
    # would bring it back, so such a record is not replayed.
    settings = Settings()
    horizon_days = settings.mapping_named("IntegrationLogs").tombstone_days
    now_ms = 1_800_000_000_000

    def aged(offset: int, age_days: float, **kwargs: object) -> Parked:
        rec = create_record(
            "dbo.integrationlogs", log_row(logid=offset), ts_ms=now_ms - int(age_days * DAY)
        )
        return replace(parked(offset), value=rec.value, key=rec.key, **kwargs)  # type: ignore[arg-type]

    old = aged(1, horizon_days + 1)
    recent = aged(2, horizon_days - 1)
    undecodable = replace(parked(3), value=b"{not json")  # parked again: nothing written
    unmapped = replace(aged(4, 400), source_topic="elsewhere.dbo.t")  # no table here
    kept, refused = split_by_horizon([old, recent, undecodable, unmapped], settings, now_ms)
    assert refused == [old]
    assert kept == [recent, undecodable, unmapped]
