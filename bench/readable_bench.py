"""Commit-to-readable p50/p99 while a workload writes --rate IntegrationLogs rows per second for
--duration seconds (issue 14 part 5: 1,000 rows/s for 5 minutes, p99 at most 1 s), split at
the moment Kafka appended each record.

    ./dev setup && .venv/bin/replicator stack up && .venv/bin/replicator connector apply \\
        && .venv/bin/replicator tables create
    .venv/bin/python bench/readable_bench.py --rate 1000 --duration 300 --lane transact

Against the configured stack. `replicator run` runs as a child on the live consumer group
(``dynamodb.guarded_lane`` = --lane; its metrics endpoint off) and must first catch up with
what the topic holds. A writer inserts rows in transactions of --per-commit rows, paced to
--rate (it says so when PostgreSQL or the machine cannot keep that pace), and records each
commit's time. Every --sample-th row is watched: a poller asks DynamoDB for the watched keys
still missing (consistent BatchGetItem, 100 at a time, over and over) and stamps each when it is
first seen. An observer consumer records when Kafka appended each watched row's record (the
broker's timestamp), which splits the path into Debezium + Connect (commit -> Kafka) and the
replicator + endpoint (Kafka -> readable). The live group's lag is sampled every 2 s: a lag
that grows during the run means the consumer side cannot take the rate.

Clocks: one machine, wall clock (time.time) on every side; the broker's append time is in ms.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from confluent_kafka import Consumer

from replicator.config import load_settings
from replicator.core.mapper import mapper
from replicator.observe.lag import consumer_lag
from replicator.stream.dynamo import dynamodb_client

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("CreditCheckService", "PaymentGateway", "EmailService")
EPOCH = datetime(1970, 1, 1)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<36} n=0"
    return (
        f"{name:<36} n={len(values):<6} p50={pct(values, 0.5) * 1e3:8.1f} ms  "
        f"p95={pct(values, 0.95) * 1e3:8.1f} ms  p99={pct(values, 0.99) * 1e3:8.1f} ms  "
        f"max={max(values) * 1e3:8.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="rows per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of writing")
    parser.add_argument("--per-commit", type=int, default=10, help="rows per transaction")
    parser.add_argument("--sample", type=int, default=20, help="watch every N-th row")
    parser.add_argument("--lane", choices=["single", "transact"], default="transact")
    parser.add_argument("--drain-s", type=float, default=120.0, help="wait for stragglers")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.per_commit < 1 or args.sample < 1:
        parser.error("--rate, --duration, --per-commit and --sample must be positive")
    settings = load_settings(None)
    logs = next((m for m in settings.tables if m.source == "dbo.integrationlogs"), None)
    if logs is None:
        raise SystemExit("no mapping of dbo.integrationlogs in the settings")
    topic = settings.topic_of(logs)
    key_of = mapper(logs).item_key
    dynamo = dynamodb_client(settings.dynamodb, 4)
    stop = threading.Event()

    committed: dict[int, float] = {}  # logid -> commit time, watched rows
    keys: dict[int, dict] = {}  # logid -> item key, watched rows
    appended: dict[int, float] = {}
    readable: dict[int, float] = {}
    pending: dict[int, None] = {}  # watched, not yet seen (ordered: oldest first)
    lock = threading.Lock()
    lags: list[tuple[float, int]] = []
    loads: list[tuple[float, float]] = []

    def observe() -> None:  # when Kafka appended each watched row's record
        c = Consumer(
            {
                "log_level": 3,
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "group.id": f"readable-observer-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
            }
        )
        c.subscribe([topic])
        while not stop.is_set():
            for m in c.consume(500, 0.1):
                if m.error() or not m.value():
                    continue
                logid = int(m.key().split(b":")[1].rstrip(b"}"))
                if logid % args.sample == 0:
                    appended[logid] = m.timestamp()[1] / 1000
        c.close()

    def poll() -> None:  # watched keys still missing, 100 per consistent BatchGetItem
        while not stop.is_set():
            with lock:
                batch = list(pending)[:100]
            if not batch:
                time.sleep(0.002)
                continue
            by_key = {tuple(sorted((k, v["S"]) for k, v in keys[i].items())): i for i in batch}
            answer = dynamo.batch_get_item(
                RequestItems={
                    logs.name: {
                        "Keys": [keys[i] for i in batch],
                        "ConsistentRead": True,
                        "ProjectionExpression": "PK, SK",
                    }
                }
            )
            seen = time.time()
            with lock:
                for item in answer["Responses"].get(logs.name, []):
                    logid = by_key.get(tuple(sorted((k, v["S"]) for k, v in item.items())))
                    if logid is not None and logid in pending:
                        readable[logid] = seen
                        del pending[logid]

    def sample_lag() -> None:
        while not stop.wait(2.0):
            lag = consumer_lag(settings).get(logs.name)
            if lag is not None:
                lags.append((time.time(), lag.events))
            loads.append((time.time(), os.getloadavg()[0]))

    env = {
        **os.environ,
        "REPLICATOR_DYNAMODB__GUARDED_LANE": args.lane,
        "REPLICATOR_METRICS__ENABLED": "false",
    }
    consumer = subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    threads = [threading.Thread(target=f, daemon=True) for f in (observe, poll, sample_lag)]
    rng = random.Random(14)
    written = 0
    late_ticks = 0
    try:
        deadline = time.monotonic() + 600
        while (lag := consumer_lag(settings).get(logs.name)) is None or lag.events > 0:
            if consumer.poll() is not None:
                raise SystemExit(f"replicator run exited {consumer.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("the consumer did not catch up with the topic in 10 minutes")
            time.sleep(1)
        for t in threads:
            t.start()
        time.sleep(3)  # the observer has joined (it reads from the end)
        say(
            f"consumer caught up; writing {args.rate:g} rows/s for {args.duration:g} s in "
            f"commits of {args.per_commit}, watching 1 in {args.sample}, lane {args.lane}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        load_during: list[float] = []
        values = ", ".join(
            ["(NULL, 'Bench', %s, %s, '{}', '200', true, 1, clock_timestamp())"] * args.per_commit
        )
        insert = (
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            f"responsedata, statuscode, issuccess, processingtimems, logtimestamp) VALUES {values} "
            "RETURNING logid, servicename, logtimestamp"
        )  # fmt: skip
        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            period = args.per_commit / args.rate
            started = time.monotonic()
            next_at = started
            while (now := time.monotonic()) < started + args.duration:
                if now < next_at:
                    time.sleep(next_at - now)
                elif now - next_at > 0.05:
                    late_ticks += 1
                params: list[object] = []
                for _ in range(args.per_commit):
                    params += [rng.choice(SERVICES), "x" * rng.randint(100, 400)]
                rows = conn.execute(insert, params).fetchall()
                at = time.time()
                written += len(rows)
                for logid, service, stamp in rows:
                    if logid % args.sample:
                        continue
                    micros = (stamp - EPOCH) // timedelta(microseconds=1)
                    key = key_of({"logid": logid, "servicename": service, "logtimestamp": micros})
                    with lock:
                        committed[logid] = at
                        keys[logid] = key
                        pending[logid] = None
                next_at += period
                if written % (args.per_commit * 1000) == 0:
                    load_during.append(os.getloadavg()[0])
            wrote_s = time.monotonic() - started
        say(
            f"wrote {written} rows in {wrote_s:.1f} s = {written / wrote_s:.0f} rows/s "
            f"({late_ticks} commits more than 50 ms behind the pace); waiting for the rest"
        )
        end = time.monotonic() + args.drain_s
        while pending and time.monotonic() < end:
            time.sleep(0.5)
    finally:
        stop.set()
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
    total = [readable[i] - committed[i] for i in readable]
    to_kafka = [appended[i] - committed[i] for i in readable if i in appended]
    from_kafka = [readable[i] - appended[i] for i in readable if i in appended]
    print(show("commit -> readable in DynamoDB", total))
    print(show("  commit -> appended to Kafka", to_kafka))
    print(show("  appended to Kafka -> readable", from_kafka))
    print(f"watched rows never readable within {args.drain_s:g} s after the end: {len(pending)}")
    if lags:
        print(
            f"live group lag during the run: median {statistics.median(e for _, e in lags):.0f}, "
            f"max {max(e for _, e in lags)} events; last {lags[-1][1]}"
        )
    if load_during:
        print(f"load average while writing: {min(load_during):.1f}-{max(load_during):.1f}")
    # Per minute of the run: when the tail grows, and whether the lag and the load went with it.
    print(f"\n{'minute':>6} {'watched':>8} {'p50 ms':>8} {'p99 ms':>8} {'to Kafka p99':>13} "
          f"{'max lag':>8} {'load':>5}")  # fmt: skip
    first = min(committed.values(), default=0.0)
    for minute in range(int(args.duration // 60) + 1):
        low, high = first + 60 * minute, first + 60 * (minute + 1)
        ids = [i for i in readable if low <= committed[i] < high]
        if not ids:
            continue
        spans = [readable[i] - committed[i] for i in ids]
        kafka = [appended[i] - committed[i] for i in ids if i in appended] or [0.0]
        lag = max((e for t, e in lags if low <= t < high), default=0)
        load = max((v for t, v in loads if low <= t < high), default=0.0)
        print(
            f"{minute + 1:>6} {len(ids):>8} {pct(spans, 0.5) * 1e3:>8.0f} "
            f"{pct(spans, 0.99) * 1e3:>8.0f} {pct(kafka, 0.99) * 1e3:>13.0f} {lag:>8} {load:>5.1f}"
        )


if __name__ == "__main__":
    main()
