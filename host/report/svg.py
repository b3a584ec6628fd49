"""Hand-written inline SVG charts (no plotting library, nothing external): bars, timelines, lines."""
from __future__ import annotations

import math
from html import escape
from typing import Mapping, Sequence

PALETTE = ("#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#bcbd22")
FONT = "font-family='system-ui,-apple-system,Segoe UI,Roboto,sans-serif' font-size='11'"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _f(x: float) -> str:
    return f"{x:.1f}"


def nice_ticks(vmax: float, n: int = 5) -> list[float]:
    if not vmax or vmax <= 0 or math.isnan(vmax):
        return [0.0, 1.0]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, v = [], 0.0
    while v <= vmax * 1.0001 + 1e-300:
        ticks.append(v)
        v += step
    if ticks[-1] < vmax:
        ticks.append(v)
    return ticks


def _legend(labels: Sequence[str], colors: Sequence[str], x: float, y: float) -> str:
    out, cx = [], x
    for lab, col in zip(labels, colors):
        out.append(f"<rect x='{_f(cx)}' y='{_f(y - 9)}' width='10' height='10' fill='{col}'/>"
                   f"<text x='{_f(cx + 14)}' y='{_f(y)}' {FONT}>{escape(lab)}</text>")
        cx += 24 + 6.5 * len(lab)
    return "".join(out)


def _frame_with_x_axis(css_class: str, width: int, height: float, title: str, left: float, plot_w: float,
                       ticks: list[float], scale: float, grid_top: float, unit: str, unit_y: float) -> list[str]:
    """The opening <svg>, the title, vertical grid lines with tick labels, and the x-axis label."""
    out = [f"<svg class='{css_class}' viewBox='0 0 {width} {height}' "
           f"width='{width}' height='{height}' role='img'>"]
    if title:
        out.append(f"<text x='{left}' y='14' {FONT} font-weight='bold'>{escape(title)}</text>")
    for t in ticks:
        x = left + t * scale
        out.append(f"<line x1='{_f(x)}' y1='{grid_top}' x2='{_f(x)}' y2='{height - 34}' stroke='#e3e3e3'/>"
                   f"<text x='{_f(x)}' y='{height - 22}' {FONT} text-anchor='middle'>{t:g}</text>")
    out.append(f"<text x='{left + plot_w / 2:.1f}' y='{unit_y}' {FONT} text-anchor='middle'>{escape(unit)}</text>")
    return out


def grouped_hbar(categories: Sequence[str], series: Mapping[str, Sequence[float]], unit: str = "ms",
                 title: str = "", colors: Sequence[str] | None = None, width: int = 760,
                 annotations: Mapping[str, Sequence[str]] | None = None, css_class: str = "chart") -> str:
    """Horizontal grouped bars: one group per category, one bar per series (NaN bars are left out)."""
    names = list(series)
    colors = list(colors or [color(i) for i in range(len(names))])
    bar_h, gap = 12, 8
    group_h = bar_h * max(len(names), 1) + gap
    left, right, top = 130, 90, 34 if title else 22
    height = top + group_h * len(categories) + 40
    plot_w = width - left - right
    vals = [v for s in series.values() for v in s if v is not None and not math.isnan(v)]
    vmax = max(vals) if vals else 1.0
    ticks = nice_ticks(vmax)
    scale = plot_w / (ticks[-1] or 1.0)
    out = _frame_with_x_axis(css_class, width, height, title, left, plot_w, ticks, scale, top - 4, unit, height - 8)
    for gi, cat in enumerate(categories):
        y0 = top + gi * group_h
        out.append(f"<text x='{left - 6}' y='{_f(y0 + group_h / 2)}' {FONT} text-anchor='end' "
                   f"dominant-baseline='middle'>{escape(cat)}</text>")
        for si, name in enumerate(names):
            v = series[name][gi]
            if v is None or math.isnan(v):
                continue
            y = y0 + si * bar_h
            w = max(v * scale, 0.5)
            note = (annotations or {}).get(name, [""] * len(categories))[gi] or ""
            out.append(f"<rect class='bar' x='{left}' y='{y}' width='{_f(w)}' height='{bar_h - 2}' fill='{colors[si]}'>"
                       f"<title>{escape(name)} · {escape(cat)}: {v:.4g} {escape(unit)} {escape(note)}</title></rect>")
            label = f"{v:.3g}" + (f" {note}" if note else "")
            out.append(f"<text x='{_f(left + w + 3)}' y='{y + bar_h - 3}' {FONT} font-size='9'>{escape(label)}</text>")
    out.append(_legend(names, colors, left, top - 10 if not title else 28) if len(names) > 1 else "")
    out.append("</svg>")
    return "".join(out)


