"""The batch lane and the hand-over against the local stack: `backfill --into` new tables loads
them with BatchWriteItem and verify finds them equal to PostgreSQL; `backfill --handoff` into
the live consumer's tables lets `run` go on from where the load ended; the batch lane is
refused where it is not safe, with a clear message. Each load test has a source of its own
(database, connector, topics), so the replay covers exactly its history and verify compares
whole tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.ops.tables import ensure_table
from tests.integration.helpers import cli, wait_for
from tests.integration.second_source import SecondSource
from tests.integration.test_backfill import Mine, summary

pytestmark = pytest.mark.stack


def offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on a topic, and (key -1) the topic's summed end."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 3})
    try:
        parts = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
        found = probe.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        ends = sum(probe.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts)
        return {tp.partition: tp.offset for tp in found} | {-1: ends}
    finally:
        probe.close()


def loaded_source(settings: Settings, tag: str) -> tuple[SecondSource, Mine, Any]:
    """A source of its own whose topics hold snapshot reads, then streamed updates, key moves
    and deletes of both tables."""
    source = SecondSource(settings, tag)
    source.create()
    conn = psycopg.connect(source.dsn, autocommit=True)
    mine = Mine(conn, seed=404)
    mine.write(logs=80, payments=60, key_moves=True)  # before the connector: snapshot reads
    source.start_connector()
    mine.write(logs=40, payments=30, key_moves=True)  # streamed
    return source, mine, conn


def wait_streamed(source: SecondSource, own: Settings, conn: Any) -> None:
    """Until every table's topic holds at least one record per row it ever had."""
    for mapping in own.tables:
        topic = own.topic_of(mapping)
        rows = conn.execute(f"SELECT count(*) FROM {mapping.source}").fetchone()[0]
        wait_for(lambda t=topic, n=rows: source.topic_records(t) >= n, 120, what=f"{topic}")


def test_into_new_tables_the_batch_lane_loads_and_verify_is_clean(
    settings: Settings, consumer_factory: Any, dynamodb: Any
) -> None:
    source, mine, conn = loaded_source(settings, "bln")
    suffix = uuid.uuid4().hex[:6]
    tables: list[str] = []
    try:
        consumer, own = consumer_factory("_bln", change=source.consumer_config)
        tables += [m.name for m in own.tables]
        wait_streamed(source, own, conn)
        run = cli(consumer.config, "backfill", "--into", "{name}_" + suffix, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        stderr = run.stderr.replace("\n", " ")
        targets: dict[str, TableMapping] = {}
        for mapping in own.tables:
            target = mapping.model_copy(update={"name": f"{mapping.name}_{suffix}"})
            targets[mapping.name] = target
            tables.append(target.name)
            assert f"-> {target.name}: group" in stderr and "batch lane" in stderr
            assert summary(run.stdout, mapping.name)["state"] == "done"
            assert mine.replica(dynamodb, target) == mine.expected(own.postgres.dsn(), mapping)
            assert mine.replica(dynamodb, target)  # not vacuously equal

        # verify reads the new tables as a configuration whose mappings name them.
        def named_targets(data: dict[str, Any]) -> None:
            source.consumer_config(data)
            for table in data["tables"]:
                table["name"] = targets[table["name"]].name

        checker, _ = consumer_factory("_bln", change=named_targets, keep_tables=True)
        for mapping in own.tables:
            check = cli(checker.config, "verify", "--table", mapping.source, timeout=600)
            assert check.returncode == 0, (check.stdout[-2000:], check.stderr[-2000:])
    finally:
        conn.close()
        for name in tables:
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=name)
        source.drop()
    source.assert_no_slot()


def test_handoff_lets_the_live_group_go_on_where_the_load_ended(
    settings: Settings, consumer_factory: Any, dynamodb: Any
) -> None:
    source, mine, conn = loaded_source(settings, "blh")
    tables: list[str] = []
    try:
        consumer, own = consumer_factory("_blh", change=source.consumer_config)
        tables += [m.name for m in own.tables]
        wait_streamed(source, own, conn)
        run = cli(consumer.config, "backfill", "--handoff", timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        stderr = run.stderr.replace("\n", " ")
        assert "guarded lane" in stderr and "batch lane" not in stderr  # the live tables
        assert f"handed over: the live group {own.kafka.group_id} goes on from" in stderr
        for mapping in own.tables:
            topic = own.topic_of(mapping)
            live = offsets(own.kafka.bootstrap_servers, own.kafka.group_id, topic)
            load = offsets(own.kafka.bootstrap_servers, f"{own.backfill.group_prefix}."
                           f"{mapping.name}.{mapping.name}", topic)  # fmt: skip
            assert live == load and live[-1] > 0, (live, load)
        mine.converge(dynamodb, own.postgres.dsn(), own.tables, 60)

        # The live consumer starts where the load ended and applies what came after.
        consumer.start()
        mine.write(logs=10, payments=10, key_moves=True)
        mine.converge(dynamodb, own.postgres.dsn(), own.tables, 180)

        # A live group with members cannot be handed over to: refused, nothing changed.
        again = cli(consumer.config, "backfill", "--handoff", timeout=300)
        assert again.returncode == 1, again.stderr[-2000:]
        assert "has members" in again.stderr.replace("\n", " ")
        assert "Traceback" not in again.stderr
        assert consumer.stop() == 0
    finally:
        conn.close()
        for name in tables:
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=name)
        source.drop()
    source.assert_no_slot()


def test_the_batch_lane_is_refused_where_it_is_not_safe(
    consumer_factory: Any, dynamodb: Any
) -> None:
    consumer, own = consumer_factory("_blbad")
    logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")
    busy = logs.model_copy(update={"name": f"{logs.name}_{uuid.uuid4().hex[:6]}"})
    ensure_table(dynamodb, busy)
    dynamodb.put_item(TableName=busy.name, Item={"PK": {"S": "someone"}, "SK": {"S": "else"}})
    now = ("--from-time", dt.datetime.now(dt.UTC).isoformat())
    try:
        cases = [
            (("--into", busy.name, "--lane", "batch"), "already holds items"),
            (("--lane", "batch"), "the table the live consumer writes"),
            (("--into", busy.name, "--handoff"), "--handoff hands the live consumer group"),
            (("--handoff", "--follow"), "exclude each other"),
            (("--lane", "fast"), "choose auto, batch or guarded"),
        ]
        for args, message in cases:
            run = cli(consumer.config, "backfill", "--table", logs.name, *args, *now, timeout=300)
            assert run.returncode == 1, (args, run.stdout, run.stderr)
            assert message in run.stderr.replace("\n", " "), (args, run.stderr)
            assert "Traceback" not in run.stderr
        # Without --lane: the guarded lane there, and the load goes on.
        auto = cli(consumer.config, "backfill", "--table", logs.name, "--into", busy.name, *now)
        assert auto.returncode == 0, auto.stderr[-2000:]
        assert "guarded lane" in auto.stderr.replace("\n", " ")
    finally:
        dynamodb.delete_table(TableName=busy.name)
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)
