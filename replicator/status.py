"""What operators look at: `replicator lag` / `status` (one section per table: phase,
connector, replication slot, consumer lag, end-to-end p50/p99, throughput), and the consumer's
HTML status page with small charts of lag and throughput over the last minutes.

Pure parts (parsing an exposition, quantiles from histogram buckets, rates between two scrapes,
the page's HTML and SVG) are separate from the I/O (HTTP to consumers, Kafka, PostgreSQL,
Kafka Connect), so they are tested without services.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from replicator.config import Settings
    from replicator.health import Health
    from replicator.metrics import Metrics

log = structlog.get_logger("replicator.status")

CONSUMED = "replicator_events_consumed_total"
APPLIED = "replicator_events_applied_total"
E2E = "replicator_end_to_end_seconds"
LAG = "replicator_consumer_lag"
WRITE_UNITS = "replicator_dynamodb_consumed_write_units_total"
# Exported by the read API (replicator/read_api.py) when it runs; `cost` reads it from there.
READ_UNITS = "replicator_dynamodb_consumed_read_units_total"
THROTTLED = "replicator_dynamodb_throttled_requests_total"

DEAD = "replicator_events_dead_lettered_total"
NONE = "-"  # a value nobody could read


# --- a consumer's /metrics ----------------------------------------------------------------


@dataclass
class Scrape:
    """Samples of one or more expositions (replicas are summed by every reader), and when."""

    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self.samples.setdefault(name, []).append((labels, value))

    def total(self, name: str, **labels: str) -> float:
        return sum(
            v
            for have, v in self.samples.get(name, [])
            if all(have.get(k) == want for k, want in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for have, v in self.samples.get(name, []):
            if label in have:
                out[have[label]] = out.get(have[label], 0.0) + v
        return out

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """Cumulative (upper bound, count) pairs of a histogram, summed over replicas."""
        counts: dict[float, float] = {}
        for have, v in self.samples.get(f"{name}_bucket", []):
            if all(have.get(k) == want for k, want in labels.items()):
                le = float(have["le"])
                counts[le] = counts.get(le, 0.0) + v
        return sorted(counts.items())

    def names(self) -> set[str]:
        return set(self.samples)


def parse_exposition(text: str, at: float | None = None, into: Scrape | None = None) -> Scrape:
    scrape = into or Scrape(time.time() if at is None else at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape.add(sample.name, dict(sample.labels), float(sample.value))
    return scrape


def from_registry(metrics: Metrics) -> Scrape:
    """The in-process registry as a Scrape (no HTTP, no text round trip)."""
    scrape = Scrape(time.time())
    for family in metrics.registry.collect():
        for sample in family.samples:
            scrape.add(sample.name, dict(sample.labels), float(sample.value))
    return scrape


def fetch(urls: Iterable[str], timeout_s: float = 3.0) -> tuple[Scrape | None, list[str]]:
    """Every reachable consumer's exposition, summed; the errors of those that did not answer."""
    scrape: Scrape | None = None
    errors = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                text = answer.read().decode()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        scrape = parse_exposition(text, into=scrape)
    return scrape, errors


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the
    q-quantile; the +Inf bucket answers with the largest finite bound. None without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def delta_buckets(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    old = dict(before)
    return [(le, max(0.0, n - old.get(le, 0.0))) for le, n in after]


@dataclass(frozen=True)
class Rates:
    """One table's recent numbers from two scrapes (or, for latency, all time when the window
    saw no write)."""

    events_per_s: float | None
    applied_per_s: float | None
    write_units_per_s: float | None
    p50_s: float | None
    p99_s: float | None
    latency_window: str  # "window" or "since start" or "none"


def rates(before: Scrape | None, after: Scrape, table: str) -> Rates:
    buckets = after.buckets(E2E, table=table)
    window = "since start"
    per_s: dict[str, float | None] = {CONSUMED: None, APPLIED: None, WRITE_UNITS: None}
    if before is not None and after.at > before.at:
        span = after.at - before.at
        for name in per_s:
            per_s[name] = max(0.0, after.total(name, table=table) - before.total(name, table=table))
            per_s[name] = (per_s[name] or 0.0) / span
        recent = delta_buckets(before.buckets(E2E, table=table), buckets)
        if recent and recent[-1][1] > 0:
            buckets, window = recent, "window"
    p50 = histogram_quantile(0.5, buckets)
    p99 = histogram_quantile(0.99, buckets)
    if p50 is None:
        window = "none"
    return Rates(per_s[CONSUMED], per_s[APPLIED], per_s[WRITE_UNITS], p50, p99, window)


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
        )


def _phases(settings: Settings, errors: list[str]) -> dict[str, str]:
    try:
        from replicator.phases import PhaseStore
    except ImportError:  # the phases module is not part of this build
        return {}
    try:
        store = PhaseStore(settings)
        try:
            return {name: str(phase) for name, phase in store.current().items()}
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
    except Exception as exc:  # any failure: the screen shows "unknown", never a traceback
        errors.append(f"phases: {str(exc).strip()[:200]}")
        return {}


