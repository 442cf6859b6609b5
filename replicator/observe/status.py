"""`replicator lag` / `status`: one panel per table (phase, connector, replication slot,
consumer lag, end-to-end p50/p99, throughput), each source asked on its own so one that does not
answer leaves its fields unknown and an error line. The pure parts it shares with the
consumer's status page live in replicator.observe.status_page.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from replicator.errors import ReplicatorError
from replicator.observe.lag import consumer_lag, slot_lag
from replicator.observe.status_page import (
    APPLIED,
    CONSUMED,
    DEAD,
    E2E,
    LAG,
    LAG_COLOUR,
    NONE,
    READ_UNITS,
    SPEED_COLOUR,
    THROTTLED,
    WRITE_UNITS,
    History,
    Point,
    Rates,
    Scrape,
    chart_svg,
    delta_buckets,
    fetch,
    from_registry,
    histogram_quantile,
    human_bytes,
    human_seconds,
    page_html,
    parse_exposition,
    rates,
)

if TYPE_CHECKING:
    from replicator.config import Settings

__all__ = [
    "APPLIED",
    "CONSUMED",
    "DEAD",
    "E2E",
    "LAG",
    "LAG_COLOUR",
    "READ_UNITS",
    "SPEED_COLOUR",
    "THROTTLED",
    "WRITE_UNITS",
    "History",
    "Point",
    "Rates",
    "Report",
    "Scrape",
    "TableStatus",
    "chart_svg",
    "delta_buckets",
    "fetch",
    "from_registry",
    "gather",
    "histogram_quantile",
    "page_html",
    "parse_exposition",
    "probe_consumers",
    "rates",
    "render",
]

# --- `replicator lag` / `status` ------------------------------------------------------------


@dataclass
class TableStatus:
    table: str
    source: str
    topic: str
    phase: str
    connector: str
    tasks: list[str]
    slot: dict[str, Any] | None
    lag_events: int | None
    lag_seconds: float | None
    p50_s: float | None
    p99_s: float | None
    latency_window: str
    events_per_s: float | None
    applied_per_s: float | None
    # REPLICA IDENTITY of the source table: "FULL", "DEFAULT", ...; None when unknown.
    replica_identity: str | None = None
    replica_identity_ok: bool | None = None  # whether it shows every key move (see postgres.py)
    # Source columns the mapping does not name, mapped columns the source rows lack (the
    # consumers' replicator_unmapped_columns / replicator_missing_columns); None when unknown.
    unmapped_columns: list[str] | None = None
    missing_columns: list[str] | None = None


@dataclass
class Report:
    at: str
    consumers: list[str]
    consumer_reachable: bool
    connector: dict[str, Any]
    slot: dict[str, Any] | None
    tables: list[TableStatus]
    probes: dict[str, Any] = field(default_factory=dict)  # /healthz, /readyz per consumer
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def healthy(self) -> bool:
        states = [self.connector.get("state"), *self.connector.get("tasks", [])]
        return (
            all(s == "RUNNING" for s in states)
            and bool(self.connector.get("tasks"))
            and self.slot is not None
            and bool(self.slot.get("active"))
            and self.consumer_reachable
            and all(p.get("ready") for p in self.probes.values())
            and all(t.replica_identity_ok for t in self.tables)
        )


@dataclass(frozen=True)
class Sources:
    """What the screen asks beyond the consumers' metrics, each a call that may fail on its
    own: the phase store, Kafka Connect's connector status (None: no such connector) and the
    captured tables' REPLICA IDENTITY checks. The composition root builds them
    (``replicator.app.status_sources``)."""

    phases: Callable[[], Mapping[str, Any]]
    connector: Callable[[], dict[str, Any] | None]
    identities: Callable[[], Iterable[Any]]


def _phases(sources: Sources, errors: list[str]) -> dict[str, str]:
    try:
        return {name: str(phase) for name, phase in sources.phases().items()}
    except Exception as exc:  # any failure: the screen shows "unknown", never a traceback
        errors.append(f"phases: {str(exc).strip()[:200]}")
        return {}


def _connector(settings: Settings, sources: Sources, errors: list[str]) -> dict[str, Any]:
    name = settings.connector.name
    try:
        status = sources.connector()
    except ReplicatorError as exc:
        errors.append(f"connector: {exc}")
        return {"name": name, "state": "UNKNOWN", "tasks": []}
    if status is None:
        return {"name": name, "state": "MISSING", "tasks": []}
    return {
        "name": name,
        "state": status.get("connector", {}).get("state", "UNKNOWN"),
        "tasks": [t.get("state", "UNKNOWN") for t in status.get("tasks", [])],
    }


def _slot(settings: Settings, errors: list[str]) -> dict[str, Any] | None:
    try:
        slot = slot_lag(settings)
    except ReplicatorError as exc:
        errors.append(f"slot: {exc}")
        return None
    if slot is None:
        errors.append(f"slot: replication slot {settings.connector.slot_name!r} does not exist")
        return None
    return {
        "name": slot.slot,
        "active": slot.active,
        "retained_wal_bytes": slot.retained_wal_bytes,
        "confirmed_flush_lsn": slot.confirmed_flush_lsn,
    }


def _identities(sources: Sources, errors: list[str]) -> dict[str, Any]:
    try:
        checks = {check.table: check for check in sources.identities()}
    except ReplicatorError as exc:
        errors.append(f"replica identity: {exc}")
        return {}
    errors += [f"replica identity: {c.describe()}" for c in checks.values() if not c.ok]
    return checks


def _lags(settings: Settings, group_id: str | None, errors: list[str]) -> dict[str, Any]:
    try:
        return dict(consumer_lag(settings, group_id, timeout_s=5.0))
    except ReplicatorError as exc:
        errors.append(f"consumer lag: {exc}")
        return {}


def probe_consumers(urls: Iterable[str], timeout_s: float = 3.0) -> dict[str, Any]:
    """/healthz and /readyz beside each /metrics URL."""

    out: dict[str, Any] = {}
    for url in urls:
        base = url.rsplit("/metrics", 1)[0]
        result: dict[str, Any] = {}
        for path, key in (("/healthz", "live"), ("/readyz", "ready")):
            try:
                with urllib.request.urlopen(base + path, timeout=timeout_s) as answer:
                    body = json.loads(answer.read() or b"{}")
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read() or b"{}")
            except (OSError, ValueError) as exc:
                body = {key: False, "reason": f"no answer: {getattr(exc, 'reason', exc)}"}
            result[key] = bool(body.get(key))
            if not body.get(key) and body.get("reason"):
                result[f"{key}_reason"] = body["reason"]
        out[base] = result
    return out


def gather(
    settings: Settings,
    urls: list[str],
    sources: Sources,
    *,
    previous: Scrape | None = None,
    window_s: float = 2.0,
    group_id: str | None = None,
    with_probes: bool = False,
    only: str | None = None,
) -> tuple[Report, Scrape | None]:
    """Everything the screen shows, each source asked on its own: one that does not answer
    leaves its fields empty and an error line, the others still show."""
    errors: list[str] = []
    mappings = [settings.mapping_named(only)] if only else list(settings.tables)
    first, scrape_errors = fetch(urls)
    if first is not None and previous is None and window_s > 0:
        time.sleep(window_s)  # a rate needs two scrapes
        previous, (first, more) = first, fetch(urls)
        scrape_errors += more
    scrape = first
    if scrape is None:
        errors.append("no consumer reachable: " + "; ".join(scrape_errors))
    elif scrape_errors:
        errors += [f"consumer {e}" for e in scrape_errors]
    phases = _phases(sources, errors)
    connector = _connector(settings, sources, errors)
    slot = _slot(settings, errors)
    lags = _lags(settings, group_id, errors)
    identities = _identities(sources, errors)
    tables = []
    for mapping in mappings:
        lag = lags.get(mapping.name)
        identity = identities.get(mapping.source)
        r = rates(previous, scrape, mapping.name) if scrape is not None else None
        tables.append(
            TableStatus(
                table=mapping.name,
                source=mapping.source,
                topic=settings.topic_of(mapping),
                phase=phases.get(mapping.name, "unknown"),
                connector=connector["state"],
                tasks=connector["tasks"],
                slot=slot,
                lag_events=lag.events if lag else None,
                lag_seconds=lag.seconds if lag else None,
                p50_s=r.p50_s if r else None,
                p99_s=r.p99_s if r else None,
                latency_window=r.latency_window if r else "none",
                events_per_s=r.events_per_s if r else None,
                applied_per_s=r.applied_per_s if r else None,
                replica_identity=identity.identity if identity else None,
                replica_identity_ok=identity.ok if identity else None,
                unmapped_columns=_columns(scrape, "replicator_unmapped_columns", mapping.name),
                missing_columns=_columns(scrape, "replicator_missing_columns", mapping.name),
            )
        )
    report = Report(
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        consumers=list(urls),
        consumer_reachable=scrape is not None,
        connector=connector,
        slot=slot,
        tables=tables,
        probes=probe_consumers(urls) if with_probes else {},
        errors=errors,
    )
    return report, scrape


def _columns(scrape: Scrape | None, metric: str, table: str) -> list[str] | None:
    """The columns a schema gauge shows present for a table, in any consumer."""
    if scrape is None:
        return None
    return sorted(
        {
            labels["column"]
            for labels, value in scrape.samples.get(metric, [])
            if labels.get("table") == table and "column" in labels and value > 0
        }
    )


def schema_line(unmapped: list[str] | None, missing: list[str] | None) -> str | None:
    """The status screen's line about the source's columns; None when it has nothing to say."""
    parts = []
    if unmapped:
        parts.append(f"unmapped columns: {', '.join(unmapped)}")
    if missing:
        parts.append(f"mapped columns missing from the source: {', '.join(missing)}")
    return "; ".join(parts) or None


def render(report: Report) -> Any:
    """The screen: one panel per table, then the consumers' probes and any errors."""

    def state(value: str) -> str:
        colour = "green" if value == "RUNNING" else "red"
        return f"[{colour}]{value}[/]"

    parts: list[Any] = []
    for t in report.tables:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("phase", t.phase)
        tasks = ", ".join(state(s) for s in t.tasks) or "none"
        grid.add_row("connector", f"{state(t.connector)}  (tasks: {tasks})")
        if t.slot is None:
            grid.add_row("slot", "[red]unknown[/]")
        else:
            active = "[green]active[/]" if t.slot["active"] else "[red]inactive[/]"
            grid.add_row(
                "slot", f"{t.slot['name']} {active}, {human_bytes(t.slot['retained_wal_bytes'])}"
            )
        if t.lag_events is None:
            grid.add_row("consumer lag", "[red]unknown[/]")
        else:
            behind = (
                f"{t.lag_events} events, oldest {human_seconds(t.lag_seconds)} old"
                if t.lag_events
                else "0 events (caught up)"
            )
            grid.add_row("consumer lag", behind)
        if t.replica_identity is None:
            grid.add_row("replica identity", "[red]unknown[/]")
        else:
            colour = "green" if t.replica_identity_ok else "red"
            needs = "" if t.replica_identity_ok else " (key moves need FULL: see below)"
            grid.add_row("replica identity", f"[{colour}]{t.replica_identity}[/]{needs}")
        if not report.consumer_reachable:
            grid.add_row("end-to-end", "[yellow]no consumer reachable[/]")
            grid.add_row("throughput", "[yellow]no consumer reachable[/]")
        else:
            note = {"window": "", "since start": " (since start)", "none": " (no writes yet)"}
            grid.add_row(
                "end-to-end",
                f"p50 {human_seconds(t.p50_s)}, p99 {human_seconds(t.p99_s)}"
                f"{note[t.latency_window]}",
            )
            ev = NONE if t.events_per_s is None else f"{t.events_per_s:.1f}"
            ap = NONE if t.applied_per_s is None else f"{t.applied_per_s:.1f}"
            grid.add_row("throughput", f"{ev} events/s consumed, {ap} applied/s")
            line = schema_line(t.unmapped_columns, t.missing_columns)
            grid.add_row("source columns", f"[yellow]{escape(line)}[/]" if line else "as mapped")
        parts.append(Panel(grid, title=f"[bold]{t.table}[/] ← {t.source}", title_align="left"))
    for base, probe in report.probes.items():
        live = "[green]live[/]" if probe["live"] else "[red]not live[/]"
        ready = "[green]ready[/]" if probe["ready"] else "[red]not ready[/]"
        reason = probe.get("ready_reason") or probe.get("live_reason") or ""
        parts.append(Text.from_markup(f"consumer {base}: {live}, {ready} {reason}".rstrip()))
    for error in report.errors:
        parts.append(Text(f"! {error}", style="yellow"))
    parts.append(Text(f"as of {report.at}", style="dim"))
    return Group(*parts)
