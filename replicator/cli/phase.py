"""`replicator phase`: per-table read phases."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from replicator.cli._common import (
    WHO,
    WHY,
    checks_table,
    friendly,
    os_user,
    out,
    phase_app,
    say,
    settings,
)
from replicator.errors import ReplicatorError
from replicator.ops.phases import Phase, PhaseError, PhaseRefused, PhaseStore, evaluate, parse_phase


def _change_phase(table: str, to: str, why: str, who: str | None, force: bool) -> None:
    store = PhaseStore(settings())
    try:
        done = store.set(table, parse_phase(to), who=who or os_user(), why=why, force=force)
    except PhaseRefused as exc:
        if exc.checks:
            out.print(checks_table(exc.checks))
        failed = [c for c in exc.checks if not c.ok]
        raise ReplicatorError(
            f"{exc}\n{len(failed)} of {len(exc.checks)} condition(s) failed; nothing changed "
            "(--force --why '...' moves anyway and records them)"
        ) from None
    finally:
        store.close()
    if done.checks:
        out.print(checks_table(done.checks))
    if not done.changed:
        say(f"{done.table} already is {done.to_phase}; nothing changed")
        return
    verb = "rolled back" if done.rollback else "moved"
    forced = " [bold yellow](forced)[/]" if done.forced else ""
    say(f"{done.table} {verb} {done.from_phase} -> {done.to_phase}{forced} by {done.who}")


@phase_app.command("show")
@friendly
def phase_show(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every mapped table's phase, where its reads go, and its last change."""

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
    why: Annotated[str | None, WHY] = None,
    who: Annotated[str | None, WHO] = None,
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
        s = settings()
        store = PhaseStore(s)
        try:
            name = s.mapping_named(table).name
            start, target = store.get(name), parse_phase(phase)
            checks = evaluate(s, store, name, start, target) if target.rank > start.rank else []
        finally:
            store.close()
        if checks:
            out.print(checks_table(checks))
        failed = [c for c in checks if not c.ok]
        skip = target.rank - start.rank > 1
        say(
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
    why: Annotated[str, WHY],
    to: Annotated[
        str | None, typer.Option("--to", help="An earlier phase; default: the previous one.")
    ] = None,
    who: Annotated[str | None, WHO] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Roll back even a purged table to a phase that reads PostgreSQL (recorded).",
        ),
    ] = False,
) -> None:
    """Move a table back (to the previous phase, or --to an earlier one): immediate, no gates,
    except that a purged table does not go back to reading PostgreSQL unless --force."""

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
    _change_phase(table, target.value, why, who, force=force)


@phase_app.command("history")
@friendly
def phase_history(
    table: Annotated[str | None, typer.Argument(help="Only this table.")] = None,
    limit: Annotated[int, typer.Option(help="The last N changes.", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every phase change, oldest first: from, to, who, when, why, forced, failed conditions."""

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
