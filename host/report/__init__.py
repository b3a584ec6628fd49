"""The HTML report and the CLI's plain-text summary.

``render_report(run_dirs or a deploy folder, out_html)`` writes one self-contained HTML file;
``terminal_summary(...)`` returns a plain-text table; ``python -m host.report RUN_DIR [--out FILE]``.
"""
from host.report.html import ReportError, collect, render_html, render_report, resolve_runs, terminal_summary

__all__ = ["ReportError", "collect", "render_html", "render_report", "resolve_runs", "terminal_summary"]
