"""Runtime configurations side by side on one .tflite: which LiteRT CPU path runs our models fastest and leanest.

``python -m host.bench runtime [--model sd14] [--variant baseline] [--component unet] [--invokes 3] [--threads 2]
[--configs interpreter,compiled,compiled-cache] [--json FILE]``

Each configuration runs in its own fresh process (so its peak RSS, VmHWM, is its own): load the model, one
first invocation (XNNPACK packs the weights there), then ``--invokes`` timed invocations on the same seeded
inputs. Configurations:

* ``interpreter``: ``ai_edge_litert.interpreter.Interpreter`` with its default XNNPACK delegate (what the
  host runner used first);
* ``compiled``: LiteRT's ``CompiledModel`` on the CPU accelerator (XNNPACK), the API the Android app uses;
* ``compiled-cache``: the same with XNNPACK's weight cache file, run twice: "cold" packs the weights into a
  fresh cache file, "warm" maps the packed weights from it (no packing, and the packed copy is file-backed
  pages instead of anonymous memory).

Every configuration's output must match the interpreter's (relative L2 error printed; the run fails above
1e-5). Figures go to stdout and ``--json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("interpreter", "compiled", "compiled-cache")
MAX_REL_ERR = 1e-5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.bench runtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd14")
    p.add_argument("--variant", default="baseline")
    p.add_argument("--component", default="unet", choices=("text_encoder", "unet", "vae_decoder"))
    p.add_argument("--file", type=Path, default=None, help="a .tflite to use instead of the built variant's")
    p.add_argument("--invokes", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--artifacts", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    return p


def _rss_split() -> dict[str, int]:
    """Resident anonymous / file-backed bytes now (/proc/self/status RssAnon, RssFile)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def signature_inputs(details: dict[str, tuple[tuple[int, ...], str]]):
    """Seeded inputs for a model's ``inputs`` ({name: (shape, dtype)}): normal floats, zeros otherwise."""
    import zlib

    import numpy as np

    return {n: (np.random.default_rng(zlib.crc32(n.encode())).standard_normal(shape).astype(dtype)
                if dtype.startswith("float") else np.zeros(shape, dtype))
            for n, (shape, dtype) in details.items()}  # seeded per name: the same inputs in any order


def child(config: str, path: str, threads: int, invokes: int, cache: str | None, out_npy: str) -> dict[str, Any]:
    import numpy as np

    from host.runner.memory import read_proc_status

    clock = time.perf_counter
    t0 = clock()
    from host.runtime import CompiledLiteRtModel, LiteRtModel

    m = (LiteRtModel(path, threads=threads) if config == "interpreter"
         else CompiledLiteRtModel(path, threads=threads, weight_cache=cache))
    feed = signature_inputs(m.inputs)
    out_name = next(iter(m.outputs))

    def run():
        return m.run(**feed)[out_name]
    load = clock() - t0
    rss_loaded = _rss_split()
    t0 = clock()
    y = run()
    first = clock() - t0
    times = []
    for _ in range(invokes):
        t0 = clock()
        y = run()
        times.append(clock() - t0)
    if not np.isfinite(y).all():
        raise RuntimeError(f"{config}: non-finite output")
    np.save(out_npy, y)
    return {"config": config, "load_s": load, "first_invoke_s": first, "invoke_s": times,
            "median_s": statistics.median(times), "peak_rss_bytes": (read_proc_status() or (0, None))[1], "rss_after_load": rss_loaded,
            "rss_end": _rss_split()}


def _spawn(config: str, path: Path, args, cache: str | None, out_npy: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "host.bench.runtime", "--child", config, str(path), str(args.threads),
           str(args.invokes), cache or "", str(out_npy)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"config": config, "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}


def _model_file(args) -> Path:
    if args.file:
        return args.file
    from host.build.cli import default_artifacts

    root = args.artifacts or default_artifacts()
    build = root / "latest" / args.model / args.variant
    path = build / f"{args.component}.tflite"
    if not path.is_file():
        raise SystemExit(f"error: {path}: not built (python -m host.build --model {args.model} --variant {args.variant})")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        config, path, threads, invokes, cache, out_npy = argv[1:7]
        print(json.dumps(child(config, path, int(threads), int(invokes), cache or None, out_npy)))
        return 0
    import numpy as np

    args = build_parser().parse_args(argv)
    path = _model_file(args).resolve()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        print(f"error: --configs: unknown {bad[0]!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"runtime benchmark: {path} ({size / 2**20:.0f} MiB), {args.threads} threads, {args.invokes} timed invokes")
    results = []
    outputs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sdphone-runtime-") as tmp:
        tmp = Path(tmp)
        runs = []
        for c in configs:
            if c == "compiled-cache":
                cache = str(tmp / "weights.xnnpack_cache")
                runs += [(c, f"{c} ({phase})", cache) for phase in ("cold", "warm")]
            else:
                runs.append((c, c, None))
        for i, (c, label, cache) in enumerate(runs):
            npy = tmp / f"out{i}.npy"
            r = _spawn(c, path, args, cache, npy)
            r["config"] = label
            if cache:
                r["cache_bytes"] = Path(cache).stat().st_size if Path(cache).is_file() else None
            if "error" not in r:
                outputs[label] = np.load(npy)
            results.append(r)
    ref = outputs.get("interpreter")
    for r in results:
        y = outputs.get(r["config"])
        if ref is not None and y is not None:
            r["rel_err_vs_interpreter"] = float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))
    print(f"{'config':<24}{'load':>9}{'first call':>12}{'median':>10}{'min':>10}{'max':>10}{'peak RSS':>11}"
          f"{'anon/file after load':>24}{'rel err':>10}")
    failed = False
    for r in results:
        if "error" in r:
            print(f"{r['config']:<24}FAILED: {r['error']}")
            failed = True
            continue
        ra = r.get("rss_after_load", {})
        err = r.get("rel_err_vs_interpreter")
        if err is not None and not (err <= MAX_REL_ERR):
            failed = True
        print(f"{r['config']:<24}{r['load_s']:>8.2f}s{r['first_invoke_s']:>11.2f}s{r['median_s']:>9.3f}s"
              f"{min(r['invoke_s']):>9.3f}s{max(r['invoke_s']):>9.3f}s{(r['peak_rss_bytes'] or 0) / 2**30:>8.2f}GiB"
              f"{ra.get('RssAnon', 0) / 2**30:>12.2f}/{ra.get('RssFile', 0) / 2**30:.2f}GiB"
              f"{'' if err is None else f'{err:>10.1e}'}")
    print(f"model file {size / 2**30:.2f} GiB; peak RSS / file: " +
          ", ".join(f"{r['config']} {(r['peak_rss_bytes'] or math.nan) / size:.2f}x" for r in results if "error" not in r))
    doc = {"schema": "sdphone.bench.runtime", "file": str(path), "file_bytes": size, "threads": args.threads,
           "invokes": args.invokes, "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
