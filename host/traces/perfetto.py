"""A run's spans and memory samples as a Chrome JSON trace (opens in ui.perfetto.dev / chrome://tracing).

One process per run, one thread (track) per span category in a fixed order (total, load, component,
step, block, op), complete events (ph "X") in microseconds, memory as a counter track (ph "C"),
trace events (progress, error, oom) as instant events (ph "i").
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from host.traces.tables import Run, load_run, meta_record

CATEGORY_TRACKS = ("total", "load", "component", "step", "block", "op")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) or math.isinf(v) else float(v)


def chrome_trace(records: Iterable[Mapping], pid: int = 1, process_name: str | None = None,
                 include_warmup: bool = True) -> dict:
    """{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}} for one run's records."""
    records = [r for r in records if isinstance(r, Mapping)]
    meta = meta_record(records)
    name = process_name or str(meta.get("run_id") or "run")
    tids: dict[str, int] = {c: i + 1 for i, c in enumerate(CATEGORY_TRACKS)}
    events: list[dict] = []
    for r in records:
        kind = r.get("type")
        if kind == "span":
            if r.get("warmup") and not include_warmup:
                continue
            start, dur = _num(r.get("start")), _num(r.get("dur"))
            if start is None:
                start = _num(r.get("t"))
            if start is None:
                continue
            cat = str(r.get("cat") or "other")
            if cat not in tids:
                tids[cat] = len(tids) + 1
            args = {k: r.get(k) for k in ("component", "step", "repeat", "warmup") if r.get(k) is not None}
            if isinstance(r.get("args"), Mapping):
                args.update({k: v for k, v in r["args"].items() if isinstance(v, (str, int, float, bool))})
            label = str(r.get("name") or cat)
            if cat == "step" and r.get("step") is not None:
                label = f"{label} {r['step']}"
            if r.get("warmup"):
                label = f"{label} (warmup)"
            events.append({"name": label, "cat": cat, "ph": "X", "ts": round(start * 1e6, 3),
                           "dur": round(max(dur or 0.0, 0.0) * 1e6, 3), "pid": pid, "tid": tids[cat],
                           "args": args})
        elif kind == "memory":
            t = _num(r.get("t"))
            if t is None:
                continue
            vals = {}
            for key in ("rss_bytes", "peak_bytes"):
                v = _num(r.get(key))
                if v is not None:
                    vals[key.replace("_bytes", "_mb")] = round(v / 2**20, 3)
            if vals:
                events.append({"name": "memory", "cat": "memory", "ph": "C", "ts": round(t * 1e6, 3), "pid": pid,
                               "args": vals})
        elif kind == "event":
            t = _num(r.get("t"))
            if t is None:
                continue
            events.append({"name": str(r.get("name") or "event"), "cat": "event", "ph": "i", "s": "p",
                           "ts": round(t * 1e6, 3), "pid": pid, "tid": 0,
                           "args": {"message": str(r.get("message") or "")}})
    # Longer spans first at equal start, so the viewers nest them correctly.
    events.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    metadata = [{"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0, "args": {"name": name}}]
    metadata += [{"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {"name": cat}}
                 for cat, tid in tids.items()]
    metadata += [{"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": tid,
                  "args": {"sort_index": tid}} for tid in tids.values()]
    other = {k: meta.get(k) for k in ("run_id", "runner", "runner_version") if meta.get(k) is not None}
    if isinstance(meta.get("device"), Mapping):
        other["device"] = json.dumps(meta["device"], sort_keys=True)
    return {"traceEvents": metadata + events, "displayTimeUnit": "ms", "otherData": other}


def merge_traces(traces: Iterable[dict]) -> dict:
    """Several runs in one file: each run keeps its own pid (renumbered 1, 2, ...)."""
    out: list[dict] = []
    other: dict = {}
    for pid, tr in enumerate(traces, start=1):
        for e in tr["traceEvents"]:
            out.append({**e, "pid": pid})
        other[str(pid)] = tr.get("otherData", {})
    meta = [e for e in out if e["ph"] == "M"]
    rest = sorted((e for e in out if e["ph"] != "M"), key=lambda e: (e["ts"], -e.get("dur", 0)))
    return {"traceEvents": meta + rest, "displayTimeUnit": "ms", "otherData": other}


def export_run(run: Run | str | Path, out_path: str | Path | None = None, include_warmup: bool = True) -> Path:
    """Writes the run's Chrome trace (default ``<run>/trace.perfetto.json``) and returns its path."""
    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out_path) if out_path else run.run_dir / "trace.perfetto.json"
    trace = chrome_trace(run.records, process_name=f"{run.run_id} ({run.variant}, {run.device})",
                         include_warmup=include_warmup)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(trace, f, separators=(",", ":"))
    return out
