"""Per-layer comparison, the ladder table, PSNR."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from host.traces import compare, tables
from tests.host.traces.fake_runs import BLOCK_WEIGHTS, base_image, make_run


def _schema_ok(df, schema) -> bool:
    return list(df.columns) == list(schema) and all(
        str(df[c].dtype) == str(pd.Series([], dtype=d).dtype) for c, d in schema.items())


@pytest.fixture
def ladder_runs(tmp_path):
    speeds = {"+winograd": 2.0, "baseline": 1.0, "+flash": 1.6, "+gn_gelu": 1.1, "+softmax": 1.3}
    return [make_run(tmp_path, v, speed=s, noise=0.0 if v == "baseline" else 0.01, per_op=False)
            for v, s in speeds.items()]  # deliberately not in ladder order


def test_ladder_table(ladder_runs):
    lad = compare.ladder_table(ladder_runs)
    assert _schema_ok(lad, compare.LADDER_COLUMNS)
    assert lad["variant"].tolist() == list(tables.LADDER_ORDER)
    base = lad.iloc[0]
    # make_run: text encoder 20 ms, steps 200 ms (+ jitter), decoder 100 ms at speed 1.
    assert math.isclose(base["text_encoder_s"], 0.02) and math.isclose(base["vae_decoder_s"], 0.1)
    assert 0.2 <= base["unet_step_median_s"] <= 0.203
    assert math.isclose(base["end_to_end_s"], base["text_encoder_s"] + base["unet_total_s"] + base["vae_decoder_s"],
                        rel_tol=1e-3)
    assert base["speedup"] == 1.0 and base["peak_rss_bytes"] > 0
    assert lad.set_index("variant").loc["+winograd", "speedup"] == pytest.approx(2.0, rel=1e-3)
    assert lad["speedup"].is_monotonic_increasing


def test_compare_blocks(tmp_path):
    a = make_run(tmp_path, "baseline")
    b = make_run(tmp_path, "optimized", speed=2.0, block_speedup={"up_blocks.3": 1.5})
    cmp = compare.compare_layers([b, a])
    assert _schema_ok(cmp, compare.COMPARE_COLUMNS)
    opt = cmp[cmp["variant"] == "optimized"].set_index("key")
    assert opt.loc["mid_block", "speedup"] == pytest.approx(2.0, rel=1e-3)
    assert opt.loc["up_blocks.3", "speedup"] == pytest.approx(3.0, rel=1e-3)
    assert cmp["key"].tolist()[:2] == ["conv_in", "conv_in"]  # canonical block order, baseline first
    wide = compare.layer_table(cmp)
    assert list(wide.columns) == ["component", "key", "baseline ms", "optimized ms", "speedup optimized"]
    assert len(wide) == 11

    ops = compare.compare_layers([a, b], level="op")
    assert ops[ops["variant"] == "optimized"]["speedup"].tolist() == pytest.approx([2.0] * 5, rel=1e-3)
    by_type = compare.compare_layers([a, b], level="op_type")
    assert set(by_type["key"]) == {"CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"}


def test_block_gap_is_against_the_whole_step_timed_beside_the_chain(tmp_path):
    plain = compare.run_summary(tables.load_run(make_run(tmp_path, "baseline", run_id="plain")))
    beside = tables.load_run(make_run(tmp_path, "baseline", run_id="beside", block_reference=0.9))
    ref = compare.run_summary(beside)
    chain = 0.2 * sum(BLOCK_WEIGHTS)
    # no reference spans: against the generation's median step, as before
    assert math.isnan(plain["block_ref_s"]) and plain["block_sum_s"] == pytest.approx(chain, rel=1e-4)
    assert plain["block_gap"] == pytest.approx(chain / plain["unet_step_median_s"] - 1, rel=1e-4)
    # the whole UNet beside the chain: not part of its sum, and what the sum is held against
    assert ref["block_sum_s"] == pytest.approx(chain, rel=1e-4)
    assert ref["block_ref_s"] == pytest.approx(0.18, rel=1e-4)
    assert ref["block_gap"] == pytest.approx(chain / 0.18 - 1, rel=1e-4)
    assert "unet" not in set(compare.layer_latency(beside, "block")["key"])
    # the per-block pass holds more memory than any generation: not the run's peak
    gen_end = float((beside.spans["start_s"] + beside.spans["dur_s"])[beside.spans["cat"] == "total"].max())
    before = beside.memory[beside.memory["t_s"] <= gen_end]
    assert ref["peak_rss_bytes"] == int(max(before["rss_bytes"].max(), before["peak_bytes"].max()))
    assert ref["peak_rss_bytes"] < beside.memory["peak_bytes"].max() - 400 * 2**20


def test_blocks_from_op_spans(tmp_path):
    run = tables.load_run(make_run(tmp_path, "baseline", per_block=False))
    lat = compare.layer_latency(run, "block")
    assert set(lat["key"]) == {"down_blocks.0", "mid_block", "up_blocks.3"} and (lat["source"] == "op").all()
    # A graph's op->block map overrides missing args.block.
    for r in run.records:
        if r.get("cat") == "op":
            r["args"].pop("block")
    run = tables.load_run(run.run_dir, records=run.records)
    assert compare.layer_latency(run, "block").empty
    ops = pd.DataFrame({"index": [0, 10, 20, 30, 40], "block": ["a", "a", "b", "b", "c"]})
    lat = compare.layer_latency(run, "block", op_blocks={"unet": ops})
    assert lat.set_index("key")["median_s"].to_dict() == pytest.approx({"a": 0.003, "b": 0.007, "c": 0.005})


def test_psnr_values():
    img = base_image()
    assert compare.psnr(img, img) == math.inf
    # A constant offset of 0.01 in [-1, 1]: MSE 1e-4, PSNR = 10 log10(2^2 / 1e-4).
    assert compare.psnr(img, img + 0.01) == pytest.approx(10 * math.log10(4 / 1e-4))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.02, img.shape)
    expected = 10 * math.log10(4 / float(np.mean(noise ** 2)))
    assert compare.psnr(img, img + noise) == pytest.approx(expected)
    with pytest.raises(ValueError):
        compare.psnr(img, img[:, :2])


def test_psnr_table(tmp_path):
    a = make_run(tmp_path, "baseline")
    b = make_run(tmp_path, "optimized", noise=0.01)
    c = make_run(tmp_path, "+flash", noise=0.0)
    (c / "image.f32").unlink()  # png only: both sides are compared as 8-bit PNGs
    t = compare.psnr_table([c, b, a])
    assert _schema_ok(t, compare.PSNR_COLUMNS)
    t = t.set_index("variant")
    assert t.loc["baseline", "psnr_db"] == math.inf
    assert t.loc["optimized", "psnr_db"] == pytest.approx(10 * math.log10(4 / 1e-4), rel=1e-4)
    assert t.loc["optimized", "source"] == "f32" and t.loc["optimized", "max_abs_diff"] == pytest.approx(0.01, abs=1e-6)
    assert t.loc["+flash", "source"] == "png" and t.loc["+flash", "psnr_db"] == math.inf
    img, src = compare.load_image(a)
    assert src == "f32" and img.shape == (3, 16, 16)
    png, src = compare.load_image(a, prefer="png")
    assert src == "png" and np.max(np.abs(png - img)) <= 1 / 127.5 + 1e-9


def test_baseline_per_device(tmp_path):
    runs = [make_run(tmp_path, "baseline", device="phone", run_id="p_baseline"),
            make_run(tmp_path, "optimized", device="phone", speed=4.0, run_id="p_optimized"),
            make_run(tmp_path, "baseline", device="host", speed=10.0, run_id="h_baseline"),
            make_run(tmp_path, "optimized", device="host", speed=20.0, run_id="h_optimized")]
    lad = compare.ladder_table(runs).set_index("run_id")
    assert lad.loc["p_optimized", "speedup"] == pytest.approx(4.0, rel=1e-3)
    assert lad.loc["h_optimized", "speedup"] == pytest.approx(2.0, rel=1e-3)
    lad2 = compare.ladder_table(runs, baseline="baseline").set_index("run_id")  # a variant: same device
    assert lad2.loc["h_optimized", "speedup"] == pytest.approx(2.0, rel=1e-3)
    lad3 = compare.ladder_table(runs, baseline="p_baseline").set_index("run_id")  # a run id: that run
    assert lad3.loc["h_optimized", "speedup"] == pytest.approx(20.0, rel=1e-3)
