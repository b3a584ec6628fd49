"""``python -m host.report RUN_DIR [RUN_DIR ...] [--out FILE]``: (re-)render the HTML report.

RUN_DIR is a run folder or a deploy folder holding run folders. Prints the plain-text summary and
the report's path; a missing or invalid folder prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from host.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.report", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) or a deploy folder of runs")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--baseline", help="run id or variant to compare against (default: the baseline variant)")
    p.add_argument("--profile", help="device profile (name or .toml) for the roofline floors "
                   "(default: the profile matching each run's device)")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s for the roofline floors")
    p.add_argument("--mem-bw", type=float, help="memory bandwidth in bytes/s for the roofline floors")
    p.add_argument("--tables", metavar="DIR", help="also write the trace tables (parquet + CSV) here")
    p.add_argument("--perfetto", action="store_true", help="also write each run's trace.perfetto.json")
    p.add_argument("--no-graph", action="store_true", help="skip the per-layer analysis of the .tflite files")
    p.add_argument("--bench", help="a host.bench pipeline result (pipeline.json) to show side by side "
                   "(default: one in RUN_DIR)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the report's path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from host.report.html import ReportError, collect, render_html, terminal_summary

    try:
        for d in args.run_dirs:
            p = Path(d)
            if not p.exists():
                raise ReportError(f"{p}: no such folder")
            if not p.is_dir():
                raise ReportError(f"{p}: not a folder")
        if (args.peak_flops is None) != (args.mem_bw is None):
            raise ReportError("--peak-flops and --mem-bw go together")
        source = args.run_dirs if len(args.run_dirs) > 1 else args.run_dirs[0]
        data = collect(source, args.baseline, args.peak_flops, args.mem_bw, args.profile,
                       analyze_graphs=not args.no_graph, bench=args.bench)
        first = Path(args.run_dirs[0])
        out = Path(args.out) if args.out else (first if len(args.run_dirs) == 1 else first.parent) / "report.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(data), encoding="utf-8")
        if args.tables:
            from host.traces.tables import concat_tables, save_tables

            save_tables(concat_tables(r.tables for r in data.runs), args.tables)
        if args.perfetto:
            from host.traces.perfetto import export_run

            for r in data.runs:
                export_run(r)
        if not args.quiet:
            print(terminal_summary(data, args.baseline))
        print(f"report: {out}")
        return 0
    except (HarnessError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
