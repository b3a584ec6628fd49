"""Comparing runs: per-layer latency of variants, the ladder table (the paper's Table 1), image PSNR.

Every function takes runs as ``Run`` objects (``tables.load_run``), run folders, or a mix, and
returns frames with the fixed columns declared here. Warmup spans are never measured.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from host.protocol.constants import REFERENCE_BLOCK
from host.traces.tables import LADDER_ORDER, Run, load_run, typed_frame

SUMMARY_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "state": "str",
    "repeats": "Int64",              # measured (non-warmup) generations seen in the trace
    "steps": "Int64",                # UNet steps per measured generation
    "load_s": "float64",             # cold load of all components
    "text_encoder_s": "float64",     # medians over measured repeats
    "unet_step_median_s": "float64",
    "unet_total_s": "float64",
    "vae_decoder_s": "float64",
    "end_to_end_s": "float64",       # the "generation" span; sum of the parts where it is missing
    "block_sum_s": "float64",        # per-block pass: sum of the UNet blocks at a step (median over steps)
    "block_ref_s": "float64",        # per-block pass: the whole UNet timed beside the chain (median over steps)
    "block_gap": "float64",          # block_sum_s / block_ref_s - 1 (per-model overheads, lost fusion); against
                                     # unet_step_median_s where the run has no reference spans
    "peak_rss_bytes": "Int64",       # up to the end of the last generation (the passes after it hold other models)
    "model_bytes": "Int64",
}

LADDER_COLUMNS: dict[str, str] = {
    **{k: v for k, v in SUMMARY_COLUMNS.items()
       if k not in ("state", "repeats", "steps", "load_s", "block_sum_s", "block_ref_s", "block_gap")},
    "unet_speedup": "float64",       # baseline unet_total_s / this unet_total_s
    "speedup": "float64",            # baseline end_to_end_s / this end_to_end_s
}

LAYER_LATENCY_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "component": "str",
    "level": "str",         # "block", "op" or "op_type"
    "key": "str",           # block name, op index, or op type
    "block": "str",
    "op_type": "str",
    "median_s": "float64",  # per step (per call) where spans are per step
    "n": "Int64",           # spans the median is over
    "source": "str",        # "block" spans, or "op" spans summed into blocks / op types
}

COMPARE_COLUMNS: dict[str, str] = {
    **LAYER_LATENCY_COLUMNS,
    "baseline_run_id": "str",
    "baseline_variant": "str",
    "baseline_s": "float64",
    "speedup": "float64",   # baseline_s / median_s
}

PSNR_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "baseline_run_id": "str",
    "psnr_db": "float64",       # inf for identical images
    "max_abs_diff": "float64",  # in the [-1, 1] image range
    "source": "str",            # "f32" (image.f32) or "png"
}


# ----------------------------------------------------------------------------------------------- inputs

def as_runs(runs: Run | str | Path | Iterable[Run | str | Path]) -> list[Run]:
    if isinstance(runs, (Run, str, Path)):
        runs = [runs]
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def variant_rank(variant: str) -> int:
    v = "+winograd" if variant == "optimized" else variant
    return LADDER_ORDER.index(v) if v in LADDER_ORDER else len(LADDER_ORDER)


def order_runs(runs: Sequence[Run]) -> list[Run]:
    """Ladder order (baseline, +gn_gelu, +softmax, +flash, +winograd/optimized, others), stable."""
    return sorted(runs, key=lambda r: (r.device, variant_rank(r.variant), r.variant != "optimized"))


def pick_baseline(runs: Sequence[Run], run: Run | None = None, baseline: str | None = None) -> Run | None:
    """The reference run: ``baseline`` as a run id or a variant name, else the "baseline" variant,
    else the first run in ladder order; a run on the same device as ``run`` is preferred."""
    if not runs:
        return None
    pool = [r for r in runs if run is None or r.device == run.device] or list(runs)
    if baseline:
        for cand in (pool, runs):
            for r in cand:
                if r.run_id == baseline:
                    return r
            for r in cand:
                if r.variant == baseline:
                    return r
    for r in pool:
        if r.variant == "baseline":
            return r
    return order_runs(pool)[0]


# ----------------------------------------------------------------------------------------------- summary

def _measured(spans: pd.DataFrame) -> pd.DataFrame:
    return spans[~spans["warmup"].astype(bool)]


def _median(values) -> float:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.median(v)) if v else math.nan


def run_summary(run: Run) -> dict:
    spans = _measured(run.spans)
    te = spans[(spans["name"] == "text_encoder") & (spans["cat"] != "load")].groupby("repeat")["dur_s"].sum()
    steps = spans[(spans["name"] == "unet_step") & (spans["cat"] == "step")]
    unet_total = steps.groupby("repeat")["dur_s"].sum() if len(steps) else pd.Series([], dtype=float)
    dec = spans[(spans["name"] == "vae_decoder") & (spans["cat"] != "load")].groupby("repeat")["dur_s"].sum()
    gen = spans[spans["cat"] == "total"].groupby("repeat")["dur_s"].sum()
    e2e = _median(gen.values)
    if math.isnan(e2e):
        parts = [_median(te.values), _median(unet_total.values), _median(dec.values)]
        e2e = sum(parts) if not any(math.isnan(p) for p in parts) else math.nan
    load_s = _cold_load_seconds(run)
    peak = generation_peak(run)
    meta = run.meta.iloc[0] if len(run.meta) else {}
    reps = sorted(set(int(r) for r in spans["repeat"].dropna())) if len(spans) else []
    n_steps = int(steps.groupby("repeat").size().median()) if len(steps) else None
    unet_blocks = spans[(spans["cat"] == "block") & (spans["component"] == "unet")]
    is_ref = unet_blocks["name"] == REFERENCE_BLOCK
    chain, ref = unet_blocks[~is_ref], unet_blocks[is_ref]
    block_sum = _median(chain.groupby(["repeat", "step"])["dur_s"].sum().values) if len(chain) else math.nan
    block_ref = _median(ref["dur_s"].values)
    step_median = _median(steps["dur_s"].values)
    against = block_ref if not math.isnan(block_ref) else step_median
    return {
        "run_id": run.run_id, "variant": run.variant, "device": run.device,
        "state": (run.status or {}).get("state", "missing"),
        "repeats": len(reps), "steps": n_steps, "load_s": load_s,
        "text_encoder_s": _median(te.values), "unet_step_median_s": step_median,
        "unet_total_s": _median(unet_total.values), "vae_decoder_s": _median(dec.values), "end_to_end_s": e2e,
        "block_sum_s": block_sum, "block_ref_s": block_ref,
        "block_gap": block_sum / against - 1 if against else math.nan,
        "peak_rss_bytes": peak, "model_bytes": meta.get("model_bytes") if len(run.meta) else None,
    }


def generation_peak(run: Run) -> int | None:
    """The run's peak memory (the largest ``rss_bytes`` / ``peak_bytes`` sample) up to the end of its last
    generation span: the per-block and per-op passes after it hold other models (the block chain beside the
    whole UNet). The whole trace where it has no generation span."""
    mem = run.memory
    if not len(mem):
        return None
    total = run.spans[run.spans["cat"] == "total"] if len(run.spans) else run.spans
    if len(total):
        mem = mem[mem["t_s"] <= float((total["start_s"] + total["dur_s"]).max())]
    vals = pd.concat([mem["rss_bytes"], mem["peak_bytes"]]).dropna()
    return int(vals.max()) if len(vals) else None


def _cold_load_seconds(run: Run) -> float:
    """Sum of the pipeline's cold load spans (text encoder, UNet, decoder; per-block models excluded);
    a load span without a phase counts as cold."""
    total, seen = 0.0, False
    for r in run.records:
        if r.get("type") != "span" or r.get("cat") != "load":
            continue
        if r.get("component") not in (None, "text_encoder", "unet", "vae_decoder"):
            continue
        args = r.get("args") if isinstance(r.get("args"), Mapping) else {}
        if args.get("phase", "cold") == "cold" and isinstance(r.get("dur"), (int, float)):
            total += float(r["dur"])
            seen = True
    return total if seen else math.nan


def summary_table(runs) -> pd.DataFrame:
    return typed_frame([run_summary(r) for r in order_runs(as_runs(runs))], SUMMARY_COLUMNS)


def ladder_table(runs, baseline: str | None = None) -> pd.DataFrame:
    """Table-1-style rows in ladder order (per device): the components' medians, peak RSS, model bytes,
    and speedups against the baseline run of the same device."""
    runs = order_runs(as_runs(runs))
    summaries = {r.run_id: run_summary(r) for r in runs}
    rows = []
    for r in runs:
        s = dict(summaries[r.run_id])
        b = pick_baseline(runs, r, baseline)
        bs = summaries[b.run_id] if b is not None else {}
        s["unet_speedup"] = _ratio(bs.get("unet_total_s"), s["unet_total_s"])
        s["speedup"] = _ratio(bs.get("end_to_end_s"), s["end_to_end_s"])
        rows.append(s)
    return typed_frame(rows, LADDER_COLUMNS)


def _ratio(a, b) -> float:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return math.nan
    return a / b if b > 0 and not math.isnan(a) else math.nan


# ----------------------------------------------------------------------------------------------- layers

def _op_block_maps(op_blocks: Mapping | None) -> dict[str, dict[int, str]]:
    """{component: {op index: block}} from {component: graph ops frame or mapping}."""
    out: dict[str, dict[int, str]] = {}
    for comp, m in (op_blocks or {}).items():
        if isinstance(m, pd.DataFrame):
            out[comp] = dict(zip(m["index"].astype(int), m["block"].astype(str)))
        elif m is not None:
            out[comp] = {int(k): str(v) for k, v in dict(m).items()}
    return out


def layer_latency(run: Run, level: str = "block", op_blocks: Mapping | None = None) -> pd.DataFrame:
    """Median per-call latency of each block (level "block"), op ("op") or op type ("op_type").

    Blocks come from block spans; a run without them but with op spans gets its blocks summed from
    its ops (an op's block from args.block, or from ``op_blocks``: {component: graph ops frame or
    {op index: block}} as ``graph.analyze(...).ops`` gives)."""
    spans = _measured(run.spans)
    ids = {"run_id": run.run_id, "variant": run.variant, "device": run.device}
    rows: list[dict] = []
    ops = spans[spans["cat"] == "op"].copy()
    maps = _op_block_maps(op_blocks)
    if len(ops) and maps:
        ops["block"] = [b if isinstance(b, str) else
                        (maps.get(c, {}).get(int(i)) if isinstance(c, str) and not pd.isna(i) else None)
                        for b, c, i in zip(ops["block"], ops["component"], ops["op_index"])]
    if level == "block":
        blk = spans[(spans["cat"] == "block") & (spans["name"] != REFERENCE_BLOCK)]
        if len(blk):
            for (comp, name), g in blk.groupby(["component", "name"], dropna=False, sort=False):
                rows.append({**ids, "component": _s(comp), "level": "block", "key": name, "block": name,
                             "median_s": float(g["dur_s"].median()), "n": len(g), "source": "block"})
        elif len(ops) and ops["block"].notna().any():
            o = ops[ops["block"].notna()]
            call = o.groupby(["component", "block", "step", "repeat"], dropna=False, sort=False)["dur_s"].sum()
            for (comp, name), g in call.groupby(level=[0, 1], sort=False):
                rows.append({**ids, "component": _s(comp), "level": "block", "key": name, "block": name,
                             "median_s": float(g.median()), "n": len(g), "source": "op"})
    elif level == "op":
        for (comp, idx), g in ops.groupby(["component", "op_index"], dropna=False, sort=False):
            rows.append({**ids, "component": _s(comp), "level": "op", "key": str(idx),
                         "block": g["block"].iloc[0] if g["block"].notna().any() else None,
                         "op_type": g["op_type"].iloc[0], "median_s": float(g["dur_s"].median()), "n": len(g),
                         "source": "op"})
    elif level == "op_type":
        call = ops.groupby(["component", "op_type", "step", "repeat"], dropna=False, sort=False)["dur_s"].sum()
        for (comp, t), g in call.groupby(level=[0, 1], sort=False):
            rows.append({**ids, "component": _s(comp), "level": "op_type", "key": t, "op_type": t,
                         "median_s": float(g.median()), "n": len(g), "source": "op"})
    else:
        raise ValueError(f"level must be block, op or op_type, not {level!r}")
    return typed_frame(rows, LAYER_LATENCY_COLUMNS)


def _s(v) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def compare_layers(runs, level: str = "block", baseline: str | None = None, op_blocks: Mapping | None = None,
                   run_op_blocks: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """Per-layer medians of every run joined to the baseline run's (same device preferred):
    speedup = baseline_s / median_s. At level "op" a row joins only where the baseline has the same
    op type at the same index (the same graph), and rows join only when measured the same way (block
    spans with block spans, op sums with op sums). ``op_blocks`` ({component: graph ops}) applies to all
    runs, ``run_op_blocks`` ({run_id: {component: graph ops}}) to one run each (variants' graphs differ)."""
    runs = order_runs(as_runs(runs))
    lat = {r.run_id: layer_latency(r, level, (run_op_blocks or {}).get(r.run_id, op_blocks)) for r in runs}
    rows = []
    for r in runs:
        b = pick_baseline(runs, r, baseline)
        base = lat[b.run_id] if b is not None else None
        bmap = {}
        if base is not None:
            for rec in base.to_dict("records"):
                bmap[(rec["component"], rec["key"])] = rec
        for rec in lat[r.run_id].to_dict("records"):
            brec = bmap.get((rec["component"], rec["key"]))
            if brec is not None and level == "op" and brec.get("op_type") != rec.get("op_type"):
                brec = None
            if brec is not None and brec.get("source") != rec.get("source"):
                brec = None  # block spans vs op sums: not the same measurement
            bs = brec["median_s"] if brec is not None else math.nan
            rows.append({**rec, "baseline_run_id": b.run_id if b is not None else None,
                         "baseline_variant": b.variant if b is not None else None, "baseline_s": bs,
                         "speedup": _ratio(bs, rec["median_s"])})
    df = typed_frame(rows, COMPARE_COLUMNS)
    if len(df):
        from host.traces.graph import block_sort_key

        df = df.assign(_k=[block_sort_key(k) if level == "block" else (0, int(k) if k.isdigit() else 0, k)
                           for k in df["key"]],
                       _v=[variant_rank(v) for v in df["variant"]])
        df = df.sort_values(["component", "_k", "device", "_v"], kind="stable").drop(columns=["_k", "_v"])
        df = df.reset_index(drop=True)
    return df


def layer_table(compared: pd.DataFrame) -> pd.DataFrame:
    """Wide view of ``compare_layers``: one row per (component, key), one ms column per run
    (``<variant>@<device>`` when devices differ) and a speedup column per non-baseline run."""
    if compared.empty:
        return pd.DataFrame({"component": pd.Series([], dtype="str"), "key": pd.Series([], dtype="str")})
    multi_dev = compared["device"].nunique() > 1
    label = compared["variant"] + ("@" + compared["device"] if multi_dev else "")
    c = compared.assign(label=label)
    first = {lab: i for i, lab in reversed(list(enumerate(c["label"])))}
    rank = {lab: (dev, variant_rank(v), first[lab]) for lab, v, dev in zip(c["label"], c["variant"], c["device"])}
    order = sorted(first, key=lambda lab: rank[lab])
    ms = c.pivot_table(index=["component", "key"], columns="label", values="median_s", aggfunc="first", sort=False)
    out = (ms[order] * 1e3).add_suffix(" ms")
    sp = c[c["run_id"] != c["baseline_run_id"]].pivot_table(index=["component", "key"], columns="label",
                                                             values="speedup", aggfunc="first", sort=False)
    if not sp.empty:
        out = out.join(sp[[lab for lab in order if lab in sp.columns]].add_prefix("speedup "))
    return out.reset_index()


# ----------------------------------------------------------------------------------------------- images

def load_image(source: Run | str | Path, prefer: str = "f32") -> tuple[np.ndarray, str]:
    """(image as float64 CHW in [-1, 1], "f32" | "png") from a run, its folder, or an image file."""
    run = source if isinstance(source, Run) else None
    path = Path(source.run_dir if isinstance(source, Run) else source)
    if path.is_dir():
        f32, png = path / "image.f32", path / "image.png"
        if run is None and (path / "request.json").is_file():
            try:
                run = load_run(path)
            except (OSError, ValueError):
                run = None
        order = [f32, png] if prefer == "f32" else [png, f32]
        path = next((p for p in order if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{source}: no image.f32 or image.png")
    if path.suffix == ".f32":
        a = np.fromfile(path, dtype="<f4").astype(np.float64)
        h = w = None
        img = ((run.request or {}).get("image") or {}) if run is not None else {}
        if img.get("height") and img.get("width") and a.size == 3 * img["height"] * img["width"]:
            h, w = int(img["height"]), int(img["width"])
        else:
            side = int(round(math.sqrt(a.size / 3)))
            if side * side * 3 != a.size:
                raise ValueError(f"{path}: cannot infer the image shape of {a.size} floats")
            h = w = side
        return a.reshape(3, h, w), "f32"
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    return (a.transpose(2, 0, 1) / 127.5 - 1.0), "png"


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical arrays); the default range is [-1, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def psnr_table(runs, baseline: str | None = None) -> pd.DataFrame:
    """PSNR of every run's image against its baseline run's image (image.f32 when both have it)."""
    runs = order_runs(as_runs(runs))
    rows = []
    for r in runs:
        b = pick_baseline(runs, r, baseline)
        row = {"run_id": r.run_id, "variant": r.variant, "device": r.device,
               "baseline_run_id": b.run_id if b is not None else None, "psnr_db": math.nan,
               "max_abs_diff": math.nan, "source": None}
        if b is not None and r.image_path() is not None and b.image_path() is not None:
            both_f32 = (r.run_dir / "image.f32").is_file() and (b.run_dir / "image.f32").is_file()
            prefer = "f32" if both_f32 else "png"
            try:
                x, src = load_image(r, prefer)
                y, _ = load_image(b, prefer)
                row.update(psnr_db=psnr(x, y), max_abs_diff=float(np.max(np.abs(x - y))), source=src)
            except (OSError, ValueError) as e:
                row["source"] = f"error: {e}"
        rows.append(row)
    return typed_frame(rows, PSNR_COLUMNS)