def timeline(lanes: Sequence[tuple[str, Sequence[tuple[float, float, str, str]]]], title: str = "",
             width: int = 900, css_class: str = "chart") -> str:
    """Lanes of (start_s, dur_s, label, color) bars on a shared time axis (seconds from each lane's 0)."""
    left, right, top, lane_h = 170, 20, 30 if title else 14, 26
    height = top + lane_h * len(lanes) + 40
    plot_w = width - left - right
    tmax = max((s + d for _, bars in lanes for s, d, _, _ in bars), default=1.0) or 1.0
    ticks = nice_ticks(tmax, 8)
    scale = plot_w / ticks[-1]
    out = _frame_with_x_axis(css_class, width, height, title, left, plot_w, ticks, scale, top - 2, "seconds", height - 6)
    for li, (name, bars) in enumerate(lanes):
        y = top + li * lane_h
        out.append(f"<text x='{left - 6}' y='{y + lane_h / 2:.1f}' {FONT} text-anchor='end' "
                   f"dominant-baseline='middle'>{escape(name)}</text>")
        for s, d, label, col in bars:
            out.append(f"<rect class='span' x='{_f(left + s * scale)}' y='{y + 3}' width='{max(d * scale, 0.6):.2f}' "
                       f"height='{lane_h - 8}' fill='{col}' stroke='#fff' stroke-width='0.5'>"
                       f"<title>{escape(label)}: {d * 1e3:.1f} ms at {s:.3f} s</title></rect>")
    out.append("</svg>")
    return "".join(out)


def lines(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str = "seconds", ylabel: str = "MiB",
          title: str = "", colors: Sequence[str] | None = None, width: int = 900, height: int = 280,
          css_class: str = "chart") -> str:
    """Step-free polylines of (x, y) points, one per series, with a legend."""
    names = list(series)
    colors = list(colors or [color(i) for i in range(len(names))])
    left, right, top, bottom = 60, 20, 34 if title else 24, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    xt = nice_ticks(max(xs) if xs else 1.0, 8)
    yt = nice_ticks(max(ys) if ys else 1.0, 5)
    sx, sy = pw / (xt[-1] or 1), ph / (yt[-1] or 1)
    out = [f"<svg class='{css_class}' viewBox='0 0 {width} {height}' "
           f"width='{width}' height='{height}' role='img'>"]
    if title:
        out.append(f"<text x='{left}' y='14' {FONT} font-weight='bold'>{escape(title)}</text>")
    for t in xt:
        x = left + t * sx
        out.append(f"<line x1='{_f(x)}' y1='{top}' x2='{_f(x)}' y2='{top + ph}' stroke='#eee'/>"
                   f"<text x='{_f(x)}' y='{top + ph + 14}' {FONT} text-anchor='middle'>{t:g}</text>")
    for t in yt:
        y = top + ph - t * sy
        out.append(f"<line x1='{left}' y1='{_f(y)}' x2='{left + pw}' y2='{_f(y)}' stroke='#eee'/>"
                   f"<text x='{left - 4}' y='{_f(y)}' {FONT} text-anchor='end' dominant-baseline='middle'>{t:g}</text>")
    out.append(f"<text x='{left + pw / 2:.1f}' y='{height - 6}' {FONT} text-anchor='middle'>{escape(xlabel)}</text>"
               f"<text x='12' y='{top + ph / 2:.1f}' {FONT} text-anchor='middle' "
               f"transform='rotate(-90 12 {top + ph / 2:.1f})'>{escape(ylabel)}</text>")
    for name, col in zip(names, colors):
        pts = " ".join(f"{left + x * sx:.1f},{top + ph - y * sy:.1f}" for x, y in series[name])
        if pts:
            out.append(f"<polyline class='line' fill='none' stroke='{col}' stroke-width='1.6' points='{pts}'>"
                       f"<title>{escape(name)}</title></polyline>")
    out.append(_legend(names, colors, left + 6, top + 12))
    out.append("</svg>")
    return "".join(out)
