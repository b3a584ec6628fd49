"""``python -m host.build``: build baseline / optimized / ladder variants as verified .tflite files."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from host.errors import HarnessError
from models.config import COMPONENTS, LADDER, QUANTIZATIONS, RUNGS, WINOGRAD_TILES, ConfigError, MODELS, get_variant

REPO = Path(__file__).resolve().parents[2]


def default_artifacts() -> Path:
    return Path(os.environ.get("SDPHONE_ARTIFACTS", REPO / "artifacts"))


def variant_label(name: str, quantization: str | None) -> str:
    """What runs, run folders and reports call a build: the rung, with ``-<quantization>`` unless fp32."""
    return name if quantization in (None, "fp32") else f"{name}-{quantization}"


def parse_variant(spec: str, quantization: str = "fp32") -> tuple[str, str]:
    """``"baseline"`` -> (baseline, ``quantization``); ``"+flash-int8"`` -> (+flash, int8): a label read back."""
    if spec in LADDER:
        return spec, quantization
    name, _, quant = spec.rpartition("-")
    if name in LADDER and quant in QUANTIZATIONS:
        return name, quant
    raise ConfigError(f"unknown variant {spec!r}; choose one of: {', '.join(LADDER)} "
                      f"(optionally with -{'/-'.join(QUANTIZATIONS)}, e.g. baseline-int8)")


def add_build_arguments(p: argparse.ArgumentParser, several_variants: bool = False) -> None:
    """Arguments shared by ``host.build`` and ``host.deploy`` (which takes --variant several times)."""
    p.add_argument("--model", default="sd14", help=f"architecture: {', '.join(MODELS)} (default sd14)")
    g = p.add_mutually_exclusive_group()
    if several_variants:
        g.add_argument("--variant", action="append", help=f"one of: {', '.join(LADDER)}, optionally with a "
                       "quantization suffix (baseline-int8); repeatable (default: baseline and optimized)")
    else:
        g.add_argument("--variant", default="optimized", help=f"one of: {', '.join(LADDER)}, optionally with a "
                       "quantization suffix that overrides --quant (baseline-int8; default optimized)")
    g.add_argument("--ladder", action="store_true", help="every rung: " + " -> ".join(RUNGS))
    p.add_argument("--quant", default="fp32", help=f"weights: {', '.join(QUANTIZATIONS)} (default fp32)")
    p.add_argument("--checkpoint", help="SD 1.x .safetensors / .ckpt file or diffusers folder (default: seeded random weights)")
    p.add_argument("--seed-weights", type=int, default=0, help="seed of the random weights when no checkpoint is given")
    p.add_argument("--artifacts", type=Path, default=None, help="artifact store (default $SDPHONE_ARTIFACTS or ./artifacts)")
    sw = p.add_argument_group("switches (override the variant's)")
    for name in ("gn_gelu", "softmax", "flash", "cfg_shared_prefix"):
        sw.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction, default=None)
    sw.add_argument("--winograd-unet", type=int, default=None, help=f"tile m in {WINOGRAD_TILES}, 0 = off")
    sw.add_argument("--winograd-decoder", type=int, default=None, help=f"tile m in {WINOGRAD_TILES}, 0 = off")
    sw.add_argument("--winograd-wide-levels", type=int, default=None,
                    help="how many of the deepest UNet levels take --winograd-wide (default 2)")
    sw.add_argument("--winograd-wide", type=int, default=None,
                    help=f"tile m in {WINOGRAD_TILES} for the convs of the --winograd-wide-levels deepest UNet levels, 0 = direct")
    sw.add_argument("--flash-block-q", type=int, default=None)
    sw.add_argument("--flash-block-kv", type=int, default=None)


SWITCH_ARGS = ("gn_gelu", "softmax", "flash", "winograd_unet", "winograd_decoder", "winograd_wide_levels",
               "winograd_wide", "flash_block_q", "flash_block_kv", "cfg_shared_prefix")


def variants_from_args(args) -> list:
    overrides = {k: getattr(args, k) for k in SWITCH_ARGS if getattr(args, k) is not None}
    if args.ladder:
        if overrides:
            raise ConfigError("--ladder builds the named rungs; switch overrides apply to --variant only")
        variants = [get_variant(n, args.quant) for n in RUNGS]
    else:
        name, quant = parse_variant(args.variant, args.quant)
        variants = [get_variant(name, quant, **overrides)]
    from host.build.builder import check_buildable

    for v in variants:
        check_buildable(v)
    return variants


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.build", description=__doc__)
    add_build_arguments(p)
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (multiple of 64; default: the model's)")
    p.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    p.add_argument("--no-verify", action="store_true",
                   help="skip the diffusers conformance gate (the .tflite and variant gates still run; a later build "
                        "without this flag runs it on the cached components)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for running the .tflite gates")
    p.add_argument("--profile-blocks", action="store_true", help="also build the UNet as per-block models for per-block profiling")
    p.add_argument("--out", type=Path, help="also place the .tflite files and manifest.json of each variant under OUT/<variant>/")
    return p


def run_builds(args, log=print) -> list[tuple[dict, Path, bool]]:
    from host.build.builder import BuildOptions, build_variant
    from host.build.weights import resolve

    root = args.artifacts or default_artifacts()
    variants = variants_from_args(args)
    weights = resolve(args.model, args.checkpoint, args.seed_weights, getattr(args, "image_size", None),
                      str(root / "checkpoint-index.json"))
    if weights.warning:
        print(f"WARNING: {weights.warning}", file=sys.stderr)
    opts = BuildOptions(root=root, verify=not getattr(args, "no_verify", False), threads=getattr(args, "threads", 2),
                        components=tuple(getattr(args, "components", COMPONENTS)),
                        profile_blocks=getattr(args, "profile_blocks", False), progress=sys.stdout.isatty())
    return [build_variant(v, weights, opts, log) for v in variants]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        results = run_builds(args)
    except (HarnessError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for manifest, path, cached in results:
        print(summary(manifest, path, cached))
        if args.out:
            dest = args.out / variant_label(manifest["variant"]["name"], manifest["variant"]["quantization"])
            dest.mkdir(parents=True, exist_ok=True)
            for f in path.iterdir():
                target = dest / f.name
                target.unlink(missing_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def summary(manifest: dict, path: Path, cached: bool) -> str:
    v = manifest["variant"]
    lines = [f"{manifest['model']} / {v['name']} ({v['quantization']}){' [cached]' if cached else ''} -> {path}"]
    for name, c in manifest["components"].items():
        gates = ", ".join(f"{g['check']} {g['metric']}={_fmt(g['value'])}" for g in c["gates"])
        rss = c.get("peak_rss_bytes")
        lines.append(
            f"  {name:<12} {c['size_bytes'] / 2**20:9.1f} MiB  build {c['build_seconds']:7.1f} s  "
            f"peak RSS {rss / 2**30 if rss else float('nan'):5.2f} GiB  {gates}"
        )
    if manifest["weights"].get("warning"):
        lines.append(f"  WARNING: {manifest['weights']['warning']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "inf" if v is None else f"{v:.3g}"
