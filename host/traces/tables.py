"""Trace records -> pandas DataFrames with fixed columns and dtypes; reading a whole run folder.

The schemas below are the contract: every frame this module returns has exactly these columns in
this order with these dtypes, empty inputs included. Records follow docs/protocol.md; unknown
fields are ignored, missing optional ones become null.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

SPANS_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "name": "str",
    "cat": "str",
    "component": "str",      # null where the span has none
    "step": "Int64",         # null where the span has none
    "repeat": "Int64",
    "warmup": "bool",
    "start_s": "float64",
    "dur_s": "float64",
    "op_type": "str",        # op spans: args.op_type
    "op_index": "Int64",     # op spans: args.index
    "block": "str",          # block spans: name; op spans: args.block where given
}

MEMORY_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "t_s": "float64",
    "rss_bytes": "Int64",
    "peak_bytes": "Int64",
    "source": "str",
}

EVENTS_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "t_s": "float64",
    "name": "str",
    "message": "str",
}

META_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "variant": "str",
    "device": "str",
    "device_model": "str",
    "device_soc": "str",
    "device_os": "str",
    "runner": "str",
    "runner_version": "str",
    "accelerator": "str",
    "precision": "str",
    "threads": "Int64",
    "delegate": "str",
    "model": "str",           # manifest model name ("sd14", "tiny") where known
    "quantization": "str",
    "build_key": "str",
    "model_bytes": "Int64",   # sum of the component .tflite sizes
    "steps": "Int64",
    "warmup": "Int64",
    "repeats": "Int64",
    "height": "Int64",
    "width": "Int64",
    "seed": "Int64",
    "prompt": "str",
    "state": "str",           # status.json state; "missing" when there is none
    "message": "str",
    "finished_t": "float64",
    "n_records": "Int64",
    "n_spans": "Int64",
    "n_memory": "Int64",
    "trace_end_s": "float64",
    "run_dir": "str",
}

SCHEMAS: dict[str, dict[str, str]] = {"spans": SPANS_COLUMNS, "memory": MEMORY_COLUMNS,
                                      "events": EVENTS_COLUMNS, "meta": META_COLUMNS}

LADDER_ORDER = ("baseline", "+gn_gelu", "+softmax", "+flash", "+winograd")
_KNOWN_VARIANTS = LADDER_ORDER + ("optimized", "custom")


def empty(kind: str) -> pd.DataFrame:
    """An empty frame of one of the SCHEMAS."""
    return typed_frame([], SCHEMAS[kind])


def typed_frame(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> pd.DataFrame:
    """Rows -> a frame with exactly ``columns`` (extra keys dropped, missing ones null)."""
    rows = list(rows)
    return pd.DataFrame({c: pd.Series([_clean(r.get(c), d) for r in rows], dtype="object").astype(d)
                         for c, d in columns.items()})


def _clean(v: Any, dtype: str) -> Any:
    if dtype == "str":
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return v if isinstance(v, str) else (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v))
    if dtype == "Int64":
        if v is None:
            return None
        try:
            f = float(v)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(f) or math.isinf(f) else int(f)
    if dtype == "float64":
        try:
            return float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            return math.nan
    if dtype == "bool":
        return bool(v) if v is not None else False
    return v


# ----------------------------------------------------------------------------------------------- reading

def parse_trace_lines(lines: Iterable[str]) -> list[dict]:
    """Tolerant JSONL: blank, truncated or non-object lines are skipped."""
    out = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_records(path: str | Path) -> list[dict]:
    """The records of a trace.jsonl as plain dicts, unvalidated: host.protocol.trace.read_trace_dicts
    where it can read the file, else a local reader that also skips bad lines in the middle."""
    path = Path(path)
    try:
        from host.protocol.trace import read_trace_dicts  # noqa: PLC0415

        recs = read_trace_dicts(path)
        if isinstance(recs, list) and all(isinstance(r, dict) for r in recs):
            return recs
    except Exception:  # noqa: BLE001 - module missing, or a bad line mid-file: read it tolerantly ourselves
        pass
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_trace_lines(f)


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
        return v if isinstance(v, dict) else None
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- identity

def meta_record(records: list[dict]) -> dict:
    for r in records:
        if r.get("type") == "meta":
            return r
    return {}


def device_name(meta: Mapping | None) -> str:
    dev = (meta or {}).get("device")
    if isinstance(dev, Mapping):
        for k in ("name", "model", "soc"):
            if dev.get(k):
                return str(dev[k])
    elif dev:
        return str(dev)
    return str((meta or {}).get("runner") or "unknown")


def variant_name(run_id: str | None = None, request: Mapping | None = None, manifest: Mapping | None = None,
                 meta: Mapping | None = None) -> str:
    """The run's variant: request.variant, then the manifest's, then the run id's suffix."""
    for src in (request or {}, meta or {}):
        v = src.get("variant")
        if isinstance(v, Mapping):
            v = v.get("name")
        if v:
            return str(v)
        build = src.get("build")
        if isinstance(build, Mapping):
            v = build.get("variant")
            if isinstance(v, Mapping):
                v = v.get("name")
            if v:
                return str(v)
    if manifest:
        v = manifest.get("variant")
        if isinstance(v, Mapping):
            from host.build.cli import variant_label

            v = variant_label(v["name"], v.get("quantization")) if v.get("name") else None
        if v:
            return str(v)
    if run_id:
        for name in sorted(_KNOWN_VARIANTS, key=len, reverse=True):
            if run_id.endswith(name) or run_id.endswith(name.lstrip("+")):
                return name
        m = re.search(r"_([^_]+)$", run_id)
        if m:
            return m.group(1)
    return "unknown"


