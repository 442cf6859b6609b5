"""`replicator snapshot`: an incremental snapshot on demand re-reads rows through the signal
table while streaming continues. Here it repairs a table whose items were lost or damaged,
while the same rows keep changing, and DynamoDB ends equal to PostgreSQL."""

from __future__ import annotations

import threading
import time
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

pytestmark = pytest.mark.stack


def expected_of_loans(dsn: str, mapping: TableMapping, loans: list[int]) -> dict[str, Any]:
    """The items the payments of these loans should have."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        records = cur.execute(
            "SELECT * FROM dbo.payments WHERE loanid = ANY(%s)", [loans]
        ).fetchall()
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


def replica_of_loans(dynamodb: Any, mapping: TableMapping, loans: list[int]) -> dict[str, Any]:
    wanted = {str(loan) for loan in loans}
    items, _markers = replica_items(dynamodb, mapping)
    return {k: v for k, v in items.items() if str(v["LoanId"][1]) in wanted}


def test_incremental_snapshot_repairs_rows_that_change_meanwhile(
    consumer_factory: Any, settings: Settings, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    def from_latest(data: dict[str, Any]) -> None:
        # The topics' history is other tests' business: this consumer starts at their end.
        data["kafka"]["new_group_starts_at"] = "latest"

    consumer, own = consumer_factory("_incsnap", change=from_latest)
    payments = next(m for m in own.tables if m.source == "dbo.payments")
    dsn = own.postgres.dsn()
    workload = Workload(pg, seed=77)
    workload.ensure_loans(6)
    loans = list(workload.loans)
    consumer.start()

    def probe() -> bool:  # the consumer has joined and reads from the end on
        workload.insert_payment()
        time.sleep(1.0)
        return bool(replica_of_loans(dynamodb, payments, loans))

    wait_for(probe, 90, interval_s=0.5, what="live consumer reading")
    for _ in range(80):
        workload.insert_payment()
    # (Probe rows inserted before the consumer read from the end are missing: the snapshot
    # will bring them too.)
    wait_for(
        lambda: len(replica_of_loans(dynamodb, payments, loans)) >= 80,
        120,
        interval_s=1.0,
        what="payments streamed",
    )

    # Damage the replica: items lost, and items holding a wrong amount.
    items = sorted(replica_of_loans(dynamodb, payments, loans))
    raw = {
        key_text(payments, i): i
        for i in dynamodb.scan(TableName=payments.name, ConsistentRead=True)["Items"]
        if "LoanId" in i
    }
    lost, damaged = items[:25], items[25:40]
    # The writer below leaves these rows alone: only the snapshot can repair them.
    repaired_only_by_the_snapshot = [int(raw[k]["PaymentId"]["N"]) for k in lost + damaged]
    for key in lost:
        item = raw[key]
        dynamodb.delete_item(
            TableName=payments.name, Key={a: item[a] for a in payments.key_attributes}
        )
    for key in damaged:
        dynamodb.put_item(
            TableName=payments.name, Item={**raw[key], "PaymentAmount": {"N": "0.01"}}
        )
    assert replica_of_loans(dynamodb, payments, loans) != expected_of_loans(dsn, payments, loans)

    # The other rows keep changing during the snapshot: updates, key moves, deletes, inserts.
    stop = threading.Event()
    changed = [0]

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "UPDATE dbo.payments SET paymentstatus = 'Reversed', "
                    "paymentdate = paymentdate + 1 WHERE paymentid = (SELECT paymentid FROM "
                    "dbo.payments WHERE loanid = ANY(%s) AND paymentid <> ALL(%s) "
                    "ORDER BY random() LIMIT 1)",
                    [loans, repaired_only_by_the_snapshot],
                )
                conn.execute(
                    "DELETE FROM dbo.payments WHERE paymentid = (SELECT paymentid FROM "
                    "dbo.payments WHERE loanid = ANY(%s) AND paymentid <> ALL(%s) "
                    "ORDER BY random() LIMIT 1)",
                    [loans, repaired_only_by_the_snapshot],
                )
                changed[0] += 2
                time.sleep(0.2)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        where = f"loanid IN ({', '.join(str(loan) for loan in loans)})"
        refused = cli(consumer.config, "snapshot", "--table", payments.name, "--where", "1=1; x")
        assert refused.returncode == 1 and "';' is refused" in refused.stderr
        assert "Traceback" not in refused.stderr
        typo = cli(consumer.config, "snapshot", "--table", payments.name, "--where", "loan_id=1")
        assert typo.returncode == 1 and "not a valid condition" in typo.stderr
        done = cli(consumer.config, "snapshot", "--table", payments.name, "--where", where)
        assert done.returncode == 0, done.stderr
        assert "signal" in done.stderr and "sent" in done.stderr
        for _ in range(20):
            workload.insert_payment()
        time.sleep(3.0)
    finally:
        stop.set()
        writer.join(30)
    assert changed[0] > 20

    def equal() -> bool:
        return replica_of_loans(dynamodb, payments, loans) == expected_of_loans(
            dsn, payments, loans
        )

    try:
        wait_for(equal, 180, interval_s=2.0, what="DynamoDB equal to PostgreSQL after the snapshot")
    except AssertionError:
        replica = replica_of_loans(dynamodb, payments, loans)
        expected = expected_of_loans(dsn, payments, loans)
        assert {
            "missing": sorted(set(expected) - set(replica)),
            "extra": sorted(set(replica) - set(expected)),
            "differ": [
                (k, replica[k], expected[k])
                for k in expected
                if k in replica and replica[k] != expected[k]
            ],
        } == {"missing": [], "extra": [], "differ": []}
        raise
    assert consumer.stop() == 0
    assert load_settings(consumer.config).connector.name == settings.connector.name
    for mapping in own.tables:
        dynamodb.delete_table(TableName=mapping.name)
