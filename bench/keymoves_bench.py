"""Applied events/s of the live consumer on a workload with 10% key moves, into an
IntegrationLogs table pre-filled to --items items (issue 14 part 5: at least 1,000 events/s).

    ./dev setup && .venv/bin/replicator stack up && .venv/bin/replicator connector apply \\
        && .venv/bin/replicator tables create
    .venv/bin/python bench/keymoves_bench.py --items 100000 --events 30000 \\
        --lane single --lane transact

Against the configured stack (its dbo.integrationlogs, its topic, its DynamoDB endpoint and the
live consumer group):

1. Pre-fill, when the live table holds fewer than --items items: rows are inserted into
   dbo.integrationlogs until it holds --items, Debezium streams them, and `replicator backfill
   --table dbo.integrationlogs --handoff` loads them into the live table (guarded writes,
   ``--prefill-lane``: the live table is never the batch lane's) and hands the live group the
   offsets where the load ended.
2. Per --lane: a workload of --events row changes is committed while no consumer runs: per
   round of 1,000, 10% key moves (an UPDATE moving logtimestamp by a day, which changes the
   item's partition and sort key: a new item and a delete marker at the old key), 30% updates
   of other columns, 60% inserts, each kind one statement per round. Once the topic holds them
   all, `replicator run` (``dynamodb.guarded_lane`` = the lane) starts on that backlog; the
   live group's lag is sampled every 0.5 s, and the rate is the events committed between the
   first sample that moved and the one at zero, over that time (the group's join is not in it).
   The consumer's CPU (getrusage of the child) and the endpoint's (dynoxide's /proc stat,
   when it runs on this machine) over the drain say where the time goes.

3. With --naive-events N: the same workload of N changes drained by the naive sink (one boto3
   conditional PutItem per write, sequential: a key move's new item, then its old key's delete
   marker), reading the live group's backlog from its committed offsets and committing them
   when done, so the live group goes on after it.

A backlog drained is the most the consumer applies per second; a source writing at that rate
would keep it there.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill_bench import INSERT  # noqa: E402  (beside this file)

from replicator.config import Settings, load_settings  # noqa: E402
from replicator.observe.lag import consumer_lag  # noqa: E402

MOVE = (
    "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval '1 day' "
    "WHERE logid = ANY(%s)"
)
TOUCH = (
    "UPDATE dbo.integrationlogs SET statuscode = '201', processingtimems = processingtimems + 1 "
    "WHERE logid = ANY(%s)"
)
ROUND = 1000


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def topic_end(settings: Settings, topic: str) -> int:
    """Records the topic has held (sum of its partitions' high watermarks)."""
    probe = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "keymoves-probe"}
    )
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        )
    finally:
        probe.close()


def wait_for_topic(settings: Settings, topic: str, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (end := topic_end(settings, topic)) < at_least:
        if time.monotonic() > deadline:
            raise SystemExit(f"{topic} holds {end} records, {at_least} expected: is Connect up?")
        time.sleep(1)
    return end


def child_env(settings: Settings, lane: str) -> dict[str, str]:
    return {
        **os.environ,
        "REPLICATOR_DYNAMODB__GUARDED_LANE": lane,
        "REPLICATOR_METRICS__ENABLED": "false",  # no port of its own to collide with
    }


def prefill(settings: Settings, conn: psycopg.Connection, items: int, lane: str) -> None:
    topic = settings.topic_of(next(iter(settings.tables)))
    rows = conn.execute("SELECT count(*) FROM dbo.integrationlogs").fetchone()[0]  # type: ignore[index]
    if rows < items:
        start = conn.execute("SELECT coalesce(max(logid), 0) FROM dbo.integrationlogs").fetchone()
        first = start[0] + 1  # type: ignore[index]
        say(f"inserting {items - rows} rows (the table holds {rows})")
        for low in range(first, first + items - rows, 50_000):
            conn.execute(INSERT, [low, min(first + items - rows - 1, low + 49_999)])
    end = wait_for_topic(settings, topic, items, 600)
    say(f"{topic} holds {end} records; backfill into the live table, --handoff, lane {lane}")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "replicator.cli", "backfill", "--table", "dbo.integrationlogs",
         "--handoff"],
        env=child_env(settings, lane), cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"backfill failed:\n{done.stderr[-3000:]}")
    say(f"pre-fill loaded in {time.monotonic() - started:.0f} s: {done.stdout.strip()[-400:]}")


