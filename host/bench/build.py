"""Cold-build benchmark: every component of a variant built from nothing, one at a time.

Prints build time and peak RSS per component (measured inside the build: wall time around
conversion + gates, and the process's VmHWM reset before each component), plus the warm no-op
rebuild time. Figures go to stdout and, with --json, to a file.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from host.build.builder import BuildOptions, build_variant
from host.build.weights import resolve
from models.config import get_variant


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.bench build", description=__doc__)
    p.add_argument("--model", default="sd14")
    p.add_argument("--variant", default="optimized")
    p.add_argument("--quant", default="fp32")
    p.add_argument("--store", type=Path, help="artifact store to build into (default: a fresh temporary folder, so the build is cold)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdphone-bench-") as tmp:
        root = args.store or Path(tmp)
        weights = resolve(args.model, None, 0, None, str(root / "checkpoint-index.json"))
        opts = BuildOptions(root=root)
        from host.build.cli import parse_variant

        variant = get_variant(*parse_variant(args.variant, args.quant))
        t0 = time.perf_counter()
        manifest, _, _ = build_variant(variant, weights, opts, log=lambda s: print(s, file=sys.stderr))
        cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, _, cached = build_variant(variant, weights, opts, log=lambda s: None)
        warm = time.perf_counter() - t1
    rows = [{"component": c, "build_s": m["build_seconds"], "peak_rss_gib": round(m["peak_rss_bytes"] / 2**30, 2),
             "size_mib": round(m["size_bytes"] / 2**20, 1)} for c, m in manifest["components"].items()]
    print(f"cold build of {args.model}/{variant.name} ({args.quant}), random weights, one component at a time")
    print(f"{'component':<14}{'build s':>10}{'peak RSS GiB':>14}{'size MiB':>10}")
    for r in rows:
        print(f"{r['component']:<14}{r['build_s']:>10.1f}{r['peak_rss_gib']:>14.2f}{r['size_mib']:>10.1f}")
    print(f"total cold build {cold:.1f} s; warm no-op rebuild {warm:.2f} s (cache hit: {cached})")
    stages = {c: m.get("stages", []) for c, m in manifest["components"].items()}
    for c, rows_c in stages.items():
        print(f"{c} by stage (seconds; the process's high-water mark and resident set at its end):")
        for r in rows_c:
            print(f"  {r['stage']:<30}{r['seconds']:>8.1f} s{(r['peak_rss_bytes'] or 0) / 2**30:>8.2f} GiB"
                  f"{(r.get('rss_bytes') or 0) / 2**30:>8.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "stages": stages, "cold_s": cold, "warm_s": warm,
                                         "tools": manifest["tool_versions"]}, indent=2))
    return 0
