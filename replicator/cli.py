"""Command line: parse, load settings once, call one function, print. Expected failures
(ReplicatorError) print a one-paragraph message and exit 1, never a traceback."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from replicator.config import Settings, load_settings, redacted
from replicator.errors import ReplicatorError

app = typer.Typer(
    help="PostgreSQL -> Debezium -> Kafka -> DynamoDB replicator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local stack (plain processes).", no_args_is_help=True)
connector_app = typer.Typer(help="The Debezium connector in Kafka Connect.", no_args_is_help=True)
tables_app = typer.Typer(help="DynamoDB tables built from the mappings.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
postgres_app = typer.Typer(
    help="The source PostgreSQL: what CDC needs (replication role, publication, heartbeat).",
    no_args_is_help=True,
)
dlq_app = typer.Typer(help="The dead-letter topic: list, show, replay.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(connector_app, name="connector")
app.add_typer(tables_app, name="tables")
app.add_typer(config_app, name="config")
app.add_typer(postgres_app, name="postgres")
app.add_typer(dlq_app, name="dlq")
phase_app = typer.Typer(
    help="Per-table read phases: show, set (gated, --force audited), rollback, history.",
    no_args_is_help=True,
)
app.add_typer(phase_app, name="phase")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
_state: dict[str, Path | None] = {"config": None}


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML settings file (environment REPLICATOR_* overrides it).",
            envvar="REPLICATOR_CONFIG",
        ),
    ] = None,
) -> None:
    _state["config"] = config


def settings() -> Settings:
    return load_settings(_state["config"])


def friendly(func: F) -> F:
    """Turn expected failures into a clear message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ReplicatorError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _say(text: str) -> None:
    err.print(f"[dim]·[/] {text}", highlight=False)


# --- config ---------------------------------------------------------------------------------


@config_app.command("show")
@friendly
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    out.print_json(json.dumps(redacted(settings())))


# --- stack ----------------------------------------------------------------------------------


@stack_app.command("install")
@friendly
def stack_install() -> None:
    """Install PostgreSQL 15 (Debian) and resolve the Kafka/Connect/Debezium jars (Maven)."""
    from replicator.stack import LocalStack

    LocalStack(settings(), _say).install()


@stack_app.command("up")
@friendly
def stack_up() -> None:
    """Start PostgreSQL, Kafka (KRaft), Kafka Connect + Debezium and the DynamoDB endpoint."""
    from replicator.stack import LocalStack

    LocalStack(settings(), _say).up()


@stack_app.command("down")
@friendly
def stack_down(
    purge: Annotated[bool, typer.Option(help="Also delete all stack data.")] = False,
) -> None:
    """Stop exactly the processes `stack up` started."""
    from replicator.stack import LocalStack

    LocalStack(settings(), _say).down(purge=purge)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Show which parts of the local stack answer."""
    from replicator.stack import LocalStack

    table = Table("part", "state", "where")
    parts = LocalStack(settings()).status()
    for part in parts:
        table.add_row(part.name, "[green]up[/]" if part.running else "[red]down[/]", part.detail)
    out.print(table)
    if not all(p.running for p in parts):
        raise typer.Exit(1)


# --- connector ------------------------------------------------------------------------------


def _connector_payload(s: Settings) -> dict[str, str]:
    from replicator.connector import render
    from replicator.stack import LocalStack

    ref = s.connector.password_ref
    if ref is None:
        secrets = LocalStack(s).secrets_file()
        ref = "${file:" + str(secrets) + ":replication_password}"
    return render(s, ref)


@connector_app.command("show")
@friendly
def connector_show(
    kafka_connector: Annotated[
        str | None,
        typer.Option(
            "--kafka-connector",
            metavar="CONNECT_CLUSTER",
            help="Print it as a Strimzi KafkaConnector resource (YAML) for this KafkaConnect "
            "cluster instead; set connector.password_ref to the secret's reference.",
        ),
    ] = None,
) -> None:
    """Print the connector config that `apply` would send."""
    s = settings()
    if kafka_connector is None:
        out.print_json(json.dumps(_connector_payload(s)))
        return
    import yaml

    from replicator.connector import kafka_connector_resource

    if s.connector.password_ref is None:
        raise ReplicatorError(
            "connector.password_ref is not set: a KafkaConnector needs the secret's reference "
            "(e.g. '${directory:/mnt/debezium-postgres:password}'), never the secret itself"
        )
    resource = kafka_connector_resource(s, _connector_payload(s), kafka_connector)
    typer.echo(yaml.safe_dump(resource, sort_keys=False, width=1000), nl=False)


@connector_app.command("apply")
@friendly
def connector_apply(wait: Annotated[bool, typer.Option(help="Wait until it runs.")] = True) -> None:
    """Create or update the Debezium connector from connectors/ and the settings."""
    from replicator.connector import ConnectClient

    s = settings()
    client = ConnectClient(s)
    client.apply(_connector_payload(s))
    if wait:
        client.wait_running()
    _say(f"connector {s.connector.name} applied")


@connector_app.command("status")
@friendly
def connector_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Connector and task states (exit 1 unless everything is RUNNING)."""
    from replicator.connector import ConnectClient

    s = settings()
    status = ConnectClient(s).status()
    if status is None:
        err.print(f"connector {s.connector.name!r} does not exist")
        raise typer.Exit(1)
    if as_json:
        out.print_json(json.dumps(status))
    else:
        table = Table("part", "state", "worker")
        table.add_row(
            "connector", status["connector"]["state"], status["connector"].get("worker_id", "")
        )
        for task in status.get("tasks", []):
            table.add_row(f"task {task['id']}", task["state"], task.get("worker_id", ""))
        out.print(table)
    states = [status["connector"]["state"], *(t["state"] for t in status.get("tasks", []))]
    if any(state != "RUNNING" for state in states):
        raise typer.Exit(1)


