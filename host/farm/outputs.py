"""The verdict in three forms: a terminal table, JUnit XML for CI systems, JSON for bots."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any, Mapping

import pandas as pd

from host.farm.config import Thresholds
from host.farm.metrics import HEADLINE, METRICS
from host.farm.verdict import overall, top_movers
from host.report.html import text_table

_MARK = {"regressed": "REGRESSED", "improved": "improved", "unchanged": "ok", "new": "new", "missing": "MISSING",
         "failed": "FAILED"}


def fmt_value(v: Any, unit: str | None) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if unit == "s":
        return f"{v * 1e3:.1f} ms" if abs(v) < 1 else f"{v:.2f} s"
    if unit == "B":
        return f"{v / 2**20:.1f} MiB"
    if unit == "dB":
        from host.farm.verdict import PSNR_CAP

        return "identical" if v >= PSNR_CAP else f"{v:.1f} dB"
    return f"{v:.4g}"


def fmt_change(row: Mapping[str, Any]) -> str:
    c = row.get("change")
    if c is None or (isinstance(c, float) and math.isnan(c)):
        return "-"
    return f"{c:+.1f} dB" if row.get("unit") == "dB" else f"{c * 100:+.1f}%"


def terminal(table: pd.DataFrame, th: Thresholds, night: str, run_id: str) -> str:
    head = table[table["metric"].isin(HEADLINE + ("run",))]
    rows = []
    for _, r in head.iterrows():
        label = METRICS[r["metric"]].label if r["metric"] in METRICS else "run"
        band = fmt_value(r["band"], r["unit"])
        rows.append([r["device"], r["variant"], label, _MARK.get(r["status"], r["status"]),
                     fmt_value(r["tonight"], r["unit"]), fmt_value(r["baseline"], r["unit"]), fmt_change(r),
                     f"±{band}" if band != "-" else "-",
                     "-" if pd.isna(r["p_value"]) else f"{r['p_value']:.3g}", r["detail"] or ""])
    out = [f"farm verdict, night {night} (run {run_id}): {overall(table, th).upper()}",
           text_table(rows, ["device", "variant", "metric", "verdict", "tonight", "baseline", "change", "band",
                              "p", "note"], right=False)]
    movers = top_movers(table, th.top_layers)
    if len(movers):
        out.append("per-layer top movers (UNet blocks):")
        out.append(text_table([[r["device"], r["variant"], r["layer"], _MARK.get(r["status"], r["status"]),
                                 fmt_value(r["tonight"], r["unit"]), fmt_value(r["baseline"], r["unit"]),
                                 fmt_change(r)] for _, r in movers.iterrows()],
                               ["device", "variant", "block", "verdict", "tonight", "baseline", "change"], right=False))
    return "\n".join(out)


def junit_xml(table: pd.DataFrame, th: Thresholds, night: str, run_id: str,
              attempts: pd.DataFrame | None = None) -> str:
    """One testsuite per (device, variant), one testcase per headline metric and per top-moving layer: a
    regression is a <failure>, a device that produced nothing an <error>, an unjudged metric <skipped>."""
    suites = ET.Element("testsuites", name=f"sdphone-farm {night}", id=run_id)
    movers = top_movers(table, th.top_layers)
    keep = table[table["metric"].isin(HEADLINE + ("run",))]
    cases = pd.concat([keep, movers], ignore_index=True) if len(movers) else keep
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for (device, variant), g in cases.groupby(["device", "variant"], sort=True):
        suite = ET.SubElement(suites, "testsuite", name=f"{device}/{variant}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for _, r in g.iterrows():
            name = r["metric"] if pd.isna(r["layer"]) else f"{r['metric']}[{r['layer']}]"
            case = ET.SubElement(suite, "testcase", classname=f"farm.{device}.{variant}", name=name)
            counts["tests"] += 1
            msg = (f"{name}: {fmt_value(r['tonight'], r['unit'])} vs baseline {fmt_value(r['baseline'], r['unit'])}"
                   f" ({fmt_change(r)}, band ±{fmt_value(r['band'], r['unit'])})")
            layer_only = not pd.isna(r["layer"]) and not th.fail_on_layers
            if r["status"] == "regressed" and not layer_only:
                ET.SubElement(case, "failure", message=f"regressed: {msg}", type="regression").text = \
                    f"{msg}; p={r['p_value']}; {r['detail'] or ''}"
                counts["failures"] += 1
            elif r["status"] == "failed":
                ET.SubElement(case, "error", message=str(r["detail"] or "no result"), type="device")
                counts["errors"] += 1
            elif r["status"] in ("new", "missing"):
                ET.SubElement(case, "skipped", message=f"{r['status']}: {r['detail'] or msg}")
                counts["skipped"] += 1
            else:
                ET.SubElement(case, "system-out").text = f"{r['status']}: {msg}"
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        suites.set(k, str(v))
    if attempts is not None and len(attempts):
        props = ET.SubElement(suites, "properties")
        ET.SubElement(props, "property", name="attempts", value=str(len(attempts)))
        ET.SubElement(props, "property", name="failed_attempts", value=str(int((attempts["outcome"] != "ok").sum())))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _clean(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in r.items()} for r in frame.to_dict("records")]


def verdict_json(table: pd.DataFrame, th: Thresholds, night: str, run_id: str, attempts: pd.DataFrame,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    head = table[table["metric"].isin(HEADLINE + ("run",))]
    return {
        "schema": "sdphone.farm.verdict", "version": 1, "night": night, "run_id": run_id,
        "verdict": overall(table, th),
        "counts": {s: int((head["status"] == s).sum()) for s in
                   ("regressed", "improved", "unchanged", "new", "missing", "failed")},
        "regressions": records(head[head["status"] == "regressed"]),
        "failures": records(head[head["status"] == "failed"]),
        "top_layer_movers": records(top_movers(table, th.top_layers)),
        "verdicts": records(table),
        "attempts": records(attempts),
        "thresholds": {k: getattr(th, k) for k in ("window", "min_nights", "rel", "k", "alpha", "psnr_drop_db",
                                                    "top_layers", "fail_on_layers", "metrics")},
        **(dict(extra) if extra else {}),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