def workload(conn: psycopg.Connection, events: int, moves: float, rng: random.Random) -> dict:
    """Commit ``events`` row changes, per round of ROUND: moves, other updates, inserts."""
    counts = {"key moves": 0, "updates": 0, "inserts": 0}
    low, high = conn.execute("SELECT min(logid), max(logid) FROM dbo.integrationlogs").fetchone()  # type: ignore[misc]
    for _ in range(max(1, events // ROUND)):
        n_moves = round(ROUND * moves)
        n_updates = round(ROUND * 0.3)
        ids = rng.sample(range(low, high + 1), n_moves + n_updates)  # distinct rows per round
        counts["key moves"] += conn.execute(MOVE, [ids[:n_moves]]).rowcount
        counts["updates"] += conn.execute(TOUCH, [ids[n_moves:]]).rowcount
        start = conn.execute("SELECT max(logid) FROM dbo.integrationlogs").fetchone()[0] + 1  # type: ignore[index]
        n_inserts = ROUND - n_moves - n_updates
        counts["inserts"] += conn.execute(INSERT, [start, start + n_inserts - 1]).rowcount
    return counts


def cpu_ticks(pid: int) -> float | None:
    """utime + stime of a process, seconds; None when it is not on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def endpoint_pid(settings: Settings) -> int | None:
    port = str(settings.stack.dynamodb_port)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dynoxide") and port.encode() in argv:
            return int(entry.name)
    return None


def drain(settings: Settings, lane: str, expected: int) -> dict[str, float]:
    """`replicator run` on the backlog until the live group's lag is zero."""
    table = next(iter(settings.tables)).name
    endpoint = endpoint_pid(settings)
    child = subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "run"],
        env=child_env(settings, lane),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.extend(child.stderr or []), daemon=True)
    reader.start()
    samples: list[tuple[float, int]] = []
    endpoint_cpu: list[float] = []
    try:
        initial = consumer_lag(settings)[table].events
        deadline = time.monotonic() + max(600.0, expected / 50)
        while True:
            if child.poll() is not None:
                raise SystemExit(f"run exited {child.returncode}:\n{b''.join(errors)[-3000:]!r}")
            now, lag = time.monotonic(), consumer_lag(settings)[table].events
            samples.append((now, lag))
            if lag < initial and len(endpoint_cpu) == 0 and endpoint is not None:
                endpoint_cpu.append(cpu_ticks(endpoint) or 0.0)
            if lag == 0:
                break
            if now > deadline:
                raise SystemExit(f"lag still {lag} after {now - samples[0][0]:.0f} s")
            time.sleep(0.5)
        if endpoint is not None and endpoint_cpu:
            endpoint_cpu.append(cpu_ticks(endpoint) or 0.0)
    finally:
        child.send_signal(signal.SIGTERM)
        _pid, _status, usage = os.wait4(child.pid, 0)
    moved = next(i for i, (_, lag) in enumerate(samples) if lag < initial)
    start_t, start_lag = samples[max(0, moved - 1)] if moved else samples[0]
    seconds = samples[-1][0] - start_t
    consumer_cpu = usage.ru_utime + usage.ru_stime
    out = {
        "events": float(start_lag),
        "seconds": seconds,
        "events/s": start_lag / seconds,
        "consumer CPU ms/event": consumer_cpu * 1000 / initial,
        "backlog": float(initial),
    }
    if len(endpoint_cpu) == 2:
        out["endpoint CPU ms/event"] = (endpoint_cpu[1] - endpoint_cpu[0]) * 1000 / start_lag
        out["endpoint CPU share"] = (endpoint_cpu[1] - endpoint_cpu[0]) / seconds
    return out


