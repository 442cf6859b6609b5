"""Consumer CPU per event: recorded Debezium envelopes through decode -> map -> plan -> sink into
the local DynamoDB endpoint, for the sink on the wire client, the sink on boto3's client, a naive
sink (one boto3 conditional put_item per event, sequential), and decode + map alone.

    .venv/bin/python bench/sink_bench.py --quick              # no services: the lanes, < 2 min
    .venv/bin/python bench/sink_bench.py profile --lane batch # no services: where the time goes
    ./dev setup && .venv/bin/replicator stack up
    .venv/bin/python bench/sink_bench.py run                  # all cases, 3 runs each, medians
    .venv/bin/python bench/sink_bench.py run --events 10000 --cases abcd --runs 5

Cases: (a) DynamoSink on the wire client, (b) DynamoSink on boto3's client, (c) naive, (d) decode
+ map alone; (e, f) not the sink's strategy: independent rows batched 100 to a TransactWriteItems,
on the wire client and on boto3's; (g, h) the wire sink and wire transactions against a keep-alive
stub endpoint started as a child process, which answers ``{}`` at once: the client's own CPU
when connections are reused, as DynamoDB reuses them (moto's server closes every connection).

``--quick`` needs no service: against the stub only, the naive sink (one boto3 conditional
put_item per event, sequential), the batch lane (replicator.stream.batch) and both guarded lanes
(``dynamodb.guarded_lane`` single and transact), each end to end per poll-sized batch (decode,
map, plan, write, the offsets to commit), interleaved runs, medians; then requests and write
units per change, and one last line: ``batch lane: X us/event (Y x less than naive); guarded
lane: Z us/event (W x less than naive)`` (the guarded lane the settings choose).

``profile`` needs no service either: one lane against the stub, per stage (decode + map, plan,
write, the offsets to commit) the CPU of this process, the cyclic collector's share (its time
between ``gc.callbacks``' start and stop), the same with the collector off, then a cProfile of
every thread of the lane in CPU time (``time.thread_time``: a thread waiting on a socket costs
nothing; the sink's pool threads each profiled, their statistics merged).
``--gc consumer`` sets the collector as `run` and `backfill` do (``app.collect_less_often``),
for ``--quick`` too.

CPU is ``time.process_time()`` of this process only (all its threads: the sink's pool included;
not moto's, PostgreSQL's or Kafka's). Every case writes into fresh tables of its own (moto slows
down as a table grows) that are deleted afterwards. The events are IntegrationLogs inserts
recorded from the real connector (``bench/envelopes.jsonl.gz``), replicated with new log ids and
positions to the requested count, so every event is a distinct new item.

    .venv/bin/python bench/sink_bench.py capture [--insert 3000]

records that fixture: optionally inserts rows with replicator.ops.workload.Workload first (the
connector must be running), then reads loans.dbo.integrationlogs and loans.dbo.payments from the
beginning and keeps the inserts (``op=c``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from botocore.exceptions import ClientError

from replicator.config import Settings, load_settings
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent, Origin
from replicator.core.items import POS, SOURCE_MS, item_size
from replicator.core.mapping import TableMapping
from replicator.ops.tables import ensure_table
from replicator.stream.batch import BatchSink, put_request
from replicator.stream.checkpoint import next_offsets
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.dynamo_wire import DynamoWireClient
from replicator.stream.pipeline import to_change
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import Change, DynamoSink, Write, action, plan

FIXTURE = Path(__file__).with_name("envelopes.jsonl.gz")
LOGS_TOPIC = "loans.dbo.integrationlogs"
PAYMENTS_TOPIC = "loans.dbo.payments"
BATCH = 500  # records per poll, as kafka.batch_size


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


# --- the fixture ------------------------------------------------------------------------------


def capture(settings: Settings, insert: int, keep_logs: int, keep_payments: int) -> None:
    from confluent_kafka import Consumer

    if insert:
        import psycopg

        from replicator.ops.workload import Workload

        with psycopg.connect(settings.postgres.dsn(), autocommit=True) as conn:
            workload = Workload(conn, seed=int(time.time()))
            workload.ensure_loans()
            for i in range(0, insert, 10):
                with conn.transaction():
                    for _ in range(min(10, insert - i)):
                        workload.insert_log()
                        workload.insert_payment()
        time.sleep(5)  # let the connector stream them
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"bench-capture-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([LOGS_TOPIC, PAYMENTS_TOPIC])
    kept: dict[str, list[dict[str, Any]]] = {LOGS_TOPIC: [], PAYMENTS_TOPIC: []}
    limits = {LOGS_TOPIC: keep_logs, PAYMENTS_TOPIC: keep_payments}
    idle = 0
    while idle < 5 and any(len(kept[t]) < limits[t] for t in kept):
        messages = consumer.consume(1000, 1.0)
        idle = 0 if messages else idle + 1
        for m in messages:
            if m.error() or m.value() is None or len(kept[m.topic()]) >= limits[m.topic()]:
                continue
            if orjson.loads(m.value()).get("op") != "c":
                continue
            kept[m.topic()].append(
                {
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": m.key().decode(),
                    "value": m.value().decode(),
                }
            )
    consumer.close()
    with gzip.open(FIXTURE, "wb") as out:
        for rows in kept.values():
            for row in rows:
                out.write(orjson.dumps(row) + b"\n")
    print(
        f"kept {len(kept[LOGS_TOPIC])} IntegrationLogs and {len(kept[PAYMENTS_TOPIC])} Payments "
        f"inserts in {FIXTURE.name} ({FIXTURE.stat().st_size / 1024:.0f} KiB)"
    )


def recorded(topic: str) -> list[Rec]:
    with gzip.open(FIXTURE, "rb") as f:
        rows = [orjson.loads(line) for line in f]
    return [
        Rec(r["topic"], r["partition"], r["offset"], r["key"].encode(), r["value"].encode())
        for r in rows
        if r["topic"] == topic
    ]


def log_inserts(count: int) -> list[Rec]:
    """``count`` distinct IntegrationLogs inserts: the recorded ones, then copies of them with
    new log ids and later positions (same sizes, services, days, nulls)."""
    base = recorded(LOGS_TOPIC)
    out: list[Rec] = []
    for copy in range(count // len(base) + 1):
        for rec in base:
            if len(out) == count:
                return out
            if copy == 0:
                out.append(rec)
                continue
            envelope = orjson.loads(rec.value)
            logid = envelope["after"]["logid"] + copy * 10_000_000
            envelope["after"]["logid"] = logid
            source = envelope["source"]
            shift = copy * 10_000_000_000
            last_commit, lsn = orjson.loads(source["sequence"])
            source["lsn"] += shift
            source["sequence"] = orjson.dumps(
                [str(int(last_commit or lsn) + shift), str(int(lsn) + shift)]
            ).decode()
            out.append(
                Rec(
                    rec.topic,
                    rec.partition,
                    rec.offset + copy * 1_000_000,
                    orjson.dumps({"logid": logid}),
                    orjson.dumps(envelope),
                )
            )
    return out


# --- the cases --------------------------------------------------------------------------------


def changes_of(mapping: TableMapping, records: list[Rec]) -> list[Change]:
    """Decode and map, as Pipeline._changes does for a table without lookups."""
    out = []
    for rec in records:
        event = decode(rec.key, rec.value, Origin(rec.topic, rec.partition, rec.offset))
        if isinstance(event, ChangeEvent):
            out.append(to_change(mapping, event))
    return out


def batches(records: list[Rec]) -> Iterator[list[Rec]]:
    for start in range(0, len(records), BATCH):
        yield records[start : start + BATCH]


def case_decode_map(mapping: TableMapping, records: list[Rec], _: Any) -> None:
    for batch in batches(records):
        changes_of(mapping, batch)


def case_sink(mapping: TableMapping, records: list[Rec], sink: DynamoSink) -> None:
    for batch in batches(records):
        result = sink.write(plan(changes_of(mapping, batch)))
        # A write retried after a 5xx or timeout that moto had applied fails its guard: stale.
        assert result.applied + result.stale == len(batch) and not result.failed, result


def case_naive(mapping: TableMapping, records: list[Rec], client: Any) -> None:
    """One boto3 conditional PutItem per event, one after the other."""
    for rec in records:
        event = decode(rec.key, rec.value, Origin(rec.topic, rec.partition, rec.offset))
        assert isinstance(event, ChangeEvent)
        (write,) = plan([to_change(mapping, event)])
        client.put_item(**action(write, int(time.time()))["Put"])


def case_transactions(mapping: TableMapping, records: list[Rec], client: Any) -> None:
    """Not the sink's strategy: independent rows batched 100 to a TransactWriteItems."""
    for batch in batches(records):
        now_s = int(time.time())
        acts = [action(w, now_s) for w in plan(changes_of(mapping, batch))]
        for start in range(0, len(acts), 100):
            try:
                client.transact_write_items(TransactItems=acts[start : start + 100])
            except ClientError as exc:
                # moto sometimes answers 500 after applying a transaction (a race in its
                # deep copy), and ignores ClientRequestToken, so the retry finds every row
                # written: every condition fails. Real DynamoDB dedupes the retry by token.
                reasons = exc.response.get("CancellationReasons") or [{}]
                if any(r.get("Code") != "ConditionalCheckFailed" for r in reasons):
                    raise


