"""`replicator purge`: Phase 5, old rows deleted from PostgreSQL only."""

from __future__ import annotations

from typing import Annotated

import typer

from replicator.cli._common import (
    WHO,
    WHY,
    app,
    checks_table,
    friendly,
    os_user,
    out,
    rate_progress,
    say,
    settings,
)
from replicator.errors import ReplicatorError
from replicator.ops import purge as ops

_TIME_COLUMN = typer.Option(
    "--time-column", help="The window's column (default: as verify's: retention column)."
)
_DRY_RUN = typer.Option("--dry-run", help="Check the gates and count the rows; delete nothing.")
_DEFAULT_WHY = "Phase 5: cleanup of PostgreSQL operational data"


@app.command("purge")
@friendly
def purge_command(
    table: Annotated[str, typer.Option("--table", "-t", help="Mapping name (or source table).")],
    before: Annotated[
        str,
        typer.Option(
            "--before", help="Delete rows whose time column is before this (UTC date or time)."
        ),
    ],
    batch: Annotated[
        int | None,
        typer.Option("--batch", min=1, help="Rows per transaction (default purge.batch_rows)."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", min=0.001, help="At most this many rows/s (default purge.rate_rows_s)."
        ),
    ] = None,
    time_column: Annotated[str | None, _TIME_COLUMN] = None,
    dry_run: Annotated[bool, _DRY_RUN] = False,
    why: Annotated[str, WHY] = _DEFAULT_WHY,
    who: Annotated[str | None, WHO] = None,
) -> None:
    """Delete old rows of a dynamodb-only table from PostgreSQL without touching DynamoDB: in
    batches, in a session tagged with a replication origin whose changes the consumers drop.
    Gated (dynamodb-only for phases.incident_window_h, latest full verify clean, consumer caught
    up); recorded in the phase history; resumable (run it again after a kill); rate-limited."""
    s = settings()
    options = ops.PurgeOptions(
        table=table,
        before=before,
        who=who or os_user(),
        why=why,
        column=time_column,
        batch=batch,
        rate=rate,
        dry_run=dry_run,
    )
    bar = rate_progress()

    class Shown(ops.Progress):
        task: int | None = None

        def start(self, total: int, done: int) -> None:
            self.task = bar.add_task(
                f"purge {s.mapping_named(table).source}", total=total, rate="-"
            )
            bar.start()

        def advance(self, rows: int) -> None:
            assert self.task is not None
            bar.update(self.task, advance=rows)
            speed = bar.tasks[self.task].speed
            bar.update(self.task, rate=f"{speed:,.0f} rows/s" if speed else "-")

    try:
        result = ops.purge(s, options, Shown())
    except ops.PurgeRefused as exc:
        out.print(checks_table(exc.checks))
        raise ReplicatorError(f"{exc}\nnothing was deleted") from None
    finally:
        bar.stop()
    w = result.window
    if dry_run:
        out.print(checks_table(result.checks))
        failed = [c for c in result.checks if not c.ok]
        resumed = f" (resumes purge #{w.id}, {w.rows} rows done)" if result.resumed else ""
        say(
            f"{w.table}: {result.rows} rows with {w.column} < {w.before.isoformat()}{resumed}; "
            + ("the purge would be refused" if failed else "the purge would run")
        )
        if failed:
            raise typer.Exit(1)
        return
    out.print(checks_table(result.checks))
    resumed = " (resumed)" if result.resumed else ""
    out.print(
        f"{w.table}: purge #{w.id}{resumed} done: {result.rows} rows deleted from PostgreSQL in "
        f"{result.batches} batches, {result.seconds:.1f} s ({result.rate:,.0f} rows/s); "
        f"{w.rows} in all with {w.column} < {w.before.isoformat()}; DynamoDB keeps every item",
        highlight=False,
        soft_wrap=True,
    )
