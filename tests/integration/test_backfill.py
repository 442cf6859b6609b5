"""`replicator backfill`: topic replay through the consumer's pipeline, both tables in parallel,
into new tables or beside the live consumer into its own, resumable, rate-limited, with clear
errors. The shared topics hold other tests' rows too: comparisons are limited to this test's
rows (its own user id for logs, its own loans for payments), and replays start at the test's
own start (--from-time), so their cost does not grow with the topics' history."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from replicator.config import Settings, load_settings
from replicator.core.mapping import TableMapping, to_item
from replicator.ops.workload import Workload
from replicator.stream.lookup import Lookups
from replicator.stream.rows import source_rows
from tests.integration.helpers import cli, key_text, normalized, replica_items, wait_for
from tests.integration.second_source import SecondSource

pytestmark = pytest.mark.stack


class Mine:
    """This test's rows: logs with its own user id, payments of its own loans."""

    def __init__(self, pg: psycopg.Connection[Any], seed: int, like: Mine | None = None) -> None:
        """New rows of its own, or (``like``) more of another's, on another connection."""
        self.pg = pg
        self.workload = Workload(pg, seed=seed)
        if like is None:
            self.user = f"bf-{uuid.uuid4().hex[:10]}"
            self.workload.ensure_loans(4)
        else:
            self.user = like.user
            self.workload.loans = list(like.loans)
        self.loans = list(self.workload.loans)

    def write(self, logs: int, payments: int, key_moves: bool = True) -> None:
        """Inserts, then updates, key moves and deletes of some of them."""
        for i in range(logs):
            self.pg.execute(
                "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, "
                "requestdata, statuscode, issuccess, logtimestamp, correlationid, userid) "
                "VALUES (%s, 'Credit Check', 'CreditCheckService', %s, '200', %s, "
                "'2024-03-01'::timestamp + %s * interval '1 minute', %s, %s)",
                [i % 7 or None, f'{{"n": {i}}}', i % 5 != 0, i, f"corr-{i}", self.user],
            )
        for _ in range(payments):
            self.workload.insert_payment()
        self.change(key_moves)

    def change(self, key_moves: bool = True) -> None:
        logs = "SELECT logid FROM dbo.integrationlogs WHERE userid = %s ORDER BY random() LIMIT 1"
        pays = "SELECT paymentid FROM dbo.payments WHERE loanid = ANY(%s) ORDER BY random() LIMIT 1"
        for _ in range(5):
            self.pg.execute(
                f"UPDATE dbo.integrationlogs SET statuscode = '500' WHERE logid = ({logs})",
                [self.user],
            )
            if key_moves:
                self.pg.execute(
                    "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval "
                    f"'1 day' WHERE logid = ({logs})",
                    [self.user],
                )
            self.pg.execute(f"DELETE FROM dbo.integrationlogs WHERE logid = ({logs})", [self.user])
            self.pg.execute(
                "UPDATE dbo.payments SET paymentstatus = 'Reversed'"
                + (", paymentdate = paymentdate + 1" if key_moves else "")
                + f" WHERE paymentid = ({pays})",
                [self.loans],
            )
            self.pg.execute(f"DELETE FROM dbo.payments WHERE paymentid = ({pays})", [self.loans])

    def _filter(self, mapping: TableMapping) -> tuple[str, Any, str, set[str]]:
        if mapping.source == "dbo.payments":
            return "loanid = ANY(%s)", self.loans, "LoanId", {str(x) for x in self.loans}
        return "userid = %s", self.user, "UserId", {self.user}

    def expected(self, dsn: str, mapping: TableMapping) -> dict[str, Any]:
        where, param, _attr, _values = self._filter(mapping)
        with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            records = cur.execute(f"SELECT * FROM {mapping.source} WHERE {where}", [param])
            records = records.fetchall()
        lookups = Lookups(dsn)
        try:
            rows = source_rows(mapping, records, lookups)
        finally:
            lookups.close()
        items = {}
        for row in rows:
            item, _ = to_item(mapping, row)
            items[key_text(mapping, item)] = normalized(item)
        return items

    def replica(self, dynamodb: Any, mapping: TableMapping) -> dict[str, Any]:
        _where, _param, attr, values = self._filter(mapping)
        items, _markers = replica_items(dynamodb, mapping)
        return {k: v for k, v in items.items() if str(v.get(attr, ("", None))[1]) in values}

    def differences(self, dynamodb: Any, dsn: str, tables: list[TableMapping]) -> dict[str, Any]:
        """Per table, what differs (empty when equal): for a readable failure."""
        found = {}
        for mapping in tables:
            replica, expected = self.replica(dynamodb, mapping), self.expected(dsn, mapping)
            if replica == expected:
                continue
            found[mapping.name] = {
                "missing": sorted(set(expected) - set(replica))[:5],
                "extra": sorted(set(replica) - set(expected))[:5],
                "differ": [
                    (k, replica[k], expected[k])
                    for k in expected
                    if k in replica and replica[k] != expected[k]
                ][:3],
            }
        return found

    def converge(
        self, dynamodb: Any, dsn: str, tables: list[TableMapping], timeout_s: float
    ) -> None:
        try:
            wait_for(
                lambda: not self.differences(dynamodb, dsn, tables),
                timeout_s,
                interval_s=2.0,
                what="DynamoDB equal to PostgreSQL",
            )
        except AssertionError:
            assert self.differences(dynamodb, dsn, tables) == {}
            raise