# ----------------------------------------------------------------------------------------------- tables

def _identity(records: list, run_id: str | None, variant: str | None, device: str | None) -> tuple[str, str, str]:
    """(run_id, variant, device) as given, else from the trace's meta record."""
    meta = meta_record(records)
    run_id = run_id or meta.get("run_id") or "run"
    return run_id, variant or variant_name(run_id, meta=meta), device or device_name(meta)


def spans_frame(records: Iterable[Mapping], run_id: str | None = None, variant: str | None = None,
                device: str | None = None) -> pd.DataFrame:
    records = list(records)
    run_id, variant, device = _identity(records, run_id, variant, device)
    rows = []
    for r in records:
        if r.get("type") != "span":
            continue
        args = r.get("args") if isinstance(r.get("args"), Mapping) else {}
        cat = r.get("cat")
        block = r.get("name") if cat == "block" else (args.get("block") or r.get("block"))
        op_index = args.get("index", args.get("op_index")) if cat == "op" else args.get("op_index")
        rows.append({
            "run_id": run_id, "variant": variant, "device": device, "name": r.get("name"), "cat": cat,
            "component": r.get("component"), "step": r.get("step"), "repeat": r.get("repeat", 0),
            "warmup": bool(r.get("warmup", False)), "start_s": r.get("start", r.get("t")),
            "dur_s": r.get("dur"), "op_type": args.get("op_type") if cat == "op" or "op_type" in args else None,
            "op_index": op_index, "block": block,
        })
    return typed_frame(rows, SPANS_COLUMNS)


def memory_frame(records: Iterable[Mapping], run_id: str | None = None, variant: str | None = None,
                 device: str | None = None) -> pd.DataFrame:
    records = list(records)
    run_id, variant, device = _identity(records, run_id, variant, device)
    rows = [{"run_id": run_id, "variant": variant, "device": device, "t_s": r.get("t"),
             "rss_bytes": r.get("rss_bytes"), "peak_bytes": r.get("peak_bytes"), "source": r.get("source")}
            for r in records if r.get("type") == "memory"]
    return typed_frame(rows, MEMORY_COLUMNS)


def events_frame(records: Iterable[Mapping], run_id: str | None = None, variant: str | None = None,
                 device: str | None = None) -> pd.DataFrame:
    records = list(records)
    run_id, variant, device = _identity(records, run_id, variant, device)
    rows = [{"run_id": run_id, "variant": variant, "device": device, "t_s": r.get("t"), "name": r.get("name"),
             "message": r.get("message")} for r in records if r.get("type") == "event"]
    return typed_frame(rows, EVENTS_COLUMNS)


