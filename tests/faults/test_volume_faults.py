"""Scenario 10: volume and TOAST.

10a: one transaction of 100k rows (one INSERT ... SELECT) while the workload goes on: every
row arrives, and the consumer's memory stays bounded (it takes ``kafka.batch_size`` records
per poll whatever the transaction's size). 10b: a third table under REPLICA IDENTITY DEFAULT,
with no key column that moves, whose rows carry more than 8 KB of text (stored out of line):
an UPDATE of its small columns reaches the consumer with Debezium's unavailable-value
placeholder in place of the text; the stored item keeps the text it had (or takes it from an
older change of the batch), and the placeholder is never written, also across consumer
SIGKILLs. Both measure the consumer's peak resident memory (VmHWM)."""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
from typing import Any

import psycopg
import pytest

from replicator.cli._common import connector_payload
from replicator.ops.connector import ConnectClient
from tests.faults.checker import Verdict
from tests.faults.harness import SCALE, FaultRun, topic_records
from tests.faults.model import differences, ts
from tests.integration.second_source import SecondSource

pytestmark = [pytest.mark.stack, pytest.mark.faults]
BIG_TRANSACTION = max(100_000, int(100_000 * SCALE))
# The consumer's peak resident memory must stay under this whatever the transaction's size:
# a batch is 500 records and librdkafka's prefetch queue is bounded; a consumer that held a
# 100k-row transaction's decoded events (~1.5 KB each before Python's overhead) would not fit.
MEMORY_BOUND_MB = 400
PLACEHOLDER = "__debezium_unavailable_value"


def _transact(data: dict[str, Any]) -> None:
    # 100k independent inserts: the transact lane applies them 3-4x faster into the local
    # endpoint than single puts, every row still guarded by its own position.
    data["dynamodb"]["guarded_lane"] = "transact"