def topic_end(bootstrap: str, topic: str) -> int:
    """Records ever written to a topic (the sum of its partitions' end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "log_level": 3})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        probe.close()


def summary(stdout: str, table: str) -> dict[str, Any]:
    """The summary line of a table: `T -> X: done, N events, W written, S stale, ...`."""
    line = next(x for x in stdout.splitlines() if x.startswith(f"{table} -> "))
    found = re.search(r": (\w+), (\d+) events, (\d+) written, (\d+) stale", line)
    assert found, line
    state, events, written, stale = found.groups()
    return {"line": line, "state": state, "events": int(events), "written": int(written),
            "stale": int(stale)}  # fmt: skip


def test_both_tables_into_new_tables_in_parallel_then_resume(
    consumer_factory: Any, settings: Settings, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    consumer, own = consumer_factory("_bfnew")  # its settings only: the consumer never runs
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)).isoformat()
    mine = Mine(pg, seed=101)
    mine.write(logs=60, payments=60)
    suffix = uuid.uuid4().hex[:6]
    into = "{name}_" + suffix
    window = ("--into", into, "--from-time", since)
    targets = {m.name: m.model_copy(update={"name": f"{m.name}_{suffix}"}) for m in own.tables}
    try:
        first = cli(consumer.config, "backfill", *window, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "Traceback" not in first.stderr
        for mapping in own.tables:  # one summary per table, both done
            line = summary(first.stdout, mapping.name)
            assert line["state"] == "done" and line["events"] > 0, line
            assert f"-> {targets[mapping.name].name}" in line["line"]
            assert "events/s" in line["line"] and "dead-lettered" in line["line"]
            assert f"group {own.backfill.group_prefix}.{mapping.name}." in first.stderr.replace(
                "\n", ""
            )

        # More changes; the same command resumes from its offsets and reads only the new ones.
        mine.change()
        seen_resume = []

        def replayed_equal() -> bool:
            again = cli(consumer.config, "backfill", *window, timeout=600)
            assert again.returncode == 0, again.stderr[-3000:]
            seen_resume.append("resuming at" in again.stderr)
            return all(
                mine.replica(dynamodb, target) == mine.expected(own.postgres.dsn(), mapping)
                for mapping, target in ((m, targets[m.name]) for m in own.tables)
            )

        wait_for(replayed_equal, 120, interval_s=2.0, what="new tables equal to PostgreSQL")
        assert all(seen_resume)
        for mapping in own.tables:
            assert mine.replica(dynamodb, targets[mapping.name])  # not vacuously equal

        # --restart starts over: every record since --from-time again (compaction may have
        # removed superseded ones meanwhile, never a row's latest change).
        over = cli(consumer.config, "backfill", *window, "--restart", timeout=600)
        assert over.returncode == 0, over.stderr[-3000:]
        assert "resuming" not in over.stderr
        for mapping in own.tables:
            rows = len(mine.expected(own.postgres.dsn(), mapping))
            assert summary(over.stdout, mapping.name)["events"] >= rows > 0
            assert mine.replica(dynamodb, targets[mapping.name]) == mine.expected(
                own.postgres.dsn(), mapping
            )
    finally:
        for target in targets.values():
            dynamodb.delete_table(TableName=target.name)
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)


def test_beside_the_live_consumer_into_its_table_is_safe(
    consumer_factory: Any, settings: Settings, dynamodb: Any
) -> None:
    """The backfill replays old versions of rows the live consumer keeps updating, into the
    same table: the position guard refuses every older copy (stale), nothing moves back.

    Its own source (database, connector, topics), so the replay covers exactly this test's
    history, key moves included: a replayed key move is a cancelled (stale) transaction racing
    the live consumer's writes to the same rows."""
    source = SecondSource(settings, "bfl")
    source.create()
    try:
        source.start_connector()

        def live_config(data: dict[str, Any]) -> None:
            source.consumer_config(data)
            data["kafka"]["new_group_starts_at"] = "latest"

        consumer, own = consumer_factory("_bflive", change=live_config)
        dsn = own.postgres.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            mine = Mine(conn, seed=202)
            # Before the live consumer: only the backfill brings these.
            mine.write(logs=40, payments=40, key_moves=True)
            consumer.start()
            logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")

            def probe() -> bool:
                mine.write(logs=1, payments=0, key_moves=True)
                time.sleep(1.0)
                return len(mine.replica(dynamodb, logs)) > 0

            wait_for(probe, 90, interval_s=0.5, what="live consumer reading")
            stop = threading.Event()

            def keep_changing() -> None:
                with psycopg.connect(dsn, autocommit=True) as writer_conn:
                    writer = Mine(writer_conn, seed=203, like=mine)
                    while not stop.is_set():
                        writer.write(logs=2, payments=2, key_moves=True)
                        time.sleep(0.1)

            thread = threading.Thread(target=keep_changing, daemon=True)
            thread.start()
            try:
                run = cli(consumer.config, "backfill", "--from-beginning", timeout=600)
            finally:
                stop.set()
                thread.join(60)
            assert run.returncode == 0, run.stderr[-3000:]
            for mapping in own.tables:
                line = summary(run.stdout, mapping.name)
                assert line["state"] == "done", line
                assert "live lag max" in line["line"]  # it watched the live group meanwhile
            # The live consumer already held newer versions of the rows: the guard refused the
            # replayed older ones.
            assert sum(summary(run.stdout, m.name)["stale"] for m in own.tables) > 0
            mine.converge(dynamodb, dsn, own.tables, 120)
            assert consumer.stop() == 0
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)
    finally:
        source.drop()
    source.assert_no_slot()


