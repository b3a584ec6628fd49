"""One self-contained HTML report for one or more runs: inline CSS, SVG and JS, images as data: URIs.

Nothing in the page refers to anything outside it, so it opens offline, from a phone's download
folder or an e-mail attachment alike.
"""
from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from host.errors import HarnessError
from host.report import svg
from host.traces import compare, graph
from host.traces.tables import Run, find_run_dirs, load_run

SECTIONS = ("summary", "ladder", "layers", "timeline", "memory", "images", "roofline", "runs")
#: shown after the summary only when a host.bench pipeline result is at hand
OPTIONAL_SECTIONS = ("bench",)


class ReportError(HarnessError):
    """Nothing to report on (missing folder, no run folders in it); ``str()`` is one line."""


# ----------------------------------------------------------------------------------------------- inputs

def resolve_runs(source: Any) -> list[Run]:
    """Run objects from a run folder, a deploy folder holding run folders, Run objects, or a list of these."""
    items = source if isinstance(source, (list, tuple)) else [source]
    runs: list[Run] = []
    for item in items:
        if isinstance(item, Run):
            runs.append(item)
            continue
        p = Path(item)
        if not p.exists():
            raise ReportError(f"{p}: no such folder")
        if not p.is_dir():
            raise ReportError(f"{p}: not a folder")
        dirs = find_run_dirs(p)
        if not dirs:
            raise ReportError(f"{p}: no run folders in it (a run folder holds trace.jsonl, request.json or status.json)")
        for d in dirs:
            try:
                runs.append(load_run(d))
            except (OSError, ValueError) as e:
                raise ReportError(f"{d}: cannot read the run ({e})") from None
    if not runs:
        raise ReportError("no runs to report on")
    seen, unique = set(), []
    for r in runs:
        key = (str(r.run_dir.resolve()), r.run_id)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return compare.order_runs(unique)


_GRAPH_CACHE: dict[tuple, graph.GraphAnalysis] = {}


def graph_for(run: Run, component: str = "unet") -> graph.GraphAnalysis | None:
    p = run.model_path(component)
    if p is None:
        return None
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, component)
    if key not in _GRAPH_CACHE:
        try:
            _GRAPH_CACHE[key] = graph.analyze(p, component)
        except Exception:  # noqa: BLE001 - an unreadable model only drops the graph sections
            return None
    return _GRAPH_CACHE[key]


def roofline_numbers(run: Run, peak_flops: float | None, mem_bandwidth: float | None,
                     profile: str | None, auto_profile: bool = True) -> tuple[float, float, str] | None:
    """(peak FLOP/s, bytes/s, where from): explicit numbers; else a named device profile (``profile``,
    or request.device_profile); else, with ``auto_profile``, the profile matching the trace's device
    ("host" for the python-host runner, model patterns for Android, product types for iOS)."""
    if peak_flops and mem_bandwidth:
        return float(peak_flops), float(mem_bandwidth), "given"
    req = run.request or {}
    meta = next((r for r in run.records if r.get("type") == "meta"), {})
    dev = meta.get("device") if isinstance(meta.get("device"), dict) else {}
    name = profile or req.get("device_profile") or req.get("profile") or dev.get("profile")
    try:
        from host import profiles  # noqa: PLC0415

        if name:
            prof = profiles.load_profile(str(name))
            how = "profile"
        elif auto_profile:
            runner = meta.get("runner")
            if runner == "python-host":
                found = [profiles.load_profile("host")]
            elif runner == "android":
                found = profiles.match_android(str(dev.get("model") or ""))
            elif runner == "ios":
                found = profiles.match_ios(str(dev.get("product_type") or dev.get("model") or ""))
            else:
                found = []
            if len(found) != 1:
                return None
            prof, how = found[0], "matched profile"
        else:
            return None
        rf = prof.roofline
        return (float(rf.peak_flops), float(rf.mem_bandwidth_bytes_per_s),
                f"{how} {prof.name}: {prof.runtime.accelerator} {prof.runtime.precision}")
    except Exception:  # noqa: BLE001 - no profiles module, unknown name, invalid file: no floors
        return None


# ----------------------------------------------------------------------------------------------- formatting