def test_transaction_of_100k_rows(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    run = FaultRun(
        f"10a transaction of {BIG_TRANSACTION // 1000}k rows",
        healthy,
        settings,
        dynamodb,
        consumer_factory,
        seed=1010,
        change=_transact,
    )
    try:
        run.start_workload(rate_tx_s=20, burst_every=40, burst_rows=20)
        run.wait_events(200)
        before_mb = run.memory.now_kb() / 1024
        with psycopg.connect(run.dsn, autocommit=True) as conn:
            started = time.monotonic()
            run.workload.bulk_logs(BIG_TRANSACTION, conn)  # its own connection: one statement
            took = time.monotonic() - started
        run.fault_over()
        outcome = run.finish(quiet_timeout_s=900)
    finally:
        run.close()
    peak_mb = run.memory.peak_kb / 1024
    print(
        f"FAULTS 10a {BIG_TRANSACTION} rows committed in {took:.1f} s; consumer RSS before "
        f"{before_mb:.0f} MB, peak {peak_mb:.0f} MB (bound {MEMORY_BOUND_MB} MB)"
    )
    outcome.assert_clean()
    assert 0 < peak_mb <= MEMORY_BOUND_MB, f"consumer peak RSS {peak_mb:.0f} MB"


# --- 10b ------------------------------------------------------------------------------------

NOTES_TABLE = "dbo.faultnotes"


def _notes_mapping(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": NOTES_TABLE,
        "primary_key": ["noteid"],
        "partition_key": {"attribute": "NoteId", "type": "N", "template": "{noteid}"},
        "columns": [
            {"name": "noteid", "attribute": "NoteId", "type": "bigint"},
            {"name": "author", "attribute": "Author", "type": "text"},
            {"name": "body", "attribute": "Body", "type": "text"},
            {"name": "score", "attribute": "Score", "type": "decimal", "scale": 2},
            {"name": "createdat", "attribute": "CreatedAt", "type": "timestamp"},
        ],
    }


def _note_item(row: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """The item a row must be (written out here, not through the sink's mapping)."""
    noteid, author, body, score, createdat = row
    item: dict[str, dict[str, Any]] = {"NoteId": {"N": str(noteid)}}
    if author is not None:
        item["Author"] = {"S": author}
    if body is not None:
        item["Body"] = {"S": body}
    if score is not None:
        item["Score"] = {"N": str(score)}
    item["CreatedAt"] = {"S": ts(createdat)}
    return item


class NotesWriter:
    """Notes of > 8 KB text, then updates of their small columns (score, author), now and
    then a new text, from one thread; counts its changes."""

    def __init__(self, dsn: str, notes: int, seed: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.rng = random.Random(seed)
        self.ids: list[int] = []
        self.changes = 0
        self.small_updates = 0
        self.stop_event = threading.Event()
        for _ in range(notes):
            self._insert()
        self.thread = threading.Thread(target=self._loop, name="notes-writer", daemon=True)

    def _text(self) -> str:
        return secrets.token_hex(self.rng.randint(4_500, 8_000))  # 9-16 KB, barely compressible

    def _insert(self) -> None:
        row = self.conn.execute(
            f"INSERT INTO {NOTES_TABLE} (author, body, score) VALUES (%s, %s, %s) RETURNING noteid",
            [f"author-{self.rng.randint(1, 99)}", self._text(), self.rng.randint(0, 99_999) / 100],
        ).fetchone()
        assert row is not None
        self.ids.append(row[0])
        self.changes += 1

    def _loop(self) -> None:
        while not self.stop_event.wait(0.04):
            noteid = self.rng.choice(self.ids)
            roll = self.rng.random()
            with self.conn.transaction():
                if roll < 0.85:  # small columns only: the text arrives as the placeholder
                    self.conn.execute(
                        f"UPDATE {NOTES_TABLE} SET score = %s, author = %s WHERE noteid = %s",
                        [
                            self.rng.randint(0, 99_999) / 100,
                            self.rng.choice([None, f"author-{self.rng.randint(1, 99)}"]),
                            noteid,
                        ],
                    )
                    self.small_updates += 1
                else:  # a new text, then at once a small update of the same row
                    self.conn.execute(
                        f"UPDATE {NOTES_TABLE} SET body = %s WHERE noteid = %s",
                        [self._text(), noteid],
                    )
                    self.conn.execute(
                        f"UPDATE {NOTES_TABLE} SET score = score + 1 WHERE noteid = %s", [noteid]
                    )
                    self.changes += 1
                    self.small_updates += 1
            self.changes += 1

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(30)

    def close(self) -> None:
        self.stop()
        self.conn.close()


class PlaceholderWatch:
    """Reads every note item every ~200 ms while the scenario runs: counts reads of an item
    holding the placeholder anywhere, and items whose text is gone."""

    def __init__(self, client: Any, table: str, ids: list[int]) -> None:
        self.client = client
        self.table = table
        self.ids = ids
        self.placeholders = 0
        self.texts_lost = 0
        self.reads = 0
        self.details: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="placeholder-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(Exception):  # the endpoint may be slow: go on
                self._read()

    def _read(self) -> None:
        for start in range(0, len(self.ids), 100):
            keys = [{"NoteId": {"N": str(i)}} for i in self.ids[start : start + 100]]
            answer = self.client.batch_get_item(
                RequestItems={self.table: {"Keys": keys, "ConsistentRead": True}}
            )
            for item in answer.get("Responses", {}).get(self.table, []):
                self.reads += 1
                if PLACEHOLDER in str(item):
                    self.placeholders += 1
                    self.details.append(f"placeholder in note {item['NoteId']['N']}")
                if "Body" not in item:
                    self.texts_lost += 1
                    self.details.append(f"note {item['NoteId']['N']} without its text")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _placeholders_in_topic(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, records holding the placeholder) in the notes topic: the premise, that the
    source really sent the text as the placeholder."""
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "fault-probe", "enable.auto.commit": False}
    )
    try:
        partitions = reader.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        records = marked = 0
        deadline = time.monotonic() + 120
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(ends) and time.monotonic() < deadline:
            message = reader.poll(1.0)
            if message is None or message.error():
                continue
            records += 1
            marked += PLACEHOLDER.encode() in (message.value() or b"")
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return records, marked
    finally:
        reader.close()


def _check_notes(client: Any, table: str, conn: psycopg.Connection[Any]) -> Verdict:
    verdict = Verdict()
    rows = conn.execute(
        f"SELECT noteid, author, body, score, createdat FROM {NOTES_TABLE}"
    ).fetchall()
    stored: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            stored[item["NoteId"]["N"]] = item
    for row in rows:
        verdict.checked += 1
        want = _note_item(row)
        got = stored.get(want["NoteId"]["N"])
        if got is None:
            verdict.lost += 1
            verdict.details.append(f"lost note {row[0]}")
        elif diffs := differences(want, got):  # numbers as exact decimals
            verdict.divergent += 1
            shown = {k: (want.get(k), got.get(k)) for k in diffs}
            verdict.details.append(f"divergent note {row[0]}: {shown}")
    return verdict


def test_toast_updates_under_replica_identity_default(
    healthy: Any, settings: Any, dynamodb: Any, consumer_factory: Any
) -> None:
    source = SecondSource(settings, "toast")
    source.create()
    notes_name = f"FaultNotes_{source.tag}"
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        # What a DBA does for a third table: create it, leave its identity DEFAULT (no key
        # column moves), let the replication role read it and publish it.
        conn.execute(
            f"CREATE TABLE {NOTES_TABLE} (noteid bigserial PRIMARY KEY, author varchar(100), "
            "body text, score numeric(7,2), createdat timestamp NOT NULL DEFAULT now())"
        )
        conn.execute(f"ALTER TABLE {NOTES_TABLE} REPLICA IDENTITY DEFAULT")
        conn.execute(f"GRANT SELECT ON {NOTES_TABLE} TO {settings.postgres.replication_user}")
        conn.execute(
            f"ALTER PUBLICATION {source.settings.connector.publication_name} "
            f"ADD TABLE {NOTES_TABLE}"
        )

    def add_notes(data: dict[str, Any]) -> None:
        data["tables"].append(_notes_mapping(notes_name))

    run: FaultRun | None = None
    writer: NotesWriter | None = None
    watch: PlaceholderWatch | None = None
    kills = max(3, int(3 * SCALE))
    try:
        run = FaultRun(
            "10b TOAST updates, REPLICA IDENTITY DEFAULT",
            healthy,
            settings,
            dynamodb,
            consumer_factory,
            seed=1011,
            change=add_notes,
            source=source,
        )
        run.topics.append(run.own.topic_of(run.own.tables[2]))
        writer = NotesWriter(source.dsn, notes=max(60, int(60 * SCALE)), seed=12)
        for _ in range(20):  # rows of the design's tables too: both topics exist at once
            run.workload.transaction(run.workload.mixed)
        client = ConnectClient(run.own)  # the source's connector, its include list with notes
        client.apply(connector_payload(run.own))
        client.wait_running(timeout_s=180)
        deadline = time.monotonic() + 120
        while not all(topic_records(source, t) for t in run.topics):
            assert time.monotonic() < deadline, f"topics {run.topics} never filled"
            time.sleep(0.5)
        run.consumer.start()
        watch = PlaceholderWatch(dynamodb, notes_name, writer.ids)
        run.start_workload(rate_tx_s=10)
        writer.start()
        rng = random.Random(7)
        for _ in range(kills):  # restarts: a batch that begins with a placeholder update
            time.sleep(rng.uniform(6, 10))
            run.consumer.kill()
            time.sleep(rng.uniform(0.5, 1.5))
            run.consumer.start()
        time.sleep(10 * SCALE)
        writer.stop()
        run.workload.counts.changes += writer.changes
        run.fault_over()
        outcome = run.finish(
            quiet_timeout_s=300, extra=lambda conn: _check_notes(dynamodb, notes_name, conn)
        )
        watch.stop()
        records, marked = _placeholders_in_topic(run.own.kafka.bootstrap_servers, run.topics[2])
    finally:
        if watch is not None:
            watch.stop()
        if writer is not None:
            writer.close()
        if run is not None:
            run.close()
            for table in run.own.tables:
                with contextlib.suppress(Exception):
                    dynamodb.delete_table(TableName=table.name)
        source.drop()
    peak_mb = run.memory.peak_kb / 1024
    print(
        f"FAULTS 10b {len(writer.ids)} notes of 9-16 KB text, {writer.small_updates} updates "
        f"of small columns, {kills} consumer kills; {watch.reads} note reads, placeholder "
        f"seen {watch.placeholders}, text missing {watch.texts_lost}; consumer peak RSS "
        f"{peak_mb:.0f} MB; {marked} of {records} records of the notes topic held the placeholder"
    )
    outcome.assert_clean()
    assert marked >= writer.small_updates // 2, "the source did not send the placeholder"
    assert watch.reads > 0, "the watch never read a note"
    assert watch.placeholders == 0 and watch.texts_lost == 0, watch.details[:10]
    assert 0 < peak_mb <= MEMORY_BOUND_MB, f"consumer peak RSS {peak_mb:.0f} MB"
    source.assert_no_slot()
