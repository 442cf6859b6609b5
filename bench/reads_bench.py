"""Read latency per access pattern on each store, through the read path's two stores
(``PostgresReads`` and ``DynamoReads``, which ``ReadPath`` routes to by phase).

    .venv/bin/replicator stack up          # PostgreSQL (the bench starts its own endpoint)
    .venv/bin/python bench/reads_bench.py [--logs 20000] [--payments 6000] [--reads 200]
        [--shards 1 4] [--stack-endpoint]

The data lives apart from the replicated tables, so it makes no CDC traffic: a schema of its own
(``readsbench``: copies of dbo's four tables, with the indexes an application would keep for
these patterns) and a DynamoDB endpoint of its own (dynoxide, ``--endpoint-port``), started and
stopped here. Items are loaded into DynamoDB through the mapping (``to_item``), as the sink
builds them. Each pattern is read ``--reads`` times per store (after a warm-up) with random
parameters, one page of up to 50 rows; every read's two answers are compared and any difference
is counted. Prints a Markdown table of p50/p95 per pattern and store.

``--shards 1 4`` measures IntegrationLogs once per shard count on the same data: a table per
count, keyed as tests/unit/factories.py's shard_logs keys it (the table key and the
application and failure indexes carry logid mod N; correlation does not); the rows of N > 1
are the log patterns only (payments do not change). ``--stack-endpoint`` reads and writes the
local stack's endpoint (``dynamodb.endpoint_url``, its own ``*_readsbench*`` tables, dropped
first) instead of starting one.
"""

from __future__ import annotations

import argparse
import contextlib
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


# The sharded IntegrationLogs of tests/unit/factories.py (shard_logs), restated: the bench is
# not a test and does not import them.
SHARDED_KEYS = {
    "PK": "{servicename}-{logtimestamp:date}#{logid:shard}",
    "GSI1PK": "APP#{applicationid}#{logid:shard}",
    "GSI3PK": "ERROR#{logtimestamp:date}#{logid:shard}",
}
SHARDED_PATTERNS = {
    "logs_by_service": "{service}-{day}#{shard}",
    "logs_by_application": "APP#{application_id}#{shard}",
    "failures_of_day": "ERROR#{day}#{shard}",
}


def shard_logs(table: dict[str, Any], shards: int) -> None:
    table["shards"] = shards
    table["partition_key"]["template"] = SHARDED_KEYS["PK"]
    for derived in table["derived"]:
        derived["template"] = SHARDED_KEYS.get(derived["attribute"], derived["template"])
    for pattern in table["reads"]["patterns"]:
        pattern["partition"] = SHARDED_PATTERNS.get(pattern["name"], pattern.get("partition"))


def bench_settings(base: Settings, endpoint: str, shards: int = 1) -> Settings:
    data = base.model_dump(mode="json")
    data["postgres"]["password"] = base.postgres.password.get_secret_value()
    data["postgres"]["replication_password"] = "unused"
    data["postgres"]["schema_name"] = SCHEMA
    data["dynamodb"]["endpoint_url"] = endpoint
    data["dynamodb"]["secret_access_key"] = "local"
    data["reads"]["dynamodb_timeout_s"] = 30.0
    for table in data["tables"]:
        table["name"] = f"{table['name']}_readsbench" + (f"_s{shards}" if shards > 1 else "")
        table["source"] = table["source"].replace("dbo.", f"{SCHEMA}.")
        if table["reads"].get("postgres_rows"):  # payments' join to their customers
            table["reads"]["postgres_rows"] = table["reads"]["postgres_rows"].replace(
                "dbo.", f"{SCHEMA}."
            )
        if shards > 1 and table["source"].endswith(".integrationlogs"):
            shard_logs(table, shards)
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


