"""`replicator reads serve` and `read`."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from replicator.app import read_path
from replicator.cli._common import app, err, friendly, out, settings
from replicator.errors import ReplicatorError
from replicator.observe.log import configure
from replicator.reads.api import ReadApi, to_json
from replicator.reads.dynamo import DynamoReads
from replicator.reads.patterns import catalog
from replicator.reads.postgres import PostgresReads
from replicator.reads.rows import Page

reads_app = typer.Typer(help="The read path: the HTTP read API.", no_args_is_help=True)
app.add_typer(reads_app, name="reads")


@reads_app.command("serve")
@friendly
def reads_serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (reads.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (reads.port).")] = None,
) -> None:
    """Serve the read API (JSON, OpenAPI at /openapi.json) until SIGTERM/SIGINT."""

    s = settings()
    configure(s.log_level)
    path = read_path(s)
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
    pattern: Annotated[
        str,
        typer.Argument(
            help="A declared pattern (the mappings' reads: logs-by-application, payment, ...)."
        ),
    ],
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

    s = settings()
    patterns = {p.decl.cli_name: p for p in catalog(s).values()}
    if pattern not in patterns:
        raise ReplicatorError(f"unknown pattern {pattern!r}; one of: {', '.join(patterns)}")
    chosen = patterns[pattern]
    ranged = chosen.decl.range
    if ranged is None and (start or end):
        raise ReplicatorError(f"{pattern} takes no --start/--end")
    if ranged is not None and ranged.required and not (start and end):
        raise ReplicatorError(f"{pattern} needs --start and --end")
    single = chosen.single
    if single and (limit is not None or cursor):
        raise ReplicatorError(f"{pattern} returns one row: no --limit/--cursor")
    method = chosen.name
    args: list[Any] = [value, *([start, end] if ranged is not None else [])]
    kwargs: dict[str, Any] = {}
    if not single:
        kwargs = {"limit": s.reads.default_page_size if limit is None else limit, "after": cursor}
    if store == "auto":
        path = read_path(s)
        try:
            served = path.read(method, *args, **kwargs)
        finally:
            path.close()
        result, source = served.value, served.source
    elif store in ("postgres", "dynamodb"):
        reader = PostgresReads(s) if store == "postgres" else DynamoReads(s)
        try:
            result, source = reader.read(method, *args, **kwargs), store
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
    columns = chosen.mapping.reads.show or list(chosen.shape.kinds)
    view = Table(*columns, title=f"{pattern} {value} ({len(rows)} from {source})")
    for row in rows:
        view.add_row(*("" if row.get(c) is None else str(row[c])[:60] for c in columns))
    out.print(view)
    if following:
        out.print(f"next page: --cursor {following}", highlight=False, soft_wrap=True)
