"""The success report as one self-contained HTML page: the criteria as tables, and inline-SVG
charts of what a reader would rather see than read (read latency per access pattern on both
stores, the consumer group's lag over the report's window, the monthly cost split). No script,
no external asset. Pure: a Report in, text out."""

from __future__ import annotations

import html
from typing import Any

from replicator.ops.report import Criterion, Report

# The tests look for these exact colours in a screenshot.
POSTGRES_COLOUR = "#2f9e44"  # green
DYNAMODB_COLOUR = "#d6336c"  # pink
LAG_COLOUR = "#e8590c"  # orange, as on the status page
# Cost parts, darker to lighter within each store's colour.
COST_COLOURS = {
    ("dynamodb", "writes"): "#a61e4d",
    ("dynamodb", "reads"): DYNAMODB_COLOUR,
    ("dynamodb", "storage"): "#f783ac",
    ("postgres", "instance"): "#2b8a3e",
    ("postgres", "storage"): "#51cf66",
    ("postgres", "io"): "#b2f2bb",
}

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212529; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border-bottom: 1px solid #dee2e6; padding: 4px 8px; text-align: left;
         vertical-align: top; }
th { background: #f1f3f5; }
.pass { color: #2b8a3e; font-weight: 600; } .fail { color: #c92a2a; font-weight: 600; }
.note { color: #868e96; font-size: 12px; } .verdict { font-size: 18px; margin: 8px 0 16px; }
svg { display: block; margin: 6px 0 14px; } svg text { font: 11px system-ui, sans-serif; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _criteria_table(criteria: list[Criterion]) -> str:
    rows = []
    for c in criteria:
        verdict = '<span class="pass">PASS</span>' if c.passed else '<span class="fail">FAIL</span>'
        note = f'<div class="note">{_e(c.note)}</div>' if c.note else ""
        rows.append(
            f"<tr><td>{_e(c.name)}</td><td>{verdict}</td><td>{_e(c.measured)}{note}</td>"
            f"<td>{_e(c.threshold)}</td></tr>"
        )
    return (
        "<table><tr><th>criterion</th><th>result</th><th>measured</th><th>threshold</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def latency_svg(table: str, latencies: list[dict[str, Any]]) -> str:
    """Per access pattern: a PostgreSQL and a DynamoDB bar of the p50, a thin line to the p95."""
    if not latencies:
        return '<p class="note">no read latencies measured (run `replicator validate`)</p>'
    label_w, bar_w, row_h = 190, 560, 34
    top = max(max(x["postgres_ms"][1], x["dynamodb_ms"][1]) for x in latencies) or 1.0
    height = row_h * len(latencies) + 30
    parts = [
        f'<svg class="latency" width="{label_w + bar_w + 160}" height="{height}" '
        f'role="img" aria-label="read latency of {_e(table)}">'
    ]
    for i, x in enumerate(latencies):
        y = 6 + i * row_h
        parts.append(f'<text x="0" y="{y + 16}">{_e(x["pattern"])}</text>')
        for j, (key, colour) in enumerate(
            (("postgres_ms", POSTGRES_COLOUR), ("dynamodb_ms", DYNAMODB_COLOUR))
        ):
            p50, p95 = x[key]
            by = y + j * 13
            w50 = max(1.0, bar_w * p50 / top)
            w95 = bar_w * p95 / top
            parts.append(
                f'<rect x="{label_w}" y="{by}" width="{w50:.1f}" height="11" fill="{colour}"/>'
                f'<line x1="{label_w + w50:.1f}" y1="{by + 5.5}" x2="{label_w + w95:.1f}" '
                f'y2="{by + 5.5}" stroke="{colour}" stroke-width="2"/>'
                f'<text x="{label_w + max(w95, w50) + 4:.1f}" y="{by + 10}">'
                f"{p50:.2f} / {p95:.2f} ms</text>"
            )
    legend_y = height - 8
    parts.append(
        f'<rect x="{label_w}" y="{legend_y - 9}" width="10" height="10" fill="{POSTGRES_COLOUR}"/>'
        f'<text x="{label_w + 14}" y="{legend_y}">PostgreSQL p50 (line: p95)</text>'
        f'<rect x="{label_w + 200}" y="{legend_y - 9}" width="10" height="10" '
        f'fill="{DYNAMODB_COLOUR}"/><text x="{label_w + 214}" y="{legend_y}">DynamoDB p50 '
        "(line: p95)</text></svg>"
    )
    return "".join(parts)


def lag_svg(table: str, points: list[list[float]]) -> str:
    """The consumer group's lag in events over the report's window."""
    if not points:
        return '<p class="note">lag not measured</p>'
    width, height, left, bottom = 560, 150, 50, 22
    span = max(p[0] for p in points) or 1.0
    top = max(p[1] for p in points)
    ceiling = max(1.0, top * 1.2)

    def xy(t: float, v: float) -> str:
        x = left + (width - left - 10) * t / span
        y = height - bottom - (height - bottom - 10) * v / ceiling
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    return (
        f'<svg class="lag" width="{width}" height="{height}" role="img" '
        f'aria-label="consumer lag of {_e(table)}">'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" '
        'stroke="#adb5bd"/>'
        f'<text x="0" y="16">{ceiling:,.0f}</text><text x="0" y="{height - bottom}">0</text>'
        f'<text x="{left}" y="{height - 6}">0 s</text>'
        f'<text x="{width - 60}" y="{height - 6}">{span:.0f} s</text>'
        f'<polyline points="{line}" fill="none" stroke="{LAG_COLOUR}" stroke-width="3"/>'
        f'<text x="{left + 6}" y="16">events behind (max {top:,.0f})</text></svg>'
    )


def cost_svg(costs: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per table, DynamoDB's and PostgreSQL's monthly cost as stacked bars of their parts."""
    if not costs:
        return '<p class="note">cost not measured (no consumer metrics, or PostgreSQL down)</p>'
    rows = [(t, store) for t in costs for store in ("dynamodb", "postgres")]
    # Room for the longest label ("<table>: PostgreSQL") at about 7 px a character.
    label_w = max(210, 7 * max(len(t) for t in costs) + 100)
    bar_w, row_h = 520, 26
    top = max(sum(parts.values()) for c in costs.values() for parts in c.values()) or 1.0
    height = row_h * len(rows) + 52
    out = [f'<svg class="cost" width="{label_w + bar_w + 120}" height="{height}" role="img">']
    for i, (table, store) in enumerate(rows):
        y = 6 + i * row_h
        name = "DynamoDB" if store == "dynamodb" else "PostgreSQL"
        out.append(f'<text x="0" y="{y + 14}">{_e(table)}: {name}</text>')
        x = float(label_w)
        total = 0.0
        for part, usd in costs[table][store].items():
            w = bar_w * usd / top
            colour = COST_COLOURS.get((store, part), "#868e96")
            out.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.0):.1f}" height="18" '
                f'fill="{colour}"><title>{_e(part)}: ${usd:,.2f}/month</title></rect>'
            )
            x += w
            total += usd
        out.append(f'<text x="{x + 4:.1f}" y="{y + 14}">${total:,.2f}/month</text>')
    # The legend: one line per store.
    for line, store in enumerate(("dynamodb", "postgres")):
        x, legend_y = float(label_w), height - 30 + 16 * line
        for (owner, part), colour in COST_COLOURS.items():
            if owner != store:
                continue
            label = f"{'DynamoDB' if store == 'dynamodb' else 'PostgreSQL'} {part}"
            out.append(
                f'<rect x="{x:.0f}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{x + 13:.0f}" y="{legend_y}">{_e(label)}</text>'
            )
            x += 22 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def page_html(report: Report) -> str:
    verdict = (
        '<span class="pass">every criterion passes</span>'
        if report.passed
        else f'<span class="fail">{sum(not c.passed for c in report.overall)} of '
        f"{len(report.overall)} criteria fail</span>"
    )
    out = [
        '<!doctype html><html><head><meta charset="utf-8">',
        "<title>replicator success report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Migration success report</h1>",
        f'<div class="note">the seed\'s Enhanced Phase 3 Success Criteria, measured '
        f"{_e(report.generated_at.strftime('%Y-%m-%d %H:%M:%S'))} UTC</div>",
        f'<div class="verdict" id="verdict">{verdict}</div>',
        "<h2>Overall</h2>",
        _criteria_table(report.overall),
    ]
    charts = report.charts
    for t in report.tables:
        out.append(f"<h2>{_e(t.table)}</h2>")
        out.append(f'<div class="note">phase {_e(t.phase)}</div>')
        out.append(_criteria_table(t.criteria))
        out.append("<h3>read latency per access pattern (p50, p95)</h3>")
        out.append(latency_svg(t.table, charts["latency"].get(t.table, [])))
        out.append("<h3>consumer lag over the report's window</h3>")
        out.append(lag_svg(t.table, charts["lag"].get(t.table, [])))
    out.append("<h2>Monthly cost split</h2>")
    out.append(cost_svg(charts["cost"]))
    if report.notes:
        out.append("<h2>Not measured</h2><ul>")
        out += [f"<li>{_e(n)}</li>" for n in report.notes]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)
