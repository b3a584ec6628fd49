"""``python -m host.farm run --config farm.toml [--night YYYY-MM-DD] [--junit FILE] [--json FILE]``
``python -m host.farm report (--config farm.toml | --history DIR) [--out FILE] [--nights N]``

``run`` executes one night of the configured matrix (devices x variants x repeats), one worker per device in
parallel, appends everything to the history and judges tonight against the earlier nights. Exit status:
0 nothing regressed, 1 a metric regressed beyond noise, 3 a device produced no result (and nothing regressed),
2 bad input (config, night, history). ``report`` renders the dashboard across nights.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from host.errors import HarnessError
from models.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.farm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one night of the farm matrix")
    r.add_argument("--config", type=Path, required=True, help="farm TOML (see host/farm/config.py)")
    r.add_argument("--night", default=None, help="the night's date, YYYY-MM-DD (default: today, UTC)")
    r.add_argument("--junit", type=Path, default=None, help="also write the JUnit XML here")
    r.add_argument("--json", type=Path, default=None, help="also write the verdict JSON here")
    r.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="skip rendering the dashboard")
    d = sub.add_parser("report", help="render the dashboard across nights")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="farm TOML (its history and out folders)")
    src.add_argument("--history", type=Path, help="history folder")
    d.add_argument("--out", type=Path, default=None,
                   help="HTML file (default <out>/dashboard.html with --config, else <history>/dashboard.html)")
    d.add_argument("--nights", type=int, default=30, help="most recent nights shown (default 30)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from host.farm.config import load_config

        if args.command == "run":
            from host.farm.run import run_night

            return run_night(load_config(args.config), args.night, junit=args.junit, json_out=args.json,
                             dashboard=args.dashboard)
        from host.farm.dashboard import render_dashboard

        if args.nights < 1:
            raise HarnessError(f"--nights {args.nights}: must be at least 1")
        if args.config is not None:
            cfg = load_config(args.config)
            root, out = cfg.history, args.out or cfg.out / "dashboard.html"
        else:
            root, out = args.history, args.out or args.history / "dashboard.html"
        print(f"dashboard: {render_dashboard(root, out, nights=args.nights)}")
        return 0
    except (HarnessError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
