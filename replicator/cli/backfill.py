"""`replicator snapshot` and `backfill`."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from replicator import app as composition
from replicator.cli._common import app, err, friendly, out, rate_progress, say, settings
from replicator.errors import ReplicatorError
from replicator.observe.log import configure
from replicator.ops.backfill import parse_time, plan_jobs
from replicator.ops.snapshot import request_snapshot


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

    s = settings()
    mapping = s.mapping_named(table)
    signal_id, matched = request_snapshot(s, mapping, where)
    rows = "every row" if matched is None else f"{matched} row(s) matching --where"
    say(
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
    lane: Annotated[
        str,
        typer.Option(
            help="auto: the batch lane (unconditional BatchWriteItem) into a table other than "
            "the live one that the backfill created or found empty, else guarded writes; "
            "batch: the batch lane or a refusal; guarded: guarded writes only.",
        ),
    ] = "auto",
    handoff: Annotated[
        bool,
        typer.Option(
            "--handoff",
            help="Once a load into the live consumer's table has ended, set the live group's "
            "offsets there, so `run` goes on from where the load ended.",
        ),
    ] = False,
) -> None:
    """Replay tables' compacted topics into DynamoDB through the consumer's pipeline, with a
    consumer group of their own: progress shown, resumable after a kill, stops at the ends
    seen at start (or --follow). Several tables run in parallel."""

    if from_beginning and from_time is not None:
        raise ReplicatorError("--from-beginning and --from-time exclude each other")
    if lane not in ("auto", "batch", "guarded"):
        raise ReplicatorError(f"--lane {lane!r}: choose auto, batch or guarded")
    s = settings()
    # On a terminal the progress bar says how it goes; log lines would tear it.
    configure("WARNING" if err.is_terminal and s.log_level.upper() != "DEBUG" else s.log_level)
    jobs = plan_jobs(s, table, into)
    from_ms = parse_time(from_time) if from_time is not None else None
    runner = composition.backfill(
        s,
        jobs,
        from_ms=from_ms,
        restart=restart,
        follow=follow,
        rate_limit=rate_limit,
        lane=lane,  # type: ignore[arg-type]
        handoff=handoff,
    )
    composition.collect_less_often()
    for r in runner.running:
        done, total = r.progress()
        how = f"resuming at {done}/{total}" if r.summary.resumed else f"{total} record(s)"
        say(
            f"{r.job.mapping.name} -> {r.job.target.name}: group {r.job.group_id}, {how}, "
            f"{r.summary.lane} lane"
        )

    def stop(_signum: int, _frame: Any) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    progress = rate_progress()
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
            say(
                f"{x.table}: {x.refused} event(s) committed more than {days} days ago "
                "(tombstone_days) were not applied: their rows' delete markers may have expired, "
                f"so they could bring deleted rows back. `replicator verify --table {x.table} "
                "--repair` rewrites what still differs, against PostgreSQL"
            )
    for x in summaries:
        if x.handed_over is not None:
            at = ", ".join(f"partition {p} at {o}" for p, o in sorted(x.handed_over.items()))
            say(f"{x.table}: handed over: the live group {s.kafka.group_id} goes on from {at}")
    failed = [x for x in summaries if x.error]
    if failed:
        raise ReplicatorError(
            "; ".join(f"{x.table}: {x.error}" for x in failed) + " (the same command resumes)"
        )
    refused = [x for x in summaries if x.handoff_error]
    if refused:
        raise ReplicatorError("; ".join(x.handoff_error or "" for x in refused))
    if not all(x.finished for x in summaries) and not follow:
        say("stopped before the end; the same command resumes where it stopped")
        raise typer.Exit(130)
