"""`replicator verify` against the real stack: divergences planted directly in DynamoDB are
found exactly (and nothing else), repair fixes them without beating a newer replicated change,
and a run during a live workload reports zero once converged."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from replicator.cli import app
from replicator.cli.verify import DIVERGENT_EXIT
from replicator.config import Settings
from replicator.core.events import Position
from replicator.core.items import GUARD, POS
from replicator.core.mapping import TableMapping
from replicator.ops.verify import (
    Verifier,
    VerifyOptions,
    VerifyReport,
    Window,
    key_of,
    shown_key,
    verify,
)
from replicator.ops.workload import Workload
from tests.integration.helpers import consuming, from_now, get_item, visible, wait_for

pytestmark = pytest.mark.stack

# Our rows live in days nobody else writes, so a window isolates them from concurrent tests;
# new days each run, since the rows of earlier runs stay in PostgreSQL (and a new consumer
# group, which starts at the topics' ends, never replicated them).
BASE = dt.date(2100, 1, 1) + dt.timedelta(days=random.randrange(36_000))
WINDOW_DAY, NEXT_DAY = BASE.isoformat(), (BASE + dt.timedelta(days=1)).isoformat()
SINCE, UNTIL = WINDOW_DAY, (BASE + dt.timedelta(days=7)).isoformat()


@pytest.fixture(scope="module")
def live(consumer_factory: Any, pg: psycopg.Connection[Any]) -> Any:
    # The group starts at the topics' ends (their history is long on a shared stack), and every
    # run below is scoped by a time window to rows this module writes.
    consumer, own = consumer_factory("_verify", from_now)
    consumer.start()
    consuming(pg, own)
    yield consumer, own
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"


# On a busy shared stack the consumer can be minutes behind everyone's traffic.
ARRIVAL_S = 300


def arrived(dynamodb: Any, table: str, key: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = wait_for(
        lambda: visible(get_item(dynamodb, table, key)) and get_item(dynamodb, table, key),
        ARRIVAL_S,
        what=f"{table} {key}",
    )
    return item


def log_key(service: str, ts: str, logid: int) -> dict[str, Any]:
    return {"PK": {"S": f"{service}-{ts[:10]}"}, "SK": {"S": f"{ts}#{logid:019d}"}}


def pay_key(customer: int, date: str, paymentid: int) -> dict[str, Any]:
    return {"CustomerId": {"N": str(customer)}, "PaymentDateId": {"S": f"{date}#{paymentid:010d}"}}


def found(report: VerifyReport) -> set[tuple[str, str, tuple[str, ...]]]:
    return {
        (d.kind, " | ".join(d.key.values()), tuple(sorted(d.attributes)))
        for d in report.divergences
    }


def text(key: dict[str, Any]) -> str:
    return " | ".join(next(iter(v.values())) for v in key.values())


def test_planted_divergences_are_found_exactly_then_repaired(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any, tmp_path: Path
) -> None:
    consumer, own = live
    logs_map, pays_map = own.tables[0], own.tables[1]
    logs, pays = logs_map.name, pays_map.name
    customer = 880_000 + int(uuid.uuid4().int % 10_000)
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (%s) RETURNING applicationid", [customer]
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    ts = [f"{WINDOW_DAY}T0{i}:00:00.000000Z" for i in range(6)]
    logids = [
        pg.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            "statuscode, issuccess, processingtimems, logtimestamp, correlationid) VALUES "
            "(%s, 'Credit Check', 'VerifyService', '{\"n\": 1}', '200', true, 150, %s, %s) "
            "RETURNING logid",
            [application, t[:-1].replace("T", " "), f"verify-{i}"],
        ).fetchone()[0]
        for i, t in enumerate(ts)
    ]
    paymentids = [
        pg.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, paymentstatus) VALUES "
            "(%s, %s, %s, 10.50, 9.00, 1.50, 'ACH', 'Completed') RETURNING paymentid",
            [loan, i + 1, WINDOW_DAY],
        ).fetchone()[0]
        for i in range(6)
    ]
    lkeys = [log_key("VerifyService", t, i) for t, i in zip(ts, logids, strict=True)]
    pkeys = [pay_key(customer, WINDOW_DAY, i) for i in paymentids]
    litems = [arrived(dynamodb, logs, k) for k in lkeys]
    pitems = [arrived(dynamodb, pays, k) for k in pkeys]

    # A real key move of row 3 in each table; the stale copy is planted back further down.
    pg.execute(
        "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval '1 day' "
        "WHERE logid = %s",
        [logids[3]],
    )
    pg.execute(
        "UPDATE dbo.payments SET paymentdate = paymentdate + 1 WHERE paymentid = %s",
        [paymentids[3]],
    )
    moved_ts = ts[3].replace(WINDOW_DAY, NEXT_DAY)
    arrived(dynamodb, logs, log_key("VerifyService", moved_ts, logids[3]))
    arrived(dynamodb, pays, pay_key(customer, NEXT_DAY, paymentids[3]))
    wait_for(lambda: visible(get_item(dynamodb, logs, lkeys[3])) is None, ARRIVAL_S, what="old")
    wait_for(lambda: visible(get_item(dynamodb, pays, pkeys[3])) is None, ARRIVAL_S, what="old")

    # Plant one divergence of each kind in each table.
    for table, items, keys, changed, scaled, rescaled in (
        (logs, litems, lkeys, ("StatusCode", {"S": "500"}), "ProcessingTimeMs", "15000"),
        (pays, pitems, pkeys, ("PaymentStatus", {"S": "Reversed"}), "PaymentAmount", "1050"),
    ):
        dynamodb.delete_item(TableName=table, Key=keys[0])  # missing
        dynamodb.put_item(TableName=table, Item={**items[1], changed[0]: changed[1]})  # differs
        dynamodb.put_item(TableName=table, Item={**items[2], scaled: {"N": rescaled}})  # scale
        dynamodb.put_item(TableName=table, Item=items[3])  # the stale key of the move
        # The same number written with another scale (10.50 as 10.5, 150 as 150.00) is the
        # same DynamoDB number: not a divergence.
        same = "10.5" if table == pays else "150.00"
        dynamodb.put_item(TableName=table, Item={**items[4], scaled: {"N": same}})
    ghost_log = {
        **litems[5],
        **log_key("VerifyService", ts[5], 9_000_000_000 + logids[5]),
        "LogId": {"N": str(9_000_000_000 + logids[5])},
    }
    dynamodb.put_item(TableName=logs, Item=ghost_log)  # extra: no such row
    ghost_pay = {
        **pitems[5],
        **pay_key(customer, WINDOW_DAY, 2_000_000_000 + paymentids[5] % 100_000_000),
        "PaymentId": {"N": str(2_000_000_000 + paymentids[5] % 100_000_000)},
    }
    dynamodb.put_item(TableName=pays, Item=ghost_pay)

    expected = {
        logs: {
            ("missing", text(lkeys[0]), ()),
            ("differs", text(lkeys[1]), ("StatusCode",)),
            ("differs", text(lkeys[2]), ("ProcessingTimeMs",)),
            ("extra", text(lkeys[3]), ()),
            ("extra", text(key_of(logs_map, ghost_log)), ()),
        },
        pays: {
            ("missing", text(pkeys[0]), ()),
            ("differs", text(pkeys[1]), ("PaymentStatus",)),
            ("differs", text(pkeys[2]), ("PaymentAmount",)),
            ("extra", text(pkeys[3]), ()),
            ("extra", text(key_of(pays_map, ghost_pay)), ()),
        },
    }

    # Through the CLI: exit status 3 and a JSON report naming every divergent key.
    runner = CliRunner()
    report_path = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "--config",
            str(consumer.config),
            "verify",
            "--table",
            pays,
            "--since",
            SINCE,
            "--until",
            UNTIL,
            "--time-column",
            "paymentdate",
            "--json",
            str(report_path),
        ],
    )
    assert result.exit_code == DIVERGENT_EXIT, result.output
    data = json.loads(report_path.read_text())
    assert data["divergent"] == 5 and data["clean"] is False
    assert {(d["kind"], " | ".join(d["key"].values())) for d in data["divergences"]} == {
        (kind, key) for kind, key, _ in expected[pays]
    }
    scale = next(d for d in data["divergences"] if "PaymentAmount" in d["attributes"])
    assert scale["attributes"]["PaymentAmount"] == {
        "expected": {"N": "10.50"},
        "actual": {"N": "1050"},
    }
    assert scale["source_key"] == {"paymentid": paymentids[2]}

    windows = {
        logs: Window("logtimestamp", *(dt_of(SINCE), dt_of(UNTIL))),
        pays: Window("paymentdate", *(dt_of(SINCE).date(), dt_of(UNTIL).date())),
    }
    for mapping in own.tables:
        options = VerifyOptions(window=windows[mapping.name], record=False)
        report = verify(own, mapping, options)
        assert found(report) == expected[mapping.name], report.divergences
        assert (report.missing, report.extra, report.differing, report.unmappable) == (1, 2, 2, 0)
        # Delete markers carry no time column, so a window never counts them.
        assert (report.source_rows, report.replica_items, report.tombstones) == (6, 7, 0)

        repaired = verify(
            own, mapping, VerifyOptions(window=options.window, repair=True, record=False)
        )
        assert repaired.repaired == 5 and repaired.repair_skipped == 0, repaired
        clean = verify(own, mapping, options)
        assert clean.clean and clean.matched == 6, clean.divergences

    # The stale key became a delete marker ranked as a read at the stream's position (never
    # below the position it had), and a newer change to a repaired row still replicates over
    # the repair.
    marker = get_item(dynamodb, logs, lkeys[3])
    assert marker["_deleted"] == {"BOOL": True}
    assert marker["_pos"]["S"] > litems[3]["_pos"]["S"]
    assert Position.decode(marker["_pos"]["S"]).streamed == 0
    for paymentid, key in zip(paymentids[:2], pkeys[:2], strict=True):
        pg.execute(
            "UPDATE dbo.payments SET paymentstatus = 'Failed' WHERE paymentid = %s", [paymentid]
        )
        wait_for(
            lambda k=key: (
                (visible(get_item(dynamodb, pays, k)) or {}).get("PaymentStatus") == {"S": "Failed"}
            ),
            ARRIVAL_S,
            what="a replicated change after the repair",
        )


def dt_of(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day)


def test_repair_never_overwrites_a_newer_replicated_change(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    _, own = live
    logs_map: TableMapping = own.tables[0]
    stamp = f"{WINDOW_DAY} 07:00:00"
    logid = pg.execute(
        "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, logtimestamp, "
        "statuscode) VALUES ('Credit Check', 'GuardService', true, %s, '200') RETURNING logid",
        [stamp],
    ).fetchone()[0]
    key = log_key("GuardService", f"{WINDOW_DAY}T07:00:00.000000Z", logid)
    seen = arrived(dynamodb, logs_map.name, key)
    # Between verify's read and its write, the stream applies a newer change (a higher _pos).
    position = Position.decode(seen["_pos"]["S"])
    later = Position(position.last_commit, position.streamed, position.lsn + 1).encode()
    newer = {**seen, "StatusCode": {"S": "201"}, "_pos": {"S": later}}
    dynamodb.put_item(TableName=logs_map.name, Item=newer)
    with Verifier(own, logs_map) as verifier:
        stale_repair = {**seen, "StatusCode": {"S": "999"}}
        assert verifier._guarded_put(dict(stale_repair), seen) is False
        assert get_item(dynamodb, logs_map.name, key) == newer
        # Against what is stored now the guard holds, and the stored position is kept.
        assert verifier._guarded_put({**newer, "StatusCode": {"S": "202"}}, newer) is True
        stored = get_item(dynamodb, logs_map.name, key)
        assert stored["StatusCode"] == {"S": "202"} and stored["_pos"] == newer["_pos"]
        assert shown_key(logs_map, stored) == {k: v["S"] for k, v in key.items()}
    # The row's real delete is newer than both: it still replicates (and leaves no divergence).
    pg.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
    wait_for(
        lambda: visible(get_item(dynamodb, logs_map.name, key)) is None,
        ARRIVAL_S,
        what="the delete",
    )


def test_a_repaired_missing_item_refuses_an_older_replayed_event(
    live: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    """A repair writes a position: an older event of the row replayed afterwards (a `dlq
    replay`, a backfill into the live table) fails the sink's guard instead of overwriting the
    repaired item, and the row's next real change still replicates over it."""
    _, own = live
    logs_map: TableMapping = own.tables[0]
    day = (BASE + dt.timedelta(days=3)).isoformat()
    logid = pg.execute(
        "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, logtimestamp, "
        "statuscode) VALUES ('Credit Check', 'RepairService', true, %s, '200') RETURNING logid",
        [f"{day} 08:00:00"],
    ).fetchone()[0]
    key = log_key("RepairService", f"{day}T08:00:00.000000Z", logid)
    created = arrived(dynamodb, logs_map.name, key)
    pg.execute("UPDATE dbo.integrationlogs SET statuscode = '201' WHERE logid = %s", [logid])
    wait_for(
        lambda: get_item(dynamodb, logs_map.name, key).get("StatusCode") == {"S": "201"},
        ARRIVAL_S,
        what="the update",
    )
    dynamodb.delete_item(TableName=logs_map.name, Key=key)  # lost: the item is missing

    window = Window("logtimestamp", dt_of(day), dt_of(day) + dt.timedelta(days=1))
    repaired = verify(own, logs_map, VerifyOptions(window=window, repair=True, record=False))
    assert (repaired.missing, repaired.repaired) == (1, 1), repaired
    stored = get_item(dynamodb, logs_map.name, key)
    assert stored["StatusCode"] == {"S": "201"} and "_pos" in stored

    # The create event replayed: the guard the sink writes with refuses it.
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        dynamodb.put_item(
            TableName=logs_map.name,
            Item=created,
            ConditionExpression=GUARD,
            ExpressionAttributeNames={"#pos": POS},
            ExpressionAttributeValues={":pos": created["_pos"]},
        )
    assert get_item(dynamodb, logs_map.name, key) == stored
    pg.execute("UPDATE dbo.integrationlogs SET statuscode = '202' WHERE logid = %s", [logid])
    wait_for(
        lambda: get_item(dynamodb, logs_map.name, key).get("StatusCode") == {"S": "202"},
        ARRIVAL_S,
        what="a replicated change after the repair",
    )


