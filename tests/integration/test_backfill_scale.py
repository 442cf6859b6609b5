"""A backfill of 100k rows into a new table (the batch lane), SIGKILLed half-way and run again,
resumes from its committed offsets (reads only what is left, still in the batch lane) and leaves
DynamoDB equal to PostgreSQL, row by row. The rows live in
a source of its own (database, connector, topics), so the shared topics stay small for the
other tests; everything is removed at the end."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from replicator.config import Settings
from tests.integration.conftest import ROOT
from tests.integration.helpers import expected_items, replica_items, wait_for
from tests.integration.second_source import SecondSource

pytestmark = pytest.mark.stack

ROWS = 100_000


def committed(bootstrap: str, group: str, topic: str) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 3})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = probe.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        probe.close()


# 100k batch-lane puts into the local endpoint: about 3 min on a busy 2-core machine.
@pytest.mark.timeout(3600)
def test_backfill_killed_half_way_resumes_and_matches_postgres(
    settings: Settings, consumer_factory: Any, dynamodb: Any, tmp_path: Any
) -> None:
    source = SecondSource(settings, "scl")
    source.create()
    target = f"IntegrationLogs_{source.tag}"
    tables = [target]
    try:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(
                "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, "
                "requestdata, responsedata, statuscode, issuccess, errormessage, "
                "processingtimems, logtimestamp, correlationid, userid) "
                "SELECT CASE WHEN g %% 3 = 0 THEN NULL ELSE g %% 500 END, 'Credit Check', "
                "(ARRAY['CreditCheckService', 'PaymentGateway', 'EmailService'])[g %% 3 + 1], "
                "'{\"n\": ' || g || '}', NULL, CASE WHEN g %% 10 = 0 THEN '503' ELSE '200' END, "
                "g %% 10 <> 0, CASE WHEN g %% 10 = 0 THEN 'upstream unavailable' END, g %% 4000, "
                "timestamp '2024-01-01' + g * interval '1 second 1 microsecond', "
                "CASE WHEN g %% 2 = 0 THEN 'corr-' || g END, 'user' || g %% 50 "
                "FROM generate_series(1, %s::int) g",
                [ROWS],
            )
            print(f"{ROWS} rows inserted in {time.monotonic() - started:.1f}s")
            _unused, own = consumer_factory("_scale", change=source.consumer_config)
            tables += [m.name for m in own.tables]
            logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")
            topic = own.topic_of(logs)
            source.start_connector()  # its initial snapshot puts every row on the topic
            wait_for(
                lambda: source.topic_records(topic) >= ROWS,
                300,
                interval_s=1.0,
                what="initial snapshot on the topic",
            )
            config = _unused.config
            group = f"{own.backfill.group_prefix}.{logs.name}.{target}"
            command = [
                sys.executable, "-m", "replicator.cli", "--config", str(config),
                "backfill", "--table", logs.source, "--into", target,
            ]  # fmt: skip
            log = tmp_path / "backfill.log"
            with log.open("ab") as out:
                first = subprocess.Popen(command, stdout=out, stderr=out, cwd=ROOT)
            try:
                wait_for(
                    lambda: committed(own.kafka.bootstrap_servers, group, topic) >= ROWS // 2,
                    1800,  # ~1.5 min on 2 cores; far longer on a busy machine
                    interval_s=0.5,
                    what="half of the rows backfilled",
                )
                first.send_signal(signal.SIGKILL)
                first.wait(10)
            finally:
                if first.poll() is None:
                    first.kill()
            at_kill = committed(own.kafka.bootstrap_servers, group, topic)
            assert ROWS // 2 <= at_kill < ROWS, at_kill
            said = " ".join(log.read_text().split())  # rich wraps long lines
            assert f"-> {target}: group" in said and "batch lane" in said

            second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=2400)
            assert second.returncode == 0, second.stderr[-3000:]
            said = " ".join(second.stderr.split())
            assert f"resuming at {at_kill}/{ROWS}, batch lane" in said  # the load's own lane
            events = int(re.search(r"done, (\d+) events", second.stdout).group(1))
            assert events == ROWS - at_kill  # only what was left was read again
            assert committed(own.kafka.bootstrap_servers, group, topic) == ROWS

            mapping = logs.model_copy(update={"name": target})
            replica, markers = replica_items(dynamodb, mapping)
            expected = expected_items(conn, mapping)
            assert len(expected) == ROWS and markers == 0
            assert replica.keys() == expected.keys()  # nothing lost, nothing extra
            assert replica == expected  # row by row
    finally:
        for name in tables:
            with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
                dynamodb.delete_table(TableName=name)
        source.drop()
    source.assert_no_slot()
