"""`replicator purge`'s delete rate, unthrottled (outside CI).

Uses its own PostgreSQL database on the stack's server, ``purgebench`` (not captured by the
connector: the slot is per database), as both the source and the control database, and a
replication origin of its own, so the shared tables and a concurrent purge see nothing:

    .venv/bin/python bench/purge_bench.py --rows 100000 --batch 500 --batch 1000 --batch 5000

Each run fills ``purgebench.dbo.integrationlogs`` with ``--rows`` rows of 1985 (about 300 bytes
each) and purges them with ``--rate`` unbounded, through ``replicator.ops.purge.purge`` (the
origin-tagged session, batches in primary-key order, the window's count updated per batch).
The gates are satisfied by construction (the table forced to dynamodb-only, a clean full verify
recorded, the lag bound lifted): they are what the integration test checks, not what this
measures. Prints rows/s per run and the median per batch size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from importlib import resources

import psycopg

from replicator.config import Settings, load_settings
from replicator.ops.phases import Phase, PhaseStore
from replicator.ops.purge import PurgeOptions, purge
from replicator.ops.verify import VerifyReport, record_run

DATABASE = "purgebench"


def bench_settings(base: Settings) -> Settings:
    pg = base.postgres.model_copy(update={"database": DATABASE})
    return base.model_copy(
        update={
            "postgres": pg,
            "control": base.control.model_copy(update={"dsn": pg.dsn()}),
            "phases": base.phases.model_copy(update={"incident_window_h": 0, "max_lag_s": 1e12}),
            "purge": base.purge.model_copy(update={"origin": "replicator_purge_bench"}),
        }
    )


def prepare(base: Settings) -> None:
    with psycopg.connect(base.postgres.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")


def fill(s: Settings, rows: int) -> None:
    schema = resources.files("replicator.stack").joinpath("sql", "source_schema.sql").read_text()
    with psycopg.connect(s.postgres.dsn(), autocommit=True) as conn:
        conn.execute(schema)
        conn.execute("TRUNCATE dbo.integrationlogs RESTART IDENTITY")
        conn.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            "statuscode, issuccess, logtimestamp, correlationid) SELECT g %% 500, "
            "'Credit Check', 'CreditCheckService', repeat('x', 200), '200', g %% 7 > 0, "
            "timestamp '1985-01-01' + g * interval '1 second', 'bench-' || g "
            "FROM generate_series(1, %s) AS g",
            [rows],
        )
        conn.execute("VACUUM ANALYZE dbo.integrationlogs")


def gates(s: Settings, table: str) -> None:
    store = PhaseStore(s)
    try:
        store.set(table, Phase.DYNAMODB_ONLY, who="bench", why="bench", force=True)
    finally:
        store.close()
    now = dt.datetime.now(dt.UTC)
    record_run(s, VerifyReport(table, "full", now, now))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = load_settings(None)
    prepare(base)
    s = bench_settings(base)
    table = next(m.name for m in s.tables if m.source == "dbo.integrationlogs")
    for batch in args.batch or [1000]:
        rates = []
        for run in range(args.runs):
            fill(s, args.rows)
            gates(s, table)
            began = time.monotonic()
            result = purge(
                s,
                PurgeOptions(
                    table=table, before="1986-01-01", who="bench", why="bench", batch=batch,
                    rate=1e12,
                ),
            )  # fmt: skip
            wall = time.monotonic() - began
            assert result.rows == args.rows, result
            rates.append(result.rate)
            print(
                f"batch {batch} run {run + 1}: {result.rows} rows in {result.seconds:.2f} s "
                f"({result.rate:,.0f} rows/s; {wall:.2f} s with the gates and bookkeeping)",
                flush=True,
            )
        print(f"batch {batch}: median {statistics.median(rates):,.0f} rows/s", flush=True)


if __name__ == "__main__":
    main()