@connector_app.command("restart")
@friendly
def connector_restart() -> None:
    """Restart the connector and its tasks."""
    from replicator.connector import ConnectClient

    client = ConnectClient(settings())
    client.restart()
    client.wait_running()
    _say("connector restarted and running")


# --- postgres -------------------------------------------------------------------------------


@postgres_app.command("sql")
@friendly
def postgres_sql() -> None:
    """Print the SQL that prepares PostgreSQL for CDC (REPLICA IDENTITY FULL, heartbeat and signal
    tables, replication role, publication), without the password, to review and run with psql."""
    from replicator.postgres import printable_script

    typer.echo(printable_script(settings()), nl=False)


@postgres_app.command("prepare")
@friendly
def postgres_prepare() -> None:
    """Run that SQL as postgres.user (the tables' owner); idempotent."""
    from replicator.postgres import prepare

    s = settings()
    prepare(s)
    _say(
        f"{s.postgres.database}: publication {s.connector.publication_name} of "
        f"{', '.join(t.source for t in s.tables)}; role {s.postgres.replication_user}"
    )


# --- tables and run ---------------------------------------------------------------------------


@tables_app.command("create")
@friendly
def tables_create() -> None:
    """Create every mapped DynamoDB table (keys, GSIs, TTL) that does not exist yet."""
    from replicator.dynamo import dynamodb_client
    from replicator.tables import ensure_table

    s = settings()
    client = dynamodb_client(s.dynamodb)
    for mapping in s.tables:
        _say(f"{mapping.name}: {ensure_table(client, mapping)}")


