"""Schema changes of captured tables, against the real stack: columns added under traffic
(reported; written with ``unmapped_columns: include``), dropped (the unmapped one's report
goes, the mapped nullable one's attribute goes), a type the mapping cannot convert and a NOT
NULL column gone (parked with the reason). Every ALTER is on a database of this module's own
(tests/integration/second_source.py), never on the tables the other tests share."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.core.items import Item
from replicator.core.mapping import TableMapping
from replicator.ops.dlq import read_parked
from tests.integration.helpers import cli, wait_for
from tests.integration.second_source import SecondSource
from tests.integration.test_metrics_health import free_port, samples

pytestmark = pytest.mark.stack


@dataclass
class Running:
    source: SecondSource
    consumer: Any
    own: Settings
    port: int
    log_from: int  # where this consumer's lines start in its log file
    dead_letter_topic: str

    def mapping(self, source: str) -> TableMapping:
        return next(m for m in self.own.tables if m.source == source)

    def sql(self, statement: str, params: list[Any] | None = None) -> list[Any]:
        with psycopg.connect(self.source.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def gauge(self, name: str, table: str) -> dict[str, float]:
        return {
            dict(labels)["column"]: v
            for labels, v in samples(self.port, name).items()
            if dict(labels).get("table") == table
        }

    def warnings(self, event: str, column: str) -> int:
        with Path(self.consumer.log).open("rb") as log:
            log.seek(self.log_from)
            lines = [json.loads(line) for line in log if line.startswith(b"{")]
        return sum(
            1 for line in lines if line.get("event") == event and line.get("column") == column
        )


def items(dynamodb: Any, table: str) -> list[Item]:
    found: list[Item] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = dynamodb.scan(**request)
        found += page["Items"]
        if "LastEvaluatedKey" not in page:
            return [i for i in found if "_deleted" not in i]
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def log_item(dynamodb: Any, run: Running, logid: int) -> Item | None:
    table = run.mapping("dbo.integrationlogs").name
    return next((i for i in items(dynamodb, table) if i["LogId"] == {"N": str(logid)}), None)


def insert_log(run: Running, extra: dict[str, Any] | None = None) -> int:
    values = {"logtype": "External API", "servicename": "SchemaTest", "issuccess": True}
    values |= extra or {}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    [(logid,)] = run.sql(
        f"INSERT INTO dbo.integrationlogs ({names}) VALUES ({marks}) RETURNING logid",
        list(values.values()),
    )
    return int(logid)


def insert_payment(run: Running, extra: dict[str, Any] | None = None) -> int:
    values: dict[str, Any] = {
        "paymentnumber": 1,
        "paymentdate": "2024-05-01",
        "paymentamount": "10.00",
        "principalamount": "9.00",
        "interestamount": "1.00",
        "paymentmethod": "ACH",
    }
    values |= extra or {}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    [(paymentid,)] = run.sql(
        f"INSERT INTO dbo.payments (loanid, {names}) SELECT max(loanid), {marks} FROM dbo.loans "
        "RETURNING paymentid",
        list(values.values()),
    )
    return int(paymentid)


@pytest.fixture(scope="module")
def running(consumer_factory: Any, settings: Settings) -> Iterator[Running]:
    source = SecondSource(settings, "sch")
    source.create()
    try:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            app = conn.execute(
                "INSERT INTO dbo.applications (customerid) VALUES (4242) RETURNING applicationid"
            ).fetchone()
            conn.execute("INSERT INTO dbo.loans (applicationid) VALUES (%s)", [app[0]])  # type: ignore[index]
        source.start_connector()
        port = free_port()
        dead_letter_topic = f"{source.tag}.dead-letter"

        def change(data: dict[str, Any]) -> None:
            source.consumer_config(data)
            data["metrics"]["port"] = port
            data["kafka"]["dead_letter_topic"] = dead_letter_topic
            for table in data["tables"]:
                if table["source"] == "dbo.integrationlogs":
                    table["unmapped_columns"] = "include"  # payments keep the default, ignore

        consumer, own = consumer_factory("_schema", change=change)
        run = Running(source, consumer, own, port, 0, dead_letter_topic)
        # The topics exist before the consumer subscribes.
        insert_log(run)
        insert_payment(run)
        wait_for(
            lambda: all(source.topic_records(t) > 0 for t in source.topics()), 90, 0.5, "topics"
        )
        log = Path(consumer.log)
        run.log_from = log.stat().st_size if log.exists() else 0
        consumer.start()
        yield run
        assert consumer.stop() == 0
    finally:
        source.drop()


class Traffic:
    """Rows inserted into both tables until stopped, naming only columns no test drops."""

    def __init__(self, run: Running) -> None:
        self.run = run
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                insert_log(self.run)
                insert_payment(self.run)
            except psycopg.Error as exc:  # a lock wait behind an ALTER is fine; keep count
                self.errors.append(str(exc))
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(30)


def test_added_columns_are_reported_and_written_with_include(
    running: Running, dynamodb: Any
) -> None:
    logs, payments = running.mapping("dbo.integrationlogs"), running.mapping("dbo.payments")
    with Traffic(running) as traffic:
        time.sleep(2)
        running.sql("ALTER TABLE dbo.integrationlogs ADD COLUMN risk_score numeric(20,4)")
        running.sql("ALTER TABLE dbo.integrationlogs ADD COLUMN reviewed_at timestamp")
        running.sql("ALTER TABLE dbo.integrationlogs ADD COLUMN review jsonb")
        running.sql("ALTER TABLE dbo.payments ADD COLUMN channel text")
        logid = insert_log(
            running,
            {
                "risk_score": "1234567890123456.0625",
                "reviewed_at": "2024-03-01 12:00:00.123456",
                "review": '{"score":2,  "by":"ann"}',
            },
        )
        paymentid = insert_payment(running, {"channel": "web"})
        time.sleep(2)
    assert traffic.errors == []

    item = wait_for(lambda: log_item(dynamodb, running, logid), 120, 0.5, "the new log's item")
    # Its type's rules: an exact number (more digits than a double holds), a timestamp as text.
    assert item["RiskScore"] == {"N": "1234567890123456.0625"}
    assert item["ReviewedAt"] == {"S": "2024-03-01T12:00:00.123456Z"}
    assert item["Review"] == {"S": '{"by": "ann", "score": 2}'}  # jsonb's own text of it
    payment = wait_for(
        lambda: next(
            (i for i in items(dynamodb, payments.name) if i["PaymentId"] == {"N": str(paymentid)}),
            None,
        ),
        120,
        0.5,
        "the new payment's item",
    )
    assert "Channel" not in payment  # unmapped_columns: ignore reports only

    assert running.gauge("replicator_unmapped_columns", logs.name) == {
        "review": 1.0,
        "reviewed_at": 1.0,
        "risk_score": 1.0,
    }
    assert running.gauge("replicator_unmapped_columns", payments.name) == {"channel": 1.0}
    # Once per column, however many rows carried it.
    for column in ("risk_score", "reviewed_at", "channel"):
        assert running.warnings("source column not in the mapping", column) == 1, column

    url = f"http://127.0.0.1:{running.port}/metrics"
    done = cli(running.consumer.config, "status", "--json", "--window", "1", "--metrics-url", url)
    report = json.loads(done.stdout)
    tables = {t["table"]: t for t in report["tables"]}
    assert tables[logs.name]["unmapped_columns"] == ["review", "reviewed_at", "risk_score"]
    assert tables[payments.name]["unmapped_columns"] == ["channel"]
    screen = cli(
        running.consumer.config, "status", "--window", "1", "--metrics-url", url, columns=200
    )
    assert "unmapped columns: channel" in screen.stdout, screen.stdout
    # verify expects the included columns too: the items match the rows exactly.
    checked = cli(running.consumer.config, "verify", "--table", logs.name, timeout=300)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]


def test_an_unmapped_column_dropped_and_added_again_is_reported_again(
    running: Running, dynamodb: Any
) -> None:
    logs = running.mapping("dbo.integrationlogs")
    running.sql("ALTER TABLE dbo.integrationlogs DROP COLUMN IF EXISTS reviewed_at")
    logid = insert_log(running)
    wait_for(lambda: log_item(dynamodb, running, logid), 120, 0.5, "a log after the drop")
    wait_for(
        lambda: "reviewed_at" not in running.gauge("replicator_unmapped_columns", logs.name),
        30,
        0.5,
        "the gauge of the dropped column gone",
    )
    running.sql("ALTER TABLE dbo.integrationlogs ADD COLUMN reviewed_at timestamp")
    logid = insert_log(running, {"reviewed_at": "2024-03-02 00:00:00"})
    item = wait_for(lambda: log_item(dynamodb, running, logid), 120, 0.5, "a log after re-adding")
    assert item["ReviewedAt"] == {"S": "2024-03-02T00:00:00.000000Z"}
    assert running.gauge("replicator_unmapped_columns", logs.name)["reviewed_at"] == 1.0
    assert running.warnings("source column not in the mapping", "reviewed_at") == 2
    assert running.warnings("unmapped source column gone", "reviewed_at") == 1


def test_a_dropped_nullable_mapped_column_leaves_the_items(running: Running, dynamodb: Any) -> None:
    logs = running.mapping("dbo.integrationlogs")
    logid = insert_log(running, {"userid": "user7"})
    before = wait_for(lambda: log_item(dynamodb, running, logid), 120, 0.5, "the log's item")
    assert before["UserId"] == {"S": "user7"}
    running.sql("ALTER TABLE dbo.integrationlogs DROP COLUMN userid")
    running.sql("UPDATE dbo.integrationlogs SET statuscode = '201' WHERE logid = %s", [logid])

    def updated() -> Item | None:
        item = log_item(dynamodb, running, logid)
        return item if item and item.get("StatusCode") == {"S": "201"} else None

    after = wait_for(updated, 120, 0.5, "the update after the drop")
    assert "UserId" not in after  # written as NULL: the attribute is removed
    assert running.gauge("replicator_missing_columns", logs.name) == {"userid": 1.0}
    assert (
        running.warnings(
            "mapped column missing from the source rows (dropped or renamed)", "userid"
        )
        == 1
    )
    url = f"http://127.0.0.1:{running.port}/metrics"
    done = cli(running.consumer.config, "status", "--json", "--window", "1", "--metrics-url", url)
    tables = {t["table"]: t for t in json.loads(done.stdout)["tables"]}
    assert tables[logs.name]["missing_columns"] == ["userid"]


def test_old_rows_get_a_column_added_with_a_default_by_a_snapshot(
    running: Running, dynamodb: Any
) -> None:
    """The runbook's backfill step: PostgreSQL fills old rows from the DEFAULT without a change
    event; an incremental snapshot brings the value to their items."""
    logs = running.mapping("dbo.integrationlogs")
    old = insert_log(running)
    wait_for(lambda: log_item(dynamodb, running, old), 120, 0.5, "the old row's item")
    running.sql("ALTER TABLE dbo.integrationlogs ADD COLUMN tier text NOT NULL DEFAULT 'basic'")
    new = insert_log(running)
    item = wait_for(lambda: log_item(dynamodb, running, new), 120, 0.5, "a new row's item")
    assert item["Tier"] == {"S": "basic"}
    assert "Tier" not in (log_item(dynamodb, running, old) or {})
    done = cli(
        running.consumer.config, "snapshot", "--table", logs.name, "--where", f"logid = {old}"
    )
    assert done.returncode == 0, done.stdout + done.stderr

    def filled() -> Item | None:
        item = log_item(dynamodb, running, old)
        return item if item and "Tier" in item else None

    assert wait_for(filled, 180, 1.0, "the old row's item re-read")["Tier"] == {"S": "basic"}


def parked_with(running: Running, reason: str, needle: str) -> list[Any]:
    return [
        p
        for p in read_parked(running.own.kafka.bootstrap_servers, running.dead_letter_topic)
        if p.reason == reason and needle in p.error
    ]


def test_a_type_the_mapping_cannot_convert_parks_with_the_reason(running: Running) -> None:
    running.sql("ALTER TABLE dbo.payments ALTER COLUMN paymentnumber TYPE text")
    paymentid = insert_payment(running, {"paymentnumber": "7a"})
    [parked] = wait_for(
        lambda: [
            p
            for p in parked_with(running, "schema", "paymentnumber")
            if f'"paymentid":{paymentid}' in (p.key or b"").decode()
        ],
        120,
        1.0,
        "the payment parked",
    )
    assert parked.error.startswith("dbo.payments: column type changed:")
    assert "'paymentnumber' is mapped as int, the source column is now text" in parked.error


def test_a_missing_not_null_column_parks_with_the_reason(running: Running) -> None:
    running.sql("ALTER TABLE dbo.integrationlogs DROP COLUMN logtype")
    logid = int(
        running.sql(
            "INSERT INTO dbo.integrationlogs (servicename, issuccess) VALUES ('SchemaTest', true) "
            "RETURNING logid"
        )[0][0]
    )
    [parked] = wait_for(
        lambda: [
            p
            for p in parked_with(running, "schema", "'logtype'")
            if f'"logid":{logid}' in (p.key or b"").decode()
        ],
        120,
        1.0,
        "the log parked",
    )
    assert parked.error.startswith("dbo.integrationlogs: NOT NULL mapped column(s) 'logtype'")
    logs = running.mapping("dbo.integrationlogs")
    assert running.gauge("replicator_missing_columns", logs.name)["logtype"] == 1.0