def _connector(settings: Settings, errors: list[str]) -> dict[str, Any]:
    from replicator.connector import ConnectClient
    from replicator.errors import ReplicatorError

    name = settings.connector.name
    try:
        status = ConnectClient(settings).status()
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
    from replicator.errors import ReplicatorError
    from replicator.lag import slot_lag

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


def _lags(settings: Settings, group_id: str | None, errors: list[str]) -> dict[str, Any]:
    from replicator.errors import ReplicatorError
    from replicator.lag import consumer_lag

    try:
        return dict(consumer_lag(settings, group_id, timeout_s=5.0))
    except ReplicatorError as exc:
        errors.append(f"consumer lag: {exc}")
        return {}


def probe_consumers(urls: Iterable[str], timeout_s: float = 3.0) -> dict[str, Any]:
    """/healthz and /readyz beside each /metrics URL."""
    import json

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
    *,
    previous: Scrape | None = None,
    window_s: float = 2.0,
    group_id: str | None = None,
    with_probes: bool = False,
) -> tuple[Report, Scrape | None]:
    """Everything the screen shows, each source asked on its own: one that does not answer
    leaves its fields empty and an error line, the others still show."""
    errors: list[str] = []
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
    phases = _phases(settings, errors)
    connector = _connector(settings, errors)
    slot = _slot(settings, errors)
    lags = _lags(settings, group_id, errors)
    tables = []
    for mapping in settings.tables:
        lag = lags.get(mapping.name)
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


def human_bytes(n: float | None) -> str:
    if n is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return NONE
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def render(report: Report) -> Any:
    """The screen: one panel per table, then the consumers' probes and any errors."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

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


# --- the consumer's status page ------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    at: float  # unix time
    lag: dict[str, float]  # table -> records behind (this consumer's partitions)
    events_per_s: dict[str, float]  # table -> consumed events per second since the last point
    e2e: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # buckets so far


class History:
    """A ring buffer of recent points, sampled from the in-process metrics by a daemon thread
    (every ``metrics.history_interval_s``, ``metrics.history_s`` long): reading the registry
    costs the consumer loop nothing."""

    def __init__(
        self, metrics: Metrics, topic_tables: dict[str, str], every_s: float, keep_s: float
    ) -> None:
        self.metrics = metrics
        self.topic_tables = topic_tables
        self.every_s = every_s
        self.keep_s = keep_s
        self.points: deque[Point] = deque(maxlen=max(2, int(keep_s / every_s) + 1))
        self._last: Scrape | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="status-history", daemon=True)

    def start(self) -> History:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def sample(self) -> Point:
        scrape = from_registry(self.metrics)
        lag: dict[str, float] = dict.fromkeys(self.topic_tables.values(), 0.0)
        for labels, value in scrape.samples.get(LAG, []):
            table = self.topic_tables.get(labels.get("topic", ""))
            if table is not None:
                lag[table] += value
        speed: dict[str, float] = {}
        for table in lag:
            r = rates(self._last, scrape, table)
            speed[table] = r.events_per_s or 0.0
        self._last = scrape
        e2e = {table: scrape.buckets(E2E, table=table) for table in lag}
        point = Point(scrape.at, lag, speed, e2e)
        with self.lock:
            self.points.append(point)
        return point

    def snapshot(self) -> list[Point]:
        with self.lock:
            return list(self.points)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sample()
            except Exception:  # never let the sampler die silently: the charts would freeze
                log.exception("status history sample failed")
            self.stopping.wait(self.every_s)


LAG_COLOUR = "#e8590c"  # orange: the tests look for these exact colours in a screenshot
SPEED_COLOUR = "#1971c2"  # blue


def chart_svg(
    title: str,
    series: list[tuple[float, float]],
    colour: str,
    now: float,
    span_s: float,
    unit: str,
    width: int = 420,
    height: int = 120,
) -> str:
    """A small line chart as inline SVG: the last ``span_s`` seconds up to ``now``, y from 0 to
    the largest value (at least 1). Pure: same input, same SVG."""
    left, right, top, bottom = 48, 8, 22, 18
    w, h = width - left - right, height - top - bottom
    peak = max([v for _, v in series] + [1.0])
    peak = _nice_ceiling(peak)

    def x(at: float) -> float:
        return left + w * min(1.0, max(0.0, 1 - (now - at) / span_s))

    def y(v: float) -> float:
        return top + h * (1 - min(v, peak) / peak)

    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series if now - t <= span_s)
    ago = f"-{span_s / 60:g} min" if span_s >= 120 else f"-{span_s:.0f} s"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="14" class="ct">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="plot"/>',
        f'<line x1="{left}" y1="{top + h / 2:.1f}" x2="{left + w}" y2="{top + h / 2:.1f}" '
        'class="grid"/>',
        f'<text x="{left - 4}" y="{top + 4}" class="ax" text-anchor="end">{_short(peak)}</text>',
        f'<text x="{left - 4}" y="{top + h}" class="ax" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 4}" class="ax">{ago}</text>',
        f'<text x="{left + w}" y="{height - 4}" class="ax" text-anchor="end">now</text>',
        f'<text x="{left + w}" y="14" class="ax" text-anchor="end">{html.escape(unit)}</text>',
    ]
    if points.count(",") >= 2:
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2.5" '
            'stroke-linejoin="round" class="series"/>'
        )
    else:
        parts.append(
            f'<text x="{left + w / 2:.0f}" y="{top + h / 2 - 4:.0f}" class="ax" '
            'text-anchor="middle">collecting…</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_ceiling(v: float) -> float:
    """1, 2, 5 x 10^n at or above v: axis labels people can read."""
    exponent = math.floor(math.log10(v)) if v > 0 else 0
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= v:
            return float(candidate)
    return float(10 ** (exponent + 1))


def _short(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


_STYLE = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:16px;color:#212529;
background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:14px 0 4px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;color:#fff}
.ok{background:#2f9e44}.bad{background:#c92a2a}.muted{color:#868e96;font-size:12px}
.stats{font-size:13px;margin:2px 0 4px}.stats b{font-weight:600}
.charts{display:flex;gap:12px;flex-wrap:wrap}
.ct{font-size:12px;font-weight:600;fill:#343a40}.ax{font-size:10px;fill:#868e96}
.plot{fill:#f8f9fa;stroke:#dee2e6}.grid{stroke:#e9ecef}
"""


