"""Phase 5 against the real stack: `replicator purge` deletes 10,000 old rows of each table from
PostgreSQL under live traffic, in a session tagged with the purge's replication origin. The
consumer drops those deletes (Debezium names the origin in source.origin), so every DynamoDB
item stays as it was, while an ordinary delete in another session at the same time replicates.
A killed purge resumes; verify knows the purged window; a rollback to a phase that reads
PostgreSQL is refused unless forced.

Our rows only: the purge's window is "before 1988", a time no other test writes (they use 2024
and 2100 onwards), and the rows are inserted here."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from replicator.config import Settings
from replicator.core.items import DELETED, META_ATTRIBUTES
from replicator.ops.phases import Phase, PhaseStore
from replicator.ops.verify import VerifyReport, record_run
from tests.integration.helpers import ROOT, cli, consuming, from_now, wait_for
from tests.integration.test_metrics_health import free_port, samples

pytestmark = pytest.mark.stack

ROWS = 10_000
BEFORE = "1988-01-01"
WHO = "test-purge"
CUSTOMER = 871987  # the customer of the payments inserted here


@pytest.fixture(scope="module")
def live(consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any) -> Any:
    port = free_port()

    def change(data: dict[str, Any]) -> None:
        from_now(data)
        data["metrics"]["port"] = port
        # The soak is what the gate measures; a test cannot wait 24 h for it.
        data["phases"]["incident_window_h"] = 0

    # An interrupted earlier run can have left its rows of the window: ours, by their marks.
    pg.execute(
        "DELETE FROM dbo.integrationlogs WHERE logtimestamp < %s AND servicename = 'PurgeService'",
        [BEFORE],
    )
    pg.execute(
        "DELETE FROM dbo.payments p USING dbo.loans l, dbo.applications a WHERE p.loanid = "
        "l.loanid AND l.applicationid = a.applicationid AND a.customerid = %s AND "
        "p.createddate < %s",
        [CUSTOMER, BEFORE],
    )
    # Tables of their own each run: their phases, history, verify runs and purges are new.
    suffix = f"_purge{uuid.uuid4().hex[:6]}"
    consumer, own = consumer_factory(suffix, change)
    consumer.start()
    consuming(pg, own)
    yield consumer, own, port
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"
    schema = sql.Identifier(own.control.schema_name)
    for table in ("phases", "phase_history", "phase_incidents", "verify_runs", "purges"):
        pg.execute(
            sql.SQL("DELETE FROM {}.{} WHERE table_name LIKE %s").format(
                schema, sql.Identifier(table)
            ),
            (f"%{suffix}",),
        )
    for mapping in own.tables:
        dynamodb.delete_table(TableName=mapping.name)


def mappings(own: Settings) -> tuple[Any, Any]:
    logs = next(m for m in own.tables if m.source == "dbo.integrationlogs")
    payments = next(m for m in own.tables if m.source == "dbo.payments")
    return logs, payments


def old_items(dynamodb: Any, table: str, attribute: str, key: str) -> dict[int, dict[str, Any]]:
    """Live items whose ``attribute`` is before 1988, by primary key, without meta attributes
    (a delete marker has no time attribute: it is not among them)."""
    found: dict[int, dict[str, Any]] = {}
    for page in dynamodb.get_paginator("scan").paginate(
        TableName=table,
        ConsistentRead=True,
        FilterExpression="#t < :b",
        ExpressionAttributeNames={"#t": attribute},
        ExpressionAttributeValues={":b": {"S": BEFORE}},
    ):
        for item in page["Items"]:
            found[int(item[key]["N"])] = {k: v for k, v in item.items() if k not in META_ATTRIBUTES}
    return found


def get(dynamodb: Any, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    return dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")


class Traffic:
    """Live traffic meanwhile: new rows and updates of them in both tables, from now."""

    def __init__(self, dsn: str, loan: int) -> None:
        self.dsn, self.loan = dsn, loan
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                logid = conn.execute(
                    "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess) VALUES "
                    "('External API', 'PurgeTraffic', true) RETURNING logid"
                ).fetchone()[0]
                conn.execute(
                    "UPDATE dbo.integrationlogs SET statuscode = '200' WHERE logid = %s", [logid]
                )
                conn.execute(
                    "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
                    "principalamount, interestamount, paymentmethod) VALUES "
                    "(%s, 1, current_date, 5.00, 4.00, 1.00, 'ACH')",
                    [self.loan],
                )
                self.writes += 3
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def purge_process(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "--config", str(config), "purge", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def purged_so_far(pg: psycopg.Connection[Any], own: Settings, table: str) -> int:
    row = pg.execute(
        f"SELECT coalesce(max(rows_deleted), 0) FROM {own.control.schema_name}.purges "
        "WHERE table_name = %s",
        [table],
    ).fetchone()
    return int(row[0])


def test_purge_deletes_old_rows_from_postgres_only_under_live_traffic(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any, tmp_path: Path
) -> None:
    consumer, own, port = live
    config = consumer.config
    logs, payments = mappings(own)
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (%s) RETURNING applicationid", [CUSTOMER]
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    logids = [
        r[0]
        for r in pg.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, issuccess, "
            "logtimestamp, correlationid, requestdata) SELECT %s, 'Credit Check', "
            "'PurgeService', n %% 7 > 0, timestamp '1987-01-01' + n * interval '1 minute', "
            "'purge-' || n, '{\"n\": ' || n || '}' FROM generate_series(1, %s) AS n "
            "RETURNING logid",
            [application, ROWS],
        ).fetchall()
    ]
    paymentids = [
        r[0]
        for r in pg.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, createddate) SELECT %s, n, "
            "date '1987-01-01' + n %% 300, 100.10, 90.05, 10.05, 'Online', "
            "timestamp '1987-01-01' + n * interval '1 minute' FROM generate_series(1, %s) AS n "
            "RETURNING paymentid",
            [loan, ROWS],
        ).fetchall()
    ]
    # One row of each table outside the window, deleted by an ordinary session during the purge.
    ordinary_log = pg.execute(
        "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess) VALUES "
        "('External API', 'PurgeOrdinary', true) RETURNING logid"
    ).fetchone()[0]

    def replicated() -> tuple[int, int]:
        return (
            len(old_items(dynamodb, logs.name, "LogTimestamp", "LogId")),
            len(old_items(dynamodb, payments.name, "CreatedDate", "PaymentId")),
        )

    wait_for(lambda: replicated() == (ROWS, ROWS), 600, 2, "20,000 old rows in DynamoDB")
    before_logs = old_items(dynamodb, logs.name, "LogTimestamp", "LogId")
    before_payments = old_items(dynamodb, payments.name, "CreatedDate", "PaymentId")
    assert set(before_logs) == set(logids) and set(before_payments) == set(paymentids)
    wait_for(
        lambda: not _deleted_recent(dynamodb, logs.name, pg, ordinary_log), 60, 0.5, "recent row"
    )

    # Refused while the table still reads PostgreSQL: each failed condition with its value.
    refused = cli(config, "purge", "--table", logs.name, "--before", BEFORE, "--who", WHO)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    text = " ".join((refused.stdout + refused.stderr).split())
    assert "purge refused" in text and "nothing was deleted" in text
    assert "in dynamodb-only: postgres-only (needs dynamodb-only)" in text
    assert "clean verify: no full verify recorded" in text
    assert "Traceback" not in text
    assert (
        pg.execute(
            "SELECT count(*) FROM dbo.integrationlogs WHERE logtimestamp < %s", [BEFORE]
        ).fetchone()[0]
        >= ROWS
    )

    # The gates' evidence: the table moved to dynamodb-only, and a clean full verify recorded
    # (a full verify of the shared source table would compare other tests' rows too).
    store = PhaseStore(own)
    try:
        for mapping in (logs, payments):
            store.set(mapping.name, Phase.DYNAMODB_ONLY, who=WHO, why="test", force=True)
            now = dt.datetime.now(dt.UTC)
            record_run(own, VerifyReport(mapping.name, "full", now, now))
    finally:
        store.close()
    dry = cli(config, "purge", "-t", logs.name, "--before", BEFORE, "--dry-run", "--who", WHO)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "the purge would run" in " ".join(dry.stderr.split())

    with Traffic(own.postgres.dsn(), loan) as traffic:
        # Logs: killed half way, then resumed by the same command.
        first = purge_process(
            config, "-t", logs.name, "--before", BEFORE, "--rate", "2000", "--batch", "500",
            "--who", WHO,
        )  # fmt: skip
        try:
            wait_for(lambda: purged_so_far(pg, own, logs.name) >= 2000, 60, 0.1, "a first part")
        except AssertionError:
            first.kill()
            raise AssertionError(first.communicate()) from None
        # An ordinary delete in another session meanwhile, of a row of the window (the purge
        # goes in primary-key order: the last row is still there) and of a recent row.
        deleted = pg.execute(
            "DELETE FROM dbo.integrationlogs WHERE logid = ANY(%s)", [[logids[-1], ordinary_log]]
        ).rowcount
        assert deleted == 2
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        part = purged_so_far(pg, own, logs.name)
        assert 2000 <= part < ROWS - 1
        resumed = cli(
            config, "purge", "-t", logs.name, "--before", BEFORE, "--rate", "5000", "--who", WHO
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        said = " ".join(resumed.stdout.split())
        assert "(resumed) done" in said and f"{ROWS - 1} in all" in said, said
        # Payments: in one go, at an unbounded rate (the window's column is createddate).
        pays = cli(
            config, "purge", "-t", payments.name, "--before", BEFORE, "--rate", "1000000",
            "--who", WHO,
        )  # fmt: skip
        assert pays.returncode == 0, pays.stdout + pays.stderr
        assert f"{ROWS} rows deleted from PostgreSQL" in " ".join(pays.stdout.split())
        time.sleep(1)
    assert traffic.writes > 30

    # Gone from PostgreSQL.
    for table, column in (("integrationlogs", "logtimestamp"), ("payments", "createddate")):
        left = pg.execute(
            f"SELECT count(*) FROM dbo.{table} WHERE {column} < %s", [BEFORE]
        ).fetchone()[0]
        assert left == 0, table

    # The consumer applied everything up to now (the traffic's last payment is there) ...
    last_payment = pg.execute(
        "SELECT max(paymentid) FROM dbo.payments WHERE loanid = %s", [loan]
    ).fetchone()[0]
    wait_for(
        lambda: get(
            dynamodb,
            payments.name,
            {
                "CustomerId": {"N": str(CUSTOMER)},
                "PaymentDateId": {"S": _payment_sk(pg, last_payment)},
            },
        ),
        120,
        0.5,
        "the traffic's last payment in DynamoDB",
    )
    # ... and dropped exactly the purge's deletes: 9,999 logs (one went by the ordinary
    # delete) and 10,000 payments.
    purged = {
        dict(k)["table"]: v for k, v in samples(port, "replicator_events_purged_total").items()
    }
    wait_for(
        lambda: (
            {
                dict(k)["table"]: v
                for k, v in samples(port, "replicator_events_purged_total").items()
            }
            == {logs.name: ROWS - 1, payments.name: ROWS}
        ),
        120,
        0.5,
        f"purged events counted (now {purged})",
    )

    # Every DynamoDB item intact, but the row an ordinary session deleted: a delete marker.
    after_logs = old_items(dynamodb, logs.name, "LogTimestamp", "LogId")
    after_payments = old_items(dynamodb, payments.name, "CreatedDate", "PaymentId")
    assert after_payments == before_payments
    gone_key = {k: before_logs[logids[-1]][k] for k in ("PK", "SK")}
    marker = get(dynamodb, logs.name, gone_key)
    assert marker is not None and marker.get(DELETED) == {"BOOL": True}
    assert {k: v for k, v in after_logs.items() if k != logids[-1]} == {
        k: v for k, v in before_logs.items() if k != logids[-1]
    }
    recent = wait_for(
        lambda: _deleted_recent(dynamodb, logs.name, pg, ordinary_log), 60, 0.5, "marker"
    )
    assert recent

    # Verify knows the purged window: the items without rows are not extra.
    for mapping, column, expected in (
        (logs, "logtimestamp", ROWS - 1),
        (payments, "createddate", ROWS),
    ):
        path = tmp_path / f"{mapping.name}.json"
        done = cli(
            config, "verify", "-t", mapping.name, "--since", "1986-01-01", "--until", BEFORE,
            "--time-column", column, "--json", str(path),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        summary = json.loads(path.read_text())
        assert summary["clean"] and summary["purged"] == expected, summary
        assert summary["extra"] == 0 and summary["source_rows"] == 0

    # The history holds each purge: who, when, the window and the rows.
    history = cli(config, "phase", "history", logs.name, "--json")
    entries = json.loads(history.stdout)
    whys = [e["why"] for e in entries if e["who"] == WHO]
    assert any(w.startswith("purge #") and "started" in w for w in whys), whys
    assert any(w.startswith("purge #") and "resumed" in w for w in whys), whys
    done_line = next(w for w in whys if " done: " in w)
    assert f"{ROWS - 1} rows with logtimestamp < {BEFORE}T00:00:00" in done_line, done_line

    # A rollback to a phase that reads PostgreSQL is refused, with the purged rows named ...
    back = cli(config, "phase", "rollback", logs.name, "--why", "test", "--who", WHO)
    assert back.returncode == 1, back.stdout + back.stderr
    said = " ".join(back.stderr.split())
    assert "purged rows:" in said and "live in DynamoDB only" in said and "--force" in said
    assert PhaseStore(own).get(logs.name) == Phase.DYNAMODB_ONLY
    # ... and allowed when forced, which the history records.
    forced = cli(config, "phase", "rollback", logs.name, "--why", "t", "--who", WHO, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    last = json.loads(cli(config, "phase", "history", logs.name, "--json").stdout)[-1]
    assert last["forced"] and last["to_phase"] == "hybrid-read"
    assert [c["name"] for c in last["checks"]] == ["purged rows"]


def _payment_sk(pg: psycopg.Connection[Any], paymentid: int) -> str:
    day = pg.execute("SELECT paymentdate FROM dbo.payments WHERE paymentid = %s", [paymentid])
    return f"{day.fetchone()[0].isoformat()}#{paymentid:010d}"


def _deleted_recent(dynamodb: Any, table: str, pg: psycopg.Connection[Any], logid: int) -> bool:
    """The ordinary delete of a recent row replicated: its LogId shows only a delete marker."""
    found = dynamodb.query(
        TableName=table,
        IndexName="LogIdIndex",
        KeyConditionExpression="LogId = :id",
        ExpressionAttributeValues={":id": {"N": str(logid)}},
    )["Items"]
    return not found  # a delete marker carries no index keys