LIVE_SINCE = dt.datetime.combine(BASE + dt.timedelta(days=30), dt.time())
LIVE_UNTIL = LIVE_SINCE + dt.timedelta(days=60)


class OwnRowsWorkload(Workload):
    """The sample workload, but its rows are moved into days of their own (an UPDATE in the
    same transaction: a key move, as live traffic has), and updates and deletes touch only the
    rows it inserted, so that concurrent tests' rows are left alone and a window finds ours."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int) -> None:
        super().__init__(conn, seed=seed)
        self.logs: list[int] = []
        self.payments: list[int] = []

    def _last(self) -> int:
        return int(self.conn.execute("SELECT lastval()").fetchone()[0])

    def insert_log(self) -> None:
        super().insert_log()
        self.logs.append(self._last())
        self.conn.execute(
            "UPDATE dbo.integrationlogs SET logtimestamp = %s + (logtimestamp - "
            "date_trunc('month', logtimestamp)) / 3 WHERE logid = %s",
            [LIVE_SINCE, self.logs[-1]],
        )

    def insert_payment(self) -> None:
        if not self.loans:
            self.ensure_loans()
        super().insert_payment()
        self.payments.append(self._last())
        self.conn.execute(
            "UPDATE dbo.payments SET paymentdate = %s::date + paymentid %% 10 WHERE paymentid = %s",
            [LIVE_SINCE.date(), self.payments[-1]],
        )

    def update_some(self) -> None:
        if self.logs and (not self.payments or self.rng.random() < 0.5):
            logid = self.rng.choice(self.logs)
            if self.rng.random() < 0.3:  # a key move
                sql = (
                    "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp "
                    "+ interval '1 day' WHERE logid = %s"
                )
                self.counts.key_moves += 1
            else:
                sql = "UPDATE dbo.integrationlogs SET issuccess = NOT issuccess WHERE logid = %s"
            self.conn.execute(sql, [logid])
        elif self.payments:
            paymentid = self.rng.choice(self.payments)
            if self.rng.random() < 0.3:
                sql = "UPDATE dbo.payments SET paymentdate = paymentdate + 1 WHERE paymentid = %s"
                self.counts.key_moves += 1
            else:
                sql = "UPDATE dbo.payments SET paymentstatus = 'Failed' WHERE paymentid = %s"
            self.conn.execute(sql, [paymentid])
        self.counts.updates += 1

    def delete_some(self) -> None:
        if self.logs and self.rng.random() < 0.5:
            self.conn.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [self.logs.pop()])
        elif self.payments:
            self.conn.execute(
                "DELETE FROM dbo.payments WHERE paymentid = %s", [self.payments.pop()]
            )
        self.counts.deletes += 1


def test_a_run_during_live_traffic_reports_zero_once_converged(
    live: Any, settings: Settings, dynamodb: Any
) -> None:
    _, own = live
    stop = threading.Event()
    errors: list[BaseException] = []
    steps = [0]

    def traffic() -> None:
        try:
            with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
                workload = OwnRowsWorkload(conn, seed=int(time.time()))
                workload.ensure_loans(5)
                while not stop.is_set():
                    workload.step()
                    steps[0] += 1
                    # About 10 changes a second: live, yet within what one consumer applies
                    # on a busy CI machine (the re-check waits for the lag, bounded).
                    time.sleep(0.25)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    writer = threading.Thread(target=traffic, daemon=True)
    writer.start()
    try:
        time.sleep(3)  # traffic in flight before and during the whole run
        before = steps[0]
        reports = []
        deadline = time.monotonic() + 120
        # A quick verify can finish between two workload steps: verify again until at least
        # five steps overlapped the runs; every run must be clean.
        while steps[0] - before < 5 and writer.is_alive() and time.monotonic() < deadline:
            reports += [verify(own, mapping, live_options(mapping)) for mapping in own.tables]
        during = steps[0] - before
    finally:
        stop.set()
        writer.join(30)
    assert not errors, errors
    assert reports and during >= 5, f"the workload ran only {during} steps during the run"
    for report in reports:
        assert report.clean, (report.summary(), report.divergences[:5])
        assert report.source_rows > 0 and report.matched > 0
    print("re-checked (converged):", [(r.rechecked, r.converged) for r in reports])
    # Traffic has stopped: the window holds a fixed number of payments (fewer than 10 on a
    # quick run); the sample takes 10 of them, or all.
    payments = verify(own, own.tables[1], live_options(own.tables[1]))
    sample = verify(own, own.tables[1], replace(live_options(own.tables[1]), sample=10))
    assert sample.scope == "sample" and sample.clean, sample
    assert sample.source_rows == min(10, payments.source_rows) > 0, (sample, payments)


def live_options(mapping: TableMapping) -> VerifyOptions:
    if mapping.source == "dbo.integrationlogs":
        window = Window("logtimestamp", LIVE_SINCE, LIVE_UNTIL)
    else:
        window = Window("paymentdate", LIVE_SINCE.date(), LIVE_UNTIL.date())
    return VerifyOptions(window=window, record=False)