@dataclass
class Case:
    name: str
    run: Callable[[TableMapping, list[Rec], Any], None]
    make: Callable[[], Any] | None  # the client or sink the case writes with
    events: int
    writes: bool = True


def measure(case: Case, settings: Settings, base: TableMapping, records: list[Rec]) -> tuple:
    admin = dynamodb_client(settings.dynamodb)
    mapping = base.model_copy(update={"name": f"{base.name}_bench{uuid.uuid4().hex[:8]}"})
    if case.writes:
        ensure_table(admin, mapping)
    target = case.make() if case.make else None
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        case.run(mapping, records[: case.events], target)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        if isinstance(target, DynamoSink):
            target.close()
        if case.writes:
            with contextlib.suppress(admin.exceptions.ResourceNotFoundException):
                admin.delete_table(TableName=mapping.name)
    return cpu / case.events * 1e6, case.events / wall


# --- a keep-alive endpoint that answers at once (client cost without moto) ------------------


def stub(port: int) -> None:
    """Answers every request with ``{}``, keeping connections open as DynamoDB does (moto's
    server closes every connection). Only for measuring the client's own CPU."""
    body = b"{}"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"x-amzn-RequestId: STUB\r\nx-amz-crc32: " + str(zlib.crc32(body)).encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                headers = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in headers.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                writer.write(head)
                await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


