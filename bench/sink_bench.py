"""Consumer CPU per event: recorded Debezium envelopes through decode -> map -> plan -> sink into
the local DynamoDB endpoint, for the sink on the wire client, the sink on boto3's client, a naive
sink (one boto3 conditional put_item per event, sequential), and decode + map alone.

    ./dev setup && .venv/bin/replicator stack up
    .venv/bin/python bench/sink_bench.py run                  # all cases, 3 runs each, medians
    .venv/bin/python bench/sink_bench.py run --events 10000 --cases abcd --runs 5

Cases: (a) DynamoSink on the wire client, (b) DynamoSink on boto3's client, (c) naive, (d) decode
+ map alone; (e, f) not the sink's strategy: independent rows batched 100 to a TransactWriteItems,
on the wire client and on boto3's; (g, h) the wire sink and wire transactions against a keep-alive
stub endpoint started as a child process, which answers ``{}`` at once: the client's own CPU
when connections are reused, as DynamoDB reuses them (moto's server closes every connection).

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
from replicator.core.mapping import TableMapping
from replicator.ops.tables import ensure_table
from replicator.stream.dynamo import dynamodb_client
from replicator.stream.dynamo_wire import DynamoWireClient
from replicator.stream.pipeline import to_change
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import Change, DynamoSink, action, plan

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
    sub = parser.add_subparsers(dest="command", required=True)
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
    p_cap = sub.add_parser("capture", help="record the envelope fixture from the topics")
    p_cap.add_argument("--insert", type=int, default=0, help="rows to insert first (Workload)")
    p_cap.add_argument("--logs", type=int, default=2500)
    p_cap.add_argument("--payments", type=int, default=1000)
    p_stub = sub.add_parser("stub", help=argparse.SUPPRESS)
    p_stub.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "capture":
        capture(load_settings(None), args.insert, args.logs, args.payments)
    elif args.command == "stub":
        stub(args.port)
    else:
        run(args)


if __name__ == "__main__":
    main()