def test_from_time_and_rate_limit(
    consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    consumer, own = consumer_factory("_bfrate")
    logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")
    topic = own.topic_of(logs)
    history = topic_end(own.kafka.bootstrap_servers, topic)  # records before --from-time
    since = dt.datetime.now(dt.UTC)
    mine = Mine(pg, seed=303)
    mine.write(logs=120, payments=0)
    time.sleep(2.0)  # on the topic
    target = f"{logs.name}_{uuid.uuid4().hex[:6]}"
    rate = 40
    try:
        started = time.monotonic()
        run = cli(
            consumer.config, "backfill", "--table", logs.name, "--into", target,
            "--from-time", since.isoformat(), "--rate-limit", str(rate), timeout=600,
        )  # fmt: skip
        wall = time.monotonic() - started
        assert run.returncode == 0, run.stderr[-3000:]
        line = summary(run.stdout, logs.name)
        # Only records from --from-time on (this test's, and whatever others wrote meanwhile):
        # none of the history before it.
        now = topic_end(own.kafka.bootstrap_servers, topic)
        assert history > 0 and line["events"] <= now - history, (line, history, now)
        mapping = logs.model_copy(update={"name": target})
        assert mine.replica(dynamodb, mapping) == mine.expected(own.postgres.dsn(), logs)
        # Every item is at least one write unit; the bucket holds one second's worth at start.
        assert line["written"] >= 120
        assert line["written"] <= rate * (wall + 1.5), (line, wall)
        assert wall >= line["written"] / rate - 1.5, (line, wall)
    finally:
        dynamodb.delete_table(TableName=target)
        for mapping in own.tables:
            dynamodb.delete_table(TableName=mapping.name)


def test_bad_input_is_a_clear_error(consumer_factory: Any, dynamodb: Any) -> None:
    def no_topics(data: dict[str, Any]) -> None:
        data["connector"]["topic_prefix"] = f"nosuch{uuid.uuid4().hex[:6]}"

    consumer, own = consumer_factory("_bfbad", change=no_topics)
    cases = [
        (("--into", "Single"), "pattern with {name}"),
        (("--table", "Nope"), "no mapped table"),
        (("--from-time", "yesterday"), "ISO 8601"),
        (("--from-beginning", "--from-time", "2024-01-01"), "exclude each other"),
        (("--rate-limit", "0"), "more than 0"),
        (("--table", own.tables[0].name), "does not exist"),
    ]
    for args, message in cases:
        run = cli(consumer.config, "backfill", *args, timeout=120)
        assert run.returncode == 1, (args, run.stderr)
        assert message in run.stderr.replace("\n", " "), (args, run.stderr)
        assert "Traceback" not in run.stderr
    assert load_settings(consumer.config).kafka.group_id  # the config file was used
    for mapping in own.tables:
        dynamodb.delete_table(TableName=mapping.name)
