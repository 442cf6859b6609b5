"""Read latency per access pattern on each store, through the read path's two stores
(``PostgresReads`` and ``DynamoReads``, which ``ReadPath`` routes to by phase).

    .venv/bin/replicator stack up          # PostgreSQL (the bench starts its own endpoint)
    .venv/bin/python bench/reads_bench.py [--logs 20000] [--payments 6000] [--reads 200]

The data lives apart from the replicated tables, so it makes no CDC traffic: a schema of its own
(``readsbench``: copies of dbo's four tables, with the indexes an application would keep for
these patterns) and a DynamoDB endpoint of its own (dynoxide, ``--endpoint-port``), started and
stopped here. Items are loaded into DynamoDB through the mapping (``to_item``), as the sink
builds them. Each pattern is read ``--reads`` times per store (after a warm-up) with random
parameters, one page of up to 50 rows; every read's two answers are compared and any difference
is counted. Prints a Markdown table of p50/p95 per pattern and store.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
from own_endpoint import own_endpoint  # beside this file
from psycopg.rows import dict_row

from replicator.config import Settings, load_settings
from replicator.core.mapping import to_item
from replicator.ops.tables import ensure_table
from replicator.reads.dynamo import DynamoReads, reads_client
from replicator.reads.postgres import PostgresReads
from replicator.reads.rows import same
from replicator.stream.rows import source_row

SCHEMA = "readsbench"
SERVICES = ["CreditCheckService", "PaymentGateway", "DocumentStore", "EmailService",
            "SmsService", "OpenBankingApi"]  # fmt: skip
DAYS = 30
APPS = 200
CORRELATIONS = 3000


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bench_settings(base: Settings, port: int) -> Settings:
    data = base.model_dump(mode="json")
    data["postgres"]["password"] = base.postgres.password.get_secret_value()
    data["postgres"]["replication_password"] = "unused"
    data["postgres"]["schema_name"] = SCHEMA
    data["dynamodb"]["endpoint_url"] = f"http://127.0.0.1:{port}"
    data["dynamodb"]["secret_access_key"] = "local"
    data["reads"]["dynamodb_timeout_s"] = 30.0
    for table in data["tables"]:
        table["name"] = f"{table['name']}_readsbench"
        table["source"] = table["source"].replace("dbo.", f"{SCHEMA}.")
    return Settings(**data)


SETUP = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.applications (LIKE dbo.applications INCLUDING ALL);
CREATE TABLE {SCHEMA}.loans (LIKE dbo.loans INCLUDING ALL);
CREATE TABLE {SCHEMA}.integrationlogs (LIKE dbo.integrationlogs INCLUDING ALL);
CREATE TABLE {SCHEMA}.payments (LIKE dbo.payments INCLUDING ALL);
"""
# What an application serving these patterns from PostgreSQL would index.
INDEXES = f"""
CREATE INDEX ON {SCHEMA}.integrationlogs (applicationid, logtimestamp DESC, logid DESC);
CREATE INDEX ON {SCHEMA}.integrationlogs (servicename, logtimestamp DESC, logid DESC);
CREATE INDEX ON {SCHEMA}.integrationlogs (correlationid, logtimestamp DESC, logid DESC);
CREATE INDEX ON {SCHEMA}.integrationlogs (logtimestamp DESC, logid DESC) WHERE NOT issuccess;
CREATE INDEX ON {SCHEMA}.applications (customerid);
CREATE INDEX ON {SCHEMA}.loans (applicationid);
CREATE INDEX ON {SCHEMA}.payments (loanid, paymentdate DESC, paymentid DESC);
CREATE INDEX ON {SCHEMA}.payments (paymentstatus, paymentdate DESC, paymentid DESC);
CREATE INDEX ON {SCHEMA}.payments (paymentmethod, paymentdate DESC, paymentid DESC);
ANALYZE {SCHEMA}.integrationlogs, {SCHEMA}.payments, {SCHEMA}.loans, {SCHEMA}.applications;
"""