def meta_row(records: list[Mapping], run_id: str | None = None, variant: str | None = None,
             device: str | None = None, request: Mapping | None = None, status: Mapping | None = None,
             manifest: Mapping | None = None, model_bytes: int | None = None, run_dir: str | None = None) -> dict:
    meta = meta_record(list(records))
    request = request or {}
    run_id = run_id or meta.get("run_id") or request.get("run_id") or (status or {}).get("run_id") or "run"
    dev = meta.get("device") if isinstance(meta.get("device"), Mapping) else {}
    rt = {**(request.get("runtime") or {}), **(meta.get("runtime") or {})}
    sched = request.get("scheduler") or {}
    image = request.get("image") or {}
    noise = request.get("noise") or {}
    prompt = request.get("prompt") or {}
    man_variant = (manifest or {}).get("variant") or {}
    if model_bytes is None and manifest:
        sizes = [c.get("size_bytes") for c in (manifest.get("components") or {}).values() if isinstance(c, Mapping)]
        model_bytes = sum(int(s) for s in sizes if s) or None
    times = [r.get("t") for r in records if isinstance(r.get("t"), (int, float))]
    ends = [r.get("start", 0) + r.get("dur", 0) for r in records if r.get("type") == "span"
            and isinstance(r.get("start"), (int, float)) and isinstance(r.get("dur"), (int, float))]
    return {
        "run_id": run_id,
        "variant": variant or variant_name(run_id, request, manifest, meta),
        "device": device or device_name(meta),
        "device_model": dev.get("model"), "device_soc": dev.get("soc"), "device_os": dev.get("os"),
        "runner": meta.get("runner"), "runner_version": meta.get("runner_version"),
        "accelerator": rt.get("accelerator"), "precision": rt.get("precision"), "threads": rt.get("threads"),
        "delegate": rt.get("delegate"),
        "model": (manifest or {}).get("model"),
        "quantization": man_variant.get("quantization") if isinstance(man_variant, Mapping) else None,
        "build_key": (manifest or {}).get("build_key"),
        "model_bytes": model_bytes,
        "steps": sched.get("steps"), "warmup": rt.get("warmup"), "repeats": rt.get("repeats"),
        "height": image.get("height"), "width": image.get("width"), "seed": noise.get("seed"),
        "prompt": prompt.get("text") if isinstance(prompt, Mapping) else None,
        "state": (status or {}).get("state", "missing" if status is None else None),
        "message": (status or {}).get("message"), "finished_t": (status or {}).get("finished_t"),
        "n_records": len(records), "n_spans": sum(1 for r in records if r.get("type") == "span"),
        "n_memory": sum(1 for r in records if r.get("type") == "memory"),
        "trace_end_s": max(times + ends) if (times or ends) else None,
        "run_dir": run_dir,
    }


def tables_from_records(records: Iterable[Mapping], *, run_id: str | None = None, variant: str | None = None,
                        device: str | None = None, request: Mapping | None = None, status: Mapping | None = None,
                        manifest: Mapping | None = None, model_bytes: int | None = None,
                        run_dir: str | None = None) -> dict[str, pd.DataFrame]:
    """{"spans", "memory", "events", "meta"} for one run's records."""
    records = [r for r in records if isinstance(r, Mapping)]
    row = meta_row(records, run_id, variant, device, request, status, manifest, model_bytes, run_dir)
    ids = {"run_id": row["run_id"], "variant": row["variant"], "device": row["device"]}
    return {"spans": spans_frame(records, **ids), "memory": memory_frame(records, **ids),
            "events": events_frame(records, **ids), "meta": typed_frame([row], META_COLUMNS)}


