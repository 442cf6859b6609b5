"""`replicator cost`: the capacity DynamoDB reports for our writes (and the read API's reads),
turned into a monthly estimate at on-demand prices (``cost`` settings), plus storage.

Rates come from running processes' /metrics: over a measured window (two scrapes ``window_s``
apart), or, without a window, over each process's whole life (its counters divided by its
uptime, ``replicator_start_time_seconds``). A month is 730 hours, as AWS bills.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Group
from rich.table import Table
from rich.text import Text

from replicator.errors import ReplicatorError
from replicator.observe.status_page import READ_UNITS, WRITE_UNITS, Scrape, fetch, human_bytes

if TYPE_CHECKING:
    from replicator.config import CostSettings, Settings

HOURS_PER_MONTH = 730
START = "replicator_start_time_seconds"
_GB = 1_000_000_000  # DynamoDB bills storage per GB (10^9 bytes)


@dataclass(frozen=True)
class TableCost:
    table: str
    write_units_per_s: float
    read_units_per_s: float | None  # None: no process reported reads of this table
    write_usd_month: float
    read_usd_month: float | None
    storage_bytes: int | None
    storage_usd_month: float | None
    total_usd_month: float


@dataclass(frozen=True)
class CostReport:
    basis: str  # "window of N s" or "lifetime of the processes"
    urls: list[str]
    prices: dict[str, float]
    tables: list[TableCost]
    errors: list[str]

    @property
    def total_usd_month(self) -> float:
        return sum(t.total_usd_month for t in self.tables)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_usd_month": self.total_usd_month}


def monthly(units_per_s: float, usd_per_million: float) -> float:
    return units_per_s * 3600 * HOURS_PER_MONTH / 1_000_000 * usd_per_million


def estimate(
    tables: list[str],
    write_rate: dict[str, float],
    read_rate: dict[str, float],
    storage: dict[str, int | None],
    prices: CostSettings,
    basis: str,
    urls: list[str],
    errors: list[str],
) -> CostReport:
    """Pure: rates (units per second) and sizes in, dollars out."""
    rows = []
    for table in tables:
        writes = write_rate.get(table, 0.0)
        reads = read_rate.get(table)
        size = storage.get(table)
        w_usd = monthly(writes, prices.write_per_million)
        r_usd = monthly(reads, prices.read_per_million) if reads is not None else None
        s_usd = size / _GB * prices.storage_per_gb_month if size is not None else None
        rows.append(
            TableCost(
                table,
                writes,
                reads,
                w_usd,
                r_usd,
                size,
                s_usd,
                w_usd + (r_usd or 0.0) + (s_usd or 0.0),
            )
        )
    dynamodb_prices = prices.model_dump(
        include={"write_per_million", "read_per_million", "storage_per_gb_month"}
    )
    return CostReport(basis, urls, dynamodb_prices, rows, errors)


def lifetime_rates(scrape: Scrape, name: str, now: float) -> dict[str, float]:
    """Per table: the counter over the process's uptime (one scrape of one process)."""
    started = scrape.total(START)
    if started <= 0 or now <= started:
        return {}
    uptime = now - started
    return {table: v / uptime for table, v in scrape.by_label(name, "table").items()}


def window_rates(before: Scrape, after: Scrape, name: str) -> dict[str, float]:
    span = after.at - before.at
    if span <= 0:
        return {}
    old = before.by_label(name, "table")
    return {
        table: max(0.0, v - old.get(table, 0.0)) / span
        for table, v in after.by_label(name, "table").items()
    }


def table_sizes(settings: Settings, client: Any, errors: list[str]) -> dict[str, int | None]:
    """TableSizeBytes from DescribeTable (DynamoDB refreshes it about every six hours)."""
    sizes: dict[str, int | None] = {}
    for mapping in settings.tables:
        try:
            described = client.describe_table(TableName=mapping.name)["Table"]
            sizes[mapping.name] = int(described.get("TableSizeBytes", 0))
        except (BotoCoreError, ClientError) as exc:
            errors.append(f"{mapping.name}: table size unknown: {exc}")
            sizes[mapping.name] = None
    return sizes


def measure(settings: Settings, urls: list[str], window_s: float, dynamodb: Any) -> CostReport:
    """Rates from every URL (each process on its own: uptimes differ), summed per table;
    storage from ``dynamodb`` (a DynamoDB client)."""
    if window_s < 0:
        raise ReplicatorError("--window must be 0 (the processes' lifetime) or more seconds")
    errors: list[str] = []
    writes: dict[str, float] = {}
    reads: dict[str, float] = {}
    before: dict[str, Scrape] = {}
    for url in urls:
        scrape, failed = fetch([url])
        errors += failed
        if scrape is not None:
            before[url] = scrape
    if not before:
        raise ReplicatorError(
            "no consumer reachable for its metrics: "
            + "; ".join(errors)
            + " (start `replicator run`, or pass --metrics-url)"
        )
    if window_s > 0:
        time.sleep(window_s)
    for url, first in before.items():
        if window_s > 0:
            after, failed = fetch([url])
            errors += failed
            if after is None:
                continue
            w, r = window_rates(first, after, WRITE_UNITS), window_rates(first, after, READ_UNITS)
        else:
            w = lifetime_rates(first, WRITE_UNITS, first.at)
            r = lifetime_rates(first, READ_UNITS, first.at)
        for table, v in w.items():
            writes[table] = writes.get(table, 0.0) + v
        for table, v in r.items():
            reads[table] = reads.get(table, 0.0) + v
    basis = f"window of {window_s:g} s" if window_s > 0 else "lifetime of the processes"
    names = [m.name for m in settings.tables]
    return estimate(
        names,
        writes,
        reads,
        table_sizes(settings, dynamodb, errors),
        settings.cost,
        basis,
        urls,
        errors,
    )


def render(report: CostReport) -> Any:
    def usd(v: float | None) -> str:
        return "-" if v is None else f"${v:,.2f}"

    grid = Table(
        "table",
        "WRU/s",
        "RRU/s",
        "writes/mo",
        "reads/mo",
        "stored",
        "storage/mo",
        "total/mo",
        title=f"DynamoDB on-demand estimate ({report.basis})",
    )
    for t in report.tables:
        grid.add_row(
            t.table,
            f"{t.write_units_per_s:.2f}",
            "-" if t.read_units_per_s is None else f"{t.read_units_per_s:.2f}",
            usd(t.write_usd_month),
            usd(t.read_usd_month),
            human_bytes(t.storage_bytes),
            usd(t.storage_usd_month),
            usd(t.total_usd_month),
        )
    p = report.prices
    parts: list[Any] = [
        grid,
        Text(f"total: {usd(report.total_usd_month)} per month (730 h)"),
        Text(
            "RRU/s '-': no process reported reads of the table (the read API exports "
            f"{READ_UNITS}; pass its /metrics URL too)",
            style="dim",
        ),
        Text(
            f"prices: ${p['write_per_million']}/M write units, ${p['read_per_million']}/M read "
            f"units, ${p['storage_per_gb_month']}/GB-month (settings: cost.*)",
            style="dim",
        ),
    ]
    parts += [Text(f"! {e}", style="yellow") for e in report.errors]
    return Group(*parts)
