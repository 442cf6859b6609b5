"""`replicator report`: the seed's success criteria, measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from replicator.cli._common import METRICS_URLS, app, friendly, out, say, settings
from replicator.cli.verify import DIVERGENT_EXIT
from replicator.errors import ReplicatorError
from replicator.ops.report import evaluate, gather
from replicator.ops.report_page import page_html


@app.command("report")
@friendly
def report_command(
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as an HTML page here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    window: Annotated[
        float,
        typer.Option("--window", help="Seconds over which the consumer group's lag is sampled."),
    ] = 10.0,
    metrics_url: Annotated[list[str] | None, METRICS_URLS] = None,
) -> None:
    """The seed's "Enhanced Phase 3 Success Criteria" per table and overall, each with its
    measured value, threshold and pass/fail, from what the product measures (verify, validate,
    phase history, incidents, consumed capacity, PostgreSQL sizes). Exit 0 when every criterion
    passes, 3 when one fails, 1 on error."""
    s = settings()
    evidence = gather(s, window, metrics_url, say=say)
    result = evaluate(evidence)
    if html is not None:
        try:
            html.write_text(page_html(result))
        except OSError as exc:
            raise ReplicatorError(f"cannot write the page to {html}: {exc.strerror}") from exc
        say(f"page written to {html}")
    if as_json:
        out.print_json(json.dumps(result.as_json(), default=str))
    else:
        for part in [("overall", result.overall)] + [
            (f"{t.table} ({t.phase})", t.criteria) for t in result.tables
        ]:
            title, criteria = part
            grid = Table("criterion", "result", "measured", "threshold", title=title)
            for c in criteria:
                verdict = "[green]PASS[/]" if c.passed else "[bold red]FAIL[/]"
                measured = c.measured + (f"\n[dim]{c.note}[/]" if c.note else "")
                grid.add_row(c.name, verdict, measured, c.threshold)
            out.print(grid)
        for note in result.notes:
            say(f"not measured: {note}")
    if not result.passed:
        raise typer.Exit(DIVERGENT_EXIT)
