"""Every metric the Grafana dashboard and the alert rules reference is really exported: the
consumer's names by a live `replicator run` (as samples: its series start at 0 for every
mapped table), the read path's by a live read API and the schema gauges (as declared
families: their labelled series appear with the first read, fallback or mismatch, or the first
source column that is not as mapped)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from replicator.app import read_path
from replicator.config import Settings
from replicator.reads.api import ReadApi
from tests.integration.helpers import wait_for
from tests.integration.test_metrics_health import free_port, get
from tests.unit.test_dashboard import referenced_metrics

pytestmark = pytest.mark.stack

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def sample_names(exposition: str) -> set[str]:
    return set(_SAMPLE.findall(exposition))


def declared_names(exposition: str) -> set[str]:
    """Sample names the exposition's families produce, with or without samples yet."""
    names = set()
    for family, kind in _TYPE.findall(exposition):
        names |= {family + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    return names


def test_every_referenced_metric_is_exported(consumer_factory: Any, settings: Settings) -> None:
    port = free_port()

    def change(data: dict[str, Any]) -> None:
        data["metrics"]["port"] = port
        data["metrics"]["source_interval_s"] = 1.0

    consumer, own = consumer_factory("_dashboard", change)
    consumer.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200, 90, 0.2, "/readyz 200")
    # The lag gauge has series once the partitions are assigned and measured.
    status, body = wait_for(
        lambda: (r := get(port, "/metrics"))[0] == 200 and "replicator_consumer_lag{" in r[1] and r,
        60,
        0.5,
        "consumer lag series",
    )
    consumer_names = sample_names(body)

    api = ReadApi(read_path(own), "127.0.0.1", 0).start()
    try:
        status, read_body = get(api.port, "/metrics")
    finally:
        api.close()
    assert status == 200, read_body
    read_names = declared_names(read_body)

    referenced = referenced_metrics()
    reads = {n for n in referenced if n.startswith(("replicator_read_", "replicator_reads_"))}
    assert reads, "the dashboard covers the read path"
    # The schema gauges have a series per column only once a source column is not as mapped
    # (replicator.stream.schema): declared, with no sample on a source that matches.
    schema = {"replicator_unmapped_columns", "replicator_missing_columns"}
    assert schema <= referenced, "the dashboard and the alerts cover schema changes"
    assert schema <= declared_names(body), sorted(schema - declared_names(body))
    assert not schema & consumer_names, "the shared source matches its mapping"
    missing_from_consumer = sorted(referenced - reads - schema - consumer_names)
    assert not missing_from_consumer, f"not exported by the consumer: {missing_from_consumer}"
    missing_from_reads = sorted(reads - read_names)
    assert not missing_from_reads, f"not exported by the read API: {missing_from_reads}"
    # Every mapped table has its series, so `rate()` and the alerts see the first event.
    for mapping in own.tables:
        assert f'replicator_events_dead_lettered_total{{table="{mapping.name}"}} 0.0' in body
    assert consumer.stop() == 0
