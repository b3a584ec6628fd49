"""The farm dashboard: one self-contained HTML page across nights, from the history store.

Sections: the latest verdict per device and variant; trends of the headline metrics per device and
variant (median of each night, with its min-max range); a per-layer heatmap across nights for every
device and variant (each UNet block's median time that night, coloured by its change against that
block's median over the nights shown); and every night's runs with links to their reports and the
failed attempts. Same page conventions as the run report (host.report.html): inline CSS, SVG and JS.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from host.farm import history
from host.farm.metrics import METRICS
from host.farm.outputs import fmt_value
from host.report import svg
from host.report.html import _CSS, _HEAD_JS, _JS, _section

SECTIONS = ("verdict", "trends", "layers", "nights")
TREND_METRICS = ("end_to_end_s", "unet_step_s", "vae_decoder_s", "peak_rss_bytes", "psnr_db")
_STATUS_CSS = {"regressed": "bad", "failed": "bad", "missing": "bad", "improved": "good"}
_EXTRA_CSS = """.good{color:#1b7f3b}.heat td{font-size:11.5px;min-width:64px}.heat td.lab{text-align:left}
svg.trend{display:block;max-width:100%;height:auto;margin:6px 0 14px}"""


def trend_chart(nights: Sequence[str], series: dict[str, list[tuple[float, float, float] | None]], unit: str,
                title: str, width: int = 900, height: int = 240) -> str:
    """Lines over nights (x = night labels): per series and night (median, min, max) or None."""
    left, right, top, bottom = 70, 20, 30, 46
    pw, ph = width - left - right, height - top - bottom
    vals = [v for pts in series.values() for p in pts if p for v in p if math.isfinite(v)]
    scale, unit_label = _unit_scale(unit, vals)
    ticks = svg.nice_ticks(max(vals) * scale if vals else 1.0, 4)
    sy = ph / (ticks[-1] or 1)
    dx = pw / max(len(nights) - 1, 1)
    out = [f"<svg class='trend' viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img'>",
           f"<text x='{left}' y='16' {svg.FONT} font-weight='bold'>{escape(title)}</text>"]
    for t in ticks:
        y = top + ph - t * sy
        out.append(f"<line x1='{left}' y1='{y:.1f}' x2='{left + pw}' y2='{y:.1f}' stroke='#eee'/>"
                   f"<text x='{left - 4}' y='{y:.1f}' {svg.FONT} text-anchor='end' "
                   f"dominant-baseline='middle'>{t:g}</text>")
    for i, n in enumerate(nights):
        x = left + i * dx
        out.append(f"<text x='{x:.1f}' y='{top + ph + 14}' {svg.FONT} text-anchor='middle'>{escape(n[5:])}</text>")
    out.append(f"<text x='14' y='{top + ph / 2:.1f}' {svg.FONT} text-anchor='middle' "
               f"transform='rotate(-90 14 {top + ph / 2:.1f})'>{escape(unit_label)}</text>")
    names = list(series)
    for k, name in enumerate(names):
        col = svg.color(k)
        pts = []
        for i, p in enumerate(series[name]):
            if not p or not math.isfinite(p[0]):
                continue
            x = left + i * dx
            med, lo, hi = (v * scale for v in p)
            pts.append(f"{x:.1f},{top + ph - med * sy:.1f}")
            out.append(f"<line x1='{x:.1f}' y1='{top + ph - lo * sy:.1f}' x2='{x:.1f}' y2='{top + ph - hi * sy:.1f}' "
                       f"stroke='{col}' stroke-width='3' opacity='.35'/>"
                       f"<circle cx='{x:.1f}' cy='{top + ph - med * sy:.1f}' r='3' fill='{col}'>"
                       f"<title>{escape(name)} {escape(nights[i])}: {med:.4g} {escape(unit_label)}</title></circle>")
        if len(pts) > 1:
            out.append(f"<polyline fill='none' stroke='{col}' stroke-width='1.6' points='{' '.join(pts)}'/>")
    out.append(svg._legend(names, [svg.color(k) for k in range(len(names))], left + 6, height - 8))
    out.append("</svg>")
    return "".join(out)


def _unit_scale(unit: str, vals: list[float]) -> tuple[float, str]:
    if unit == "s":
        return (1e3, "ms") if vals and max(vals) < 1 else (1.0, "s")
    if unit == "B":
        return 1 / 2**20, "MiB"
    return 1.0, unit


def _nightly(values: pd.Series) -> tuple[float, float, float] | None:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    return float(np.median(v)), float(v.min()), float(v.max())


def _heat_color(change: float) -> str:
    if not math.isfinite(change):
        return "#ffffff"
    a = min(abs(change) / 0.5, 1.0)  # full colour at +-50 %
    base = (214, 39, 40) if change > 0 else (31, 119, 180)
    r, g, b = (round(255 - (255 - c) * a) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def _href(target: str | None, page_dir: Path) -> str | None:
    if not target:
        return None
    try:
        return Path(os.path.relpath(target, page_dir)).as_posix()
    except ValueError:  # another drive
        return Path(target).as_uri()


def _latest_verdict(root: Path) -> dict | None:
    folder = root / "verdicts"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for f in reversed(files):
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            continue
    return None


def render_dashboard(root: str | os.PathLike, out_html: str | os.PathLike, nights: int = 30) -> Path:
    root, out = Path(root), Path(out_html)
    if not (root / "SCHEMA.json").is_file():
        raise history.HistoryError(f"{root}: no farm history here (no SCHEMA.json)")
    metrics = history.read(root, "metrics")
    attempts = history.read(root, "attempts")
    shown = sorted(set(metrics["night"]) | set(attempts["night"]))[-nights:]
    metrics = metrics[metrics["night"].isin(shown)]
    attempts = attempts[attempts["night"].isin(shown)]
    page_dir = out.resolve().parent
    verdict = _latest_verdict(root)
    sections = [_verdict_section(verdict), _trends(metrics, shown), _layers(metrics, shown),
                _nights(metrics, attempts, shown, page_dir)]
    payload = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "runs": sorted({f"{r.night}/{r.device}/{r.variant}" for r in
                               metrics[["night", "device", "variant"]].itertuples()}),
               "nights": shown, "latest_verdict": (verdict or {}).get("verdict")}
    blob = json.dumps(payload).replace("</", "<\\/")
    title = f"sdphone farm: {len(shown)} night(s)" + (f", {shown[0]} to {shown[-1]}" if shown else "")
    html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{_CSS}{_EXTRA_CSS}</style><script>{_HEAD_JS}</script></head>"
            f"<body data-report='sdphone-farm'><header><h1>{escape(title)}</h1><nav id='toc'></nav>"
            "<div id='gen' class='note'></div></header>"
            f"<main>{''.join(sections)}</main>"
            f"<footer>Self-contained dashboard from {escape(str(root))}: no external resources.</footer>"
            f"<script type='application/json' id='report-data'>{blob}</script>"
            f"<script>{_JS}</script></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _verdict_section(v: dict | None) -> str:
    if not v:
        return _section("verdict", "Latest verdict", "<p class='note'>No verdict yet.</p>")
    from host.farm.metrics import HEADLINE

    rows = [r for r in v.get("verdicts", []) if r.get("metric") in HEADLINE + ("run",)]
    head = "".join(f"<th>{h}</th>" for h in ("device", "variant", "metric", "verdict", "tonight", "baseline",
                                              "change", "note"))
    body = []
    for r in rows:
        unit = r.get("unit")
        change = r.get("change")
        ch = "–" if change is None else (f"{change:+.1f} dB" if unit == "dB" else f"{change * 100:+.1f}%")
        label = METRICS[r["metric"]].label if r["metric"] in METRICS else "run"
        cls = _STATUS_CSS.get(r.get("status"), "")
        body.append(f"<tr><td>{escape(r['device'])}</td><td>{escape(r['variant'])}</td><td>{escape(label)}</td>"
                    f"<td class='{cls}'>{escape(str(r.get('status')))}</td>"
                    f"<td>{escape(fmt_value(_num(r.get('tonight')), unit))}</td>"
                    f"<td>{escape(fmt_value(_num(r.get('baseline')), unit))}</td><td>{ch}</td>"
                    f"<td>{escape(r.get('detail') or '')}</td></tr>")
    verdict = str(v.get("verdict", "?"))
    cls = "bad" if verdict != "ok" else "good"
    return _section("verdict", "Latest verdict",
                    f"<p class='big'>Night {escape(str(v.get('night')))} (run {escape(str(v.get('run_id')))}): "
                    f"<span class='{cls}'>{escape(verdict.upper())}</span></p>"
                    f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _num(v: Any) -> float:
    if v == "inf":
        return math.inf
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _trends(metrics: pd.DataFrame, nights: list[str]) -> str:
    parts = []
    for metric in TREND_METRICS:
        m = metrics[(metrics["metric"] == metric)]
        if m.empty:
            continue
        if metric == "psnr_db":  # identical images (inf) are drawn at the cap
            from host.farm.verdict import PSNR_CAP

            m = m.assign(value=m["value"].clip(upper=PSNR_CAP))
        series = {}
        for (device, variant), g in m.groupby(["device", "variant"], sort=True):
            by_night = {n: _nightly(x["value"]) for n, x in g.groupby("night")}
            series[f"{device} / {variant}"] = [by_night.get(n) for n in nights]
        spec = METRICS[metric]
        note = "; identical images at 150 dB" if metric == "psnr_db" else ""
        parts.append(trend_chart(nights, series, spec.unit, f"{spec.label} (median per night, min-max range{note})"))
    body = "".join(parts) or "<p class='note'>No measurements yet.</p>"
    return _section("trends", "Trends per device and variant", body)


def _layers(metrics: pd.DataFrame, nights: list[str]) -> str:
    layers = metrics[metrics["metric"] == "layer_s"]
    if layers.empty:
        return _section("layers", "Per-layer heatmap", "<p class='note'>No per-block measurements.</p>")
    parts = ["<p class='note'>Each cell: the block's median time that night; colour: its change against the "
             "block's median over the nights shown (red slower, blue faster; full colour at ±50%).</p>"]
    for (device, variant), g in layers.groupby(["device", "variant"], sort=True):
        med = g.groupby(["layer", "night"])["value"].median().unstack("night")
        order = list(dict.fromkeys(g["layer"]))
        head = "".join(f"<th>{escape(n[5:])}</th>" for n in nights)
        rows = []
        for layer in order:
            vals = med.loc[layer] if layer in med.index else pd.Series(dtype=float)
            ref = float(np.nanmedian(vals.to_numpy(dtype=float))) if vals.notna().any() else math.nan
            cells = []
            for n in nights:
                v = float(vals.get(n, math.nan)) if n in vals.index else math.nan
                change = v / ref - 1 if ref and math.isfinite(v) else math.nan
                tip = "" if not math.isfinite(change) else f" title='{change * 100:+.1f}%'"
                cells.append(f"<td style='background:{_heat_color(change)}'{tip}>{escape(fmt_value(v, 's'))}</td>")
            rows.append(f"<tr><td class='lab'>{escape(layer)}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{escape(device)} / {escape(variant)}</h3><table class='heat'><thead><tr><th>block</th>"
                     f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return _section("layers", "Per-layer heatmap across nights", "".join(parts))


def _nights(metrics: pd.DataFrame, attempts: pd.DataFrame, nights: list[str], page_dir: Path) -> str:
    rows = []
    for night in reversed(nights):
        att = attempts[attempts["night"] == night]
        met = metrics[metrics["night"] == night]
        for (device, variant), g in att.groupby(["device", "variant"], sort=True):
            ok = g[g["outcome"] == "ok"]
            links = []
            for session in dict.fromkeys(s for s in ok["session"].dropna()):
                href = _href(str(Path(session) / "report.html"), page_dir)
                links.append(f"<a href='{escape(href)}'>report</a>")
            e2e = met[(met["device"] == device) & (met["variant"] == variant) & (met["metric"] == "end_to_end_s")]
            e2e_txt = fmt_value(float(e2e["value"].median()), "s") if len(e2e) else "–"
            bad = g[g["outcome"] != "ok"]
            errors = "; ".join(f"#{int(a)} {o}: {t or ''} {(m or '')[:160]}" for a, o, t, m in
                               zip(bad["attempt"], bad["outcome"], bad["error_type"], bad["message"]))
            cls = " class='bad'" if ok.empty else ""
            rows.append(f"<tr><td>{escape(night)}</td><td>{escape(device)}</td><td>{escape(variant)}</td>"
                        f"<td{cls}>{len(ok)}/{len(g)} ok</td><td>{escape(e2e_txt)}</td>"
                        f"<td>{' '.join(links) or '–'}</td><td class='note'>{escape(errors)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("night", "device", "variant", "attempts", "end to end", "run report",
                                              "failed attempts"))
    return _section("nights", "Nights and their runs",
                    f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
