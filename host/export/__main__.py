"""``python -m host.export mediapipe [--model sd14] [--checkpoint PATH] [--seed-weights N] [--vocab FILE] --out DIR``

Writes the weights in the folder format Google's MediaPipe Image Generator reads (see host/export/mediapipe.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from host.errors import HarnessError
from models.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    m = sub.add_parser("mediapipe", help="MediaPipe Image Generator weights folder (Android peer engine)")
    m.add_argument("--model", default="sd14", help="architecture: sd14, tiny (default sd14)")
    m.add_argument("--checkpoint", default=None, help="SD 1.x .safetensors / .ckpt or diffusers folder "
                   "(default: seeded random weights, for timing comparisons)")
    m.add_argument("--seed-weights", type=int, default=0)
    m.add_argument("--vocab", type=Path, default=None,
                   help="CLIP's bpe_simple_vocab_16e6.txt or a merges.txt (default: the checkpoint folder's)")
    m.add_argument("--out", type=Path, required=True, help="output folder (replaced if it exists)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from host.build.cli import default_artifacts
    from host.build.weights import resolve
    from host.export.mediapipe import export

    try:
        weights = resolve(args.model, args.checkpoint, args.seed_weights, None,
                          str(default_artifacts() / "checkpoint-index.json"))
        if weights.warning:
            print(f"WARNING: {weights.warning}", file=sys.stderr)
        export(weights, args.out, vocab=args.vocab)
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
