"""The consumer's status page (served at / by replicator.observe.health) and what it shares with the
`lag`/`status` screens: reading an exposition (from a URL or the in-process registry), quantiles
from histogram buckets as Prometheus computes them, rates between two scrapes, a ring buffer of
recent points, and the page's HTML with inline SVG charts (no script, no external asset).

Only the standard library and prometheus_client: the consumer imports this module, and must
not pull in the CLI screens' clients (phases, verify).
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from replicator.observe.metrics import Metrics
    from replicator.observe.probes import Health

log = structlog.get_logger("replicator.observe.status")

CONSUMED = "replicator_events_consumed_total"
APPLIED = "replicator_events_applied_total"
E2E = "replicator_end_to_end_seconds"
LAG = "replicator_consumer_lag"
WRITE_UNITS = "replicator_dynamodb_consumed_write_units_total"
# Exported by the read API (replicator/reads/api.py) when it runs; `cost` reads it from there.
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


def from_registry(metrics: Metrics, at: float | None = None) -> Scrape:
    """The in-process registry as a Scrape (no HTTP, no text round trip), taken at ``at``
    (default now)."""
    scrape = Scrape(time.time() if at is None else at)
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
        self,
        metrics: Metrics,
        topic_tables: dict[str, str],
        every_s: float,
        keep_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.clock = clock  # wall-clock seconds: the points' times are shown as such
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
        scrape = from_registry(self.metrics, self.clock())
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
        tasks = scrape.by_label("replicator_connector_tasks", "state")
        counted = ", ".join(f"{n:.0f} {s}" for s, n in sorted(tasks.items()) if n) or "none"
        slot = scrape.total("replicator_slot_retained_wal_bytes")
        active = scrape.total("replicator_slot_active")
        connector = (
            f"connector <b id='connector'>{html.escape(state)}</b> (tasks: {counted}) · "
            if state
            else ""  # not read yet, or not read at all (metrics.connector_state off)
        )
        out.append(
            f"<div class='stats'>{connector}slot <b>{'active' if active else 'inactive'}</b>, "
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