def fill_postgres(conn: psycopg.Connection[Any], logs: int, payments: int, customers: int) -> None:
    conn.execute(SETUP)
    services = "ARRAY[" + ",".join(f"'{s}'" for s in SERVICES) + "]"
    conn.execute(
        f"INSERT INTO {SCHEMA}.integrationlogs (logid, applicationid, logtype, servicename, "
        "requestdata, responsedata, statuscode, issuccess, errormessage, processingtimems, "
        "logtimestamp, correlationid, userid) "
        "SELECT g, CASE WHEN random() < 0.8 THEN 1 + (random() * %s)::int END, 'External API', "
        f"({services})[1 + g %% 6], "
        '\'{"request": \' || g || \', "who": "Zoë", "padding": "\' || repeat(\'x\', 300) '
        "|| '\"}', CASE WHEN g %% 5 <> 0 THEN '{\"ok\": true}' END, "
        "CASE WHEN g %% 5 <> 0 THEN '200' ELSE '503' END, g %% 5 <> 0, "
        "CASE WHEN g %% 5 = 0 THEN 'upstream unavailable' END, (random() * 4000)::int, "
        "timestamp '2024-01-01' + random() * interval '30 days', "
        "CASE WHEN random() < 0.6 THEN 'corr-' || (random() * %s)::int END, 'user' || g %% 50 "
        "FROM generate_series(1, %s) g",
        [APPS, CORRELATIONS, logs],
    )
    conn.execute(
        f"INSERT INTO {SCHEMA}.applications (applicationid, customerid, requestedamount) "
        "SELECT g, 100000 + g %% %s, 25000.00 FROM generate_series(1, %s) g",
        [customers, customers * 2],
    )
    conn.execute(
        f"INSERT INTO {SCHEMA}.loans (loanid, applicationid, principal, interestrate) "
        "SELECT g, g, 25000.00, 0.0725 FROM generate_series(1, %s) g",
        [customers * 2],
    )
    conn.execute(
        f"INSERT INTO {SCHEMA}.payments (paymentid, loanid, paymentnumber, paymentdate, "
        "paymentamount, principalamount, interestamount, paymentmethod, paymentstatus, "
        "transactionid) SELECT g, 1 + g %% %s, 1 + g / 100, "
        "date '2024-01-01' + (random() * 365)::int, round((random() * 5000)::numeric, 2), "
        "100.00, 7.50, (ARRAY['ACH','Check','Online','Cash'])[1 + (random() * 3)::int], "
        "(ARRAY['Pending','Completed','Failed','Reversed'])[1 + (random() * 3)::int], "
        "CASE WHEN g %% 3 <> 0 THEN 'tx-' || g END FROM generate_series(1, %s) g",
        [customers * 2, payments],
    )
    conn.execute(INDEXES)


