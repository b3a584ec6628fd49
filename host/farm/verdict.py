"""Regression verdicts: tonight's farm run against a baseline window of earlier nights.

Per (device, variant, metric[, layer]):

* tonight = the median of tonight's values (its repeats);
* baseline = the nights before tonight, the last ``window`` of them with a value; each night is
  reduced to the median of its values, and the baseline center is the median of those nightly
  medians, its spread the robust sigma ``1.4826 * MAD`` of them;
* the band around the center is ``max(k * sigma, rel * center)`` above it and ``max(k * sigma,
  center * rel / (1 + rel))`` below it (a ratio of 1 + rel either way; for PSNR: ``max(k * sigma,
  psnr_drop_db)`` both ways), so neither a noisy metric nor a very steady one raises false alarms;
* where tonight and the pooled baseline values both have at least three samples, a one-sided
  Mann-Whitney U test must also reject "no shift" at ``alpha``; with fewer the band alone decides.

Statuses: ``regressed`` / ``improved`` (outside the band on the bad / good side, and significant where
tested), ``unchanged``, ``new`` (fewer than ``min_nights`` baseline nights: not judged), ``missing``
(the baseline has it, tonight does not), ``failed`` (the device produced nothing tonight).
PSNR is capped at ``PSNR_CAP`` dB for the statistics (identical images give inf).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from host.farm.config import Thresholds
from host.farm.metrics import HEADLINE, METRICS

PSNR_CAP = 150.0
VERDICT_COLUMNS: dict[str, str] = {
    "device": "str", "variant": "str", "metric": "str", "layer": "str", "status": "str", "tonight": "float64",
    "baseline": "float64", "change": "float64", "band": "float64", "p_value": "float64", "n_tonight": "Int64",
    "n_baseline_nights": "Int64", "unit": "str", "detail": "str",
}
BAD = ("regressed", "failed")


def _values(series: pd.Series, metric: str) -> np.ndarray:
    v = series.to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    if metric == "psnr_db":
        v = np.minimum(v, PSNR_CAP)
    return v


def mann_whitney_p(worse: Sequence[float], base: Sequence[float]) -> float:
    """One-sided p-value that ``worse`` is stochastically greater than ``base`` (scipy's exact or
    asymptotic Mann-Whitney U, chosen by sample size)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(worse, base, alternative="greater").pvalue)


def judge(tonight: np.ndarray, nightly: list[np.ndarray], metric: str, th: Thresholds) -> dict[str, Any]:
    """The verdict of one series: ``tonight`` values, ``nightly`` = the baseline nights' values (oldest first)."""
    spec = METRICS[metric]
    nightly = [n for n in nightly if len(n)][-th.window:]
    out: dict[str, Any] = {"tonight": float(np.median(tonight)) if len(tonight) else math.nan,
                           "n_tonight": len(tonight), "n_baseline_nights": len(nightly), "baseline": math.nan,
                           "change": math.nan, "band": math.nan, "p_value": math.nan, "detail": ""}
    if not len(tonight):
        out["status"] = "missing"
        return out
    if len(nightly) < th.min_nights:
        out["status"] = "new"
        out["detail"] = f"{len(nightly)} baseline night(s), {th.min_nights} needed"
        return out
    medians = np.array([np.median(n) for n in nightly])
    center = float(np.median(medians))
    sigma = 1.4826 * float(np.median(np.abs(medians - center)))
    if spec.kind == "db":
        up = down = max(th.k * sigma, th.psnr_drop_db)
    else:  # a ratio: +rel above, 1/(1+rel) below, so a halving counts like a doubling
        rel = th.rel_for(metric)
        up = max(th.k * sigma, rel * abs(center))
        down = max(th.k * sigma, abs(center) * rel / (1 + rel))
    t = out["tonight"]
    delta = t - center
    out.update(baseline=center, band=up,
               change=(delta if spec.kind == "db" else (delta / center if center else math.nan)))
    above, below = delta > up, delta < -down
    worse, better = (above, below) if spec.better == "lower" else (below, above)
    pooled = np.concatenate(nightly)
    if (above or below) and len(tonight) >= 3 and len(pooled) >= 3:
        p = mann_whitney_p(tonight, pooled) if above else mann_whitney_p(pooled, tonight)
        out["p_value"] = p
        if p >= th.alpha:
            out["status"] = "unchanged"
            out["detail"] = f"outside the band but not significant (p={p:.3g} >= {th.alpha:g})"
            return out
    out["status"] = "regressed" if worse else "improved" if better else "unchanged"
    return out


def verdicts(metrics: pd.DataFrame, night: str, run_id: str, th: Thresholds,
             failed: Sequence[tuple[str, str, str]] = ()) -> pd.DataFrame:
    """The verdict table of ``run_id`` (tonight, night ``night``) against the earlier nights in ``metrics``
    (the history's metrics dataset). ``failed``: (device, variant, why) pairs that produced nothing tonight."""
    from host.traces.tables import typed_frame

    rows: list[dict[str, Any]] = []
    tonight = metrics[metrics["run_id"] == run_id]
    earlier = metrics[(metrics["night"] < night) & (metrics["run_id"] != run_id)]
    failed_pairs = {(d, v): why for d, v, why in failed}
    pairs = sorted(set(zip(tonight["device"], tonight["variant"])) | set(failed_pairs))
    for device, variant in pairs:
        if (device, variant) in failed_pairs:
            rows.append({"device": device, "variant": variant, "metric": "run", "layer": None, "status": "failed",
                         "detail": failed_pairs[(device, variant)]})
        t_pair = tonight[(tonight["device"] == device) & (tonight["variant"] == variant)]
        e_pair = earlier[(earlier["device"] == device) & (earlier["variant"] == variant)]
        keys = set(zip(t_pair["metric"], t_pair["layer"].fillna(""))) | (
            set(zip(e_pair["metric"], e_pair["layer"].fillna(""))) if len(t_pair) else set())
        order = list(METRICS)
        for metric, layer in sorted(keys, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1])):
            if metric not in METRICS:
                continue
            sel_t = t_pair[(t_pair["metric"] == metric) & (t_pair["layer"].fillna("") == layer)]
            sel_e = e_pair[(e_pair["metric"] == metric) & (e_pair["layer"].fillna("") == layer)]
            nightly = [_values(g["value"], metric) for _, g in sel_e.groupby("night", sort=True)]
            r = judge(_values(sel_t["value"], metric), nightly, metric, th)
            rows.append({"device": device, "variant": variant, "metric": metric, "layer": layer or None,
                         "unit": METRICS[metric].unit, **r})
    return typed_frame(rows, VERDICT_COLUMNS)


def overall(table: pd.DataFrame, th: Thresholds) -> str:
    """``regressed`` when a headline metric (or a layer, with fail_on_layers) regressed; else ``incomplete``
    when a device failed; else ``ok``."""
    counted = table if th.fail_on_layers else table[table["metric"].isin(HEADLINE + ("run",))]
    if (counted["status"] == "regressed").any():
        return "regressed"
    if (table["status"] == "failed").any():
        return "incomplete"
    return "ok"


def top_movers(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per (device, variant), the ``n`` layers with the largest relative change, largest first."""
    layers = table[(table["metric"] == "layer_s") & table["change"].notna()].copy()
    if layers.empty or n <= 0:
        return layers.iloc[0:0]
    layers["_abs"] = layers["change"].abs()
    out = (layers.sort_values("_abs", ascending=False).groupby(["device", "variant"], sort=True).head(n)
           .sort_values(["device", "variant", "_abs"], ascending=[True, True, False]))
    return out.drop(columns="_abs").reset_index(drop=True)
