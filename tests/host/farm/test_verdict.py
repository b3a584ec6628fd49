"""Regression verdicts on synthetic histories: the statistics, the three output forms."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from host.farm import outputs
from host.farm.config import Thresholds
from host.farm.verdict import judge, overall, top_movers, verdicts

TH = Thresholds(window=7, min_nights=3, rel=0.05, k=3.0, alpha=0.05, psnr_drop_db=3.0, top_layers=2)


def _nights(rng, center, rel_noise, n_nights=7, repeats=3):
    return [center * (1 + rel_noise * rng.standard_normal(repeats)) for _ in range(n_nights)]


@pytest.mark.parametrize("shift, expected", [(0.0, "unchanged"), (0.30, "regressed"), (-0.30, "improved"),
                                             (0.04, "unchanged")])
def test_latency_shift_against_a_noisy_window(shift, expected):
    rng = np.random.default_rng(7)
    nightly = _nights(rng, 10.0, 0.02)
    tonight = 10.0 * (1 + shift) * (1 + 0.02 * rng.standard_normal(3))
    r = judge(tonight, nightly, "end_to_end_s", TH)
    assert r["status"] == expected, r
    assert r["n_baseline_nights"] == 7 and r["n_tonight"] == 3
    assert r["change"] == pytest.approx(shift, abs=0.05)


def test_a_noisy_metric_needs_a_bigger_move():
    """With 20 % night-to-night noise, a 30 % rise stays inside the robust band."""
    rng = np.random.default_rng(3)
    nightly = [np.array([v]) for v in 10.0 * (1 + 0.2 * rng.standard_normal(7))]
    r = judge(np.array([13.0]), nightly, "peak_rss_bytes", TH)
    assert r["band"] > 0.3 * 10 * 0.9 and r["status"] == "unchanged", r


def test_outside_the_band_but_not_significant():
    """Tonight's median is above the band, but its spread overlaps the baseline: the U test says no."""
    nightly = [np.array([10.0, 10.1, 9.9])] * 3
    r = judge(np.array([9.8, 11.0, 11.2]), nightly, "unet_step_s", TH)
    assert r["status"] == "unchanged" and r["p_value"] >= TH.alpha and "not significant" in r["detail"]


def test_new_missing_and_window():
    rng = np.random.default_rng(0)
    assert judge(np.array([1.0]), _nights(rng, 1.0, 0.01, n_nights=2), "unet_step_s", TH)["status"] == "new"
    assert judge(np.array([]), _nights(rng, 1.0, 0.01), "unet_step_s", TH)["status"] == "missing"
    # Only the last `window` nights count: a slow night long ago is out of the window.
    old = [np.array([5.0])] * 5 + [np.array([1.0 + 0.001 * i]) for i in range(7)]
    r = judge(np.array([1.0]), old, "unet_step_s", TH)
    assert r["baseline"] == pytest.approx(1.003) and r["n_baseline_nights"] == 7 and r["status"] == "unchanged"


def test_fidelity_is_judged_in_db_and_higher_is_better():
    same = [np.array([150.0])] * 5  # identical images, capped
    assert judge(np.array([150.0]), same, "psnr_db", TH)["status"] == "unchanged"
    r = judge(np.array([32.0]), same, "psnr_db", TH)
    assert r["status"] == "regressed" and r["change"] == pytest.approx(-118.0)
    steady = [np.array([40.0 + 0.1 * i]) for i in range(5)]
    assert judge(np.array([38.5]), steady, "psnr_db", TH)["status"] == "unchanged"  # within 3 dB
    assert judge(np.array([45.0]), steady, "psnr_db", TH)["status"] == "improved"


def _history(rows):
    return pd.DataFrame(rows)


def _rows(night, run_id, device, metric, values, layer=None, variant="optimized"):
    return [{"night": night, "run_id": run_id, "device": device, "variant": variant, "metric": metric,
             "layer": layer, "value": v, "repeat": i} for i, v in enumerate(values)]