@app.command("run")
@friendly
def run_consumer(
    until_idle: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds without records (for demos and scripts)."),
    ] = None,
) -> None:
    """The long-lived consumer: apply change events to DynamoDB until SIGTERM/SIGINT."""
    import signal

    from replicator.log import configure
    from replicator.pipeline import build

    s = settings()
    configure(s.log_level)
    import structlog

    from replicator.health import Health, Server
    from replicator.postgres import require_replica_identity

    # Before anything is consumed: under REPLICA IDENTITY DEFAULT key moves are invisible.
    require_replica_identity(s)
    from replicator.metrics import Metrics, SourceMonitor
    from replicator.status_page import History

    metrics = Metrics(tables=[t.name for t in s.tables], connector=s.metrics.connector_state)
    health = Health(s.metrics.live_within_s)
    server = None
    if s.metrics.enabled:  # first: a port in use fails before joining the group
        history = History(
            metrics,
            {s.topic_of(t): t.name for t in s.tables},
            s.metrics.history_interval_s,
            s.metrics.history_s,
        )
        server = Server(s.metrics.host, s.metrics.port, metrics, health, history).start()
        structlog.get_logger("replicator.cli").info(
            "serving /metrics, /healthz, /readyz, status page /",
            host=s.metrics.host,
            port=server.port,
        )
    monitor = SourceMonitor(s, metrics)  # slot and connector state, off the loop
    if s.metrics.enabled:
        monitor.start()
    pipeline = build(s, metrics=metrics, health=health)

    def stop(_signum: int, _frame: Any) -> None:
        pipeline.stop()  # finish the batch in hand, commit, leave the group

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    until = None
    if until_idle is not None:
        import time

        def until(stats: Any) -> bool:
            return time.monotonic() - stats.last_record_at > until_idle

    try:
        stats = pipeline.run(until)
    finally:
        monitor.stop()
        pipeline.close()
        if server is not None:
            server.close()
    _say(
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
    import time

    import psycopg

    from replicator.connector import ConnectClient
    from replicator.dynamo import dynamodb_client
    from replicator.log import configure
    from replicator.pipeline import build
    from replicator.stack import LocalStack
    from replicator.tables import ensure_table
    from replicator.workload import Workload

    s = settings()
    configure("WARNING")
    LocalStack(s, _say).up()
    client = ConnectClient(s)
    client.apply(_connector_payload(s))
    client.wait_running()
    _say(f"connector {s.connector.name} running")
    dynamo = dynamodb_client(s.dynamodb)
    for mapping in s.tables:
        ensure_table(dynamo, mapping)
    with psycopg.connect(s.postgres.dsn(), autocommit=True) as conn:
        workload = Workload(conn, seed=int(time.time()))
        workload.ensure_loans(20)
        for _ in range(steps):
            workload.step()
        c = workload.counts
        _say(
            f"wrote {c.inserts} inserts, {c.updates} updates ({c.key_moves} key moves), "
            f"{c.deletes} deletes to PostgreSQL"
        )
        pipeline = build(s)
        started = time.monotonic()
        try:
            stats = pipeline.run(
                lambda st: time.monotonic() - st.last_record_at > 3 and st.consumed > 0
            )
        finally:
            pipeline.close()
        _say(
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
                    if item.get("_deleted"):
                        markers += 1
                    else:
                        live += 1
            table.add_row(mapping.name, str(rows), str(live), str(markers))
        out.print(table)
        sample = dynamo.scan(TableName=s.tables[-1].name, Limit=5)["Items"]
        sample = [i for i in sample if "_deleted" not in i][:1]
        if sample:
            out.print(f"a {s.tables[-1].name} item:")
            out.print_json(json.dumps(sample[0]))


# --- backfill ---------------------------------------------------------------------------------


@app.command("snapshot")
@friendly
def snapshot(
    table: Annotated[str, typer.Option("--table", help="Mapping name or source table.")],
    where: Annotated[
        str | None,
        typer.Option(
            help="Only rows matching this SQL condition on the source table, e.g. "
            "\"paymentdate >= '2024-01-01'\" (one expression: ';' and comments are refused).",
        ),
    ] = None,
) -> None:
    """Ask the running connector for an incremental snapshot of a table (Debezium's signal
    table): its rows are re-read in chunks and re-flow through the live consumer while
    streaming continues."""
    from replicator.snapshot import request_snapshot

    s = settings()
    mapping = s.mapping_named(table)
    signal_id, matched = request_snapshot(s, mapping, where)
    rows = "every row" if matched is None else f"{matched} row(s) matching --where"
    _say(
        f"signal {signal_id} sent: {s.connector.name} re-reads {rows} of {mapping.source}; "
        "progress is in Kafka Connect's log ('Incremental snapshot')"
    )


@app.command("backfill")
@friendly
def backfill(
    table: Annotated[
        list[str] | None,
        typer.Option("--table", help="Mapping name or source table; repeat it; default: all."),
    ] = None,
    into: Annotated[
        str | None,
        typer.Option(
            help="Write into this DynamoDB table (created from the mapping if missing) instead "
            "of the mapping's; with several tables a pattern with {name}, e.g. '{name}_v2'.",
        ),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Replay the whole topic (the default).")
    ] = False,
    from_time: Annotated[
        str | None,
        typer.Option(help="Replay records from this time on (ISO 8601, UTC by default)."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Start over instead of resuming from the last run's offsets."
        ),
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Do not stop at the end: go on with live changes.")
    ] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option(help="At most this many DynamoDB write units per second (all tables)."),
    ] = None,
) -> None:
    """Replay tables' compacted topics into DynamoDB through the consumer's pipeline, with a
    consumer group of their own: progress shown, resumable after a kill, stops at the ends
    seen at start (or --follow). Several tables run in parallel."""
    import signal

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from replicator.backfill import Backfill, parse_time, plan_jobs
    from replicator.log import configure

    if from_beginning and from_time is not None:
        raise ReplicatorError("--from-beginning and --from-time exclude each other")
    s = settings()
    # On a terminal the progress bar says how it goes; log lines would tear it.
    configure("WARNING" if err.is_terminal and s.log_level.upper() != "DEBUG" else s.log_level)
    jobs = plan_jobs(s, table, into)
    from_ms = parse_time(from_time) if from_time is not None else None
    runner = Backfill(
        s, jobs, from_ms=from_ms, restart=restart, follow=follow, rate_limit=rate_limit
    )
    for r in runner.running:
        done, total = r.progress()
        how = f"resuming at {done}/{total}" if r.summary.resumed else f"{total} record(s)"
        _say(f"{r.job.mapping.name} -> {r.job.target.name}: group {r.job.group_id}, {how}")

    def stop(_signum: int, _frame: Any) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    tasks = {}
    for r in runner.running:
        done, total = r.progress()
        tasks[id(r)] = progress.add_task(r.job.target.name, total=total, completed=done, rate="-")

    def tick(running: list[Any]) -> None:
        for r in running:
            done, _total = r.progress()
            task = tasks[id(r)]
            progress.update(task, completed=done)
            speed = progress.tasks[task].speed
            rate = f"{speed:,.0f} events/s" if speed else "-"
            if r.live is not None and r.live.paused:
                rate = "paused: live consumer behind"
            progress.update(task, rate=rate)

    try:
        with progress:
            summaries = runner.run(tick)
    finally:
        runner.close()
    for x in summaries:
        state = "done" if x.finished else ("failed" if x.error else "stopped")
        live = ""
        if x.live is not None:
            live = (
                f"; live lag max {x.live.max_events} events / {x.live.max_seconds:.1f} s, "
                f"paused {x.live.paused_s:.0f} s"
            )
        refused = (
            f", {x.refused} refused (older than the no-resurrection horizon)" if x.refused else ""
        )
        out.print(
            f"{x.table} -> {x.target}: {state}, {x.events} events, {x.written} written, "
            f"{x.stale} stale, {x.skipped} skipped, {x.dead_lettered} dead-lettered{refused} in "
            f"{x.seconds:.1f} s ({x.rate:,.0f} events/s){live}",
            highlight=False,
            soft_wrap=True,
        )
        if x.refused:
            days = s.mapping_named(x.table).tombstone_days
            _say(
                f"{x.table}: {x.refused} event(s) committed more than {days} days ago "
                "(tombstone_days) were not applied: their rows' delete markers may have expired, "
                f"so they could bring deleted rows back. `replicator verify --table {x.table} "
                "--repair` rewrites what still differs, against PostgreSQL"
            )
    failed = [x for x in summaries if x.error]
    if failed:
        raise ReplicatorError(
            "; ".join(f"{x.table}: {x.error}" for x in failed) + " (the same command resumes)"
        )
    if not all(x.finished for x in summaries) and not follow:
        _say("stopped before the end; the same command resumes where it stopped")
        raise typer.Exit(130)


# --- lag, status, cost -----------------------------------------------------------------------

_METRICS_URL = typer.Option(
    "--metrics-url",
    help="A running consumer's /metrics URL (repeat for every replica; they are summed). "
    "Default: metrics.consumer_urls, else this host's metrics.port.",
)


_GROUP = typer.Option("--group", help="Consumer group (default: kafka.group_id).")
_TABLE = typer.Option("--table", help="Only this table (mapping name or source table).")


def _lag_screen(
    urls: list[str] | None,
    watch: bool,
    as_json: bool,
    interval: float,
    window: float,
    probes: bool,
    group: str | None = None,
    table: str | None = None,
) -> bool:
    """The lag/status screen once, or live until Ctrl-C; returns whether all is healthy."""
    from replicator.status import gather, render

    if interval <= 0:
        raise ReplicatorError("--interval must be more than 0 seconds")
    if window <= 0:
        raise ReplicatorError("--window must be more than 0 seconds")
    if watch and as_json:
        raise ReplicatorError("--watch and --json do not go together")
    s = settings()
    if table is not None:
        s.mapping_named(table)  # an unknown name fails before anything is asked
    targets = urls or s.metrics.urls()
    ask = {"group_id": group, "with_probes": probes, "only": table}
    if not watch:
        report, _ = gather(s, targets, window_s=window, **ask)
        if as_json:
            out.print_json(json.dumps(report.as_json()))
        else:
            out.print(render(report))
        return report.healthy()
    import signal
    import threading
    import time
    from collections import deque

    from rich.live import Live

    # Ctrl-C sets a flag that the loop reads between refreshes: an exception raised at any
    # point (inside a Kafka call, or while rich's redraw thread holds its locks) could leave
    # the screen unable to stop.
    stop = threading.Event()

    def on_interrupt(*_: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        # Counters move once per batch: rates over the last `window` seconds of scrapes, not
        # between two refreshes, or a slow batch reads as 0 events/s.
        report, first = gather(s, targets, window_s=0, **ask)
        scrapes = deque([first] if first else [])
        with Live(render(report), console=out, refresh_per_second=4, screen=False) as live:
            while not stop.wait(interval):
                while len(scrapes) > 1 and scrapes[1].at <= time.time() - window:
                    scrapes.popleft()
                previous = scrapes[0] if scrapes else None
                report, scrape = gather(s, targets, previous=previous, window_s=0, **ask)
                if scrape is not None:
                    scrapes.append(scrape)
                live.update(render(report))
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    raise KeyboardInterrupt  # stopped by Ctrl-C: `friendly` says so and exits 130


_JSON = typer.Option("--json", help="One JSON document, for scripts.")
_WATCH = typer.Option("--watch", help="Refresh live until Ctrl-C.")
_INTERVAL = typer.Option(help="--watch: seconds between refreshes.")
_WINDOW = typer.Option(
    help="Seconds of consumer metrics that throughput and latency are measured over "
    "(the consumers count once per batch)."
)


@app.command("lag")
@friendly
def lag_command(
    metrics_url: Annotated[list[str] | None, _METRICS_URL] = None,
    group: Annotated[str | None, _GROUP] = None,
    table: Annotated[str | None, _TABLE] = None,
    watch: Annotated[bool, _WATCH] = False,
    as_json: Annotated[bool, _JSON] = False,
    interval: Annotated[float, _INTERVAL] = 2.0,
    window: Annotated[float, _WINDOW] = 5.0,
) -> None:
    """Per table: phase, connector state, slot lag, consumer lag, end-to-end p50/p99, throughput."""
    _lag_screen(metrics_url, watch, as_json, interval, window, False, group, table)


@app.command("status")
@friendly
def status_command(
    metrics_url: Annotated[list[str] | None, _METRICS_URL] = None,
    group: Annotated[str | None, _GROUP] = None,
    table: Annotated[str | None, _TABLE] = None,
    watch: Annotated[bool, _WATCH] = False,
    as_json: Annotated[bool, _JSON] = False,
    interval: Annotated[float, _INTERVAL] = 2.0,
    window: Annotated[float, _WINDOW] = 5.0,
) -> None:
    """The lag screen plus each consumer's /healthz and /readyz; exit 1 unless the connector and
    its tasks run, the slot is active and every consumer is reachable and ready."""
    if not _lag_screen(metrics_url, watch, as_json, interval, window, True, group, table):
        raise typer.Exit(1)


@app.command("cost")
@friendly
def cost_command(
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics-url",
            help="/metrics URL of a consumer or of the read API (repeat; summed). Default: "
            "metrics.consumer_urls, else this host's metrics.port.",
        ),
    ] = None,
    window: Annotated[
        float,
        typer.Option(help="Measure over this many seconds; 0: over the processes' lifetime."),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Monthly DynamoDB on-demand estimate per table from the consumed capacity the running
    processes report (prices: settings cost.*), plus storage from DescribeTable."""
    from replicator.cost import measure, render

    s = settings()
    report = measure(s, metrics_url or s.metrics.urls(), window)
    if as_json:
        out.print_json(json.dumps(report.as_json()))
    else:
        out.print(render(report))


# --- dead letters ---------------------------------------------------------------------------


def _parked(reason: str | None, refs: list[str] | None) -> list[Any]:
    from replicator.deadletter import read_parked

    s = settings()
    records = read_parked(s.kafka.bootstrap_servers, s.kafka.dead_letter_topic, s.kafka.extra)
    if reason:
        records = [r for r in records if r.reason == reason]
    if refs:
        wanted = {ref if ":" in ref else f"0:{ref}" for ref in refs}
        unknown = wanted - {r.ref for r in records}
        if unknown:
            raise ReplicatorError(
                f"no dead letter at {', '.join(sorted(unknown))} "
                "(use PARTITION:OFFSET as `dlq list` shows)"
            )
        records = [r for r in records if r.ref in wanted]
    return records


@dlq_app.command("list")
@friendly
def dlq_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every parked record: where it came from, when, and why."""
    import datetime as dt

    records = _parked(reason, None)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "ref": r.ref,
                        "reason": r.reason,
                        "error": r.error,
                        "source_topic": r.source_topic,
                        "source_partition": r.source_partition,
                        "source_offset": r.source_offset,
                        "time_ms": r.time_ms,
                    }
                    for r in records
                ]
            )
        )
        return
    table = Table("ref", "parked at (UTC)", "reason", "source", "error")
    for r in records:
        when = dt.datetime.fromtimestamp(r.time_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            r.ref,
            when,
            r.reason,
            f"{r.source_topic}[{r.source_partition}]@{r.source_offset}",
            r.error[:80],
        )
    out.print(table)
    _say(f"{len(records)} parked record(s)")