@contextlib.contextmanager
def stub_endpoint() -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "stub", "--port", str(port)])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


# --- --quick: the lanes end to end against the stub, no services ------------------------------


class Msg:
    """What the commit step reads of a Kafka message (topic, partition, offset)."""

    __slots__ = ("rec",)

    def __init__(self, rec: Rec) -> None:
        self.rec = rec

    def topic(self) -> str:
        return self.rec.topic

    def partition(self) -> int:
        return self.rec.partition

    def offset(self) -> int:
        return self.rec.offset


def quick_lane(mapping: TableMapping, records: list[Rec], sink: Any) -> None:
    """decode -> map -> plan -> write -> the offsets to commit, per poll-sized batch, as the
    pipeline does (the commit request itself needs a broker: not made)."""
    messages = [Msg(r) for r in records]
    for start in range(0, len(records), BATCH):
        result = sink.write(plan(changes_of(mapping, records[start : start + BATCH])))
        assert result.applied + result.stale >= 1 and not result.failed, result
        next_offsets(messages[start : start + BATCH], sink.commit_metadata())  # type: ignore[arg-type]


def quick_naive(mapping: TableMapping, records: list[Rec], client: Any) -> None:
    """One boto3 conditional PutItem per event, sequential; offsets as above."""
    messages = [Msg(r) for r in records]
    for start in range(0, len(records), BATCH):
        case_naive(mapping, records[start : start + BATCH], client)
        next_offsets(messages[start : start + BATCH])  # type: ignore[arg-type]


