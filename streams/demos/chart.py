"""A self-contained HTML page of stacked time-series charts (inline SVG, no scripts, no dependencies)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
_PHASE_FILLS = ("#f3f6fb", "#fdf0f0", "#f0f8f0", "#f7f3fa", "#fbf8ee")


@dataclass
class Panel:
    """One chart: a y-axis label and its points (t seconds, value)."""

    title: str
    unit: str
    points: list[tuple[float, float]]
    color: str | None = None
    #: a horizontal reference line (value, label), e.g. a documented bound
    reference: tuple[float, str] | None = None


@dataclass
class Chart:
    title: str
    panels: list[Panel]
    #: (start t, end t, label) shaded behind every panel
    phases: list[tuple[float, float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _fmt(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _panel_svg(panel: Panel, phases, t_max: float, color: str, width: int = 900, height: int = 210) -> str:
    left, right, top, bottom = 70, 20, 28, 30
    w, h = width - left - right, height - top - bottom
    values = [v for _, v in panel.points] + ([panel.reference[0]] if panel.reference else [])
    y_max = _nice_max(max(values, default=1.0) * 1.05)

    def x(t: float) -> float:
        return left + w * (t / t_max if t_max else 0)

    def y(v: float) -> float:
        return top + h - h * (v / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">']
    for i, (start, end, label) in enumerate(phases):
        out.append(f'<rect x="{x(start):.1f}" y="{top}" width="{max(0.0, x(end) - x(start)):.1f}" height="{h}" '
                   f'fill="{_PHASE_FILLS[i % len(_PHASE_FILLS)]}"/>')
        out.append(f'<text x="{x(start) + 4:.1f}" y="{top + 12}" fill="#666">{html.escape(label)}</text>')
    for i in range(5):
        v = y_max * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    for i in range(6):
        t = t_max * i / 5
        out.append(f'<text x="{x(t):.1f}" y="{top + h + 16}" text-anchor="middle">{t:.0f}s</text>')
    if panel.reference:
        value, label = panel.reference
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                   f'stroke="#888" stroke-dasharray="6,4"/>')
        out.append(f'<text x="{left + w - 4}" y="{y(value) - 4:.1f}" text-anchor="end" fill="#555">'
                   f'{html.escape(label)}</text>')
    if panel.points:
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in panel.points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    out.append(f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(panel.title)}'
               f' <tspan font-weight="normal" fill="#666">({html.escape(panel.unit)})</tspan></text>')
    out.append("</svg>")
    return "".join(out)


def render_html(chart: Chart) -> str:
    """The whole page."""
    t_max = max((t for p in chart.panels for t, _ in p.points), default=1.0)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(chart.title)}</title>"
             "<style>body{font-family:sans-serif;margin:24px;color:#222} li{margin:2px 0}</style></head><body>",
             f"<h2>{html.escape(chart.title)}</h2>"]
    for i, panel in enumerate(chart.panels):
        parts.append(f"<div>{_panel_svg(panel, chart.phases, t_max, panel.color or _COLORS[i % len(_COLORS)])}</div>")
    if chart.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in chart.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