def page_html(
    points: list[Point],
    tables: list[str],
    health: Health | None,
    now: float,
    span_s: float,
    scrape: Scrape | None = None,
    refresh_s: int = 5,
) -> str:
    """The status page: refreshes itself (meta refresh, no script), draws from ``points``.
    Pure: everything it shows comes in as arguments."""
    when = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if points:  # the charts span what was collected (at least a minute, at most span_s)
        span_s = min(span_s, max(60.0, now - points[0].at))
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{refresh_s}'>",
        "<title>replicator status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>replicator · consumer status</h1>",
    ]
    if health is not None:
        live, live_body = health.live()
        ready, ready_body = health.ready()
        reason = str(ready_body.get("reason") or live_body.get("reason") or "")
        out.append(
            f"<div><span class='badge {'ok' if live else 'bad'}' id='live'>"
            f"{'live' if live else 'not live'}</span> "
            f"<span class='badge {'ok' if ready else 'bad'}' id='ready'>"
            f"{'ready' if ready else 'not ready'}</span> "
            f"<span class='muted'>{html.escape(reason)}</span></div>"
        )
    if scrape is not None:
        state = next(
            (s for s, v in scrape.by_label("replicator_connector_state", "state").items() if v),
            None,
        )
        slot = scrape.total("replicator_slot_retained_wal_bytes")
        active = scrape.total("replicator_slot_active")
        out.append(
            f"<div class='stats'>connector <b id='connector'>{html.escape(state or 'not read yet')}"
            f"</b> · slot <b>{'active' if active else 'inactive'}</b>, "
            f"<b>{human_bytes(slot)}</b> WAL retained</div>"
        )
    out.append(
        f"<div class='muted'>updated {when}; charts and latency: last {span_s / 60:.1f} min</div>"
    )
    for table in tables:
        lag = [(p.at, p.lag.get(table, 0.0)) for p in points]
        speed = [(p.at, p.events_per_s.get(table, 0.0)) for p in points]
        last = points[-1] if points else None
        stats = [
            f"lag <b>{last.lag.get(table, 0):.0f}</b> events" if last else "lag " + NONE,
            f"<b>{last.events_per_s.get(table, 0):.1f}</b> events/s" if last else NONE,
        ]
        if scrape is not None:
            buckets = scrape.buckets(E2E, table=table)
            shown = [p for p in points if now - p.at <= span_s]
            if shown and table in shown[0].e2e:  # the window's writes, not all time
                buckets = delta_buckets(shown[0].e2e[table], buckets)
            p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
            stats.append(
                f"end-to-end p50 <b>{human_seconds(p50)}</b> p99 <b>{human_seconds(p99)}</b>"
            )
            stats.append(f"applied <b>{scrape.total(APPLIED, table=table):.0f}</b>")
            stats.append(f"dead-lettered <b>{scrape.total(DEAD, table=table):.0f}</b>")
        out.append(f"<h2>{html.escape(table)}</h2><div class='stats'>{' · '.join(stats)}</div>")
        out.append("<div class='charts'>")
        out.append(chart_svg("consumer lag", lag, LAG_COLOUR, now, span_s, "events"))
        out.append(chart_svg("throughput", speed, SPEED_COLOUR, now, span_s, "events/s"))
        out.append("</div>")
    out.append("</body></html>")
    return "".join(out)