def size_units(writes: list[Write], now_s: int) -> tuple[int, int]:
    """Write units of the items as the lanes store them (with _pos and _src_ms), and of the
    items' own attributes alone: DynamoDB charges ceil(size / 1 KB) per item put."""
    stored = own = 0
    for write in writes:
        item = put_request(write, now_s)["PutRequest"]["Item"]
        stored += max(1, math.ceil(item_size(item) / 1024))
        bare = {k: v for k, v in item.items() if k not in (POS, SOURCE_MS)}
        own += max(1, math.ceil(item_size(bare) / 1024))
    return stored, own


def quick(args: argparse.Namespace) -> None:
    settings = load_settings(None)
    dyn = settings.dynamodb
    base = next(m for m in settings.tables if m.source == "dbo.integrationlogs")
    records = log_inserts(args.events)
    concurrency = dyn.concurrency
    retry = RetryPolicy.from_settings(dyn)
    set_collector(args.gc)
    print(
        f"--quick: {args.events} IntegrationLogs inserts ({args.naive_events} for naive), "
        f"{args.runs} runs per case, interleaved; collector {args.gc}; load average "
        f"{os.getloadavg()[0]:.1f}; sink concurrency {concurrency}; a keep-alive "
        "stub endpoint in a child process answers {} at once; CPU is this process's "
        "(time.process_time, all threads)",
        flush=True,
    )
    with stub_endpoint() as url:
        stub_dyn = dyn.model_copy(update={"endpoint_url": url})

        def wire() -> DynamoWireClient:
            return DynamoWireClient.from_settings(stub_dyn, concurrency, retry)

        def guarded(lane: str) -> Callable[[], DynamoSink]:
            return lambda: DynamoSink(wire(), concurrency, retry, lane)  # type: ignore[arg-type]

        def batch() -> BatchSink:
            client = wire()
            return BatchSink(client, DynamoSink(client, concurrency, retry), concurrency, retry)

        cases = {
            "naive": (quick_naive, lambda: dynamodb_client(stub_dyn, 1), args.naive_events),
            "batch lane": (quick_lane, batch, args.events),
            "guarded lane, single": (quick_lane, guarded("single"), args.events),
            "guarded lane, transact": (quick_lane, guarded("transact"), args.events),
        }
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.runs):
            for name, (run_case, make, events) in cases.items():
                target = make()
                try:
                    started = time.process_time()
                    run_case(base, records[:events], target)
                    cpu[name].append((time.process_time() - started) / events * 1e6)
                finally:
                    close = getattr(target, "close", None)
                    if close is not None:
                        close()
                print(f"  run {round_ + 1} {name:<24} {cpu[name][-1]:8.1f} us/event", flush=True)
    median = {name: statistics.median(runs) for name, runs in cpu.items()}
    naive = median["naive"]
    requests = {
        "naive": 1.0,
        "batch lane": 1 / 25,
        "guarded lane, single": 1.0,
        "guarded lane, transact": 1 / 100,
    }
    stored, own = size_units(plan(changes_of(base, records)), int(time.time()))
    units = {
        "naive": stored / len(records),
        "batch lane": stored / len(records),
        "guarded lane, single": stored / len(records),
        "guarded lane, transact": 2 * stored / len(records),
    }
    print(
        f"\n{'case':<24} {'CPU us/event':>13} {'vs naive':>9} {'requests/event':>15} "
        f"{'write units/change':>19} {'vs own size':>12}"
    )
    for name in cases:
        ratio = units[name] * len(records) / own
        print(
            f"{name:<24} {median[name]:>13.1f} {naive / median[name]:>8.1f}x "
            f"{requests[name]:>15.2f} {units[name]:>19.3f} {ratio:>11.3f}x"
        )
    default = f"guarded lane, {dyn.guarded_lane}"
    print(
        f"(guarded lane in the line below: the default, dynamodb.guarded_lane {dyn.guarded_lane};"
        " write units per change for a fresh item, without stale writes; own size: the item's"
        " attributes without _pos and _src_ms)"
    )
    print(
        f"batch lane: {median['batch lane']:.0f} us/event "
        f"({naive / median['batch lane']:.1f} x less than naive); guarded lane: "
        f"{median[default]:.0f} us/event ({naive / median[default]:.1f} x less than naive)"
    )


