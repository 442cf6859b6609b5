"""`replicator tables create`, `run` (the long-lived consumer) and `demo`."""

from __future__ import annotations

import json
import signal
import time
from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table

from replicator.app import Consumer, collect_less_often
from replicator.cli._common import app, connector_payload, friendly, out, say, settings, tables_app
from replicator.core.items import is_marker
from replicator.observe.log import configure
from replicator.ops.connector import ConnectClient
from replicator.ops.tables import ensure_table
from replicator.ops.workload import Workload
from replicator.stack import LocalStack
from replicator.stream.dynamo import dynamodb_client


@tables_app.command("create")
@friendly
def tables_create() -> None:
    """Create every mapped DynamoDB table (keys, GSIs, TTL) that does not exist yet."""

    s = settings()
    client = dynamodb_client(s.dynamodb)
    for mapping in s.tables:
        say(f"{mapping.name}: {ensure_table(client, mapping)}")


@app.command("run")
@friendly
def run_consumer(
    until_idle: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds without records (for demos and scripts)."),
    ] = None,
) -> None:
    """The long-lived consumer: apply change events to DynamoDB until SIGTERM/SIGINT."""

    s = settings()
    configure(s.log_level)
    consumer = Consumer(s)
    collect_less_often()

    def stop(_signum: int, _frame: Any) -> None:
        consumer.stop()  # finish the batch in hand, commit, leave the group

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    until = None
    if until_idle is not None:

        def until(stats: Any) -> bool:
            return time.monotonic() - stats.last_record_at > until_idle

    try:
        stats = consumer.run(until)
    finally:
        consumer.close()
    say(
        f"consumed {stats.consumed}, applied {stats.applied}, stale {stats.stale}, "
        f"skipped {stats.skipped}, dead-lettered {stats.dead_lettered}"
    )


@app.command("demo")
@friendly
def demo(
    steps: Annotated[int, typer.Option(help="Transactions of sample workload to write.")] = 150,
) -> None:
    """Bring up the local stack, write a sample workload to PostgreSQL, replicate it, and show
    what arrived in DynamoDB."""

    s = settings()
    configure("WARNING")
    LocalStack(s, say).up()
    client = ConnectClient(s)
    client.apply(connector_payload(s))
    client.wait_running()
    say(f"connector {s.connector.name} running")
    dynamo = dynamodb_client(s.dynamodb)
    for mapping in s.tables:
        ensure_table(dynamo, mapping)
    with psycopg.connect(s.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=int(time.time()))
        workload.ensure_loans(20)
        for _ in range(steps):
            workload.step()
        c = workload.counts
        say(
            f"wrote {c.inserts} inserts, {c.updates} updates ({c.key_moves} key moves), "
            f"{c.deletes} deletes to PostgreSQL"
        )
        consumer = Consumer(s, serve=False)  # a demo needs no metrics endpoint
        started = time.monotonic()
        try:
            stats = consumer.run(
                lambda st: time.monotonic() - st.last_record_at > 3 and st.consumed > 0
            )
        finally:
            consumer.close()
        say(
            f"replicated {stats.consumed} events in {time.monotonic() - started:.1f}s "
            f"(applied {stats.applied}, stale {stats.stale}, dead-lettered "
            f"{stats.dead_lettered})"
        )
        table = Table("table", "PostgreSQL rows", "DynamoDB items", "delete markers")
        for mapping in s.tables:
            rows = conn.execute(f"SELECT count(*) FROM {mapping.source}").fetchone()[0]
            live = markers = 0
            for page in dynamo.get_paginator("scan").paginate(TableName=mapping.name):
                for item in page["Items"]:
                    if is_marker(item):
                        markers += 1
                    else:
                        live += 1
            table.add_row(mapping.name, str(rows), str(live), str(markers))
        out.print(table)
        sample = dynamo.scan(TableName=s.tables[-1].name, Limit=5)["Items"]
        sample = [i for i in sample if not is_marker(i)][:1]
        if sample:
            out.print(f"a {s.tables[-1].name} item:")
            out.print_json(json.dumps(sample[0]))
