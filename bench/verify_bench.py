"""verify's throughput and peak memory on a large table (outside CI).

Uses its own PostgreSQL database on the stack's server (not captured by the connector: the
slot is per database) and a DynamoDB endpoint of its own (a dynoxide it starts on
--endpoint-port, or the one --endpoint names), so the shared tables and the shared endpoint see
nothing:

    .venv/bin/python bench/verify_bench.py --rows 100000

It fills ``verifybench.dbo.integrationlogs`` (about 1.2 KB per item) and ``dbo.payments``
(with the customer lookup), fills DynamoDB by ``verify --repair`` of the empty tables, then
runs a full verify of each table in a child process and prints rows/s and the child's peak RSS.
Then it plants a few divergences and checks verify finds exactly those.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import yaml

from replicator.config import Settings, load_settings

sys.path.insert(0, str(Path(__file__).parent))
from own_endpoint import own_endpoint

DATABASE = "verifybench"


def prepare(base: Settings, rows: int) -> None:
    with psycopg.connect(base.postgres.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    dsn = base.postgres.dsn().replace(f"dbname={base.postgres.database}", f"dbname={DATABASE}")
    schema = resources.files("replicator.stack").joinpath("sql", "source_schema.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
        have = conn.execute("SELECT count(*) FROM dbo.integrationlogs").fetchone()[0]
        if have == rows:
            return
        conn.execute(
            "TRUNCATE dbo.integrationlogs, dbo.payments, dbo.loans, dbo.applications "
            "RESTART IDENTITY"
        )
        conn.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            "responsedata, statuscode, issuccess, errormessage, processingtimems, logtimestamp, "
            "correlationid, userid) SELECT CASE WHEN g %% 3 = 0 THEN NULL ELSE g %% 500 END, "
            "'Credit Check', (ARRAY['CreditCheckService','PaymentGateway','EmailService'])"
            "[1 + g %% 3], '{\"request\": ' || g || ', \"padding\": \"' || repeat('x', 900) || "
            "'\"}', '{\"ok\": true}', CASE WHEN g %% 5 = 0 THEN '503' ELSE '200' END, "
            "g %% 5 <> 0, CASE WHEN g %% 5 = 0 THEN 'upstream unavailable' END, g %% 4000, "
            "timestamp '2024-01-01' + g * interval '17 seconds', "
            "CASE WHEN g %% 2 = 0 THEN 'corr-' || g END, 'user' || g %% 50 "
            "FROM generate_series(1, %s) g",
            [rows],
        )
        conn.execute(
            "INSERT INTO dbo.applications (customerid, requestedamount) "
            "SELECT 1000 + g, 25000 FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO dbo.loans (applicationid, principal, interestrate) "
            "SELECT g, 25000, 0.0725 FROM generate_series(1, 1000) g"
        )
        conn.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, paymentstatus, transactionid) "
            "SELECT 1 + g %% 1000, 1 + g %% 360, date '2024-01-01' + g %% 365, "
            "(g %% 500000) / 100.0 + 0.10, (g %% 500000) / 100.0, 0.10, "
            "(ARRAY['ACH','Check','Online','Cash'])[1 + g %% 4], "
            "(ARRAY['Pending','Completed','Failed','Reversed'])[1 + g %% 4], "
            "CASE WHEN g %% 2 = 0 THEN 'tx-' || g END FROM generate_series(1, %s) g",
            [rows],
        )
        conn.execute("ANALYZE")


def config(base: Settings, endpoint: str, folder: Path) -> Path:
    data = base.model_dump(mode="json")
    data["postgres"]["database"] = DATABASE
    data["postgres"]["password"] = base.postgres.password.get_secret_value()
    data["postgres"]["replication_password"] = base.postgres.replication_password.get_secret_value()
    secret = base.dynamodb.secret_access_key
    data["dynamodb"]["secret_access_key"] = secret.get_secret_value() if secret else None
    data["dynamodb"]["endpoint_url"] = endpoint
    path = folder / "verify-bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def child(config_path: Path, table: str, repair: bool) -> None:
    """One verify in this process; prints the summary and the peak RSS."""
    from replicator.ops.verify import VerifyOptions, verify

    settings = load_settings(config_path)
    mapping = settings.mapping_named(table)
    started = time.monotonic()
    report = verify(settings, mapping, VerifyOptions(repair=repair, recheck=False, record=False))
    seconds = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "table": table,
                "repair": repair,
                "rows": report.source_rows,
                "items": report.replica_items,
                "divergent": report.divergent,
                "kinds": [report.missing, report.extra, report.differing, report.unmappable],
                "repaired": report.repaired,
                "seconds": round(seconds, 1),
                "rows_per_s": round(report.source_rows / seconds),
                "peak_rss_mb": round(peak_mb),
                "timings": report.timings,
                "postgres_rows_per_s": round(
                    report.source_rows / max(report.timings.get("read_postgres", 0), 1e-9)
                ),
            }
        )
    )


def run_child(config_path: Path, table: str, repair: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", str(config_path), "--table", table]
    if repair:
        args.append("--repair")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--endpoint", help="an endpoint to use instead of starting one")
    parser.add_argument("--endpoint-port", type=int, default=28471)
    parser.add_argument("--child")
    parser.add_argument("--table")
    parser.add_argument("--repair", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.table, args.repair)
        return
    own = own_endpoint(args.endpoint_port) if args.endpoint is None else nullcontext(args.endpoint)
    with own as endpoint:
        base = load_settings(None)
        folder = Path(tempfile.mkdtemp(prefix="verify-bench-"))
        started = time.monotonic()
        prepare(base, args.rows)
        print(f"PostgreSQL ready ({args.rows} rows per table) in {time.monotonic() - started:.0f}s")
        path = config(base, endpoint, folder)
        settings = load_settings(path)
        from replicator.ops.tables import ensure_table
        from replicator.stream.dynamo import dynamodb_client

        client = dynamodb_client(settings.dynamodb)
        for mapping in settings.tables:
            ensure_table(client, mapping)
        for mapping in settings.tables:
            run_child(path, mapping.name, repair=True)  # fills the empty replica
            run_child(path, mapping.name, repair=False)  # the replica is full: time a clean run


if __name__ == "__main__":
    main()
