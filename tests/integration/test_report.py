"""`replicator report` against the real stack: the criteria from what the product recorded
(validate's runs, the phase history and incidents, verify runs, a running consumer's metrics,
PostgreSQL's sizes, DynamoDB's TTL), as JSON with each value, threshold and result; exit 3
while a criterion fails, 1 on bad input; the HTML page rendered by headless chromium."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from psycopg import sql

from replicator.ops.phases import Phase, PhaseStore
from replicator.ops.report import CRITERIA
from replicator.ops.report_page import DYNAMODB_COLOUR, LAG_COLOUR, POSTGRES_COLOUR
from replicator.ops.verify import VerifyReport, record_run
from tests.integration.helpers import cli, consuming, from_now, wait_for
from tests.integration.test_metrics_health import free_port, get
from tests.integration.test_status import chromium, pixels_near

pytestmark = pytest.mark.stack

WHO = "test-report"
# Our rows live on a day nobody else writes, a new one each run (as test_validate's).
_DAY = dt.date(2100, 1, 1) + dt.timedelta(days=random.randrange(36_000))
DAY, UNTIL = _DAY.isoformat(), (_DAY + dt.timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def live(consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any) -> Any:
    port = free_port()

    def change(data: dict[str, Any]) -> None:
        from_now(data)
        data["metrics"]["port"] = port

    suffix = f"_report{uuid.uuid4().hex[:6]}"
    consumer, own = consumer_factory(suffix, change)
    consumer.start()
    consuming(pg, own)
    wait_for(lambda: get(port, "/readyz")[0] == 200, 90, 0.2, "/readyz 200")
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (883311) RETURNING applicationid"
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    for i in range(10):
        pg.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, issuccess, "
            "statuscode, logtimestamp, correlationid) VALUES (%s, 'Credit Check', "
            "'ReportService', %s, '200', %s, %s)",
            [application, i % 3 > 0, f"{DAY} 10:00:0{i}", f"report-{i}"],
        )
        pg.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod) VALUES "
            "(%s, %s, %s, 12.50, 10.00, 2.50, 'Online')",
            [loan, i + 1, DAY],
        )
    yield consumer, own, port
    assert consumer.stop() == 0, f"consumer exited badly; see {consumer.log}"
    schema = sql.Identifier(own.control.schema_name)
    for name in ("phases", "phase_history", "phase_incidents", "verify_runs", "validate_runs"):
        pg.execute(
            sql.SQL("DELETE FROM {}.{} WHERE table_name LIKE %s").format(
                schema, sql.Identifier(name)
            ),
            (f"%{suffix}",),
        )
    for mapping in own.tables:
        dynamodb.delete_table(TableName=mapping.name)


def report(config: Path, port: int, *args: str) -> Any:
    return cli(
        config,
        "report",
        "--window",
        "3",
        "--metrics-url",
        f"http://127.0.0.1:{port}/metrics",
        *args,
        timeout=120,
    )


def criteria(doc: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    entry = next(t for t in doc["tables"] if t["table"] == table)
    return {c["name"]: c for c in entry["criteria"]}


def test_report_measures_each_criterion_and_renders_in_chromium(
    live: Any, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    consumer, own, port = live
    config = consumer.config
    names = [m.name for m in own.tables]

    # Nothing recorded yet for these tables: the criteria fail, naming why; exit 3.
    first = report(config, port, "--json")
    assert first.returncode == 3, first.stdout + first.stderr
    doc = json.loads(first.stdout)
    assert doc["passed"] is False
    assert [c["name"] for c in doc["overall"]] == list(CRITERIA)
    for name in names:
        c = criteria(doc, name)
        assert c["data integrity"]["measured"] == "no full verify recorded"
        assert c["rollback tested"]["measured"] == "no rollback recorded"
        assert all({"passed", "measured", "threshold"} <= set(x) for x in c.values())

    # What a migration leaves behind: validate runs (coordinated row, latencies on both
    # stores), a verify run, a hybrid-read stay with a fallback, a rollback.
    for mapping in own.tables:
        column = "paymentdate" if mapping.source == "dbo.payments" else "logtimestamp"
        done = cli(
            config, "validate", "-t", mapping.name, "--since", DAY, "--until", UNTIL,
            "--time-column", column, "--sample", "10", "--reads", "4", timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        # The criterion reads the latest *full* verify; one of the shared source table would
        # compare every other test's rows, so its result is recorded as a full run would be.
        now = dt.datetime.now(dt.UTC)
        record_run(
            own,
            VerifyReport(
                mapping.name, "full", now, now, source_rows=500, replica_items=500, matched=500
            ),
        )
    store = PhaseStore(own)
    try:
        for mapping in own.tables:
            for phase in (Phase.DUAL_WRITE, Phase.HYBRID_READ):
                store.set(mapping.name, phase, who=WHO, why="test", force=True)
            store.record_incidents(mapping.name, "fallback", 2)
            store.set(mapping.name, Phase.DUAL_WRITE, who=WHO, why="test rollback")
    finally:
        store.close()

    page = tmp_path / "report.html"
    second = report(config, port, "--json", "--html", str(page))
    doc = json.loads(second.stdout)
    assert second.returncode == (0 if doc["passed"] else 3), second.stderr
    for name in names:
        c = criteria(doc, name)
        assert c["data integrity"]["passed"], c["data integrity"]
        assert c["data integrity"]["measured"].startswith("100.00% (0 divergent of 500 rows")
        assert c["coordinated operations"]["passed"], c["coordinated operations"]
        assert "appeared in" in c["coordinated operations"]["measured"]
        assert c["graceful degradation"]["passed"]
        assert c["graceful degradation"]["measured"].endswith(
            "h in hybrid-read, 2 fallbacks served by PostgreSQL"
        )
        assert c["rollback tested"]["passed"]
        assert c["rollback tested"]["measured"].startswith(f"hybrid-read -> dual-write by {WHO}")
        assert c["audit trail and retention"]["passed"], c["audit trail and retention"]
        assert "TTL on ExpiresAt" in c["audit trail and retention"]["measured"]
        assert c["monitoring and alerting"]["passed"]
        # Measured and labelled, whatever they come to on this machine.
        perf = c["performance"]
        assert perf["measured"].count(" ms p50 (") == 5, perf
        assert f"local endpoint {own.dynamodb.endpoint_url}" in perf["note"]
        assert c["cost"]["measured"].startswith("DynamoDB $"), c["cost"]
        assert " vs PostgreSQL $" in c["cost"]["measured"]
        assert len(doc["charts"]["latency"][name]) == 5
        assert len(doc["charts"]["lag"][name]) >= 3  # sampled every second over 3 s
        assert set(doc["charts"]["cost"][name]) == {"dynamodb", "postgres"}

    # The page: self-contained, every table, all three charts, drawn.
    text = page.read_text()
    assert "src=" not in text and "href=" not in text and "<script" not in text
    url = page.as_uri()
    dom = chromium(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>replicator success report</title>" in dom.stdout
    for name in names:
        assert f"<h2>{name}</h2>" in dom.stdout
    assert dom.stdout.count('class="latency"') == len(names)
    assert dom.stdout.count('class="lag"') == len(names)
    assert dom.stdout.count('class="cost"') == 1
    shot = tmp_path / "report.png"
    done = chromium(url, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1000,3000")
    assert shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    for colour in (POSTGRES_COLOUR, DYNAMODB_COLOUR, LAG_COLOUR):
        assert len(pixels_near(image, colour, tolerance=20)) > 100, colour

    # Bad input: one clear paragraph, exit 1, no traceback.
    bad = report(config, port, "--html", str(tmp_path / "missing" / "x.html"))
    assert bad.returncode == 1 and "cannot write the page" in bad.stderr
    zero = cli(config, "report", "--window", "0")
    assert zero.returncode == 1 and "--window must be a positive number" in zero.stderr
    assert "Traceback" not in bad.stderr + zero.stderr
