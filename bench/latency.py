"""Commit-to-readable latency through the real local stack: a PostgreSQL commit until the item
is readable (consistent GetItem) in DynamoDB, split at the moment Kafka appended the record.

    ./dev setup && .venv/bin/replicator stack up && .venv/bin/replicator connector apply \
        && .venv/bin/replicator tables create
    .venv/bin/python bench/latency.py --rows 200

Starts `replicator run` as a child process (own consumer group), inserts one payment at a time,
and polls DynamoDB every 2 ms. It also samples the resident memory of the stack's processes
(PostgreSQL, Kafka, Connect, moto, the consumer) and prints the peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer

from replicator.config import load_settings
from replicator.stream.dynamo import dynamodb_client


def rss_mib(pattern: str) -> float:
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def stack_rss() -> float:
    return sum(
        rss_mib(p)
        for p in ("replicator.stack=", "moto.server", "postgres: |bin/postgres", "replicator.cli")
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    s = load_settings(None)
    dynamo = dynamodb_client(s.dynamodb)
    topic = f"{s.connector.topic_prefix}.dbo.payments"

    appended: dict[int, float] = {}
    stop = threading.Event()

    def observe() -> None:  # when Kafka appended each record (broker/producer timestamp)
        c = Consumer(
            {
                "log_level": 3,
                "bootstrap.servers": s.kafka.bootstrap_servers,
                "group.id": f"latency-observer-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
            }
        )
        c.subscribe([topic])
        while not stop.is_set():
            m = c.poll(0.1)
            if m is not None and not m.error() and m.value():
                key = int(m.key().split(b":")[1].rstrip(b"}"))
                appended[key] = m.timestamp()[1] / 1000
        c.close()

    peak = [0.0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], stack_rss())
            time.sleep(0.5)

    consumer = subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "REPLICATOR_KAFKA__GROUP_ID": f"latency-{uuid.uuid4().hex[:6]}"},
    )
    threads = [
        threading.Thread(target=observe, daemon=True),
        threading.Thread(target=sample, daemon=True),
    ]
    for t in threads:
        t.start()
    time.sleep(8)  # consumer joins and catches up with the topic's history
    total, to_kafka, from_kafka = [], [], []
    with psycopg.connect(s.postgres.dsn(), autocommit=True) as conn:
        loan, customer = conn.execute(
            "SELECT l.loanid, a.customerid FROM dbo.loans l JOIN dbo.applications a "
            "USING (applicationid) LIMIT 1"
        ).fetchone()
        for i in range(args.rows):
            pid = conn.execute(
                "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
                "principalamount, interestamount, paymentmethod) VALUES "
                "(%s, %s, '2024-06-01', 10.00, 9.00, 1.00, 'ACH') RETURNING paymentid",
                [loan, i],
            ).fetchone()[0]
            committed = time.time()
            key = {
                "CustomerId": {"N": str(customer)},
                "PaymentDateId": {"S": f"2024-06-01#{pid:010d}"},
            }
            while "Item" not in dynamo.get_item(TableName="Payments", Key=key, ConsistentRead=True):
                time.sleep(0.002)
            readable = time.time()
            total.append(readable - committed)
            if pid in appended:
                to_kafka.append(appended[pid] - committed)
                from_kafka.append(readable - appended[pid])
            time.sleep(0.05)
    stop.set()
    consumer.terminate()
    consumer.wait(30)

    def show(name: str, values: list[float]) -> None:
        q = statistics.quantiles(values, n=100)
        print(
            f"{name:<34} n={len(values):<4} p50={q[49] * 1000:7.1f} ms  "
            f"p95={q[94] * 1000:7.1f} ms  p99={q[98] * 1000:7.1f} ms  "
            f"max={max(values) * 1000:7.1f} ms"
        )

    show("commit -> readable in DynamoDB", total)
    show("  commit -> appended to Kafka", to_kafka)
    show("  appended to Kafka -> readable", from_kafka)
    print(f"peak resident memory of the stack + consumer: {peak[0]:.0f} MiB")


if __name__ == "__main__":
    main()
