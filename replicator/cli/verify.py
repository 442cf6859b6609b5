"""`replicator verify` and `validate`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from replicator.cli._common import app, err, friendly, out, say, settings
from replicator.errors import ReplicatorError
from replicator.ops.validate import validate
from replicator.ops.verify import VerifyOptions, Window, default_time_column, verify

DIVERGENT_EXIT = 3  # verify found divergence (1 is an error)


class _Bars:
    """verify's progress on stderr (rich bars, only on a terminal)."""

    def __init__(self) -> None:
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

    if time_column and not (since or until):
        raise ReplicatorError("--time-column needs --since and/or --until")
    first, last = _moment("--since", since), _moment("--until", until)

    def window(mapping: Any) -> Any:
        if first is None and last is None:
            return None
        return Window(time_column or default_time_column(mapping), first, last)

    return window


def _moment(option: str, text: str | None) -> Any:
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
    if report.purged:
        summary.add_row("purged (not extra)", f"{report.purged} items of purged windows")
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
            say(f"report written to {path}")
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
