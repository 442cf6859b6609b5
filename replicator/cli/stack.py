"""`replicator stack`: the local stack's processes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from replicator.cli._common import friendly, out, say, settings, stack_app
from replicator.stack import LocalStack


@stack_app.command("install")
@friendly
def stack_install() -> None:
    """Install PostgreSQL 15 (Debian) and resolve the Kafka/Connect/Debezium jars (Maven)."""

    LocalStack(settings(), say).install()


@stack_app.command("up")
@friendly
def stack_up() -> None:
    """Start PostgreSQL, Kafka (KRaft), Kafka Connect + Debezium and the DynamoDB endpoint."""

    LocalStack(settings(), say).up()


@stack_app.command("down")
@friendly
def stack_down(
    purge: Annotated[bool, typer.Option(help="Also delete all stack data.")] = False,
) -> None:
    """Stop exactly the processes `stack up` started."""

    LocalStack(settings(), say).down(purge=purge)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Show which parts of the local stack answer."""

    table = Table("part", "state", "where")
    parts = LocalStack(settings()).status()
    for part in parts:
        table.add_row(part.name, "[green]up[/]" if part.running else "[red]down[/]", part.detail)
    out.print(table)
    if not all(p.running for p in parts):
        raise typer.Exit(1)
