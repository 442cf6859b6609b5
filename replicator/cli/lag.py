"""`replicator lag`, `status` and `cost`."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.live import Live

from replicator.app import status_sources
from replicator.cli._common import METRICS_URLS, app, friendly, out, settings
from replicator.errors import ReplicatorError
from replicator.observe import cost, status
from replicator.stream.dynamo import dynamodb_client

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
    sources = status_sources(s)
    ask = {"group_id": group, "with_probes": probes, "only": table}
    if not watch:
        report, _ = status.gather(s, targets, sources, window_s=window, **ask)
        if as_json:
            out.print_json(json.dumps(report.as_json()))
        else:
            out.print(status.render(report))
        return report.healthy()

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
        report, first = status.gather(s, targets, sources, window_s=0, **ask)
        scrapes = deque([first] if first else [])
        with Live(status.render(report), console=out, refresh_per_second=4, screen=False) as live:
            while not stop.wait(interval):
                while len(scrapes) > 1 and scrapes[1].at <= time.time() - window:
                    scrapes.popleft()
                previous = scrapes[0] if scrapes else None
                report, scrape = status.gather(
                    s, targets, sources, previous=previous, window_s=0, **ask
                )
                if scrape is not None:
                    scrapes.append(scrape)
                live.update(status.render(report))
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


def _screen_command(probes: bool) -> Callable[..., None]:
    """`lag` and `status` take the same options; `status` adds the probes and its exit code."""

    def command(
        metrics_url: Annotated[list[str] | None, METRICS_URLS] = None,
        group: Annotated[str | None, _GROUP] = None,
        table: Annotated[str | None, _TABLE] = None,
        watch: Annotated[bool, _WATCH] = False,
        as_json: Annotated[bool, _JSON] = False,
        interval: Annotated[float, _INTERVAL] = 2.0,
        window: Annotated[float, _WINDOW] = 5.0,
    ) -> None:
        healthy = _lag_screen(metrics_url, watch, as_json, interval, window, probes, group, table)
        if probes and not healthy:
            raise typer.Exit(1)

    return friendly(command)


app.command(
    "lag",
    help="Per table: phase, connector state, slot lag, consumer lag, end-to-end p50/p99, "
    "throughput.",
)(_screen_command(probes=False))
app.command(
    "status",
    help="The lag screen plus each consumer's /healthz and /readyz; exit 1 unless the connector "
    "and its tasks run, the slot is active and every consumer is reachable and ready.",
)(_screen_command(probes=True))


@app.command("cost")
@friendly
def cost_command(
    metrics_url: Annotated[list[str] | None, METRICS_URLS] = None,
    window: Annotated[
        float,
        typer.Option(help="Measure over this many seconds; 0: over the processes' lifetime."),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Monthly DynamoDB on-demand estimate per table from the consumed capacity the running
    processes report (prices: settings cost.*), plus storage from DescribeTable."""

    s = settings()
    report = cost.measure(s, metrics_url or s.metrics.urls(), window, dynamodb_client(s.dynamodb))
    if as_json:
        out.print_json(json.dumps(report.as_json()))
    else:
        out.print(cost.render(report))
