"""`replicator validate` against the real stack: every check passes on a converged replica, the
results are stored, and a divergent count fails the run with exit status 3."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from replicator.cli import app
from replicator.cli.verify import DIVERGENT_EXIT
from replicator.core.items import DELETED
from replicator.ops.validate import MARK, last_validation
from replicator.ops.verify import runs
from tests.integration.helpers import consuming, from_now, wait_for

pytestmark = pytest.mark.stack

CHECKS = ["count match", "sample success rate", "read latency", "coordinated operation"]


# Per table, our rows only: they live on a day nobody else writes, a new one each run (rows of
# earlier runs stay in PostgreSQL, and a new consumer group never replicated them).
_DAY = dt.date(2100, 1, 1) + dt.timedelta(days=random.randrange(36_000))
DAY, _UNTIL = _DAY.isoformat(), (_DAY + dt.timedelta(days=1)).isoformat()
WINDOWS = {
    "logs": ["--since", DAY, "--until", _UNTIL],
    "payments": ["--since", DAY, "--until", _UNTIL, "--time-column", "paymentdate"],
}


@pytest.fixture(scope="module")
def live(consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any) -> Any:
    # The group starts at the topics' ends (their history is long on a shared stack); the
    # checks are scoped by a time window to the rows written here.
    consumer, own = consumer_factory("_validate", from_now)
    consumer.start()
    consuming(pg, own)
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (881234) RETURNING applicationid"
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    for i in range(10):
        pg.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, issuccess, "
            "statuscode, logtimestamp, correlationid) VALUES (%s, 'Credit Check', "
            "'ValidateService', %s, '200', %s, %s)",
            [application, i % 3 > 0, f"{DAY} 10:00:0{i}", f"validate-{i}"],
        )
        pg.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, paymentstatus) VALUES "
            "(%s, %s, %s, 12.50, 10.00, 2.50, 'Online', 'Completed')",
            [loan, i + 1, DAY],
        )
    logs, payments = own.tables
    for mapping, column in ((logs, "LogTimestamp"), (payments, "PaymentDate")):
        wait_for(
            lambda m=mapping, c=column: in_window(dynamodb, m.name, c) == 10,
            300,
            what=f"our 10 rows in {mapping.name}",
        )
    yield consumer, own
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"


def in_window(dynamodb: Any, table: str, attribute: str) -> int:
    total = 0
    for page in dynamodb.get_paginator("scan").paginate(
        TableName=table,
        Select="COUNT",
        ConsistentRead=True,
        FilterExpression="begins_with(#t, :day) AND attribute_not_exists(#d)",
        ExpressionAttributeNames={"#t": attribute, "#d": DELETED},
        ExpressionAttributeValues={":day": {"S": DAY}},
    ):
        total += page["Count"]
    return total


def run_validate(consumer: Any, table: str, which: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, ["--config", str(consumer.config), "validate", "-t", table, *WINDOWS[which], *args]
    )


def test_validate_passes_on_a_converged_replica_and_stores_results(
    live: Any, pg: Any, tmp_path: Path
) -> None:
    consumer, own = live
    for mapping, which in zip(own.tables, ("logs", "payments"), strict=True):
        path = tmp_path / f"{which}.json"
        result = run_validate(
            consumer,
            mapping.name,
            which,
            *("--sample", "40", "--threshold", "1.0", "--reads", "4", "--json", str(path)),
        )
        assert result.exit_code == 0, result.output
        assert "FAIL" not in result.output and result.output.count("PASS") == 4
        assert "read latency" in result.output and "p50 / p95" in result.output
        (table,) = json.loads(path.read_text())
        assert table["table"] == mapping.name and table["window"]["since"] == DAY
        assert [c["name"] for c in table["checks"]] == CHECKS
        assert all(c["passed"] for c in table["checks"]), table["checks"]
        assert table["checks"][0]["measured"].startswith("10 rows, 10 items"), table["checks"]
        sample = table["checks"][1]["measured"]
        assert sample.startswith("10/10 (100.0%)"), sample  # the window holds 10 rows
        patterns = {x["pattern"] for x in table["latencies"]}
        assert len(patterns) == 5, patterns
        for x in table["latencies"]:
            assert x["errors"] == 0 and x["postgres_ms"][1] > 0 and x["dynamodb_ms"][1] > 0
        assert "appeared in" in table["checks"][3]["measured"]
        stored = last_validation(own, mapping.name)
        assert stored is not None and stored["passed"] is True
        assert runs(own, mapping.name, "sample", limit=1)[0].clean
        assert runs(own, mapping.name, "window", limit=1)[0].clean
    # The coordinated test rows were removed from PostgreSQL.
    left = pg.execute(
        "SELECT (SELECT count(*) FROM dbo.integrationlogs WHERE servicename = %s) + "
        "(SELECT count(*) FROM dbo.payments WHERE transactionid LIKE %s)",
        [MARK, MARK + "-%"],
    ).fetchone()[0]
    assert left == 0


def test_a_count_mismatch_fails_validation(live: Any, dynamodb: Any) -> None:
    consumer, own = live
    payments = own.tables[1].name
    ghost = {
        "CustomerId": {"N": "881234"},
        "PaymentDateId": {"S": f"{DAY}#2099000001"},
        "PaymentId": {"N": "2099000001"},
        "PaymentDate": {"S": DAY},
    }
    dynamodb.put_item(TableName=payments, Item=ghost)
    try:
        result = run_validate(consumer, payments, "payments", "--reads", "1")
    finally:
        dynamodb.delete_item(TableName=payments, Key={k: ghost[k] for k in list(ghost)[:2]})
    assert result.exit_code == DIVERGENT_EXIT, result.output
    assert "FAIL" in result.output
    stored = last_validation(own, payments)
    assert stored is not None and stored["passed"] is False
    count = next(c for c in stored["checks"] if c["name"] == "count match")
    assert count["passed"] is False and "0 missing, 1 extra" in count["measured"], count


def test_bad_options_are_clear_errors(live: Any) -> None:
    consumer, _ = live
    for args, message in (
        (["validate", "--threshold", "1.5"], "sample_threshold"),
        (["validate", "--since", "June"], "not an ISO-8601 date"),
        (["validate", "-t", "Nope"], "no mapped table is named 'Nope'"),
    ):
        result = CliRunner().invoke(app, ["--config", str(consumer.config), *args])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