@dlq_app.command("show")
@friendly
def dlq_show(ref: Annotated[str, typer.Argument(help="PARTITION:OFFSET from `dlq list`.")]) -> None:
    """One parked record in full: headers, key and original value."""
    (record,) = _parked(None, [ref])
    out.print(
        f"[bold]{record.ref}[/]  reason={record.reason}  source={record.source_topic}"
        f"[{record.source_partition}]@{record.source_offset}",
        highlight=False,
    )
    out.print(f"error: {record.error}", highlight=False)
    out.print(f"key:   {(record.key or b'').decode(errors='replace')}", highlight=False)
    value = (record.value or b"").decode(errors="replace")
    try:
        out.print_json(value)
    except json.JSONDecodeError:
        out.print(f"value: {value}", highlight=False)


@dlq_app.command("replay")
@friendly
def dlq_replay(
    refs: Annotated[list[str] | None, typer.Argument(help="PARTITION:OFFSET of records.")] = None,
    reason: Annotated[str | None, typer.Option(help="All records with this reason.")] = None,
    all_records: Annotated[bool, typer.Option("--all", help="Every parked record.")] = False,
) -> None:
    """Send parked records back to their source topics, each to the partition it came from,
    once their cause is fixed. Records that fail again are parked again; changes already
    superseded are skipped by the position guard."""
    import time

    from replicator.deadletter import replay, split_by_horizon

    if not refs and not reason and not all_records:
        raise ReplicatorError("name records (PARTITION:OFFSET), --reason R, or --all")
    records = _parked(reason, refs)
    s = settings()
    kept, refused = split_by_horizon(records, s, int(time.time() * 1000))
    count = replay(s.kafka.bootstrap_servers, kept, s.kafka.extra) if kept else 0
    _say(f"replayed {count} record(s) to their source topics, each to its original partition")
    if refused:
        horizons = ", ".join(f"{m.name} {m.tombstone_days} days" for m in s.tables)
        shown = ", ".join(r.ref for r in refused[:20]) + (" ..." if len(refused) > 20 else "")
        raise ReplicatorError(
            f"{len(refused)} record(s) not replayed: their change was committed longer ago "
            f"than its table's delete markers live (tombstone_days: {horizons}), so its row's "
            "marker may have expired and the change could bring a deleted row back. Re-check "
            "those rows against PostgreSQL instead (`replicator verify --table T --repair`). "
            f"Not replayed: {shown}"
        )