def naive_drain(settings: Settings, topic: str) -> dict[str, float]:
    """The live group's backlog through the naive sink: decode, map and plan by our functions,
    then one boto3 conditional PutItem per write, one after another; the offsets committed at
    the end for the live group."""
    from botocore.exceptions import ClientError

    from replicator.core.decode import decode
    from replicator.core.events import ChangeEvent, Origin
    from replicator.stream.dynamo import dynamodb_client
    from replicator.stream.pipeline import to_change
    from replicator.stream.sink import action, plan

    mapping = next(iter(settings.tables))
    client = dynamodb_client(settings.dynamodb, 1)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.kafka.group_id,  # the live group: no member runs meanwhile
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed}
        consumer.assign(committed)
        todo = sum(ends[tp.partition] - max(tp.offset, 0) for tp in committed)
        done = writes = 0
        started, cpu = time.monotonic(), time.process_time()
        last: dict[int, int] = {}
        while done < todo:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            done += 1
            last[message.partition()] = message.offset()
            origin = Origin(message.topic(), message.partition(), message.offset())
            event = decode(message.key(), message.value(), origin)
            if not isinstance(event, ChangeEvent):
                continue
            for write in plan([to_change(mapping, event)]):
                writes += 1
                try:
                    client.put_item(**action(write, int(time.time()))["Put"])
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                        raise
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        consumer.commit(
            offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False
        )
    finally:
        consumer.close()
    return {
        "events": float(done),
        "writes": float(writes),
        "seconds": seconds,
        "events/s": done / seconds,
        "naive CPU ms/event": cpu * 1000 / done,
    }


def count_items(settings: Settings) -> int:
    from replicator.stream.dynamo import dynamodb_client

    client = dynamodb_client(settings.dynamodb)
    table = next(iter(settings.tables)).name
    total, start = 0, None
    while True:
        page = client.scan(
            TableName=table, Select="COUNT", **({"ExclusiveStartKey": start} if start else {})
        )
        total += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="rows / items to pre-fill")
    parser.add_argument("--events", type=int, default=30_000, help="row changes per lane")
    parser.add_argument("--moves", type=float, default=0.10, help="share of key moves")
    parser.add_argument(
        "--lane", action="append", choices=["single", "transact"], help="guarded lane(s) to run"
    )
    parser.add_argument(
        "--naive-events", type=int, default=0, help="also drain this many through naive"
    )
    parser.add_argument("--prefill-lane", choices=["single", "transact"], default="transact")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    if not 0 <= args.moves <= 0.7:
        parser.error("--moves: a share between 0 and 0.7")
    settings = load_settings(None)
    logs = next((m for m in settings.tables if m.source == "dbo.integrationlogs"), None)
    if logs is None or next(iter(settings.tables)) is not logs:
        raise SystemExit("the benchmark needs dbo.integrationlogs as the first table mapping")
    topic = settings.topic_of(logs)
    rng = random.Random(args.seed)
    say(f"load average {os.getloadavg()[0]:.1f}; {settings.dynamodb.endpoint_url}")
    with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
        items = count_items(settings)
        if items < args.items:
            prefill(settings, conn, args.items, args.prefill_lane)
            items = count_items(settings)
        say(f"{logs.name} holds {items} items (delete markers included)")
        for lane in args.lane or ["single"]:
            before = topic_end(settings, topic)
            started = time.monotonic()
            counts = workload(conn, args.events, args.moves, rng)
            total = sum(counts.values())
            wait_for_topic(settings, topic, before + total, 600)
            say(
                f"workload: {counts} committed and on the topic in "
                f"{time.monotonic() - started:.0f} s; draining with guarded lane {lane}, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            result = drain(settings, lane, total)
            shown = [f"{k} {v:,.2f}" if v < 100 else f"{k} {v:,.0f}" for k, v in result.items()]
            say(f"lane {lane}: {', '.join(shown)}; load average {os.getloadavg()[0]:.1f}")
        if args.naive_events:
            before = topic_end(settings, topic)
            counts = workload(conn, args.naive_events, args.moves, rng)
            wait_for_topic(settings, topic, before + sum(counts.values()), 600)
            say(f"workload: {counts}; draining with the naive sink")
            result = naive_drain(settings, topic)
            shown = [f"{k} {v:,.2f}" if v < 100 else f"{k} {v:,.0f}" for k, v in result.items()]
            say(f"naive: {', '.join(shown)}; load average {os.getloadavg()[0]:.1f}")
        say(f"{logs.name} holds {count_items(settings)} items (delete markers included)")


if __name__ == "__main__":
    main()