def fmt_s(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    v = float(v)
    if v >= 10:
        return f"{v:.1f} s"
    if v >= 1:
        return f"{v:.2f} s"
    return f"{v * 1e3:.1f} ms" if v >= 1e-3 else f"{v * 1e6:.0f} µs"


def block_gap_text(summary: dict) -> str:
    """The per-block pass's sum against the whole UNet step it is compared with (``compare.run_summary``)."""
    gap = f"{summary['block_gap']:+.1%}"
    if not math.isnan(summary["block_ref_s"]):
        return (f"sum of UNet blocks {fmt_s(summary['block_sum_s'])} vs whole step {fmt_s(summary['block_ref_s'])} "
                f"timed beside them ({gap}; the generation's median step {fmt_s(summary['unet_step_median_s'])})")
    return f"sum of UNet blocks {fmt_s(summary['block_sum_s'])} vs whole step {fmt_s(summary['unet_step_median_s'])} ({gap})"


def fmt_bytes(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= div:
            return f"{v / div:.2f} {unit}" if v / div < 100 else f"{v / div:.0f} {unit}"
    return f"{v:.0f} B"


def fmt_x(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.2f}×"


def fmt_db(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "∞ (identical)" if math.isinf(float(v)) else f"{float(v):.2f} dB"


def fmt_flops(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    v = float(v)
    for unit, div in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if v >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f} FLOP"


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.{digits}g}"


def _str(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(v)


Column = tuple[str, str, Callable[[Any], str]]


def html_table(df: pd.DataFrame, columns: Sequence[Column], css: str = "sortable", row_class=None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _, h, _ in columns)
    body = []
    for rec in df.to_dict("records"):
        cls = f" class='{row_class(rec)}'" if row_class and row_class(rec) else ""
        cells = []
        for c, _, fmt in columns:
            v = rec.get(c)
            raw = "" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
            sort = f" data-v='{escape(str(raw))}'" if isinstance(raw, (int, float, np.number)) else ""
            cells.append(f"<td{sort}>{escape(fmt(v))}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def run_label(run: Run, multi_device: bool) -> str:
    return f"{run.variant} @ {run.device}" if multi_device else run.variant


# ----------------------------------------------------------------------------------------------- images

def image_data_uri(run: Run) -> str | None:
    png = run.run_dir / "image.png"
    if png.is_file():
        return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    if (run.run_dir / "image.f32").is_file():
        try:
            img, _ = compare.load_image(run, "f32")
        except (OSError, ValueError):
            return None
        from PIL import Image

        arr = np.round(np.clip((img.transpose(1, 2, 0) + 1) / 2, 0, 1) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return None


# ----------------------------------------------------------------------------------------------- report data

@dataclass
class ReportData:
    runs: list[Run]
    baseline: str | None
    ladder: pd.DataFrame
    psnr: pd.DataFrame
    layers: pd.DataFrame
    op_types: pd.DataFrame
    graphs: dict[str, graph.GraphAnalysis | None] = field(default_factory=dict)
    rooflines: dict[str, tuple[pd.DataFrame, str, dict]] = field(default_factory=dict)
    bench: dict | None = None          # a host.bench pipeline result (pipeline.json)
    bench_source: str | None = None

    @property
    def multi_device(self) -> bool:
        return len({r.device for r in self.runs}) > 1


BENCH_FILE = "pipeline.json"


def load_bench(path: str | Path) -> dict:
    """A ``python -m host.bench pipeline`` result file (``pipeline.json``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: cannot read the benchmark result ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != "sdphone.bench.pipeline":
        raise ReportError(f"{path}: not a host.bench pipeline result (schema)")
    return doc


def _find_bench(source: Any) -> Path | None:
    items = source if isinstance(source, (list, tuple)) else [source]
    for item in items:
        if not isinstance(item, Run) and (Path(item) / BENCH_FILE).is_file():
            return Path(item) / BENCH_FILE
    return None


def collect(source: Any, baseline: str | None = None, peak_flops: float | None = None,
            mem_bandwidth: float | None = None, profile: str | None = None, analyze_graphs: bool = True,
            auto_profile: bool = True, bench: str | Path | None = None) -> ReportData:
    """The report's data. ``bench``: a pipeline.json to show side by side (default: one found in the
    source folder, as ``python -m host.bench pipeline`` leaves it)."""
    runs = resolve_runs(source)
    bench_path = Path(bench) if bench is not None else _find_bench(source)
    graphs = {r.run_id: graph_for(r) if analyze_graphs else None for r in runs}
    # Op spans are attributed to blocks with each run's own graph.
    run_op_blocks = {rid: {"unet": g.ops} for rid, g in graphs.items() if g is not None}
    data = ReportData(runs=runs, baseline=baseline, ladder=compare.ladder_table(runs, baseline),
                      psnr=compare.psnr_table(runs, baseline),
                      layers=compare.compare_layers(runs, "block", baseline, run_op_blocks=run_op_blocks),
                      op_types=compare.compare_layers(runs, "op_type", baseline), graphs=graphs)
    if bench_path is not None:
        data.bench, data.bench_source = load_bench(bench_path), str(bench_path)
    for r in runs:
        g = graphs.get(r.run_id)
        nums = roofline_numbers(r, peak_flops, mem_bandwidth, profile, auto_profile)
        if g is None or nums is None:
            continue
        ob = {"unet": g.ops}
        measured = compare.layer_latency(r, "block", ob)
        measured = measured[measured["component"].fillna("unet") == "unet"]
        m = dict(zip(measured["key"], measured["median_s"]))
        totals = graph.roofline_totals(g, nums[0], nums[1])
        totals["measured_step_s"] = compare.run_summary(r)["unet_step_median_s"]
        data.rooflines[r.run_id] = (g.roofline(nums[0], nums[1], measured=m), nums[2], totals)
    return data


# ----------------------------------------------------------------------------------------------- sections

def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}' data-title='{escape(title)}'><h2>{escape(title)}</h2>{body}</section>"


def _summary(d: ReportData) -> str:
    lad = d.ladder
    items = []
    by_id = {r.run_id: r for r in d.runs}
    psnr = dict(zip(d.psnr["run_id"], d.psnr["psnr_db"]))
    for rec in lad.to_dict("records"):
        r = by_id[rec["run_id"]]
        base = compare.pick_baseline(d.runs, r, d.baseline)
        label = run_label(r, d.multi_device)
        if base is None or base.run_id == r.run_id:
            items.append(f"<li><b>{escape(label)}</b> (reference): end to end {fmt_s(rec['end_to_end_s'])}, "
                         f"UNet step {fmt_s(rec['unet_step_median_s'])}, peak RSS {fmt_bytes(rec['peak_rss_bytes'])}</li>")
        else:
            b = lad[lad["run_id"] == base.run_id].iloc[0]
            items.append(
                f"<li><b>{escape(label)}</b>: <span class='big'>{fmt_x(rec['speedup'])}</span> end to end "
                f"({fmt_s(b['end_to_end_s'])} → {fmt_s(rec['end_to_end_s'])}), UNet step "
                f"{fmt_s(b['unet_step_median_s'])} → {fmt_s(rec['unet_step_median_s'])} ({fmt_x(rec['unet_speedup'])}), "
                f"peak RSS {fmt_bytes(rec['peak_rss_bytes'])}, PSNR vs {escape(base.variant)} "
                f"{fmt_db(psnr.get(r.run_id))}</li>")
    problems = []
    for r in d.runs:
        state = (r.status or {}).get("state", "missing")
        if state != "ok":
            msg = (r.status or {}).get("message") or ("no status.json: the runner did not finish" if not r.status else "")
            problems.append(f"<li class='bad'>{escape(r.run_id)}: state {escape(state)} {escape(str(msg))}</li>")
        ev = r.events
        for rec in ev[ev["name"].isin(["error", "oom"])].to_dict("records"):
            problems.append(f"<li class='bad'>{escape(r.run_id)}: {escape(rec['name'])} at {fmt_s(rec['t_s'])}: "
                            f"{escape(_str(rec['message']))}</li>")
    devices = sorted({r.device for r in d.runs})
    head = (f"<p>{len(d.runs)} run{'s' * (len(d.runs) != 1)} on {escape(', '.join(devices))}; "
            f"variants {escape(', '.join(dict.fromkeys(r.variant for r in d.runs)))}.</p>")
    body = head + f"<ul class='headline'>{''.join(items)}</ul>"
    if problems:
        body += f"<h3>Problems</h3><ul>{''.join(problems)}</ul>"
    return _section("summary", "Summary", body)


_BENCH_METRICS = (("unet_step", "UNet step"), ("text_encoder", "text encoder"), ("vae_decoder", "VAE decoder"),
                  ("generation", "generation"), ("generation_resident", "generation less model loads"))


def _bench(d: ReportData) -> str:
    """The side-by-side benchmark (host.bench pipeline): every system's figures with min / median / max
    over repeats and the ratios to ours, measured in one run."""
    b = d.bench
    if not b:
        return ""
    st = b.get("settings", {})
    systems = b.get("systems", {})
    speed = (b.get("ratios") or {}).get("ours_optimized_speedup", {})
    head = "".join(f"<th>{escape(h)}</th>" for h in
                   ["system"] + [lab for _, lab in _BENCH_METRICS] + ["peak RSS", "step ÷ ours-optimized",
                                                                      "generation ÷ ours-optimized", "peak RSS ÷ ours-optimized"])
    rows = []
    for name, r in systems.items():
        if r.get("status") != "ok":
            rows.append(f"<tr><td>{escape(name)}</td><td class='bad' colspan='{len(_BENCH_METRICS) + 4}'>"
                        f"failed: {escape(str(r.get('error')))}</td></tr>")
            continue
        stats = r.get("stats", {})
        cells = [f"<td>{escape(name)}</td>"]
        for m, _ in _BENCH_METRICS:
            x = stats.get(m) or {}
            cells.append(f"<td data-v='{x.get('median', '')}'>{fmt_s(x.get('median'))} "
                         f"<span class='note'>[{fmt_s(x.get('min'))} – {fmt_s(x.get('max'))}]</span></td>")
        peak = (stats.get("peak_rss") or {}).get("bytes")
        cells.append(f"<td>{fmt_bytes(peak)}</td>")
        ratio = speed.get(name, {})
        for m in ("unet_step", "generation", "peak_rss"):
            cells.append(f"<td>{fmt_x(ratio.get(m))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    notes = []
    for name, f in (b.get("flop_floor") or {}).items():
        if isinstance(f, dict) and "floor_s" in f:
            notes.append(f"<li>UNet step floor, {escape(f.get('label', name))}: {f['flops'] / 1e9:.4g} GFLOP / "
                         f"{f['peak_flops'] / 1e9:.4g} GFLOP/s = {fmt_s(f['floor_s'])}"
                         + (f"; at XNNPACK's own fp32 GEMM rate measured in this run ({f['xnnpack_peak_flops'] / 1e9:.4g}"
                            f" GFLOP/s): {fmt_s(f['xnnpack_floor_s'])}" if "xnnpack_floor_s" in f else "") + "</li>")
    for name, r in systems.items():
        note = ((r.get("run") or {}).get("info") or {}).get("note")
        if note:
            notes.append(f"<li>{escape(name)}: {escape(note)}</li>")
    for name, c in (b.get("image_check") or {}).items():
        if isinstance(c, dict) and "psnr_db_vs_ours_baseline" in c:
            notes.append(f"<li>{escape(name)}: final image vs ours-baseline's (same weights and inputs): PSNR "
                         f"{c['psnr_db_vs_ours_baseline']:.1f} dB, rel. L2 {c.get('rel_l2_vs_ours_baseline', float('nan')):.3g}</li>")
    intro = (f"<p>{escape(str(st.get('model')))} {st.get('size')}×{st.get('size')}, {st.get('steps')} steps, CFG batch 2, "
             f"{st.get('threads')} threads, {st.get('warmup')} warm-up + {st.get('repeats')} measured generations per "
             f"system, each system in its own process; median [min – max] over repeats (UNet step: each repeat's "
             f"median step). Measured {escape(str(b.get('created_utc')))} by <code>python -m host.bench pipeline</code>"
             f" ({escape(str(d.bench_source or ''))}), not in the runs below.</p>")
    table = f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    goals = []
    for t in b.get("targets") or ():
        if isinstance(t, dict) and "ratio" in t:
            verdict = "met" if t.get("met") else f"missed by {t.get('margin', 0.0) * 100:.0f}%"
            goals.append(f"<tr><td>{escape(str(t.get('what')))}</td><td>{t['ratio']:.3f}</td><td>≤ {t['goal']:g}</td>"
                         f"<td class='{'' if t.get('met') else 'bad'}'>{verdict}</td></tr>")
    if goals:
        table += ("<h3>Targets</h3><table><thead><tr><th>ratio (medians of this run)</th><th>measured</th><th>goal</th>"
                  f"<th>verdict</th></tr></thead><tbody>{''.join(goals)}</tbody></table>")
    return _section("bench", "Side by side: ours vs the references",
                    intro + table + (f"<ul class='note'>{''.join(notes)}</ul>" if notes else ""))


def _ladder(d: ReportData) -> str:
    cols: list[Column] = [
        ("variant", "variant", _str), ("device", "device", _str),
        ("text_encoder_s", "text encoder", fmt_s), ("unet_step_median_s", "UNet step (median)", fmt_s),
        ("unet_total_s", "UNet total", fmt_s), ("vae_decoder_s", "decoder", fmt_s),
        ("end_to_end_s", "end to end", fmt_s), ("speedup", "speedup", fmt_x),
        ("peak_rss_bytes", "peak RSS", fmt_bytes), ("model_bytes", "model bytes", fmt_bytes),
    ]
    table = html_table(d.ladder, cols)
    cats = ["text encoder", "UNet total", "decoder", "end to end"]
    series = {}
    colors = []
    for i, rec in enumerate(d.ladder.to_dict("records")):
        lab = f"{rec['variant']} @ {rec['device']}" if d.multi_device else rec["variant"]
        series[lab] = [rec["text_encoder_s"], rec["unet_total_s"], rec["vae_decoder_s"], rec["end_to_end_s"]]
        colors.append(svg.color(i))
    chart = svg.grouped_hbar(cats, series, unit="seconds", colors=colors, title="Components, median per generation")
    return _section("ladder", "Optimization ladder", table + chart)


def _layers(d: ReportData) -> str:
    lay = d.layers
    if lay.empty:
        body = ("<p class='note'>No per-block or per-op spans in these runs (set profiling.per_block or "
                "profiling.per_op in the request to measure them).</p>")
    else:
        body = ""
        labels = {r.run_id: run_label(r, d.multi_device) for r in d.runs}
        for comp, g in lay.groupby("component", sort=False, dropna=False):
            keys = list(dict.fromkeys(g["key"]))
            series, notes, colors = {}, {}, []
            for i, r in enumerate(d.runs):
                gr = g[g["run_id"] == r.run_id]
                if gr.empty:
                    continue
                m = dict(zip(gr["key"], gr["median_s"] * 1e3))
                s = dict(zip(gr["key"], gr["speedup"]))
                series[labels[r.run_id]] = [m.get(k, math.nan) for k in keys]
                notes[labels[r.run_id]] = ["" if gr["baseline_run_id"].iloc[0] == r.run_id or math.isnan(s.get(k, math.nan))
                                           else f"({s[k]:.2f}×)" for k in keys]
                colors.append(svg.color(i))
            body += svg.grouped_hbar(keys, series, unit="ms per call", colors=colors, annotations=notes,
                                     title=f"{_str(comp)}: median latency per block")
        checks = [f"<li>{escape(run_label(r, d.multi_device))}: {escape(_str(m))}</li>" for r in d.runs
                  for m in r.events.loc[r.events["name"] == "per_block_check", "message"]]
        gaps = []
        for r in d.runs:
            s = compare.run_summary(r)
            if not math.isnan(s["block_sum_s"]):
                gaps.append(f"<li>{escape(run_label(r, d.multi_device))}: {escape(block_gap_text(s))}</li>")
        if gaps:
            body += ("<p class='note'>Sum of the per-block models against the whole-model UNet step (the gap is "
                     "per-model overhead and fusion lost at block borders):</p><ul>" + "".join(gaps) + "</ul>")
        if checks:
            body += f"<p class='note'>Block chain vs the whole UNet:</p><ul>{''.join(checks)}</ul>"
        wide = compare.layer_table(lay)
        cols: list[Column] = [("component", "component", _str), ("key", "block", _str)]
        for c in wide.columns[2:]:
            cols.append((c, c, fmt_x if c.startswith("speedup") else (lambda v: fmt_num(v, 4))))
        body += html_table(wide, cols)
    if not d.op_types.empty:
        wide = compare.layer_table(d.op_types)
        cols = [("component", "component", _str), ("key", "op type", _str)]
        for c in wide.columns[2:]:
            cols.append((c, c, fmt_x if c.startswith("speedup") else (lambda v: fmt_num(v, 4))))
        body += "<h3>Per op type (sum per call, median)</h3>" + html_table(wide, cols)
    return _section("layers", "Per-layer latency", body)


_SPAN_COLORS = {"text_encoder": "#2ca02c", "vae_decoder": "#d62728", "load": "#bbbbbb"}


def _timeline(d: ReportData) -> str:
    lanes = []
    for r in d.runs:
        sp = r.spans
        meas = sp[~sp["warmup"] & sp["cat"].isin(["component", "step"])]
        if meas.empty:
            meas = sp[sp["cat"].isin(["component", "step"])]
        if meas.empty:
            continue
        rep = meas["repeat"].dropna().min() if meas["repeat"].notna().any() else None
        g = meas[meas["repeat"] == rep] if rep is not None else meas
        t0 = float(g["start_s"].min())
        bars = []
        for rec in g.sort_values("start_s").to_dict("records"):
            if rec["name"] == "unet_step":
                step = rec["step"] if rec["step"] is not pd.NA and rec["step"] is not None else 0
                col = "#1f77b4" if int(step) % 2 == 0 else "#6baed6"
                label = f"unet step {step}"
            else:
                col = _SPAN_COLORS.get(rec["name"], "#9467bd")
                label = str(rec["name"])
            bars.append((float(rec["start_s"]) - t0, float(rec["dur_s"]), label, col))
        lanes.append((f"{run_label(r, d.multi_device)} (repeat {rep})", bars))
    if not lanes:
        return _section("timeline", "Per-step timeline", "<p class='note'>No component or step spans.</p>")
    legend = ("<p class='legend'><span style='background:#2ca02c'></span>text encoder "
              "<span style='background:#1f77b4'></span><span style='background:#6baed6'></span>UNet steps "
              "<span style='background:#d62728'></span>decoder</p>")
    return _section("timeline", "Per-step timeline",
                    legend + svg.timeline(lanes, title="First measured generation of each run"))


def _memory(d: ReportData) -> str:
    series, colors = {}, []
    for i, r in enumerate(d.runs):
        m = r.memory.dropna(subset=["t_s", "rss_bytes"])
        if m.empty:
            continue
        m = m.sort_values("t_s")
        series[run_label(r, d.multi_device)] = list(zip(m["t_s"].astype(float), m["rss_bytes"].astype(float) / 2**20))
        colors.append(svg.color(i))
    if not series:
        return _section("memory", "Memory over time", "<p class='note'>No memory samples.</p>")
    peaks = "".join(f"<li>{escape(k)}: peak {fmt_bytes(max(y for _, y in v) * 2**20)} RSS</li>"
                    for k, v in series.items())
    return _section("memory", "Memory over time",
                    svg.lines(series, colors=colors, title="Resident set size (trace time)") + f"<ul>{peaks}</ul>")


def _images(d: ReportData) -> str:
    psnr = {rec["run_id"]: rec for rec in d.psnr.to_dict("records")}
    figs = []
    for r in d.runs:
        uri = image_data_uri(r)
        p = psnr.get(r.run_id, {})
        base = p.get("baseline_run_id")
        cap = escape(run_label(r, d.multi_device))
        if base and base != r.run_id:
            cap += f"<br>PSNR vs baseline: {escape(fmt_db(p.get('psnr_db')))}"
            if p.get("max_abs_diff") is not None and not math.isnan(p.get("max_abs_diff", math.nan)):
                cap += f", max |Δ| {p['max_abs_diff']:.3g}"
        elif base == r.run_id:
            cap += "<br>(reference)"
        img = (f"<img alt='{escape(r.run_id)}' src='{uri}'>" if uri else "<div class='noimg'>no image</div>")
        figs.append(f"<figure>{img}<figcaption>{cap}</figcaption></figure>")
    return _section("images", "Output images", f"<div class='images'>{''.join(figs)}</div>")


def _roofline(d: ReportData) -> str:
    body = ""
    shown = set()
    for r in d.runs:
        g = d.graphs.get(r.run_id)
        if g is None:
            continue
        label = run_label(r, d.multi_device)
        if r.run_id in d.rooflines:
            rf, src, tot = d.rooflines[r.run_id]
            has_meas = rf["measured_s"].notna().any()
            step = tot.get("measured_step_s")
            ratio = step / tot["floor_s"] if step and tot["floor_s"] > 0 and not math.isnan(step) else math.nan
            body += (f"<p class='rf-total'><b>{escape(label)}</b>: whole UNet call floor {fmt_s(tot['floor_s'])} "
                     f"(compute {fmt_s(tot['compute_s'])}, memory {fmt_s(tot['memory_s'])}, {fmt_flops(g.total_flops)}); "
                     f"measured step median {fmt_s(step)}"
                     + (f" = {ratio:.1f}× the floor" if not math.isnan(ratio) else "") + f". Roofline: {escape(src)}.</p>")
            keys = list(rf["block"])
            series = {"floor": list(rf["floor_s"] * 1e3)}
            if has_meas:
                series["measured"] = list(rf["measured_s"] * 1e3)
            notes = {"measured": [f"({x:.1f}× floor)" if not math.isnan(x) else "" for x in rf["ratio"]]}
            body += svg.grouped_hbar(keys, series, unit="ms per UNet call", colors=["#bbbbbb", svg.color(1)],
                                     annotations=notes, title=f"{label}: measured vs roofline floor ({src})")
            cols: list[Column] = [("block", "block", _str), ("flops", "FLOPs", fmt_flops),
                                  ("bytes_moved", "bytes moved", fmt_bytes), ("bound", "bound", _str),
                                  ("floor_s", "floor", fmt_s), ("measured_s", "measured", fmt_s),
                                  ("ratio", "measured / floor", lambda v: fmt_num(v, 3)),
                                  ("peak_live_bytes", "peak activations", fmt_bytes)]
            body += html_table(rf, cols)
        elif g.path not in shown:
            cols = [("block", "block", _str), ("n_ops", "ops", _str), ("flops", "FLOPs", fmt_flops),
                    ("flops_share", "share", lambda v: f"{float(v) * 100:.1f}%"),
                    ("weight_bytes", "weights", fmt_bytes), ("bytes_moved", "bytes moved", fmt_bytes),
                    ("peak_live_bytes", "peak activations", fmt_bytes)]
            body += (f"<h3>{escape(label)}: UNet graph ({len(g.ops)} ops, {fmt_flops(g.total_flops)}, "
                     f"peak activations {fmt_bytes(g.peak_activation_bytes)})</h3>" + html_table(g.blocks, cols))
            shown.add(g.path)
    if not body:
        body = ("<p class='note'>No model files found next to the runs (request.models_dir), so no per-block "
                "FLOPs, bytes or floors.</p>")
    elif not d.rooflines:
        body = ("<p class='note'>Floors need a device profile (peak FLOP/s and memory bandwidth): none matched "
                "these runs' devices; pass --profile NAME or --peak-flops/--mem-bw.</p>") + body
    return _section("roofline", "Roofline", body)


def _runs_section(d: ReportData) -> str:
    meta = pd.concat([r.meta for r in d.runs], ignore_index=True)
    cols: list[Column] = [("run_id", "run", _str), ("variant", "variant", _str), ("device", "device", _str),
                          ("runner", "runner", _str), ("accelerator", "accel.", _str), ("precision", "precision", _str),
                          ("threads", "threads", _str), ("steps", "steps", _str), ("warmup", "warmup", _str),
                          ("repeats", "repeats", _str), ("state", "state", _str), ("model", "model", _str)]
    load = "".join(f"<li>{escape(run_label(r, d.multi_device))}: cold load "
                   f"{fmt_s(compare.run_summary(r)['load_s'])}</li>" for r in d.runs)
    return _section("runs", "Runs", html_table(meta, cols) + f"<ul>{load}</ul>")


_CSS = """
:root{--fg:#1d1d1f;--muted:#666;--line:#ddd;--bg:#fff;--accent:#1f77b4}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:16px 24px;border-bottom:1px solid var(--line);position:sticky;top:0;background:#fafafa;z-index:1}
h1{font-size:20px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:14px;margin:18px 0 6px}main{padding:0 24px 40px;max-width:1100px}
nav a{margin-right:14px;color:var(--accent);text-decoration:none}nav a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}th,td{border:1px solid var(--line);padding:3px 8px;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}.note{color:var(--muted)}.bad{color:#b00020}.big{font-size:16px;font-weight:600}
svg.chart{display:block;max-width:100%;height:auto;margin:8px 0}svg .bar:hover,svg .span:hover{opacity:.75}
.images{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;text-align:center}
figure img{width:256px;height:auto;image-rendering:pixelated;border:1px solid var(--line)}
figcaption{font-size:12px;color:var(--muted);max-width:256px}.noimg{width:256px;height:256px;border:1px dashed var(--line)}
.legend span{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}footer{color:var(--muted);font-size:12px;padding:16px 24px}
"""

_HEAD_JS = """window.onerror=function(m,s,l){document.documentElement.setAttribute('data-error',String(m)+' @'+l);};"""

_JS = """
(function(){
  try {
    var nav = document.getElementById('toc');
    var secs = document.querySelectorAll('main > section[data-title]');
    for (var i = 0; i < secs.length; i++) {
      var a = document.createElement('a');
      a.href = '#' + secs[i].id; a.textContent = secs[i].getAttribute('data-title');
      nav.appendChild(a);
    }
    var tables = document.querySelectorAll('table.sortable');
    Array.prototype.forEach.call(tables, function(t) {
      Array.prototype.forEach.call(t.tHead.rows[0].cells, function(th, col) {
        th.title = 'sort';
        th.addEventListener('click', function() {
          var rows = Array.prototype.slice.call(t.tBodies[0].rows);
          var asc = th.getAttribute('data-sort') !== 'asc';
          rows.sort(function(r1, r2) {
            var c1 = r1.cells[col], c2 = r2.cells[col];
            var v1 = c1.getAttribute('data-v'), v2 = c2.getAttribute('data-v');
            var x = (v1 !== null && v2 !== null) ? (parseFloat(v1) - parseFloat(v2))
                                                  : c1.textContent.localeCompare(c2.textContent);
            return asc ? x : -x;
          });
          rows.forEach(function(r) { t.tBodies[0].appendChild(r); });
          th.setAttribute('data-sort', asc ? 'asc' : 'desc');
        });
      });
    });
    var data = JSON.parse(document.getElementById('report-data').textContent);
    document.getElementById('gen').textContent = data.runs.length + ' run(s) · generated ' + data.generated;
    document.body.setAttribute('data-sections', String(secs.length));
    document.body.setAttribute('data-ok', '1');
  } catch (e) {
    document.body.setAttribute('data-error', String(e && e.message || e));
  }
})();
"""


def render_html(d: ReportData, title: str | None = None) -> str:
    title = title or ("sdphone report: " + ", ".join(dict.fromkeys(r.variant for r in d.runs)))
    sections = [_summary(d), _bench(d), _ladder(d), _layers(d), _timeline(d), _memory(d), _images(d), _roofline(d),
                _runs_section(d)]
    sections = [s for s in sections if s]
    payload = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "runs": [{"run_id": r.run_id, "variant": r.variant, "device": r.device} for r in d.runs],
               "ladder": json.loads(d.ladder.to_json(orient="records")),
               "psnr": json.loads(d.psnr.to_json(orient="records"))}
    blob = json.dumps(payload).replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style><script>{_HEAD_JS}</script></head>"
        f"<body data-report='sdphone'><header><h1>{escape(title)}</h1><nav id='toc'></nav>"
        "<div id='gen' class='note'></div></header>"
        f"<main>{''.join(sections)}</main>"
        "<footer>Self-contained report: no external resources. Times are medians over measured (non-warmup) "
        "repeats.</footer>"
        f"<script type='application/json' id='report-data'>{blob}</script>"
        f"<script>{_JS}</script></body></html>")


def render_report(source: Any, out_html: str | Path | None = None, *, baseline: str | None = None,
                  peak_flops: float | None = None, mem_bandwidth: float | None = None, profile: str | None = None,
                  analyze_graphs: bool = True, auto_profile: bool = True, title: str | None = None,
                  bench: str | Path | None = None) -> Path:
    """Writes one self-contained HTML report for the runs in ``source`` (a run folder, a deploy folder
    of run folders, Run objects, or a list of these) and returns its path (default
    ``<folder>/report.html`` for a single folder argument). ``bench``: see :func:`collect`."""
    d = collect(source, baseline, peak_flops, mem_bandwidth, profile, analyze_graphs, auto_profile, bench)
    if out_html is None:
        items = source if isinstance(source, (list, tuple)) else [source]
        first = items[0]
        folder = first.run_dir if isinstance(first, Run) else Path(first)
        if len(items) > 1:
            folder = folder.parent
        out_html = folder / "report.html"
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(d, title), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------------------- terminal

def text_table(rows: list[list[str]], header: list[str], right: bool = True) -> str:
    """Columns padded to their widest cell, a dashed rule under the header; the first column left-aligned,
    the others right-aligned (``right``) or left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(str(c).rjust(w) if i and right else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def terminal_summary(source: Any, baseline: str | None = None, max_blocks: int = 12) -> str:
    """A plain-text summary for the CLI: the ladder table, PSNR, and the per-block speedups."""
    runs = source.runs if isinstance(source, ReportData) else resolve_runs(source)
    lad = compare.ladder_table(runs, baseline)
    ps = dict(zip(*compare.psnr_table(runs, baseline)[["run_id", "psnr_db"]].T.values))
    rows = [[rec["variant"], rec["device"], fmt_s(rec["text_encoder_s"]), fmt_s(rec["unet_step_median_s"]),
             fmt_s(rec["unet_total_s"]), fmt_s(rec["vae_decoder_s"]), fmt_s(rec["end_to_end_s"]), fmt_x(rec["speedup"]),
             fmt_bytes(rec["peak_rss_bytes"]), fmt_bytes(rec["model_bytes"]), fmt_db(ps.get(rec["run_id"]))]
            for rec in lad.to_dict("records")]
    out = [text_table(rows, ["variant", "device", "text enc", "unet step", "unet total", "decoder", "end to end",
                              "speedup", "peak RSS", "model", "PSNR"])]
    lay = compare.compare_layers(runs, "block", baseline)
    if len(lay) and lay["run_id"].nunique() > 1:
        wide = compare.layer_table(lay)
        rows = [[_str(rec["key"])] + [fmt_num(rec[c], 4) if not c.startswith("speedup") else fmt_x(rec[c])
                                      for c in wide.columns[2:]] for rec in wide.head(max_blocks).to_dict("records")]
        out.append("")
        out.append(text_table(rows, ["block"] + list(wide.columns[2:])))
    for r in runs:
        sm = compare.run_summary(r)
        if not math.isnan(sm["block_sum_s"]):
            out.append(f"{r.variant}: {block_gap_text(sm)}")
    bad = [f"{r.run_id}: {(r.status or {}).get('state', 'missing')} {(r.status or {}).get('message') or ''}".rstrip()
           for r in runs if (r.status or {}).get("state") != "ok"]
    if bad:
        out += ["", "problems:"] + [f"  {b}" for b in bad]
    return "\n".join(out)