def fill_dynamodb(settings: Settings, conn: psycopg.Connection[Any], fresh: bool) -> None:
    """Load the tables through the mapping; ``fresh``: drop them first (a shared endpoint
    keeps an earlier run's items, whose random timestamps are keys no more)."""
    client = reads_client(settings)
    logs, pays = settings.tables
    for mapping in settings.tables:
        if fresh:
            with contextlib.suppress(client.exceptions.ResourceNotFoundException):
                client.delete_table(TableName=mapping.name)
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
    parser.add_argument(
        "--stack-endpoint",
        action="store_true",
        help="use the local stack's DynamoDB endpoint instead of starting one",
    )
    parser.add_argument(
        "--shards", type=int, nargs="+", default=[1], help="IntegrationLogs shard counts"
    )
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    options = parser.parse_args()
    base = load_settings(None)
    if options.stack_endpoint:
        if not base.dynamodb.endpoint_url:
            raise SystemExit("--stack-endpoint: dynamodb.endpoint_url is not set")
        run_all(options, base, base.dynamodb.endpoint_url)
        return
    with own_endpoint(options.endpoint_port) as endpoint:
        run_all(options, base, endpoint)


def run_all(options: argparse.Namespace, base: Settings, endpoint: str) -> None:
    conn = psycopg.connect(base.postgres.dsn(), autocommit=True)
    stores: dict[int, tuple[PostgresReads, DynamoReads]] = {}
    try:
        say(f"PostgreSQL: {options.logs} logs, {options.payments} payments in schema {SCHEMA}")
        fill_postgres(conn, options.logs, options.payments, options.customers)
        for shards in options.shards:
            settings = bench_settings(base, endpoint, shards)
            fill_dynamodb(settings, conn, fresh=options.stack_endpoint)
            # A PostgreSQL reader per count too: rows carry the key, which the count changes.
            stores[shards] = PostgresReads(settings), DynamoReads(settings)
        rows = [
            "| pattern | shards | PostgreSQL p50 | p95 | DynamoDB p50 | p95 | rows/read | differ |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        rows += measure(options, conn, stores)
        print("\n".join(rows))
    finally:
        for pair in stores.values():
            for reader in pair:
                reader.close()
        if not options.keep:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.close()


def measure(
    options: argparse.Namespace,
    conn: psycopg.Connection[Any],
    stores: dict[int, tuple[PostgresReads, DynamoReads]],
) -> list[str]:
    """One table row per pattern and shard count (log patterns only when sharded: payments do
    not change). Each read asks every shard count's table in turn with the same parameters, so
    the machine's load, which drifts on a shared host, falls on all of them alike."""
    rng = random.Random(7)
    rows = []
    for name, make in cases(rng, conn, options.customers).items():
        method = name.split(" ")[0]
        counts = [n for n in stores if n == 1 or method.startswith(("logs", "log_", "failures"))]
        timings: dict[tuple[int, str], list[float]] = {
            (count, store): [] for count in counts for store in ("postgres", "dynamodb")
        }
        sizes: list[int] = []
        differ = dict.fromkeys(counts, 0)
        for n in range(options.reads + 10):
            args, kwargs = make()
            for count in counts:
                answers = []
                for store, reader in zip(("postgres", "dynamodb"), stores[count], strict=True):
                    started = time.perf_counter()
                    answers.append(getattr(reader, method)(*args, **kwargs))
                    if n >= 10:  # warm-up
                        timings[count, store].append((time.perf_counter() - started) * 1000)
                differ[count] += not same(answers[0], answers[1])
            result = answers[0]
            sizes.append(len(result.rows) if hasattr(result, "rows") else int(bool(result)))
        for count in counts:
            pg, dy = timings[count, "postgres"], timings[count, "dynamodb"]
            rows.append(
                f"| {name} | {count} | {statistics.median(pg):.1f} ms | "
                f"{percentile(pg, 0.95):.1f} ms | "
                f"{statistics.median(dy):.1f} ms | {percentile(dy, 0.95):.1f} ms | "
                f"{statistics.mean(sizes):.1f} | {differ[count]} |"
            )
            say(rows[-1])
    return rows


if __name__ == "__main__":
    main()