@pytest.fixture
def history():
    rng = np.random.default_rng(11)
    rows = []
    for n in range(1, 6):
        night = f"2026-11-{n:02d}"
        for dev in ("a", "b"):
            rows += _rows(night, f"r{n}", dev, "end_to_end_s", 10 * (1 + 0.01 * rng.standard_normal(3)))
            rows += _rows(night, f"r{n}", dev, "psnr_db", [math.inf])
            for blk, t in (("down_blocks.0", 1.0), ("mid_block", 0.5), ("up_blocks.1", 2.0)):
                rows += _rows(night, f"r{n}", dev, "layer_s", [t * (1 + 0.01 * rng.standard_normal())], layer=blk)
    rows += _rows("2026-11-06", "tonight", "a", "end_to_end_s", [13.1, 13.0, 12.9])      # planted +30 %
    rows += _rows("2026-11-06", "tonight", "a", "psnr_db", [math.inf])
    rows += _rows("2026-11-06", "tonight", "a", "layer_s", [1.6], layer="mid_block")    # the block that moved
    rows += _rows("2026-11-06", "tonight", "a", "layer_s", [1.0], layer="down_blocks.0")
    rows += _rows("2026-11-06", "tonight", "a", "layer_s", [2.02], layer="up_blocks.1")
    df = _history(rows)
    df["layer"] = df["layer"].astype("object")
    return df


def test_verdict_table_outputs(history):
    table = verdicts(history, "2026-11-06", "tonight", TH, failed=[("b", "optimized", "3 attempt(s); crashed")])
    by = {(r.device, r.metric, r.layer if isinstance(r.layer, str) else None): r for r in table.itertuples()}
    assert by[("a", "end_to_end_s", None)].status == "regressed"
    assert by[("a", "psnr_db", None)].status == "unchanged"
    assert by[("a", "layer_s", "mid_block")].status == "regressed"
    assert by[("b", "run", None)].status == "failed"
    assert overall(table, TH) == "regressed"
    movers = top_movers(table, 2)
    assert list(movers["layer"]) == ["mid_block", "up_blocks.1"]  # largest relative change first

    text = outputs.terminal(table, TH, "2026-11-06", "tonight")
    assert "REGRESSED" in text.splitlines()[0] and "mid_block" in text and "FAILED" in text

    xml = outputs.junit_xml(table, TH, "2026-11-06", "tonight")
    root = ET.fromstring(xml.split("\n", 1)[1])
    assert root.get("failures") == "1" and root.get("errors") == "1"  # the layer alone does not fail
    failure = root.find(".//testcase[@name='end_to_end_s']/failure")
    assert failure is not None and "+29" in failure.get("message")
    assert root.find(".//testsuite[@name='b/optimized']/testcase/error") is not None

    doc = outputs.verdict_json(table, TH, "2026-11-06", "tonight", pd.DataFrame())
    doc = json.loads(outputs.dumps(doc))
    assert doc["verdict"] == "regressed" and doc["counts"]["regressed"] == 1 and doc["counts"]["failed"] == 1
    assert doc["regressions"][0]["metric"] == "end_to_end_s"
    assert doc["top_layer_movers"][0]["layer"] == "mid_block"


def test_fail_on_layers_and_incomplete(history):
    strict = Thresholds(**{**TH.__dict__, "fail_on_layers": True})
    quiet = history[~((history["run_id"] == "tonight") & (history["metric"] == "end_to_end_s"))]
    quiet = pd.concat([quiet, pd.DataFrame(_rows("2026-11-06", "tonight", "a", "end_to_end_s", [10.0, 10.05, 9.95]))])
    assert overall(verdicts(quiet, "2026-11-06", "tonight", TH), TH) == "ok"
    assert overall(verdicts(quiet, "2026-11-06", "tonight", strict), strict) == "regressed"
    table = verdicts(quiet, "2026-11-06", "tonight", TH, failed=[("b", "optimized", "gone")])
    assert overall(table, TH) == "incomplete"
