"""`replicator dlq`: the dead-letter topic."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from replicator.cli._common import dlq_app, friendly, out, say, settings
from replicator.errors import ReplicatorError
from replicator.ops.dlq import read_parked, replay, split_by_horizon, superseded


def _parked(reason: str | None, refs: list[str] | None) -> list[Any]:
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
    say(f"{len(records)} parked record(s)")


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

    if not refs and not reason and not all_records:
        raise ReplicatorError("name records (PARTITION:OFFSET), --reason R, or --all")
    records = _parked(reason, refs)
    s = settings()
    kept, refused = split_by_horizon(records, s, int(time.time() * 1000))
    kept, newer = superseded(s.kafka.bootstrap_servers, kept, s.kafka.extra) if kept else ([], [])
    # In source order: two parked changes of one row go back oldest first, the newest last.
    kept.sort(key=lambda r: (r.source_topic, r.source_partition, r.source_offset))
    count = replay(s.kafka.bootstrap_servers, kept, s.kafka.extra) if kept else 0
    say(f"replayed {count} record(s) to their source topics, each to its original partition")
    if newer:
        shown = ", ".join(r.ref for r in newer[:20]) + (" ..." if len(newer) > 20 else "")
        say(
            f"skipped {len(newer)} record(s) whose row has a newer change in its source "
            f"partition (it holds the row's whole state, and is applied): {shown}"
        )
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
