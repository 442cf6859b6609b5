"""`replicator validate` against the real stack: every check passes on a converged replica, the
results are stored, and a divergent count fails the run with exit status 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from replicator.cli import DIVERGENT_EXIT, app
from replicator.validate import MARK, last_validation
from replicator.verify import runs
from tests.integration.helpers import caught_up, wait_for

pytestmark = pytest.mark.stack

CHECKS = ["count match", "sample success rate", "read latency", "coordinated operation"]


@pytest.fixture(scope="module")
def live(consumer_factory: Any) -> Any:
    consumer, own = consumer_factory("_validate")
    consumer.start()
    wait_for(
        lambda: caught_up(
            own.kafka.bootstrap_servers, own.kafka.group_id, [own.topic_of(m) for m in own.tables]
        ),
        600,
        interval_s=1.0,
        what="consumer caught up with the topics' history",
    )
    yield consumer, own
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"


def test_validate_passes_on_a_converged_replica_and_stores_results(
    live: Any, pg: Any, tmp_path: Path
) -> None:
    consumer, own = live
    path = tmp_path / "validate.json"
    result = CliRunner().invoke(
        app,
        [
            "--config",
            str(consumer.config),
            "validate",
            "--sample",
            "40",
            "--threshold",
            "1.0",
            "--reads",
            "4",
            "--json",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and result.output.count("PASS") == 8
    assert "read latency" in result.output and "p50 / p95" in result.output
    data = json.loads(path.read_text())
    assert [r["table"] for r in data] == [m.name for m in own.tables]
    for table in data:
        assert [c["name"] for c in table["checks"]] == CHECKS
        assert all(c["passed"] for c in table["checks"]), table["checks"]
        sample = table["checks"][1]["measured"]
        assert sample.startswith("40/40 (100.0%)"), sample
        patterns = {x["pattern"] for x in table["latencies"]}
        assert len(patterns) == 5, patterns
        for x in table["latencies"]:
            assert x["errors"] == 0 and x["postgres_ms"][1] > 0 and x["dynamodb_ms"][1] > 0
    for mapping in own.tables:
        stored = last_validation(own, mapping.name)
        assert stored is not None and stored["passed"] is True
        assert runs(own, mapping.name, "sample", limit=1)[0].clean
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
        "CustomerId": {"N": "1"},
        "PaymentDateId": {"S": "1999-01-01#0000000001"},
        "PaymentId": {"N": "1999000001"},
    }
    dynamodb.put_item(TableName=payments, Item=ghost)
    try:
        result = CliRunner().invoke(
            app,
            ["--config", str(consumer.config), "validate", "-t", payments, "--reads", "1"],
        )
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
        (["validate", "-t", "Nope"], "no mapped table is named 'Nope'"),
    ):
        result = CliRunner().invoke(app, ["--config", str(consumer.config), *args])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