# --- phases ---------------------------------------------------------------------------------


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name in a bare container: the caller must say --who
        return ""


_WHY = typer.Option("--why", help="Why (recorded in the history).")
_WHO = typer.Option("--who", help="Who makes the change (recorded); default: the OS user.")


def _checks_table(checks: list[Any]) -> Table:
    table = Table("gate", "condition", "result", "measured", "needs")
    for c in checks:
        result = "[green]ok[/]" if c.ok else "[bold red]FAILED[/]"
        table.add_row(str(c.gate), c.name, result, c.value, c.threshold)
    return table


def _change_phase(table: str, to: str, why: str, who: str | None, force: bool) -> None:
    from replicator.phases import PhaseRefused, PhaseStore, parse_phase

    store = PhaseStore(settings())
    try:
        done = store.set(table, parse_phase(to), who=who or _os_user(), why=why, force=force)
    except PhaseRefused as exc:
        if exc.checks:
            out.print(_checks_table(exc.checks))
        failed = [c for c in exc.checks if not c.ok]
        raise ReplicatorError(
            f"{exc}\n{len(failed)} of {len(exc.checks)} condition(s) failed; nothing changed "
            "(--force --why '...' moves anyway and records them)"
        ) from None
    finally:
        store.close()
    if done.checks:
        out.print(_checks_table(done.checks))
    if not done.changed:
        _say(f"{done.table} already is {done.to_phase}; nothing changed")
        return
    verb = "rolled back" if done.rollback else "moved"
    forced = " [bold yellow](forced)[/]" if done.forced else ""
    _say(f"{done.table} {verb} {done.from_phase} -> {done.to_phase}{forced} by {done.who}")


