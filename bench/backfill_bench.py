"""Backfill (topic replay) rate and memory, and the live consumer's lag while a backfill runs.
Outside CI. Against a DynamoDB endpoint of its own (a dynoxide server it starts on
--endpoint-port), so it does not load the shared one; the rows live in a source of their own
(database, connector, topic), removed at the end.

    ./dev setup && .venv/bin/replicator stack up
    .venv/bin/python bench/backfill_bench.py --rows 1000000 --runs 1
    .venv/bin/python bench/backfill_bench.py --rows 100000 --runs 1 --lane batch --lane guarded
    .venv/bin/python bench/backfill_bench.py --rows 100000 --runs 1 --baseline
    .venv/bin/python bench/backfill_bench.py --rows 30000 --runs 0 --live

Per run: `replicator backfill --table dbo.integrationlogs --into <fresh table> --restart` as a
child process over the whole topic (the connector's initial snapshot of --rows rows); events/s
is the run's own summary (events / wall time of the replay), peak RSS is the child's maxrss
(getrusage of the waited child), CPU per event its user + system time. With --baseline, the
same topic is then replayed by a naive consumer (decode and map by our functions, one boto3
conditional PutItem after another) into a fresh table, and the two are compared. With --live,
a live consumer (`replicator run`, group of its own, reading from the topic's end) writes into
the same table as a backfill of the whole topic, while rows are inserted at --live-rate per
second; the live group's lag is sampled every second (replicator.observe.lag.consumer_lag).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from own_endpoint import own_endpoint  # noqa: E402  (beside this file)

from replicator.config import Settings, load_settings  # noqa: E402
from tests.integration.second_source import SecondSource  # noqa: E402

INSERT = (
    "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
    "responsedata, statuscode, issuccess, errormessage, processingtimems, logtimestamp, "
    "correlationid, userid) "
    "SELECT CASE WHEN g %% 3 = 0 THEN NULL ELSE g %% 500 END, 'Credit Check', "
    "(ARRAY['CreditCheckService', 'PaymentGateway', 'EmailService'])[g %% 3 + 1], "
    '\'{"request": \' || g || \', "who": "Zoë", "padding": "\' || repeat(\'x\', 100 + g %% 300) '
    "|| '\"}', '{\"ok\": true}', CASE WHEN g %% 10 = 0 THEN '503' ELSE '200' END, g %% 10 <> 0, "
    "CASE WHEN g %% 10 = 0 THEN 'upstream unavailable' END, g %% 4000, "
    "timestamp '2024-01-01' + g * interval '1 second 1 microsecond', "
    "CASE WHEN g %% 2 = 0 THEN 'corr-' || g END, 'user' || g %% 50 "
    "FROM generate_series(%s::int, %s::int) g"
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def write_config(settings: Settings, source: SecondSource, port: int, path: Path) -> Path:
    data = source.settings.model_dump(mode="json")
    data["postgres"]["password"] = settings.postgres.password.get_secret_value()
    data["postgres"]["replication_password"] = (
        settings.postgres.replication_password.get_secret_value()
    )
    data["dynamodb"]["endpoint_url"] = f"http://127.0.0.1:{port}"
    data["dynamodb"]["secret_access_key"] = "local"
    data["metrics"]["enabled"] = False
    data["log_level"] = "INFO"
    data["stack"]["home"] = str(settings.stack.home.resolve())
    data["connector"]["template"] = str(ROOT / "connectors" / "postgres-source.json")
    path.write_text(yaml.safe_dump(data))
    return path


def child_env(config: Path) -> dict[str, str]:
    """The environment of a child on ``config``: the environment wins over a config file, so a
    shell that points the stack's endpoint elsewhere (REPLICATOR_DYNAMODB__ENDPOINT_URL) would
    send the child's writes there instead of to the benchmark's own endpoint."""
    endpoint = yaml.safe_load(config.read_text())["dynamodb"]["endpoint_url"]
    return {**os.environ, "REPLICATOR_DYNAMODB__ENDPOINT_URL": endpoint}


def backfill(config: Path, *args: str) -> tuple[float, int, float, str]:
    """Run one backfill child; (seconds, peak RSS in MB, CPU seconds, its stdout)."""
    command = [sys.executable, "-m", "replicator.cli", "--config", str(config), "backfill"]
    started = time.monotonic()
    child = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=child_env(config),
    )
    watch = threading.Event()

    def sample_memory() -> None:  # a timeline, so a run stopped early still tells something
        status = Path(f"/proc/{child.pid}/status")
        while not watch.wait(15):
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
            except OSError:
                return
            say(
                f"  backfill pid {child.pid}: RSS {fields['VmRSS'].strip()}, "
                f"peak {fields['VmHWM'].strip()}"
            )

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    holder: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: holder.update(out=child.stdout.read()))  # type: ignore[union-attr]

    def read_errors() -> None:  # echo the child's progress lines as they come
        lines = []
        for raw in child.stderr:  # type: ignore[union-attr]
            lines.append(raw)
            if b'"backfill progress"' in raw:
                found = re.search(rb'"done": (\d+), "total": (\d+)', raw)
                if found:
                    say(f"  progress {int(found.group(1))}/{int(found.group(2))}")
        holder["err"] = b"".join(lines)

    errors = threading.Thread(target=read_errors)
    reader.start()
    errors.start()
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    watch.set()
    reader.join()
    errors.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    out = holder.get("out", b"").decode()
    if child.returncode != 0:
        raise SystemExit(
            f"backfill failed ({child.returncode}):\n{holder.get('err', b'').decode()[-3000:]}"
        )
    return seconds, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime, out


def naive_replay(config: Path, topic: str, target: str, total: int) -> tuple[float, float]:
    """The baseline: what a generic consumer does. One confluent-kafka consumer over the whole
    topic; each record decoded and mapped by our own pure functions and written with one boto3
    conditional PutItem, one after another. Returns (events/s, CPU seconds)."""
    from confluent_kafka import Consumer

    from replicator.core.decode import decode
    from replicator.core.events import ChangeEvent, Origin
    from replicator.ops.tables import ensure_table
    from replicator.stream.dynamo import dynamodb_client
    from replicator.stream.pipeline import to_change
    from replicator.stream.sink import action, plan

    settings = load_settings(config)
    endpoint = child_env(config)["REPLICATOR_DYNAMODB__ENDPOINT_URL"]  # not the environment's
    settings = settings.model_copy(
        update={"dynamodb": settings.dynamodb.model_copy(update={"endpoint_url": endpoint})}
    )
    mapping = settings.tables[0].model_copy(update={"name": target})
    client = dynamodb_client(settings.dynamodb)
    ensure_table(client, mapping)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-naive-{target}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    done, started, cpu = 0, time.monotonic(), time.process_time()
    try:
        while done < total:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            origin = Origin(message.topic(), message.partition(), message.offset())
            event = decode(message.key(), message.value(), origin)
            if isinstance(event, ChangeEvent):
                (write,) = plan([to_change(mapping, event)])
                client.put_item(**action(write, int(time.time()))["Put"])
            done += 1
            if done % 10_000 == 0:
                say(f"  naive {done}/{total}")
    finally:
        consumer.close()
    return done / (time.monotonic() - started), time.process_time() - cpu


def rate_of(out: str) -> tuple[int, float]:
    match = re.search(r"(\d+) events, .* in ([\d.]+) s \(([\d,]+) events/s\)", out)
    if match is None:
        raise SystemExit(f"no summary in: {out}")
    return int(match.group(1)), float(match.group(2))


def drop_table(client: Any, name: str) -> None:
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_table(TableName=name)


def live_run(
    config: Path, source: SecondSource, rate: float, burst: int, bound: int, client: Any
) -> dict[str, Any]:
    """A live consumer and a backfill into the same table, rows inserted meanwhile (and a burst
    of ``burst`` rows in one statement 20 s in, to see the backfill yield)."""
    from replicator.observe.lag import consumer_lag

    data = yaml.safe_load(config.read_text())
    data["kafka"]["group_id"] = f"bench-live-{source.tag}"
    data["kafka"]["new_group_starts_at"] = "latest"
    live_config = config.with_name("live.yaml")
    live_config.write_text(yaml.safe_dump(data))
    live_settings = load_settings(live_config)
    data = yaml.safe_load(config.read_text())
    data["backfill"] = {"live_lag_events": bound, "live_check_s": 1.0}
    data["kafka"]["group_id"] = live_settings.kafka.group_id  # the group it yields to
    backfill_config = config.with_name("backfill-live.yaml")
    backfill_config.write_text(yaml.safe_dump(data))
    from replicator.ops.tables import ensure_table

    table = live_settings.tables[0].name  # IntegrationLogs: the live table
    drop_table(client, table)
    ensure_table(client, live_settings.tables[0])
    live = subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", "--config", str(live_config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=child_env(live_config),
    )
    stop = threading.Event()
    inserted = [0]
    samples: list[tuple[int, float]] = []
    first_id = [0]
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        first_id[0] = conn.execute("SELECT max(logid) FROM dbo.integrationlogs").fetchone()[0]

    def insert() -> None:
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            n = first_id[0] + 10_000_000
            burst_at = time.monotonic() + 25
            while not stop.is_set():
                if burst and time.monotonic() > burst_at:
                    conn.execute(INSERT, [n, n + burst - 1])
                    say(f"  burst of {burst} live rows")
                    n += burst
                    inserted[0] += burst
                    burst_at = float("inf")
                conn.execute(INSERT, [n, n])
                n += 1
                inserted[0] += 1
                time.sleep(1 / rate)

    def sample() -> None:
        while not stop.is_set():
            lag = consumer_lag(live_settings).get(table)
            if lag is not None:
                samples.append((lag.events, lag.seconds))
                if lag.events > bound:
                    say(f"  live lag {lag.events} events, {lag.seconds:.1f} s")
            stop.wait(1.0)

    try:
        time.sleep(8)  # the live consumer joins (reads from the end)
        threads = [threading.Thread(target=insert), threading.Thread(target=sample)]
        for thread in threads:
            thread.start()
        time.sleep(5)
        before = list(samples)
        _seconds, rss, out = backfill(
            backfill_config, "--table", "dbo.integrationlogs", "--restart"
        )
        during = samples[len(before) :]
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        live.terminate()
        live.wait(60)
    events, wall = rate_of(out)
    lags = [e for e, _ in during] or [0]
    ages = [s for _, s in during] or [0.0]
    return {
        "events": events,
        "seconds": wall,
        "rate": events / wall,
        "rss_mb": rss,
        "inserted_live": inserted[0],
        "live_lag_events_median": statistics.median(lags),
        "live_lag_events_max": max(lags),
        "live_lag_s_median": statistics.median(ages),
        "live_lag_s_max": max(ages),
        "seconds_live_lag_above_bound": sum(1 for e in lags if e > bound),
        "summary": out.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--endpoint-port", type=int, default=28177)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also replay the topic with a naive consumer (sequential boto3 PutItem) to compare",
    )
    parser.add_argument(
        "--lane",
        action="append",
        choices=["auto", "batch", "guarded"],
        help="backfill --lane for the runs (repeat it to compare lanes; default auto: the batch "
        "lane, the target being new)",
    )
    parser.add_argument("--live", action="store_true", help="also the live-lag run")
    parser.add_argument("--live-rate", type=float, default=20.0, help="live inserts per second")
    parser.add_argument("--live-burst", type=int, default=3000, help="rows inserted at once")
    parser.add_argument(
        "--live-bound", type=int, default=200, help="backfill.live_lag_events for the live run"
    )
    args = parser.parse_args()

    settings = load_settings(None)
    with own_endpoint(args.endpoint_port) as endpoint:
        run_all(args, settings, endpoint)


def run_all(args: argparse.Namespace, settings: Settings, endpoint: str) -> None:
    source = SecondSource(settings, "bench")
    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    try:
        source.create()
        with psycopg.connect(source.dsn, autocommit=True) as conn:
            started = time.monotonic()
            for low in range(1, args.rows + 1, 100_000):
                conn.execute(INSERT, [low, min(args.rows, low + 99_999)])
            say(f"{args.rows} rows inserted in {time.monotonic() - started:.0f}s")
        started = time.monotonic()
        source.start_connector()
        topic = source.settings.topic_of(source.settings.tables[0])
        while source.topic_records(topic) < args.rows:
            time.sleep(1)
        say(f"initial snapshot on the topic in {time.monotonic() - started:.0f}s")
        config = write_config(
            settings, source, args.endpoint_port, Path(tempfile.mkdtemp()) / "bench.yaml"
        )
        results = []
        for run in range(args.runs):
            for lane in args.lane or ["auto"]:  # interleaved, so drift hits every lane
                target = f"IntegrationLogs_bench{run}{lane}"
                seconds, rss, cpu, out = backfill(
                    config, "--table", "dbo.integrationlogs", "--into", target, "--restart",
                    "--lane", lane,
                )  # fmt: skip
                events, wall = rate_of(out)
                results.append((events / wall, rss, cpu * 1000 / events))
                say(
                    f"run {run + 1}, --lane {lane}: {events} events in {wall:.0f}s = "
                    f"{events / wall:.0f}/s, peak RSS {rss} MB, CPU "
                    f"{cpu * 1000 / events:.2f} ms/event (process {seconds:.0f}s)"
                )
                drop_table(client, target)
        if results:
            rates = [r[0] for r in results]
            say(
                f"median {statistics.median(rates):.0f} events/s over {len(rates)} run(s); "
                f"peak RSS max {max(r[1] for r in results)} MB"
            )
        if args.baseline:
            target = "IntegrationLogs_naive"
            rate, cpu = naive_replay(config, topic, target, args.rows)
            say(f"naive: {rate:.0f} events/s, CPU {cpu * 1000 / args.rows:.2f} ms/event")
            drop_table(client, target)
            if results:
                ours = statistics.median(r[0] for r in results)
                ours_cpu = statistics.median(r[2] for r in results)
                say(
                    f"backfill vs naive: {ours / rate:.2f}x the rate, "
                    f"{cpu * 1000 / args.rows / ours_cpu:.2f}x less CPU per event"
                )
        if args.live:
            say("live-lag run: backfill into the live consumer's table, rows inserted meanwhile")
            result = live_run(
                config, source, args.live_rate, args.live_burst, args.live_bound, client
            )
            say(f"live run: {result}")
    except BaseException as exc:
        say(f"stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        source.drop()


if __name__ == "__main__":
    main()
