"""The replay consumer's librdkafka settings (replicator.stream.source.bounded_config)."""

from __future__ import annotations

from replicator.config import KafkaSettings
from replicator.stream.source import REPLAY_PREFETCH_KB, bounded_config


def test_a_replay_bounds_its_prefetch_and_keeps_the_commit_protocol() -> None:
    config = bounded_config(KafkaSettings(), "replay-group", "replicator-backfill")
    assert config["queued.max.messages.kbytes"] == REPLAY_PREFETCH_KB
    assert REPLAY_PREFETCH_KB < 65_536  # below librdkafka's default, which the bound is for
    assert config["group.id"] == "replay-group"
    assert config["enable.partition.eof"] is True
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_kafka_extra_sets_the_prefetch_otherwise() -> None:
    kafka = KafkaSettings(extra={"queued.max.messages.kbytes": "4096"})
    assert bounded_config(kafka, "g", "c")["queued.max.messages.kbytes"] == "4096"