@phase_app.command("show")
@friendly
def phase_show(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every mapped table's phase, where its reads go, and its last change."""
    from replicator.phases import PhaseStore

    store = PhaseStore(settings())
    try:
        rows = store.details()
    finally:
        store.close()
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("table", "phase", "reads from", "since (UTC)", "by", "why")
    for r in rows:
        since = r["changed_at"].strftime("%Y-%m-%d %H:%M:%S") if r["changed_at"] else "-"
        forced = " [yellow](forced)[/]" if r["forced"] else ""
        table.add_row(
            r["table_name"],
            r["phase"] + forced,
            r["reads_from"],
            since,
            r["changed_by"] or "-",
            r["why"] or "",
        )
    out.print(table)


@phase_app.command("set")
@friendly
def phase_set(
    table: Annotated[str, typer.Argument(help="Mapping name (or source table).")],
    phase: Annotated[
        str, typer.Argument(help="postgres-only | dual-write | hybrid-read | dynamodb-only")
    ],
    why: Annotated[str | None, _WHY] = None,
    who: Annotated[str | None, _WHO] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Move even if gates fail (recorded in the history).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only evaluate the gates; change nothing.")
    ] = False,
) -> None:
    """Move a table to a phase. Forward: one step at a time, every gate up to it checked live;
    a refusal lists each failed condition with its value. Backward (rollback): always, at once."""
    if dry_run:
        from replicator.phases import PhaseStore, evaluate, parse_phase

        s = settings()
        store = PhaseStore(s)
        try:
            name = s.mapping_named(table).name
            start, target = store.get(name), parse_phase(phase)
            checks = evaluate(s, store, name, start, target) if target.rank > start.rank else []
        finally:
            store.close()
        if checks:
            out.print(_checks_table(checks))
        failed = [c for c in checks if not c.ok]
        skip = target.rank - start.rank > 1
        _say(
            f"{name}: {start} -> {target} "
            + ("would be refused" if failed or skip else "would be allowed")
            + (" (forward moves go one phase at a time)" if skip else "")
        )
        if failed or skip:
            raise typer.Exit(1)
        return
    if not why:
        raise ReplicatorError("a phase change needs a reason: --why TEXT (recorded in the history)")
    _change_phase(table, phase, why, who, force)


@phase_app.command("rollback")
@friendly
def phase_rollback(
    table: Annotated[str, typer.Argument(help="Mapping name (or source table).")],
    why: Annotated[str, _WHY],
    to: Annotated[
        str | None, typer.Option("--to", help="An earlier phase; default: the previous one.")
    ] = None,
    who: Annotated[str | None, _WHO] = None,
) -> None:
    """Move a table back (to the previous phase, or --to an earlier one): no gates, immediate."""
    from replicator.phases import Phase, PhaseError, PhaseStore, parse_phase

    s = settings()
    store = PhaseStore(s)
    try:
        current = store.get(table)
    finally:
        store.close()
    if to is None:
        if current == Phase.POSTGRES_ONLY:
            raise PhaseError(f"{table} is postgres-only already; there is nothing to roll back")
        target = list(Phase)[current.rank - 1]
    else:
        target = parse_phase(to)
        if target.rank >= current.rank:
            raise PhaseError(
                f"{table} is {current}: rollback goes to an earlier phase, not {target} "
                "(use `phase set` to move forward)"
            )
    _change_phase(table, target.value, why, who, force=False)