def fill_dynamodb(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    client = reads_client(settings)
    logs, pays = settings.tables
    for mapping in settings.tables:
        ensure_table(client, mapping)
    queries = {
        logs.name: f"SELECT * FROM {SCHEMA}.integrationlogs",
        pays.name: f"SELECT p.*, a.customerid FROM {SCHEMA}.payments p JOIN {SCHEMA}.loans l "
        f"ON l.loanid = p.loanid JOIN {SCHEMA}.applications a ON a.applicationid = l.applicationid",
    }
    for mapping in settings.tables:
        with conn.cursor(row_factory=dict_row) as cur:
            records = cur.execute(queries[mapping.name]).fetchall()
        items = [to_item(mapping, source_row(r))[0] for r in records]
        for start in range(0, len(items), 25):
            request = {
                mapping.name: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
            }
            while request:
                request = client.batch_write_item(RequestItems=request).get("UnprocessedItems")
        say(f"{mapping.name}: {len(items)} items loaded")


Call = tuple[tuple[Any, ...], dict[str, Any]]


def cases(
    rng: random.Random, conn: psycopg.Connection[Any], customers: int
) -> dict[str, Callable[[], Call]]:
    log_ids = [r[0] for r in conn.execute(f"SELECT logid FROM {SCHEMA}.integrationlogs")]
    pay_ids = [r[0] for r in conn.execute(f"SELECT paymentid FROM {SCHEMA}.payments")]
    page = {"limit": 50}

    def day(span: int = 0) -> str:
        return f"2024-01-{1 + rng.randint(0, DAYS - 1 - span):02d}"

    def month() -> tuple[str, str]:
        m = rng.randint(1, 11)
        return f"2024-{m:02d}-01", f"2024-{m:02d}-28"

    return {
        "logs_by_application": lambda: ((rng.randint(1, APPS),), page),
        "logs_by_service (6 h)": lambda: _six_hours(rng, day()),
        "logs_by_service (7 days)": lambda: _week(rng),
        "logs_by_correlation": lambda: ((f"corr-{rng.randint(0, CORRELATIONS)}",), page),
        "failures_of_day": lambda: ((day(),), page),
        "log_by_id": lambda: ((rng.choice(log_ids),), {}),
        "payments_by_customer": lambda: ((100000 + rng.randint(0, customers - 1),), page),
        "payments_by_customer (90 days)": lambda: (
            (100000 + rng.randint(0, customers - 1), "2024-03-01", "2024-05-29"),
            page,
        ),
        "payments_by_loan": lambda: ((rng.randint(1, customers * 2),), page),
        "payments_by_status (30 days)": lambda: (
            (rng.choice(["Pending", "Completed", "Failed", "Reversed"]), *month()),
            page,
        ),
        "payments_by_method (30 days)": lambda: (
            (rng.choice(["ACH", "Check", "Online", "Cash"]), *month()),
            page,
        ),
        "payment_by_id": lambda: ((rng.choice(pay_ids),), {}),
    }


def _week(rng: random.Random) -> Call:
    first = rng.randint(1, DAYS - 7)
    return (rng.choice(SERVICES), f"2024-01-{first:02d}", f"2024-01-{first + 7:02d}"), {"limit": 50}


def _six_hours(rng: random.Random, day: str) -> Call:
    hour = rng.randint(0, 17)
    start, end = f"{day}T{hour:02d}:00:00Z", f"{day}T{hour + 6:02d}:00:00Z"
    return (rng.choice(SERVICES), start, end), {"limit": 50}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=int, default=20_000)
    parser.add_argument("--payments", type=int, default=6_000)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--endpoint-port", type=int, default=28123)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    options = parser.parse_args()
    base = load_settings(None)
    settings = bench_settings(base, options.endpoint_port)
    with own_endpoint(options.endpoint_port):
        run_all(options, base, settings)


def run_all(options: argparse.Namespace, base: Settings, settings: Settings) -> None:
    conn = psycopg.connect(base.postgres.dsn(), autocommit=True)
    postgres = dynamo = None
    try:
        say(f"PostgreSQL: {options.logs} logs, {options.payments} payments in schema {SCHEMA}")
        fill_postgres(conn, options.logs, options.payments, options.customers)
        fill_dynamodb(settings, conn)
        postgres, dynamo = PostgresReads(settings), DynamoReads(settings)
        rng = random.Random(7)
        rows = [
            "| pattern | PostgreSQL p50 | p95 | DynamoDB p50 | p95 | rows/read | differ |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, make in cases(rng, conn, options.customers).items():
            method = name.split(" ")[0]
            timings: dict[str, list[float]] = {"postgres": [], "dynamodb": []}
            sizes, differ = [], 0
            for n in range(options.reads + 10):
                args, kwargs = make()
                answers = []
                for store, reader in (("postgres", postgres), ("dynamodb", dynamo)):
                    started = time.perf_counter()
                    answer = getattr(reader, method)(*args, **kwargs)
                    elapsed = time.perf_counter() - started
                    if n >= 10:  # warm-up
                        timings[store].append(elapsed * 1000)
                    answers.append(answer)
                differ += not same(answers[0], answers[1])
                result = answers[0]
                sizes.append(len(result.rows) if hasattr(result, "rows") else int(bool(result)))
            pg, dy = timings["postgres"], timings["dynamodb"]
            rows.append(
                f"| {name} | {statistics.median(pg):.1f} ms | {percentile(pg, 0.95):.1f} ms | "
                f"{statistics.median(dy):.1f} ms | {percentile(dy, 0.95):.1f} ms | "
                f"{statistics.mean(sizes):.1f} | {differ} |"
            )
            say(rows[-1])
        print("\n".join(rows))
    finally:
        if postgres is not None:
            postgres.close()
        if not options.keep:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.close()


if __name__ == "__main__":
    main()
