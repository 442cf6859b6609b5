"""What every command shares: the Typer app and its groups, the consoles, the settings
(loaded once from --config and the environment) and the error boundary."""

from __future__ import annotations

import functools
import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from replicator.config import Settings, load_settings
from replicator.errors import ReplicatorError
from replicator.ops.connector import payload
from replicator.stack import LocalStack

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

# Options several command groups take, declared once so their help stays alike.
METRICS_URLS = typer.Option(
    "--metrics-url",
    help="/metrics URL of a consumer or of the read API (repeat for every replica; summed). "
    "Default: metrics.consumer_urls, else this host's metrics.port.",
)
WHY = typer.Option("--why", help="Why (recorded in the history).")
WHO = typer.Option("--who", help="Who makes the change (recorded); default: the OS user.")

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


def os_user() -> str:
    """Who runs the command, for the phase history when --who is not given."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in a bare container: the caller must say --who
        return ""


def checks_table(checks: list[Any]) -> Table:
    """Gate evaluations (phase moves and purges) as one table."""
    table = Table("gate", "condition", "result", "measured", "needs")
    for c in checks:
        result = "[green]ok[/]" if c.ok else "[bold red]FAILED[/]"
        table.add_row(str(c.gate), c.name, result, c.value, c.threshold)
    return table


def rate_progress() -> Progress:
    """A progress bar with a rate and an ETA on stderr (backfill, purge); tasks carry a
    ``rate`` field."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )


def say(text: str) -> None:
    err.print(f"[dim]·[/] {text}", highlight=False)


def connector_payload(s: Settings) -> dict[str, str]:
    """The connector's REST payload, with the local stack's secrets file when the settings name
    no password reference."""

    return payload(s, LocalStack(s).secrets_file())