# --- profile: where one lane's time goes, against the stub ---------------------------------


def set_collector(mode: str) -> None:
    if mode == "consumer":  # as `run` and `backfill` set it once their objects are built
        from replicator.app import collect_less_often

        collect_less_often()


class GcClock:
    """CPU time spent in the cyclic collector (gc.callbacks): the collector runs in whichever
    thread allocates, so that thread's CPU clock between start and stop (not wall time, which
    counts the time the loaded machine gave other processes)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, _: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.total += time.thread_time() - self._started
            self.collections += 1


def lane_stages(
    mapping: TableMapping, records: list[Rec], sink: Any, clock: GcClock
) -> dict[str, tuple[float, float]]:
    """quick_lane with each stage timed apart: CPU seconds and collector seconds per stage."""
    messages = [Msg(r) for r in records]
    spent: dict[str, list[float]] = {s: [0.0, 0.0] for s in ("decode + map", "plan", "write")}
    spent["offsets to commit"] = [0.0, 0.0]

    def timed(stage: str, work: Callable[[], Any]) -> Any:
        cpu, collected = time.process_time(), clock.total
        out = work()
        spent[stage][0] += time.process_time() - cpu
        spent[stage][1] += clock.total - collected
        return out

    for start in range(0, len(records), BATCH):
        chunk = records[start : start + BATCH]
        changes = timed("decode + map", lambda c=chunk: changes_of(mapping, c))
        writes = timed("plan", lambda c=changes: plan(c))
        result = timed("write", lambda w=writes: sink.write(w))
        assert result.applied + result.stale >= 1 and not result.failed, result
        timed(
            "offsets to commit",
            lambda s=start: next_offsets(messages[s : s + BATCH], sink.commit_metadata()),  # type: ignore[arg-type]
        )
    return {stage: (cpu, gc_s) for stage, (cpu, gc_s) in spent.items()}


def profile(args: argparse.Namespace) -> None:
    import cProfile
    import gc
    import pstats
    import threading

    settings = load_settings(None)
    dyn = settings.dynamodb
    base = next(m for m in settings.tables if m.source == "dbo.integrationlogs")
    records = log_inserts(args.events)
    retry = RetryPolicy.from_settings(dyn)
    concurrency = dyn.concurrency
    set_collector(args.gc)
    print(
        f"profile: {args.lane} lane, {args.events} IntegrationLogs inserts, {args.runs} runs, "
        f"collector {args.gc}, sink concurrency {concurrency}, stub endpoint; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with stub_endpoint() as url:
        stub_dyn = dyn.model_copy(update={"endpoint_url": url})

        def make() -> Any:
            client = DynamoWireClient.from_settings(stub_dyn, concurrency, retry)
            if args.lane == "batch":
                return BatchSink(client, DynamoSink(client, concurrency, retry), concurrency, retry)
            return DynamoSink(client, concurrency, retry, args.lane)  # type: ignore[arg-type]

        clock = GcClock()
        gc.callbacks.append(clock)
        rows: dict[str, dict[str, list[float]]] = {}
        try:
            for run_ in range(args.runs + 1):  # the first run warms up and is not counted
                for collector in ("on", "off"):
                    sink = make()
                    if collector == "off":
                        gc.disable()
                    try:
                        stages = lane_stages(base, records, sink, clock)
                    finally:
                        gc.enable()
                        sink.close()
                    if run_ == 0:
                        continue
                    for stage, (cpu, gc_s) in stages.items():
                        row = rows.setdefault(stage, {})
                        row.setdefault(f"cpu {collector}", []).append(cpu / len(records) * 1e6)
                        row.setdefault(f"gc {collector}", []).append(gc_s / len(records) * 1e6)
        finally:
            gc.callbacks.remove(clock)
        print(
            f"\n{'stage':<20} {'CPU us/event':>13} {'of it, collector':>17} "
            f"{'collector off':>14}   (medians of {args.runs} runs)"
        )
        totals = [0.0, 0.0, 0.0]
        for stage, row in rows.items():
            figures = [statistics.median(row[k]) for k in ("cpu on", "gc on", "cpu off")]
            totals = [t + f for t, f in zip(totals, figures, strict=True)]
            print(f"{stage:<20} {figures[0]:>13.1f} {figures[1]:>17.1f} {figures[2]:>14.1f}")
        print(f"{'sum':<20} {totals[0]:>13.1f} {totals[1]:>17.1f} {totals[2]:>14.1f}")

        # cProfile follows one thread: profile the main thread, and each pool thread's work
        # apart, each on its thread's CPU clock, then merge the statistics.
        profiles: list[cProfile.Profile] = []
        lock = threading.Lock()
        sink = make()
        inner = type(sink.pool).submit

        def submit(pool: Any, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
            def profiled() -> Any:
                prof = cProfile.Profile(time.thread_time)
                with lock:
                    profiles.append(prof)
                return prof.runcall(fn, *a, **kw)

            return inner(pool, profiled)

        sink.pool.submit = submit.__get__(sink.pool)  # type: ignore[method-assign]
        if args.lane == "batch":
            sink.guarded.pool.submit = submit.__get__(sink.guarded.pool)  # type: ignore[method-assign]
        main = cProfile.Profile(time.thread_time)
        try:
            main.runcall(quick_lane, base, records, sink)
        finally:
            sink.close()
    stats = pstats.Stats(main, stream=sys.stdout)
    for prof in profiles:
        stats.add(prof)
    print(
        f"\ncProfile of the {args.lane} lane, {args.events} events, every thread merged "
        f"(top {args.top} by own CPU time; profiler overhead included):"
    )
    stats.strip_dirs().sort_stats("tottime").print_stats(args.top)


# --- lanes: latency and write units against the local endpoint -------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lanes(args: argparse.Namespace) -> None:
    """Both guarded lanes and the batch lane into the configured endpoint (the local stack's
    dynoxide): per request and per poll-sized batch p50/p99 latency, requests, the write units
    DynamoDB reported, CPU per event; each lane into a fresh table of its own, interleaved."""
    settings = load_settings(None)
    dyn = settings.dynamodb
    base = next(m for m in settings.tables if m.source == "dbo.integrationlogs")
    records = log_inserts(args.events)
    retry = RetryPolicy.from_settings(dyn)
    admin = dynamodb_client(dyn)

    def guarded(lane: str) -> Callable[[], DynamoSink]:
        def make() -> DynamoSink:
            return DynamoSink(DynamoWireClient.from_settings(dyn, 16, retry), 16, retry, lane)  # type: ignore[arg-type]

        return make

    def batch() -> BatchSink:
        client = DynamoWireClient.from_settings(dyn, 16, retry)
        return BatchSink(client, DynamoSink(client, 16, retry), 16, retry)

    makers = {"single": guarded("single"), "transact": guarded("transact"), "batch": batch}
    print(f"{args.events} IntegrationLogs inserts per lane, {args.runs} runs, {dyn.endpoint_url}")
    seen: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.runs):
        for name, make in makers.items():
            mapping = base.model_copy(update={"name": f"{base.name}_lane{uuid.uuid4().hex[:8]}"})
            ensure_table(admin, mapping)
            sink = make()
            requests: list[float] = []
            batch_s: list[float] = []
            units = 0.0
            try:
                cpu = time.process_time()
                wall = time.perf_counter()
                for chunk in batches(records):
                    started = time.perf_counter()
                    result = sink.write(plan(changes_of(mapping, chunk)))
                    batch_s.append(time.perf_counter() - started)
                    assert not result.failed, result.failed[:1]
                    part = result.tables[mapping.name]
                    requests += part.write_s
                    units += part.capacity
                cpu = (time.process_time() - cpu) / len(records) * 1e6
                wall = time.perf_counter() - wall
            finally:
                sink.close()
                with contextlib.suppress(admin.exceptions.ResourceNotFoundException):
                    admin.delete_table(TableName=mapping.name)
            row = seen.setdefault(name, {})
            for key, value in (
                ("cpu", cpu),
                ("rate", len(records) / wall),
                ("req/event", len(requests) / len(records)),
                ("req p50 ms", pct(requests, 0.5) * 1e3),
                ("req p99 ms", pct(requests, 0.99) * 1e3),
                ("batch p50 ms", pct(batch_s, 0.5) * 1e3),
                ("batch p99 ms", pct(batch_s, 0.99) * 1e3),
                ("WU/event", units / len(records)),
            ):
                row.setdefault(key, []).append(value)
            print(f"  run {round_ + 1} {name:<9} " + "  ".join(
                f"{k} {v[-1]:.3g}" for k, v in row.items()))  # fmt: skip
    keys = list(next(iter(seen.values())))
    print("\nmedians\n" + f"{'lane':<9} " + " ".join(f"{k:>12}" for k in keys))
    for name, row in seen.items():
        print(f"{name:<9} " + " ".join(f"{statistics.median(v):>12.3g}" for v in row.values()))


# --- main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    settings = load_settings(None)
    dyn = settings.dynamodb
    base = next(m for m in settings.tables if m.source == "dbo.integrationlogs")
    records = log_inserts(args.events)
    concurrency = args.concurrency or dyn.concurrency

    def sink_on(make_client: Callable[[], Any]) -> Callable[[], DynamoSink]:
        return lambda: DynamoSink(make_client(), concurrency, RetryPolicy.from_settings(dyn))

    def wire() -> DynamoWireClient:
        return DynamoWireClient.from_settings(dyn, concurrency)

    def boto() -> Any:
        return dynamodb_client(dyn, concurrency)

    cases = [
        Case("(a) sink, wire client", case_sink, sink_on(wire), args.events),
        Case("(b) sink, boto3 client", case_sink, sink_on(boto), args.events),
        Case("(c) naive: boto3 put_item per event", case_naive, boto, args.naive_events),
        Case("(d) decode + map alone", case_decode_map, None, args.events, writes=False),
    ]
    cases += [
        Case("(e) wire TransactWriteItems x100", case_transactions, wire, args.tx_events),
        Case("(f) boto3 TransactWriteItems x100", case_transactions, boto, args.tx_events),
    ]
    stub_cases = [
        Case("(g) sink, wire client, keep-alive stub", case_sink, None, args.events),
        Case("(h) wire TransactWriteItems x100, stub", case_transactions, None, args.events),
    ]
    cases = [c for c in cases if c.name[1] in args.cases]
    stub_cases = [c for c in stub_cases if c.name[1] in args.cases]

    results: dict[str, list[tuple[float, float]]] = {}
    print(
        f"{args.events} IntegrationLogs inserts ({len(recorded(LOGS_TOPIC))} recorded), "
        f"{args.runs} runs per case, sink concurrency {concurrency}, endpoint {dyn.endpoint_url}",
        flush=True,
    )
    for round_ in range(args.runs):  # interleaved, so drift on a noisy machine hits all cases
        for case in cases:
            results.setdefault(case.name, []).append(measure(case, settings, base, records))
            cpu, rate = results[case.name][-1]
            print(f"  run {round_ + 1} {case.name:<42} {cpu:8.1f} µs/event {rate:8.0f}/s")
        if stub_cases:
            with stub_endpoint() as url:
                stub_dyn = dyn.model_copy(update={"endpoint_url": url})

                def wire_stub(d: Any = stub_dyn) -> DynamoWireClient:
                    return DynamoWireClient.from_settings(d, concurrency)

                for case in stub_cases:
                    case.make = sink_on(wire_stub) if case.run is case_sink else wire_stub
                    case.writes = False  # nothing to create: the stub stores nothing
                    results.setdefault(case.name, []).append(measure(case, settings, base, records))
                    cpu, rate = results[case.name][-1]
                    print(f"  run {round_ + 1} {case.name:<42} {cpu:8.1f} µs/event {rate:8.0f}/s")

    naive_runs = [c for name, runs in results.items() if name[1] == "c" for c, _ in runs]
    naive = statistics.median(naive_runs) if naive_runs else float("nan")
    print(f"\n{'case':<44} {'events':>7} {'CPU µs/event':>13} {'events/s':>9} {'vs naive':>9}")
    for case in cases + stub_cases:
        cpu = statistics.median(c for c, _ in results[case.name])
        rate = statistics.median(r for _, r in results[case.name])
        print(f"{case.name:<44} {case.events:>7} {cpu:>13.1f} {rate:>9.0f} {naive / cpu:>8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="no services: naive, batch lane and guarded lanes against the stub endpoint",
    )
    parser.add_argument("--events", type=int, default=10_000, help="--quick: events per lane")
    parser.add_argument("--naive-events", type=int, default=2_000, help="--quick: for naive")
    parser.add_argument("--runs", type=int, default=3, help="--quick: runs per case")
    parser.add_argument(
        "--gc",
        choices=["default", "consumer"],
        default="default",
        help="--quick: the cyclic collector as Python sets it, or as `run` sets it",
    )
    sub = parser.add_subparsers(dest="command")
    p_run = sub.add_parser("run", help="run the benchmark")
    p_run.add_argument("--events", type=int, default=20_000)
    p_run.add_argument("--naive-events", type=int, default=5_000)
    p_run.add_argument("--runs", type=int, default=3)
    p_run.add_argument("--tx-events", type=int, default=1_000, help="moto is slow at these")
    p_run.add_argument("--concurrency", type=int, default=0, help="sink concurrency override")
    p_run.add_argument(
        "--cases",
        default="abcdefgh",
        help="letters of the cases to run: a-d as above; e, f: independent rows batched 100 "
        "to a TransactWriteItems (not the sink's strategy) on wire and boto3; g, h: the wire "
        "sink and wire transactions against a keep-alive stub endpoint (client CPU only)",
    )
    p_lanes = sub.add_parser("lanes", help="the lanes' latency and write units, local endpoint")
    p_lanes.add_argument("--events", type=int, default=5_000)
    p_lanes.add_argument("--runs", type=int, default=3)
    p_prof = sub.add_parser("profile", help="one lane's stages and cProfile, stub endpoint")
    p_prof.add_argument("--lane", choices=["batch", "single", "transact"], default="batch")
    p_prof.add_argument("--events", type=int, default=10_000)
    p_prof.add_argument("--runs", type=int, default=3)
    p_prof.add_argument("--top", type=int, default=25)
    p_prof.add_argument("--gc", choices=["default", "consumer"], default="default")
    p_cap = sub.add_parser("capture", help="record the envelope fixture from the topics")
    p_cap.add_argument("--insert", type=int, default=0, help="rows to insert first (Workload)")
    p_cap.add_argument("--logs", type=int, default=2500)
    p_cap.add_argument("--payments", type=int, default=1000)
    p_stub = sub.add_parser("stub", help=argparse.SUPPRESS)
    p_stub.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.quick:
        quick(args)
    elif args.command is None:
        parser.error("give --quick or a command (run, lanes, profile, capture)")
    elif args.command == "lanes":
        lanes(args)
    elif args.command == "profile":
        profile(args)
    elif args.command == "capture":
        capture(load_settings(None), args.insert, args.logs, args.payments)
    elif args.command == "stub":
        stub(args.port)
    else:
        run(args)


if __name__ == "__main__":
    main()