def concat_tables(tables: Iterable[Mapping[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Stacks the tables of several runs, keeping the schemas."""
    tables = list(tables)
    out = {}
    for kind, cols in SCHEMAS.items():
        frames = [t[kind] for t in tables if kind in t and len(t[kind])]
        out[kind] = (pd.concat(frames, ignore_index=True).astype(cols) if frames else empty(kind))
    return out


def save_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> dict[str, list[Path]]:
    """Writes ``<kind>.parquet`` and ``<kind>.csv`` for each table; returns the paths per kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind, df in tables.items():
        pq, csv = out_dir / f"{kind}.parquet", out_dir / f"{kind}.csv"
        df.to_parquet(pq, index=False)
        df.to_csv(csv, index=False)
        written[kind] = [pq, csv]
    return written


def load_tables(out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Reads back what ``save_tables`` wrote (parquet), restoring the declared dtypes."""
    out = {}
    for pq in sorted(Path(out_dir).glob("*.parquet")):
        df = pd.read_parquet(pq)
        cols = SCHEMAS.get(pq.stem)
        out[pq.stem] = df.astype({c: d for c, d in cols.items() if c in df}) if cols else df
    return out


# ----------------------------------------------------------------------------------------------- run folders

@dataclass
class Run:
    """One run folder, read: its records, request, status, build manifest, and the tables."""

    run_dir: Path
    run_id: str
    variant: str
    device: str
    records: list[dict]
    request: dict | None
    status: dict | None
    manifest: dict | None
    manifest_path: Path | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def spans(self) -> pd.DataFrame:
        return self.tables["spans"]

    @property
    def memory(self) -> pd.DataFrame:
        return self.tables["memory"]

    @property
    def events(self) -> pd.DataFrame:
        return self.tables["events"]

    @property
    def meta(self) -> pd.DataFrame:
        return self.tables["meta"]

    @property
    def ok(self) -> bool:
        return bool(self.status) and self.status.get("state") == "ok"

    @property
    def models_dir(self) -> Path:
        d = (self.request or {}).get("models_dir") or "models"
        p = Path(d)
        return p if p.is_absolute() else self.run_dir / p

    def model_path(self, component: str) -> Path | None:
        """The component's .tflite (request.models, else the manifest's file), where it exists."""
        entry = ((self.request or {}).get("models") or {}).get(component) or {}
        names = [entry.get("file")] if isinstance(entry, Mapping) and entry.get("file") else []
        comp = ((self.manifest or {}).get("components") or {}).get(component) or {}
        if isinstance(comp, Mapping) and comp.get("file"):
            names.append(comp["file"])
        names.append(f"{component}.tflite")
        dirs = [self.models_dir] + ([self.manifest_path.parent] if self.manifest_path else [])
        for d in dirs:
            for n in names:
                if (d / n).is_file():
                    return d / n
        return None

    def image_path(self) -> Path | None:
        for n in ("image.f32", "image.png"):
            if (self.run_dir / n).is_file():
                return self.run_dir / n
        return None


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in ("trace.jsonl", "request.json", "status.json"))


def find_manifest(run_dir: Path, request: Mapping | None) -> tuple[dict | None, Path | None]:
    """The build manifest a request refers to: request.manifest / request.build.manifest (a path or an
    inline object), else manifest.json in the models folder or the run folder."""
    request = request or {}
    cands: list[Any] = [request.get("manifest"), request.get("manifest_path")]
    build = request.get("build")
    if isinstance(build, Mapping):
        cands += [build.get("manifest"), build.get("manifest_path")]
        if build.get("dir"):
            cands.append(str(Path(build["dir"]) / "manifest.json"))
    elif isinstance(build, str):
        cands.append(str(Path(build) / "manifest.json"))
    models_dir = request.get("models_dir") or "models"
    cands += [str(Path(models_dir) / "manifest.json"), "manifest.json"]
    for c in cands:
        if isinstance(c, Mapping) and c.get("components") is not None:
            return dict(c), None
        if isinstance(c, str) and c:
            p = Path(c)
            p = p if p.is_absolute() else run_dir / p
            if p.is_dir():
                p = p / "manifest.json"
            m = _read_json(p) if p.is_file() else None
            if m is not None:
                return m, p
    return None, None


def _model_bytes_from_files(run: Run) -> int | None:
    total = 0
    for comp in ((run.request or {}).get("models") or {}):
        p = run.model_path(comp)
        if p is not None:
            total += p.stat().st_size
    return total or None


def load_run(run_dir: str | Path, records: list[dict] | None = None) -> Run:
    """Reads trace.jsonl, request.json, status.json and the build manifest (if referenced)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not is_run_dir(run_dir):
        raise ValueError(f"{run_dir}: not a run folder (no trace.jsonl, request.json or status.json)")
    request = _read_json(run_dir / "request.json")
    status = _read_json(run_dir / "status.json")
    trace = run_dir / "trace.jsonl"
    if records is None:
        records = read_records(trace) if trace.is_file() else []
    manifest, manifest_path = find_manifest(run_dir, request)
    meta = meta_record(records)
    run_id = meta.get("run_id") or (request or {}).get("run_id") or (status or {}).get("run_id") or run_dir.name
    run = Run(run_dir=run_dir, run_id=str(run_id), variant=variant_name(str(run_id), request, manifest, meta),
              device=device_name(meta) if meta else "unknown", records=records, request=request, status=status,
              manifest=manifest, manifest_path=manifest_path)
    model_bytes = None
    if not manifest:
        model_bytes = _model_bytes_from_files(run)
    run.tables = tables_from_records(records, run_id=run.run_id, variant=run.variant, device=run.device,
                                     request=request, status=status, manifest=manifest, model_bytes=model_bytes,
                                     run_dir=str(run_dir))
    return run


def find_run_dirs(path: str | Path, max_depth: int = 3) -> list[Path]:
    """``path`` itself when it is a run folder, else the run folders below it (a deploy folder)."""
    path = Path(path)
    if is_run_dir(path):
        return [path]
    found: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        if depth > max_depth:
            return
        try:
            children = sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for c in children:
            if is_run_dir(c):
                found.append(c)
            else:
                walk(c, depth + 1)

    if path.is_dir():
        walk(path, 1)
    return found