@phase_app.command("history")
@friendly
def phase_history(
    table: Annotated[str | None, typer.Argument(help="Only this table.")] = None,
    limit: Annotated[int, typer.Option(help="The last N changes.", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every phase change, oldest first: from, to, who, when, why, forced, failed conditions."""
    import datetime as dt
    from dataclasses import asdict

    from replicator.phases import PhaseStore

    store = PhaseStore(settings())
    try:
        entries = store.history(table, limit=limit)
    finally:
        store.close()
    if as_json:
        out.print_json(json.dumps([asdict(e) for e in entries], default=str))
        return
    view = Table(
        "#", "when (UTC)", "table", "from", "to", "who", "why", "forced: failed conditions"
    )
    for e in entries:
        failed = [f"{c['name']}={c['value']}" for c in e.checks if not c.get("ok")]
        forced = (
            ("[yellow]forced[/]" + (": " + "; ".join(failed) if failed else "")) if e.forced else ""
        )
        view.add_row(
            str(e.id),
            e.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            e.table,
            str(e.from_phase),
            str(e.to_phase),
            e.who,
            e.why,
            forced,
        )
    out.print(view)


# --- reads ----------------------------------------------------------------------------------

reads_app = typer.Typer(help="The read path: the HTTP read API.", no_args_is_help=True)
app.add_typer(reads_app, name="reads")

# CLI name -> ReadPath method; which take a date/time range (True: required).
_READ_PATTERNS: dict[str, tuple[str, bool | None]] = {
    "logs-by-application": ("logs_by_application", None),
    "logs-by-service": ("logs_by_service", True),
    "logs-by-correlation": ("logs_by_correlation", None),
    "failures-of-day": ("failures_of_day", None),
    "log": ("log_by_id", None),
    "payments-by-customer": ("payments_by_customer", False),
    "payments-by-loan": ("payments_by_loan", None),
    "payments-by-status": ("payments_by_status", True),
    "payments-by-method": ("payments_by_method", True),
    "payment": ("payment_by_id", None),
}
_LOG_COLUMNS = ("LogTimestamp", "LogId", "ServiceName", "ApplicationId", "IsSuccess",
                "StatusCode", "CorrelationId", "ErrorMessage")  # fmt: skip
_PAYMENT_COLUMNS = ("PaymentDate", "PaymentId", "CustomerId", "LoanId", "PaymentAmount",
                    "PaymentMethod", "PaymentStatus", "TransactionId")  # fmt: skip


@reads_app.command("serve")
@friendly
def reads_serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (reads.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (reads.port).")] = None,
) -> None:
    """Serve the read API (JSON, OpenAPI at /openapi.json) until SIGTERM/SIGINT."""
    import signal
    import threading

    import structlog

    from replicator.log import configure
    from replicator.read_api import ReadApi
    from replicator.reads import ReadPath

    s = settings()
    configure(s.log_level)
    path = ReadPath(s)
    try:
        api = ReadApi(path, host, port).start()
    except BaseException:
        path.close()
        raise
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    structlog.get_logger("replicator.cli").info(
        "serving the read API", url=f"http://{api.host}:{api.port}/", spec="/openapi.json"
    )
    done.wait()
    api.close()
    path.close()


@app.command("read")
@friendly
def read_one(
    pattern: Annotated[str, typer.Argument(help=" | ".join(_READ_PATTERNS))],
    value: Annotated[
        str,
        typer.Argument(
            help="The id, service, correlation id, day, status or method the pattern takes."
        ),
    ],
    start: Annotated[str | None, typer.Option(help="Range start (date or ISO time).")] = None,
    end: Annotated[str | None, typer.Option(help="Range end (date or ISO time).")] = None,
    limit: Annotated[int | None, typer.Option(help="Rows per page.")] = None,
    cursor: Annotated[str | None, typer.Option(help="`next` of a previous page.")] = None,
    store: Annotated[
        str, typer.Option(help="auto (the table's phase), postgres or dynamodb.")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (exact numbers).")] = False,
) -> None:
    """Run one access pattern of the read path and print the rows."""
    from replicator.read_api import to_json
    from replicator.reads import LOG_PATTERNS, DynamoReads, Page, PostgresReads, ReadPath

    if pattern not in _READ_PATTERNS:
        raise ReplicatorError(f"unknown pattern {pattern!r}; one of: {', '.join(_READ_PATTERNS)}")
    method, ranged = _READ_PATTERNS[pattern]
    if ranged is None and (start or end):
        raise ReplicatorError(f"{pattern} takes no --start/--end")
    if ranged and not (start and end):
        raise ReplicatorError(f"{pattern} needs --start and --end")
    single = method.endswith("_by_id")
    if single and (limit is not None or cursor):
        raise ReplicatorError(f"{pattern} returns one row: no --limit/--cursor")
    s = settings()
    args: list[Any] = [value, *([start, end] if ranged is not None else [])]
    kwargs: dict[str, Any] = {}
    if not single:
        kwargs = {"limit": s.reads.default_page_size if limit is None else limit, "after": cursor}
    if store == "auto":
        path = ReadPath(s)
        try:
            served = path.read(method, *args, **kwargs)
        finally:
            path.close()
        result, source = served.value, served.source
    elif store in ("postgres", "dynamodb"):
        reader = PostgresReads(s) if store == "postgres" else DynamoReads(s)
        try:
            result, source = getattr(reader, method)(*args, **kwargs), store
        finally:
            reader.close()
    else:
        raise ReplicatorError(f"--store must be auto, postgres or dynamodb, not {store!r}")
    rows = result.rows if isinstance(result, Page) else ([result] if result else [])
    following = result.next if isinstance(result, Page) else None
    if as_json:
        body: Any = (
            {"items": rows, "next": following, "source": source}
            if isinstance(result, Page)
            else {"item": result, "source": source}
        )
        sys.stdout.write(to_json(body).decode() + "\n")
        if single and not rows:
            raise typer.Exit(1)
        return
    if single and not rows:
        err.print(f"no row with id {value} (read from {source})")
        raise typer.Exit(1)
    columns = _LOG_COLUMNS if method in LOG_PATTERNS else _PAYMENT_COLUMNS
    view = Table(*columns, title=f"{pattern} {value} ({len(rows)} from {source})")
    for row in rows:
        view.add_row(*("" if row.get(c) is None else str(row[c])[:60] for c in columns))
    out.print(view)
    if following:
        out.print(f"next page: --cursor {following}", highlight=False, soft_wrap=True)


# --- verify and validate --------------------------------------------------------------------

DIVERGENT_EXIT = 3  # verify found divergence (1 is an error)


class _Bars:
    """verify's progress on stderr (rich bars, only on a terminal)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not err.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def start(self, task: str, total: int | None) -> None:
        self.tasks[task] = self.progress.add_task(task, total=total)

    def advance(self, task: str, amount: int) -> None:
        self.progress.advance(self.tasks[task], amount)


_TABLES = typer.Option("--table", "-t", help="Mapping name or source table (repeat); default all.")
_SINCE = typer.Option(help="Window start on --time-column (ISO date/time, UTC); inclusive.")
_UNTIL = typer.Option(help="Window end on --time-column (ISO date/time, UTC); exclusive.")
_TIME_COLUMN = typer.Option(help="Column of the window; default the first timestamp column.")


def _windows(since: str | None, until: str | None, time_column: str | None) -> Any:
    """The --since/--until/--time-column options as a function of the mapping (a window per
    table, on its own first timestamp column unless --time-column names one)."""
    from replicator.verify import Window, default_time_column

    if time_column and not (since or until):
        raise ReplicatorError("--time-column needs --since and/or --until")
    first, last = _moment("--since", since), _moment("--until", until)

    def window(mapping: Any) -> Any:
        if first is None and last is None:
            return None
        return Window(time_column or default_time_column(mapping), first, last)

    return window


def _moment(option: str, text: str | None) -> Any:
    import datetime as dt

    if text is None:
        return None
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ReplicatorError(
            f"{option} {text!r} is not an ISO-8601 date or time (2024-01-15, "
            "2024-01-15T10:30:00; UTC unless it names an offset)"
        ) from None


def _short(value: Any, width: int = 60) -> str:
    text = "-" if value is None else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_report(report: Any, shown: int = 20) -> None:
    verdict = "[green]clean[/]" if report.clean else f"[red]{report.divergent} divergent[/]"
    summary = Table("", "", title=f"verify {report.table} ({report.scope})", show_header=False)
    if report.window:
        w = report.window
        summary.add_row("window", f"{w['column']} in [{w['since'] or '…'}, {w['until'] or '…'})")
    summary.add_row("PostgreSQL rows", str(report.source_rows))
    summary.add_row(
        "DynamoDB items", f"{report.replica_items} (+{report.tombstones} delete markers)"
    )
    summary.add_row("matched", str(report.matched))
    for name in ("missing", "extra", "differing", "unmappable"):
        count = getattr(report, name)
        summary.add_row(name, f"[red]{count}[/]" if count else "0")
    summary.add_row("re-checked after lag", f"{report.rechecked} ({report.converged} converged)")
    if report.repaired or report.repair_skipped:
        summary.add_row("repaired", f"{report.repaired} ({report.repair_skipped} skipped)")
    summary.add_row("seconds", f"{report.seconds:.1f}")
    summary.add_row("result", verdict)
    out.print(summary)
    if report.divergences:
        detail = Table("kind", "key", "source key", "differing attributes (expected → actual)")
        for d in report.divergences[:shown]:
            attributes = "; ".join(
                f"{name}: {_short(exp, 30)} → {_short(act, 30)}"
                for name, (exp, act) in d.attributes.items()
            )
            key = " | ".join(d.key.values()) or "-"
            detail.add_row(d.kind, key, _short(d.source_key, 30), attributes or d.detail)
        out.print(detail)
        if report.divergent > shown:
            out.print(f"… and {report.divergent - shown} more (--json FILE lists every one)")
    for note in report.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)


@app.command("verify")
@friendly
def verify_command(
    table: Annotated[list[str] | None, _TABLES] = None,
    sample: Annotated[
        int | None, typer.Option(help="Compare N random rows only (fast), not everything.")
    ] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    time_column: Annotated[str | None, _TIME_COLUMN] = None,
    repair: Annotated[
        bool,
        typer.Option(
            help="Rewrite divergent items from PostgreSQL; a newer replicated change wins."
        ),
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write the full report (every divergent key) to this file; with several "
            "tables, FILE.<table>.json each.",
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group whose lag the re-check waits for.")
    ] = None,
    recheck: Annotated[
        bool,
        typer.Option(help="Re-check divergent keys after the replication lag (live traffic)."),
    ] = True,
) -> None:
    """Compare PostgreSQL and DynamoDB row by row through the sink's mapping: counts, missing,
    extra and differing items. Exit 0 when clean, 3 on divergence, 1 on error."""
    from replicator.verify import VerifyOptions, verify

    s = settings()
    mappings = [s.mapping_named(t) for t in table] if table else list(s.tables)
    window = _windows(since, until, time_column)
    divergent = False
    for mapping in mappings:
        path = json_path
        if json_path is not None and len(mappings) > 1:
            path = json_path.with_name(f"{json_path.stem}.{mapping.name}{json_path.suffix}")
        options = VerifyOptions(
            sample=sample,
            window=window(mapping),
            repair=repair,
            recheck=recheck,
            group_id=group,
            json_path=path,
        )
        bars = _Bars()
        with bars.progress:
            report = verify(s, mapping, options, bars)
        _print_report(report)
        if path is not None:
            _say(f"report written to {path}")
        divergent = divergent or not report.clean
    if divergent:
        raise typer.Exit(DIVERGENT_EXIT)


@app.command("validate")
@friendly
def validate_command(
    table: Annotated[list[str] | None, _TABLES] = None,
    sample: Annotated[
        int | None, typer.Option(help="Rows sampled per table (default verify.sample_rows).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Least sample success rate, 0..1 (default verify.sample_threshold)."),
    ] = None,
    reads: Annotated[
        int | None,
        typer.Option(help="Rows whose access patterns are timed (default verify.latency_reads)."),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group whose lag the re-checks wait for.")
    ] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    time_column: Annotated[str | None, _TIME_COLUMN] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this file.")
    ] = None,
) -> None:
    """The seed's validation set: count match, sample success rate, read latency p50/p95 on both
    stores, and a coordinated test row. Exit 0 when every check passes, 3 otherwise."""
    from replicator.validate import validate

    s = settings()
    window = _windows(since, until, time_column)
    changes: dict[str, Any] = {}
    if sample is not None:
        changes["sample_rows"] = sample
    if threshold is not None:
        changes["sample_threshold"] = threshold
    if reads is not None:
        changes["latency_reads"] = reads
    if changes:
        from pydantic import ValidationError

        try:
            verify_settings = type(s.verify).model_validate(s.verify.model_dump() | changes)
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise ReplicatorError(f"invalid option: {problems}") from None
        s = s.model_copy(update={"verify": verify_settings})
    mappings = [s.mapping_named(t) for t in table] if table else list(s.tables)
    bars = _Bars()
    with bars.progress:
        results = validate(s, mappings, group, bars, window=window)
    checks = Table("table", "check", "result", "measured", "needed", title="validate")
    for result in results:
        for check in result.checks:
            verdict = "[green]PASS[/]" if check.passed else "[red]FAIL[/]"
            checks.add_row(result.table, check.name, verdict, check.measured, check.needed)
    out.print(checks)
    latency = Table(
        "table",
        "access pattern",
        "reads",
        "PostgreSQL p50 / p95 ms",
        "DynamoDB p50 / p95 ms",
        "errors",
        "differing pages",
        title="read latency",
    )
    for result in results:
        for x in result.latencies:
            latency.add_row(
                result.table,
                x.pattern,
                str(x.reads),
                f"{x.postgres_ms[0]:.1f} / {x.postgres_ms[1]:.1f}",
                f"{x.dynamodb_ms[0]:.1f} / {x.dynamodb_ms[1]:.1f}",
                str(x.errors),
                str(x.mismatches),
            )
    if latency.row_count:
        out.print(latency)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps([r.to_json() for r in results], indent=2))
        except OSError as exc:
            raise ReplicatorError(f"cannot write {json_path}: {exc.strerror}") from exc
    if not all(r.passed for r in results):
        raise typer.Exit(DIVERGENT_EXIT)


if __name__ == "__main__":
    sys.exit(app())
