"""End-to-end pipeline benchmark: our baseline and optimized LiteRT builds against litert-torch's own
Stable Diffusion example (converted to LiteRT) and diffusers / transformers in fp32 PyTorch eager.

``python -m host.bench pipeline [--model sd14|tiny] [--steps 20] [--size 512] [--repeats 3] [--threads 2]
[--systems ours-baseline,ours-optimized,ours-int8,litert-example,torch-eager] [--out DIR] [--json FILE]``

Every system runs the protocol's generation loop (docs/protocol.md: text encoder, ``steps`` UNet steps
with classifier-free guidance as one batch-2 call, decoder) on the same tokens, noise and scheduler
table, on ``--threads`` CPU threads, ``--warmup`` untimed generations then ``--repeats`` measured ones.
Measured per repeat: every UNet step (the whole step: input scaling, the batch-2 call, guidance,
scheduler update; the span the host runner writes), the text encoder, the decoder and the whole
generation; plus the peak RSS (VmHWM) of the process that ran the system. Under ``--residency phase`` our
systems load each model inside the generation; "generation_resident" is the generation less those loads
(the reference systems load before their timed loop; litert-example's loads there are timed too), and issue 6's
generation goal is shown on that, on the whole generation, and on the whole generation against the example's
plus its loads (each side's loads counted).

Each system is prepared (built / converted / found in the artifact store) in one subprocess and run in
another, fresh one, so its peak RSS is its own. A run subprocess prints one JSON line on stdout; a
system that fails is reported with its one-line error and the others go on.

* ours-baseline / ours-optimized (the host profile's optimized set, "cpu") / ours-int8 (+gn_gelu-int8:
  dynamic-range int8 weights): ``host.build`` (seeded
  random weights), then ``host.request.prepare_run`` + ``host.runner.run``; timings from the run's trace.jsonl,
  peak RSS from its memory records. ours-int8's image is compared with ours-baseline's (PSNR).
* litert-example: litert-torch's example modules, every tensor initialised from seeded generators
  (host/bench/refs.py), converted as its convert_to_tflite.py does, run with the same LiteRT/XNNPACK
  runtime as our runner (host.runtime.open_model). Its text encoder takes batch 1 (called twice, cond and uncond,
  as its pipeline.py does: the text-encoder time is both calls), its UNet a [1, C0] time embedding.
* torch-eager: diffusers UNet2DConditionModel / AutoencoderKL.decode / transformers CLIPTextModel, fp32,
  torch.inference_mode, no autocast, torch threads = --threads.

Paired UNet calls (``--paired N``, default 4): the systems above each run alone for minutes, and this host's speed
drifts by more than issue 6's margins between them. So once ours-optimized and litert-example have both run, one
more subprocess loads both UNets (the same runtime as their runs) and calls them alternately on seeded inputs of
their signatures, N pairs in ABBA order after one untimed call each; the step goal is also shown on the median
of those per-pair ratios.

Figures go to stdout and to ``<out>/pipeline.json`` (every raw sample), and to --json FILE.
``SDPHONE_BENCH_FAIL=system[,system]`` makes those systems fail on purpose (for tests).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from host.bench.refs import LITERT_EXAMPLE_FILES, BenchError

SYSTEMS = ("ours-baseline", "ours-optimized", "ours-paper", "ours-int8", "litert-example", "torch-eager")
BASELINE, OPTIMIZED, PAPER, INT8 = "ours-baseline", "ours-optimized", "ours-paper", "ours-int8"
#: our systems: (variant, quantization). ours-optimized is the host profile's optimized set (runtime.optimized:
#: "cpu"). The int8 one is dynamic-range (int8 weights, fp32 activations) with that set's switches except
#: Winograd, which int8 cannot take (host.build.builder.check_buildable): fused GroupNorm/GELU.
#: ours-paper is the paper's full ladder (every switch, the phones' optimized set), for comparison.
OURS = {BASELINE: ("baseline", "fp32"), OPTIMIZED: ("optimized", "fp32"), PAPER: ("optimized", "fp32"),
        INT8: ("+gn_gelu", "int8")}
#: issue 6's goals: (key, what, goal as a bound on the ratio)
TARGETS = (
    ("optimized_step_vs_example", "UNet step: ours-optimized / litert-example", 0.6),
    ("optimized_step_vs_example_paired", "UNet call, paired: ours-optimized / litert-example", 0.6),
    ("optimized_step_vs_floor", "UNet step: ours-optimized / direct-convolution floor", 1.3),
    ("optimized_generation_vs_example", "generation, models resident: ours-optimized / litert-example", 0.6),
    ("optimized_generation_loads_vs_example", "generation with our stage loads / litert-example", 0.6),
    # end to end as a user meets it: each side's model loads counted, ours inside the generation, the example's
    # before its timed loop (its first calls' extra time, in its favour, is left out)
    ("optimized_generation_each_loads_vs_example", "generation with each side's model loads: ours-optimized / "
     "litert-example", 0.6),
    ("baseline_rss_vs_files", "peak RSS: ours-baseline / its model files", 1.2),
    ("optimized_rss_vs_files", "peak RSS: ours-optimized / its model files", 1.2),
    ("int8_rss_vs_files", "peak RSS: ours-int8 / its model files", 1.2),
    ("int8_step_vs_example", "UNet step: ours-int8 / litert-example", 0.35),
)
METRICS = ("unet_step", "text_encoder", "vae_decoder", "generation", "generation_resident")
METRIC_LABELS = {"unet_step": "UNet step", "text_encoder": "text encoder", "vae_decoder": "VAE decoder",
                 "generation": "generation", "generation_resident": "gen. less loads", "peak_rss": "peak RSS"}
FAIL_ENV = "SDPHONE_BENCH_FAIL"
RESULT_KEY = "sdphone_bench_result"
SCHEMA = "sdphone.bench.pipeline"
REPO = Path(__file__).resolve().parents[2]


# ================================================================================================ CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.bench pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sd14", help="sd14 or tiny (default sd14)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=None, help="image side in pixels, a multiple of 64 (default: the model's)")
    p.add_argument("--repeats", type=int, default=3, help="measured generations per system (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations before the measured ones (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paired", type=int, default=4,
                   help="pairs of alternating UNet calls, ours-optimized and litert-example in one process, after the "
                        "systems ran (default 4; 0: none)")
    p.add_argument("--residency", choices=("all", "phase"), default="phase",
                   help="our systems' model residency (docs/protocol.md): phase (default) loads each model for its "
                        "stage and releases it after, so the peak is the largest model's; all holds the three")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from: {', '.join(SYSTEMS)}")
    p.add_argument("--scheduler", default="dpmpp_2m")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42, help="seed of the initial noise")
    p.add_argument("--seed-weights", type=int, default=0, help="seed of the random weights")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--artifacts", type=Path, default=None, help="artifact store (default $SDPHONE_ARTIFACTS or ./artifacts)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench/pipeline-<UTC stamp>)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--timeout", type=float, default=0, help="seconds per subprocess, 0 = none (default)")
    p.add_argument("--verbose", action="store_true", help="echo the subprocesses' stderr")
    return p


def _validate(args) -> list[str]:
    from models.config import MODELS

    if args.model not in MODELS:
        raise BenchError(f"--model {args.model!r}: choose one of {', '.join(MODELS)}")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.paired < 0:
        raise BenchError("--steps, --repeats and --threads must be >= 1, --warmup and --paired >= 0")
    if args.size is not None and (args.size <= 0 or args.size % 64):
        raise BenchError(f"--size {args.size}: must be a positive multiple of 64")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise BenchError(f"--systems: unknown system {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(SYSTEMS)}")
    return list(dict.fromkeys(systems))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        systems = _validate(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from host.build.cli import default_artifacts
    from models.config import get_model_config

    size = args.size or get_model_config(args.model).image_size
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or REPO / "runs" / "bench" / f"pipeline-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": args.model, "steps": args.steps, "size": size, "repeats": args.repeats, "warmup": args.warmup,
                "paired": args.paired,
                "threads": args.threads, "residency": args.residency, "systems": systems, "scheduler": args.scheduler, "guidance": args.guidance,
                "seed": args.seed, "seed_weights": args.seed_weights, "prompt": args.prompt, "negative_prompt": "",
                "artifacts": str((args.artifacts or default_artifacts()).resolve()), "out": str(out)}
    print(f"pipeline benchmark: {args.model} {size}x{size}, {args.steps} steps, CFG batch 2, {args.threads} threads, "
          f"warmup {args.warmup} + {args.repeats} repeats; systems: {', '.join(systems)}")
    print(f"output: {out}")

    results: dict[str, dict] = {}
    gemm = {"before": measure_gemm_peak(args.threads)}
    xnn = {"before": measure_xnnpack_peak(args.threads)}
    for system in systems:
        results[system] = run_system(system, settings, out, timeout=args.timeout or None, verbose=args.verbose)

    report = assemble(settings, results, argv)
    report["paired_step"] = run_paired(settings, results, out, timeout=args.timeout or None, verbose=args.verbose)
    gemm["after"] = measure_gemm_peak(args.threads)
    xnn["after"] = measure_xnnpack_peak(args.threads)
    report["gemm_peak"] = gemm
    report["xnnpack_gemm"] = xnn
    report["flop_floor"] = flop_floor(results, gemm, xnn)
    report["image_check"] = image_check(out, results)
    report["targets"] = targets(report)
    text = render(report)
    print(text)
    (out / "summary.txt").write_text(text + "\n")
    blob = json.dumps(report, indent=2, default=_json_default)
    (out / "pipeline.json").write_text(blob)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(blob)
    print(f"raw samples: {out / 'pipeline.json'}" + (f" and {args.json}" if args.json else ""))
    html = write_report(out)
    if html is not None:
        print(f"report: {html}")
    if args.out is None:
        from host.deploy import link_latest

        link_latest(out.parent, out)
    paired_ok = (report["paired_step"] or {}).get("status", "ok") == "ok"
    return 0 if paired_ok and all(r["status"] == "ok" for r in results.values()) else 1


def write_report(out: Path) -> Path | None:
    """The run report over our systems' run folders, with this benchmark's table as its side-by-side
    section (``python -m host.report <out>`` re-renders it). None when none of ours ran."""
    from host.errors import HarnessError
    from host.report import render_report
    from host.traces.tables import find_run_dirs

    if not find_run_dirs(out):
        return None
    try:
        return render_report(out, out / "report.html", bench=out / "pipeline.json",
                             title="sdphone benchmark: ours vs the references")
    except (HarnessError, OSError, ValueError) as e:  # the figures are printed and saved already
        print(f"report not written: {e}", file=sys.stderr)
        return None


def latest_bench(runs_root: Path, model: str, size: int, steps: int) -> Path | None:
    """``<runs_root>/bench/latest/pipeline.json`` when it measured the same model, size and steps."""
    path = runs_root / "bench" / "latest" / "pipeline.json"
    try:
        st = json.loads(path.read_text()).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return None
    return path if (st.get("model"), st.get("size"), st.get("steps")) == (model, size, steps) else None



def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# ================================================================================================ parent side


def run_system(system: str, settings: dict, out: Path, timeout: float | None, verbose: bool) -> dict:
    """Prepare then run one system, each in its own subprocess; never raises."""
    rec: dict[str, Any] = {"system": system, "status": "failed", "error": None, "prepare": None, "run": None}
    sdir = out / system
    sdir.mkdir(parents=True, exist_ok=True)
    for phase in ("prepare", "run"):
        t0 = time.perf_counter()
        print(f"  {system}: {phase} ...", flush=True)
        res = _spawn(phase, system, {**settings, "prepared": rec["prepare"] or {}}, sdir, timeout, verbose)
        res["wall_seconds"] = round(time.perf_counter() - t0, 2)
        rec[phase] = res
        if not res.get("ok"):
            rec["error"] = f"{phase}: {res.get('error') or 'failed'}"
            print(f"  {system}: {phase} FAILED: {res.get('error')}", flush=True)
            return rec
        extra = " (cached)" if res.get("info", {}).get("cached") else ""
        print(f"  {system}: {phase} ok in {res['wall_seconds']:.1f} s{extra}", flush=True)
    try:
        rec["stats"] = system_stats(rec["run"])
        rec["status"] = "ok"
    except (BenchError, KeyError, TypeError, ValueError) as e:
        rec["error"] = f"results: {e}"
    return rec


def run_paired(settings: dict, results: dict[str, dict], out: Path, timeout: float | None, verbose: bool) -> dict | None:
    """Alternating UNet calls of ours-optimized and litert-example in one subprocess (``settings["paired"]`` pairs),
    once both systems ran; None when they did not or pairing is off. Never raises."""
    n = int(settings.get("paired") or 0)
    ours, example = results.get(OPTIMIZED) or {}, results.get("litert-example") or {}
    if n < 1 or ours.get("status") != "ok" or example.get("status") != "ok":
        return None
    files = {OPTIMIZED: str(Path(ours["prepare"]["info"]["build_dir"]) / "unet.tflite"),
             "litert-example": str(Path(example["prepare"]["info"]["folder"]) / LITERT_EXAMPLE_FILES["unet"])}
    sdir = out / "paired"
    sdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"  paired UNet calls ({n} pairs): run ...", flush=True)
    res = _spawn("run", "paired", {**settings, "prepared": {"files": files}}, sdir, timeout, verbose)
    rec: dict[str, Any] = {"status": "failed", "error": None, "run": res, "files": files,
                           "wall_seconds": round(time.perf_counter() - t0, 2)}
    if not res.get("ok"):
        rec["error"] = f"run: {res.get('error') or 'failed'}"
        print(f"  paired UNet calls FAILED: {res.get('error')}", flush=True)
        return rec
    try:
        a, b = res["samples"][OPTIMIZED], res["samples"]["litert-example"]
        if len(a) != n or len(b) != n:
            raise BenchError(f"{len(a)} / {len(b)} calls, expected {n} of each")
        rec["stats"] = {OPTIMIZED: _stats(a), "litert-example": _stats(b), "ratio": _stats([x / y for x, y in zip(a, b)])}
        rec["status"] = "ok"
        print(f"  paired UNet calls ok in {rec['wall_seconds']:.1f} s", flush=True)
    except (BenchError, KeyError, TypeError, ValueError) as e:
        rec["error"] = f"results: {e}"
    return rec


def _spawn(phase: str, system: str, spec: dict, sdir: Path, timeout: float | None, verbose: bool) -> dict:
    spec_path = sdir / f"{phase}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2, default=_json_default))
    log_path = sdir / f"{phase}.log"
    from host.runtime import CACHE_ENV

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           CACHE_ENV: os.environ.get(CACHE_ENV) or str(Path(spec["artifacts"]) / "xnnpack-cache")}
    cmd = [sys.executable, "-m", "host.bench.pipeline", "--child", phase, system, str(spec_path)]
    tail: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace")
    except OSError as e:
        return {"ok": False, "error": f"cannot start subprocess: {e}"}
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    with open(log_path, "w") as log:
        for line in proc.stderr:
            log.write(line)
            log.flush()
            if line.strip():
                tail = (tail + [line.strip()])[-20:]
            if verbose or line.startswith("[bench]"):
                sys.stderr.write(f"    {line}" if line.startswith("[bench]") else line)
    rc = proc.wait()
    reader.join(timeout=10)
    if timer:
        timer.cancel()
    for line in reversed(stdout):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get(RESULT_KEY):
            obj.pop(RESULT_KEY)
            obj["log"] = str(log_path)
            return obj
    if rc < 0:
        why = {9: "killed (SIGKILL: timeout or out of memory)", 11: "crashed (SIGSEGV)", 6: "aborted (SIGABRT)"}
        err = f"subprocess {why.get(-rc, f'died with signal {-rc}')}"
    else:
        err = f"subprocess exited {rc} without a result"
    last = next((t for t in reversed(tail) if not t.startswith("[bench]")), None)
    return {"ok": False, "error": err + (f"; last stderr line: {last[:300]}" if last else ""), "log": str(log_path)}


def _stats(values: list[float]) -> dict:
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) and v >= 0 for v in vals):
        raise BenchError(f"non-finite or negative samples {vals}")
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def system_stats(run: dict) -> dict:
    """min / median / max over repeats; the UNet step is the median step of each repeat."""
    s = run["samples"]
    if len(s["unet_step"]) != len(s["generation"]) or not s["generation"]:
        raise BenchError("samples do not have one entry per repeat")
    out = {"unet_step": _stats([statistics.median(steps) for steps in s["unet_step"]]),
           "unet_step_all": _stats([v for steps in s["unet_step"] for v in steps])}
    for m in ("text_encoder", "vae_decoder", "generation"):
        out[m] = _stats(s[m])
    # The model loads inside a generation: our systems' stage loads under residency "phase" (the reference
    # systems load before their timed loop). Less those, a generation is what it is with the models resident.
    loads = s.get("model_loads") or [0.0] * len(s["generation"])
    out["model_loads"] = _stats(loads)
    out["generation_resident"] = _stats([g - ld for g, ld in zip(s["generation"], loads)])
    # a reference system's model loads before its timed loop (once per process), where it reports them
    setup = run.get("setup_load_seconds")
    out["setup_loads"] = {"seconds": float(sum(setup.values())), "per_model": setup} if setup else None
    peak = run.get("peak_rss_bytes")
    out["peak_rss"] = {"bytes": int(peak)} if peak else None
    return out


def _with_setup_loads(rec: dict | None) -> float | None:
    """The median generation plus the model loads the system made before its timed loop (None without them)."""
    setup = ((rec or {}).get("stats") or {}).get("setup_loads")
    gen = _median(rec, "generation")
    return gen + setup["seconds"] if setup and gen is not None else None


def _median(rec: dict, metric: str) -> float | None:
    st = (rec or {}).get("stats") or {}
    if metric == "peak_rss":
        return float(st["peak_rss"]["bytes"]) if st.get("peak_rss") else None
    return st[metric]["median"] if metric in st else None


def assemble(settings: dict, results: dict[str, dict], argv: list[str]) -> dict:
    from host.build.cache import tool_versions
    from host.runner.run import device_info

    ratios: dict[str, dict] = {}
    base = results.get(BASELINE)
    opt = results.get(OPTIMIZED)
    metrics = list(METRICS) + ["peak_rss"]
    if base and base["status"] == "ok":
        ratios["vs_ours_baseline"] = {s: {m: _ratio(_median(r, m), _median(base, m)) for m in metrics}
                                      for s, r in results.items() if r["status"] == "ok"}
    if opt and opt["status"] == "ok":
        ratios["ours_optimized_speedup"] = {s: {m: _ratio(_median(r, m), _median(opt, m)) for m in metrics}
                                            for s, r in results.items() if r["status"] == "ok" and s != OPTIMIZED}
    return {"schema": SCHEMA, "version": 1, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": argv, "settings": settings, "host": device_info(), "tools": tool_versions(),
            "definitions": {
                "ratio vs_ours_baseline": "median(system) / median(ours-baseline): > 1 is slower / more memory",
                "ratio ours_optimized_speedup": "median(system) / median(ours-optimized): > 1 means ours-optimized is faster / smaller",
                "unet_step": "per repeat, the median over steps of the whole-step time (scaling, batch-2 UNet call, "
                             "guidance, scheduler update); samples.unet_step holds every step",
                "peak_rss": "VmHWM of the subprocess that ran the system"},
            "systems": results, "ratios": ratios}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


#: the ops whose FLOPs make the direct-convolution floor
DIRECT_FLOOR_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def measure_gemm_peak(threads: int) -> dict:
    """This machine's fp32 GEMM FLOP/s now (``host.hostperf.measure_gemm``: best of its repeats, strict fp32),
    for the floor: the VM's speed moves by +-10% from hour to hour, so the floor is taken in the same run as
    the steps it is compared with. Never raises."""
    try:
        from host.hostperf import measure_gemm

        r = measure_gemm(threads=threads)
        return {"flops_per_s": r.flops_per_s, "n": r.n, "threads": r.threads, "repeats": r.repeats,
                "best_s": r.best_s}
    except Exception as e:  # noqa: BLE001 - the floor falls back to the host profile's figure
        return {"error": f"{type(e).__name__}: {e}"}


def measure_xnnpack_peak(threads: int) -> dict:
    """XNNPACK's own fp32 GEMM FLOP/s now (``host.hostperf.measure_xnnpack_gemm``: FULLY_CONNECTED models
    through LiteRT's CPU path, the best shape's best invocation): what the step's kernels can reach here, beside
    the machine's GEMM peak that the floor target divides by. Never raises."""
    try:
        from host.hostperf import measure_xnnpack_gemm

        r = measure_xnnpack_gemm(threads=threads)
        return {"flops_per_s": r.flops_per_s, "shape": list(r.best_shape), "threads": r.threads,
                "repeats": r.repeats, "shapes": [list(x) for x in r.shapes]}
    except Exception as e:  # noqa: BLE001 - informative only
        return {"error": f"{type(e).__name__}: {e}"}


def _best_rate(measured: dict | None) -> float | None:
    rates = [m["flops_per_s"] for m in (measured or {}).values() if isinstance(m, dict) and m.get("flops_per_s")]
    return max(rates) if rates else None


def flop_floor(results: dict[str, dict], gemm: dict | None = None, xnnpack: dict | None = None) -> dict | None:
    """UNet step FLOPs (host.traces.graph.analyze) over a peak FLOP/s: the higher of the GEMM rates measured
    in this run (``gemm``: {"before": ..., "after": ...} from :func:`measure_gemm_peak`), else the host
    profile's roofline. Where ``xnnpack`` (from :func:`measure_xnnpack_peak`) has a rate, each floor is also
    given over the higher of those (``xnnpack_floor_s``): the floor for XNNPACK's kernels as they run here."""
    floors: dict[str, Any] = {}
    measured, xnn_peak = _best_rate(gemm), _best_rate(xnnpack)
    try:
        from host.traces.graph import analyze

        if measured:
            peak, source = measured, "fp32 GEMM measured in this run (the higher of before and after)"
        else:
            from host.profiles import load_profile

            peak, source = float(load_profile("host").roofline.peak_flops), "host profile roofline"
    except Exception as e:  # noqa: BLE001 - informative only
        return {"error": f"{type(e).__name__}: {e}"}
    for system, label in ((BASELINE, "direct convolution (ours-baseline graph, its CONV_2D and FULLY_CONNECTED "
                                     "FLOPs: the step as issue 6 counts it)"),
                          (OPTIMIZED, "ours-optimized graph as executed (Winograd arithmetic, every op)")):
        build_dir = ((results.get(system) or {}).get("prepare") or {}).get("info", {}).get("build_dir")
        if not build_dir or not (Path(build_dir) / "unet.tflite").is_file():
            continue
        try:
            a = analyze(Path(build_dir) / "unet.tflite", "unet")
        except Exception as e:  # noqa: BLE001
            floors[system] = {"label": label, "error": f"{type(e).__name__}: {e}"}
            continue
        # The direct-convolution floor counts the convolutions and projections (1354.5 GFLOP for full-size sd14
        # with CFG batch 2: issue 6's 1354), not attention's batched products (252 GFLOP) or elementwise work
        flops = (float(a.ops.loc[a.ops["op_type"].isin(DIRECT_FLOOR_OPS), "flops"].sum()) if system == BASELINE
                 else a.total_flops)
        floors[system] = {"label": label, "flops": flops, "all_flops": a.total_flops, "peak_flops": peak,
                          "peak_source": source, "floor_s": flops / peak}
        if xnn_peak:
            floors[system].update(xnnpack_peak_flops=xnn_peak, xnnpack_floor_s=flops / xnn_peak)
    return floors or None


def image_check(out: Path, results: dict[str, dict]) -> dict:
    """Relative L2 difference and PSNR (range [-1, 1]) of each system's final image against ours-baseline's (same
    weights and inputs for ours-optimized, ours-int8 and torch-eager; the litert-example has other weights)."""
    import numpy as np

    from host.traces.compare import psnr

    ref_path = out / BASELINE / "image.npy"
    if not ref_path.is_file() or (results.get(BASELINE) or {}).get("status") != "ok":
        return {}
    ref = np.load(ref_path).astype(np.float64)
    checks = {}
    for s in (OPTIMIZED, PAPER, INT8, "torch-eager"):
        p = out / s / "image.npy"
        if (results.get(s) or {}).get("status") == "ok" and p.is_file():
            img = np.load(p).astype(np.float64)
            if img.shape == ref.shape:
                checks[s] = {"rel_l2_vs_ours_baseline": float(np.linalg.norm(img - ref) / max(np.linalg.norm(ref), 1e-30)),
                             "max_abs_diff": float(np.max(np.abs(img - ref))),
                             "psnr_db_vs_ours_baseline": min(psnr(img, ref), 999.0)}  # identical -> 999 (JSON has no inf)
    return checks


def targets(report: dict) -> list[dict]:
    """Issue 6's goals, each as a ratio of two figures measured in this run (medians; the paired UNet call: the
    median of its per-pair ratios), with its bound and the margin: ``ratio / goal - 1`` (> 0: missed by that
    fraction). Goals whose figures this run lacks are left out."""
    results = report["systems"]
    ok = {s: r for s, r in results.items() if r.get("status") == "ok"}

    def step(s):
        return _median(ok.get(s), "unet_step")

    def files(s):
        sizes = (((ok.get(s) or {}).get("prepare") or {}).get("info") or {}).get("size_bytes") or {}
        return float(sum(sizes.values())) if sizes else None

    floor = ((report.get("flop_floor") or {}).get(BASELINE) or {}).get("floor_s")
    paired = (report.get("paired_step") or {}).get("stats") or {}
    figures = {
        "optimized_step_vs_example": (step(OPTIMIZED), step("litert-example")),
        # its ratio is the median of the per-pair ratios, not the ratio of the two medians
        "optimized_step_vs_example_paired": ((paired.get(OPTIMIZED) or {}).get("median"),
                                             (paired.get("litert-example") or {}).get("median"),
                                             (paired.get("ratio") or {}).get("median")),
        "optimized_step_vs_floor": (step(OPTIMIZED), floor),
        "optimized_generation_vs_example": (_median(ok.get(OPTIMIZED), "generation_resident"),
                                            _median(ok.get("litert-example"), "generation_resident")),
        "optimized_generation_loads_vs_example": (_median(ok.get(OPTIMIZED), "generation"),
                                                  _median(ok.get("litert-example"), "generation")),
        "optimized_generation_each_loads_vs_example": (_median(ok.get(OPTIMIZED), "generation"),
                                                       _with_setup_loads(ok.get("litert-example"))),
        "baseline_rss_vs_files": (_median(ok.get(BASELINE), "peak_rss"), files(BASELINE)),
        "optimized_rss_vs_files": (_median(ok.get(OPTIMIZED), "peak_rss"), files(OPTIMIZED)),
        "int8_rss_vs_files": (_median(ok.get(INT8), "peak_rss"), files(INT8)),
        "int8_step_vs_example": (step(INT8), step("litert-example")),
    }
    out = []
    for key, what, goal in TARGETS:
        value, ref, *paired_ratio = figures[key]
        if value is None or not ref:
            continue
        ratio = paired_ratio[0] if paired_ratio else value / ref
        out.append({"key": key, "what": what, "value": value, "reference": ref, "ratio": ratio, "goal": goal,
                    "met": ratio <= goal, "margin": ratio / goal - 1.0})
    return out


# ------------------------------------------------------------------------------------------------ rendering


def _xnnpack_floor_lines(report: dict, results: dict[str, dict]) -> list[str]:
    """The floors again over XNNPACK's own fp32 GEMM rate measured in this run, and the step against each: the
    part of a missed floor target that is the kernels' rate rather than the graph."""
    xg = report.get("xnnpack_gemm") or {}
    ff = {s: f for s, f in (report.get("flop_floor") or {}).items() if isinstance(f, dict) and "xnnpack_floor_s" in f}
    if not xg:
        return []
    measured = ", ".join(f"{k} {m['flops_per_s'] / 1e9:.4g} ({'x'.join(map(str, m['shape']))})" if "flops_per_s" in m
                         else f"{k} failed ({m.get('error')})" for k, m in xg.items() if isinstance(m, dict))
    lines = [f"  at XNNPACK's own fp32 GEMM rate (FULLY_CONNECTED through LiteRT's CPU path, best shape of m x k x n, "
             f"measured in this run; GFLOP/s {measured}):"]
    torch_peak = _best_rate(report.get("gemm_peak"))
    opt = _median(results.get(OPTIMIZED), "unet_step")
    for s, f in ff.items():
        med = _median(results.get(s), "unet_step")
        eff = f"; {s} step / this floor {med / f['xnnpack_floor_s']:.3f}" if med else ""
        if s == BASELINE and opt:
            eff += f"; {OPTIMIZED} step / this floor {opt / f['xnnpack_floor_s']:.3f} (the floor target's ratio at this rate)"
        lines.append(f"    {f['label'].split(' (')[0]}: {f['flops'] / 1e9:.4g} GFLOP / {f['xnnpack_peak_flops'] / 1e9:.4g} "
                     f"GFLOP/s = {f['xnnpack_floor_s'] * 1e3:.4g} ms{eff}")
    if ff and torch_peak:
        rate = _best_rate(xg)
        lines.append(f"    XNNPACK's rate is {rate / torch_peak * 100:.0f}% of the fp32 GEMM peak above")
    return lines


def _unit(values: list[float]) -> tuple[str, float]:
    """Milliseconds unless the typical (median) system takes 10 s or more."""
    mid = statistics.median(values) if values else 0.0
    return ("s", 1.0) if mid >= 10.0 else ("ms", 1e3)


def _fmt(v: float, scale: float) -> str:
    x = v * scale
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def render(report: dict) -> str:
    st = report["settings"]
    results = report["systems"]
    ok = {s: r for s, r in results.items() if r["status"] == "ok"}
    lines = [
        "",
        f"== pipeline benchmark: {st['model']} {st['size']}x{st['size']}, {st['steps']} steps ({st['scheduler']}), "
        f"CFG batch 2, {st['threads']} threads, warmup {st['warmup']} + {st['repeats']} measured repeats, "
        f"our models' residency {st.get('residency', 'all')} ==",
        "median [min - max] over repeats; UNet step = median step of each repeat; peak RSS = VmHWM of the system's process",
    ]
    cols = list(METRICS)
    units = {m: _unit([r["stats"][m]["median"] for r in ok.values()]) for m in cols}
    header = ["system"] + [f"{METRIC_LABELS[m]} ({units[m][0]})" for m in cols] + ["peak RSS (GiB)"]
    rows, failed = [], []
    for s, r in results.items():
        if r["status"] != "ok":
            failed.append(f"{s:<16}FAILED: {r['error']}")
            continue
        cells = [s]
        for m in cols:
            x, sc = r["stats"][m], units[m][1]
            cells.append(f"{_fmt(x['median'], sc)} [{_fmt(x['min'], sc)} - {_fmt(x['max'], sc)}]")
        peak = r["stats"].get("peak_rss")
        cells.append(f"{peak['bytes'] / 2**30:.2f}" if peak else "-")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines += [line(header), "-" * len(line(header))] + [line(r) for r in rows] + failed

    metrics = cols + ["peak_rss"]
    for key, title in (("vs_ours_baseline", "ratio to ours-baseline (median / median; > 1 = slower or more memory)"),
                       ("ours_optimized_speedup", "ours-optimized speedup over each (median of system / median of ours-optimized)")):
        table = report["ratios"].get(key)
        if not table:
            continue
        lines += ["", title, f"{'system':<16}" + "".join(f"{METRIC_LABELS[m]:>17}" for m in metrics)]
        for s, row in table.items():
            lines.append(f"{s:<16}" + "".join(f"{(f'{row[m]:.3f}x' if row[m] is not None else '-'):>17}" for m in metrics))

    ff = report.get("flop_floor")
    if ff and "error" not in ff:
        source = next((f["peak_source"] for f in ff.values() if "peak_source" in f), "host roofline")
        gp = report.get("gemm_peak") or {}
        measured = ", ".join(f"{k} {m['flops_per_s'] / 1e9:.4g}" if "flops_per_s" in m else f"{k} failed ({m.get('error')})"
                             for k, m in gp.items() if isinstance(m, dict))
        lines += ["", f"UNet step FLOP floor (graph FLOPs / peak FLOP/s: {source}"
                      + (f"; GFLOP/s {measured}" if measured else "") + "):"]
        for s, f in ff.items():
            if "error" in f:
                lines.append(f"  {f['label']}: analysis failed ({f['error']})")
                continue
            med = _median(results.get(s), "unet_step")
            eff = f" = {f['floor_s'] / med * 100:.1f}% of the measured {med * 1e3:.4g} ms step" if med else ""
            lines.append(f"  {f['label']}: {f['flops'] / 1e9:.4g} GFLOP / {f['peak_flops'] / 1e9:.4g} GFLOP/s "
                         f"= {f['floor_s'] * 1e3:.4g} ms{eff}")
        lines += _xnnpack_floor_lines(report, results)
    elif ff:
        lines += ["", f"UNet FLOP floor unavailable: {ff['error']}"]

    pr = report.get("paired_step")
    if pr and pr.get("status") == "ok":
        ps = pr["stats"]
        cell = lambda x: f"{x['median']:.4g} s [{x['min']:.4g} - {x['max']:.4g}]"  # noqa: E731
        lines += ["", f"UNet call, paired ({ps['ratio']['n']} alternating pairs in one process, ABBA order; the bare "
                      f"batch-2 call, median [min - max]):",
                  f"  {OPTIMIZED} {cell(ps[OPTIMIZED])}; litert-example {cell(ps['litert-example'])}; per-pair ratio "
                  f"{ps['ratio']['median']:.3f} [{ps['ratio']['min']:.3f} - {ps['ratio']['max']:.3f}]"]
    elif pr:
        lines += ["", f"UNet call, paired: FAILED: {pr['error']}"]

    if report.get("targets"):
        lines += ["", "targets (issue 6; ratio of medians measured in this run; paired: median of per-pair ratios):"]
        for t in report["targets"]:
            verdict = "met" if t["met"] else f"MISSED by {t['margin'] * 100:.0f}%"
            lines.append(f"  {t['what']:<55} {t['ratio']:6.3f}  goal <= {t['goal']:<4g} {verdict}")

    notes = []
    from host.build.cli import variant_label

    ours = [f"{s} = {variant_label(str(p.get('variant')), p.get('quantization'))}"
            for s, r in ok.items() if s in OURS and (p := (r.get("prepare") or {}).get("info") or {})]
    if ours:
        notes.append("our builds: " + ", ".join(ours))
    for s, r in ok.items():
        info = (r.get("run") or {}).get("info") or {}
        if info.get("note"):
            notes.append(f"{s}: {info['note']}")
    if report.get("image_check"):
        for s, c in report["image_check"].items():
            notes.append(f"{s}: final image vs ours-baseline (same weights and inputs): rel L2 {c['rel_l2_vs_ours_baseline']:.3g}, "
                         f"max |diff| {c['max_abs_diff']:.3g}, PSNR {c['psnr_db_vs_ours_baseline']:.1f} dB")
    if st["model"] == "tiny" and "litert-example" in ok:
        notes.append("tiny: the litert-example uses litert-torch's fake configs (other widths than our tiny config), "
                     "so its ratios compare different networks")
    if st.get("residency", "all") == "phase":
        notes.append("gen. less loads = the generation less the model loads inside it: ours load each model for its "
                     "stage (residency phase), the reference systems before their timed loop; the generation goal is "
                     "checked on it (models resident, as the example runs) and on the whole generation")
    for s, r in ok.items():
        setup = (r.get("stats") or {}).get("setup_loads")
        if setup:
            per = ", ".join(f"{c} {v:.2f} s" for c, v in setup["per_model"].items())
            notes.append(f"{s}: its models opened in {setup['seconds']:.2f} s before the timed loop ({per}); the "
                         "generation goal with each side's model loads adds them to its generation")
    notes.append("weights are seeded random (no checkpoint): images are noise, timings and memory are real")
    lines += ["", "notes:"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


# ================================================================================================ child side


def child_main(argv: list[str]) -> int:
    """``--child PHASE SYSTEM SPEC``: do one phase of one system; one JSON line on the real stdout."""
    phase, system, spec_path = argv[0], argv[1], Path(argv[2])
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # every library's chatter (Python and native) goes to stderr, the result alone to stdout
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    try:
        spec = json.loads(spec_path.read_text())
        fn = _CHILD[(phase, system.split("-")[0] if system.startswith("ours-") else system)]
        result = {"ok": True, **fn(system, spec, spec_path.parent)}
    except BaseException as e:  # noqa: BLE001 - reported, one line
        result = {"ok": False, "error": _one_line(e)}
    result.update({RESULT_KEY: True, "system": system, "phase": phase, "seconds": round(time.perf_counter() - t0, 3),
                   "vmhwm_end_bytes": _vmhwm()})
    os.write(real_stdout, (json.dumps(result, default=_json_default) + "\n").encode())
    os.close(real_stdout)
    return 0 if result["ok"] else 2


def _one_line(e: BaseException) -> str:
    from host.errors import HarnessError

    text = " ".join(str(e).split())
    return text if isinstance(e, HarnessError) and text else f"{type(e).__name__}: {text}".rstrip(": ")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _vmhwm() -> int | None:
    from host.runner.memory import read_proc_status

    got = read_proc_status()
    return got[1] if got else None


def _reset_vmhwm() -> None:
    """Release freed heap to the OS, then restart VmHWM from the current RSS."""
    from host.runner.memory import reset_peak_rss
    from host.runtime import trim_heap

    trim_heap()
    reset_peak_rss()


def _maybe_fail(system: str) -> None:
    if system in {s.strip() for s in os.environ.get(FAIL_ENV, "").split(",")}:
        raise BenchError(f"{system}: forced failure ({FAIL_ENV})")


# ------------------------------------------------------------------------------------------------ ours


def _prepare_ours(system: str, spec: dict, sdir: Path) -> dict:
    from host.build.builder import BuildOptions, build_variant
    from host.build.weights import resolve
    from models.config import get_variant

    root = Path(spec["artifacts"])
    variant, quant = OURS[system]
    if system == OPTIMIZED:  # this machine's optimized set (device_profiles/host.toml: runtime.optimized)
        from host.profiles import load_profile

        variant = load_profile("host").runtime.optimized
    weights = resolve(spec["model"], None, spec["seed_weights"], spec["size"], str(root / "checkpoint-index.json"))
    t0 = time.perf_counter()
    manifest, build_dir, cached = build_variant(get_variant(variant, quant), weights,
                                                BuildOptions(root=root, threads=spec["threads"]), log=log)
    return {"info": {"build_dir": str(build_dir), "variant": variant, "quantization": quant, "cached": cached,
                     "build_key": manifest["build_key"],
                     "build_seconds": round(time.perf_counter() - t0, 2),
                     "size_bytes": {c: m["size_bytes"] for c, m in manifest["components"].items()}}}


def _run_ours(system: str, spec: dict, sdir: Path) -> dict:
    import numpy as np

    from host.request import prepare_run
    from host.runner import run
    from host.runtime import delegate_label

    _maybe_fail(system)
    build_dir = Path(spec["prepared"]["info"]["build_dir"])
    manifest = json.loads((build_dir / "manifest.json").read_text())
    run_dir = sdir / "run"
    prepare_run(run_dir, manifest, build_dir, prompt=spec["prompt"], negative_prompt=spec["negative_prompt"],
                seed=spec["seed"], steps=spec["steps"], scheduler=spec["scheduler"], guidance=spec["guidance"],
                size=spec["size"],
                runtime={"accelerator": "cpu", "precision": "fp32", "threads": spec["threads"], "warmup": spec["warmup"],
                         "repeats": spec["repeats"], "residency": spec.get("residency", "all")},
                profiling={"memory_interval_ms": 50, "per_op": False, "per_block": False, "block_models": []},
                run_id=f"bench_{system}")
    log(f"{system}: running {run_dir}")
    run(run_dir)
    pandas_in_run = "pandas" in sys.modules
    # pandas and pyarrow only after the run: imported before, their ~70 MiB counted in the peak RSS of a process
    # that a user's runner (python -m host.runner, without them) does not have
    from host.traces.tables import load_run

    r = load_run(run_dir)
    spans = r.spans
    samples = {"unet_step": [], "text_encoder": [], "vae_decoder": [], "generation": [], "model_loads": []}
    warm = {k: [] for k in samples}
    for is_warm, dest in ((False, samples), (True, warm)):
        sub = spans[spans["warmup"] == is_warm]
        for rep in sorted(sub["repeat"].dropna().unique()):
            rs = sub[sub["repeat"] == rep]
            steps = rs[rs["name"] == "unet_step"].sort_values("step")["dur_s"].tolist()
            if len(steps) != spec["steps"]:
                raise BenchError(f"{system}: repeat {rep} has {len(steps)} unet_step spans, expected {spec['steps']}")
            dest["unet_step"].append(steps)
            for name in ("text_encoder", "vae_decoder", "generation"):
                v = rs[rs["name"] == name]["dur_s"].tolist()
                if len(v) != 1:
                    raise BenchError(f"{system}: repeat {rep} has {len(v)} {name} spans")
                dest[name].append(v[0])
            gen = rs[rs["name"] == "generation"].iloc[0]
            inside = rs[(rs["name"] == "load") & (rs["start_s"] >= gen["start_s"])
                        & (rs["start_s"] + rs["dur_s"] <= gen["start_s"] + gen["dur_s"] + 1e-6)]
            dest["model_loads"].append(float(inside["dur_s"].sum()))
    if len(samples["generation"]) != spec["repeats"]:
        raise BenchError(f"{system}: {len(samples['generation'])} measured generations in the trace, expected {spec['repeats']}")
    mem = r.memory
    peaks = mem["peak_bytes"].dropna()
    image = np.fromfile(run_dir / "image.f32", dtype="<f4").reshape(1, 3, spec["size"], spec["size"])
    if not np.isfinite(image).all():
        raise BenchError(f"{system}: non-finite values in the decoded image ({run_dir / 'image.f32'})")
    np.save(sdir / "image.npy", image)
    loads = spans[spans["name"] == "load"]
    return {"samples": samples, "warmup_samples": warm,
            "peak_rss_bytes": int(peaks.max()) if len(peaks) else _vmhwm(),
            "max_sampled_rss_bytes": int(mem["rss_bytes"].dropna().max()) if len(mem) else None,
            "info": {"run_dir": str(run_dir), "runtime": f"ai-edge-litert, {delegate_label()}, host.runner",
                     "torch_imported": "torch" in sys.modules, "pandas_imported": pandas_in_run,
                     "load_seconds": [[c, float(d)] for c, d in zip(loads["component"], loads["dur_s"])],
                     "image_shape": list(image.shape)}}


# ------------------------------------------------------------------------------------------------ the shared loop


def _inputs(spec: dict, vocab: int, max_len: int, t_emb_dim: int, latent: int) -> dict:
    """Tokens, noise, scheduler coefficients and time embeddings exactly as host.request prepares them."""
    import numpy as np

    from host.request import make_noise
    from host.schedulers import make_table, timestep_embedding
    from models.tokenizer import get_tokenizer

    tok = get_tokenizer(None, vocab_size=vocab, max_length=max_len)
    table = make_table(spec["scheduler"], spec["steps"])
    return {
        "ids": np.asarray([tok.encode(spec["negative_prompt"]), tok.encode(spec["prompt"])], dtype=np.int32),
        "noise": make_noise(spec["seed"], (1, 4, latent, latent)),
        "timestep": np.asarray(table.timestep, dtype=np.float32),
        "t_emb": timestep_embedding(table.timestep, t_emb_dim),
        "coeffs": {k: np.asarray(getattr(table, k), dtype=np.float32)
                   for k in ("in_scale", "d_x", "d_eps", "x_x", "x_d", "x_dprev")},
        "init_scale": np.float32(table.init_scale),
        "guidance": np.float32(spec["guidance"]),
    }


def generate_loop(system: str, encode: Callable, unet: Callable, decode: Callable, inp: dict, steps: int,
                  warmup: int, repeats: int) -> tuple[dict, dict, Any]:
    """The protocol's loop around three callables; times each stage as the host runner's spans do.

    ``encode() -> ctx``; ``unet(m, i, ctx) -> (e_uncond, e_cond)`` each [1, C, h, w]; ``decode(x) -> image``.
    Rejects non-finite values (checked outside the timed regions). Before anything is timed, each callable
    runs once (``warm["first_invoke"]``: its seconds), as the host runner's "first_invoke" load phase does:
    XNNPACK packs its weights and oneDNN creates its primitives in the first call, which is load cost, not
    generation cost, so a run without warm-up generations stays comparable across systems.
    """
    import numpy as np

    clock = time.perf_counter
    c = inp["coeffs"]
    samples = {"unet_step": [], "text_encoder": [], "vae_decoder": [], "generation": [], "model_loads": []}
    warm = {k: [] for k in samples}
    t0 = clock()
    ctx = encode()
    unet(inp["noise"] * inp["init_scale"], 0, ctx)
    decode(inp["noise"])
    warm["first_invoke"] = [clock() - t0]
    log(f"{system}: first invocation of each model {warm['first_invoke'][0]:.3f} s (untimed)")
    image = None
    for n in range(warmup + repeats):
        dest = warm if n < warmup else samples
        where = f"{'warmup' if n < warmup else 'repeat'} {n if n < warmup else n - warmup}"
        step_t: list[float] = []
        t_gen = clock()
        t0 = clock()
        ctx = encode()
        t_text = clock() - t0
        x = inp["noise"] * inp["init_scale"]
        d_prev = np.zeros_like(x)
        for i in range(steps):
            t0 = clock()
            m = x * c["in_scale"][i]
            e_u, e_c = unet(m, i, ctx)
            eps = e_u + inp["guidance"] * (e_c - e_u)
            d = x * c["d_x"][i] + eps * c["d_eps"][i]
            x = x * c["x_x"][i] + d * c["x_d"][i] + d_prev * c["x_dprev"][i]
            d_prev = d
            step_t.append(clock() - t0)
            if not (np.isfinite(e_u).all() and np.isfinite(e_c).all()):
                raise BenchError(f"{system}: non-finite UNet output at step {i} ({where})")
        t0 = clock()
        image = decode(x)
        t_dec = clock() - t0
        t_total = clock() - t_gen
        if not np.isfinite(image).all():
            raise BenchError(f"{system}: non-finite decoder output ({where})")
        dest["unet_step"].append(step_t)
        dest["text_encoder"].append(t_text)
        dest["vae_decoder"].append(t_dec)
        dest["generation"].append(t_total)
        dest["model_loads"].append(0.0)  # every model was loaded before the timed loop
        log(f"{system}: {where}: generation {t_total:.3f} s, median step {sorted(step_t)[len(step_t) // 2]:.4f} s")
    return samples, warm, image


# ------------------------------------------------------------------------------------------------ litert-example


def _latent(spec: dict) -> int:
    from models.config import get_model_config

    cfg = get_model_config(spec["model"]).with_image_size(spec["size"])
    return cfg.latent_size


def _prepare_litert_example(system: str, spec: dict, sdir: Path) -> dict:
    from host.bench.refs import build_litert_example

    folder, meta = build_litert_example(Path(spec["artifacts"]), spec["model"], _latent(spec), spec["seed_weights"], log=log)
    return {"info": {"folder": str(folder), "cached": meta.get("cached", False), "meta": meta}}


def _run_litert_example(system: str, spec: dict, sdir: Path) -> dict:
    import numpy as np

    from host.runtime import delegate_label, open_model

    _maybe_fail(system)
    folder = Path(spec["prepared"]["info"]["folder"])
    meta = spec["prepared"]["info"]["meta"]
    dims = meta["dims"]  # from the conversion: this process imports neither torch nor litert-torch
    inp = _inputs(spec, dims["vocab_size"], dims["seq_len"], dims["t_emb_dim"], meta["latent"])
    # the same host runtime as ours (host.runtime.open_model: CompiledModel + XNNPACK weight cache by default)
    models, opened = {}, {}
    for c, f in LITERT_EXAMPLE_FILES.items():  # before the timed loop, as its pipeline does; timed all the same
        t0 = time.perf_counter()
        models[c] = open_model(str(folder / f), threads=spec["threads"])
        opened[c] = time.perf_counter() - t0
    names = {c: sorted(m.inputs) for c, m in models.items()}  # args_0, args_1, ... in the traced order
    outs = {c: next(iter(m.outputs)) for c, m in models.items()}
    te, un, de = models["text_encoder"], models["unet"], models["vae_decoder"]
    ids_uncond, ids_cond = inp["ids"][0:1], inp["ids"][1:2]
    t_embs = [inp["t_emb"][i:i + 1] for i in range(spec["steps"])]  # [1, C0], as the example's pipeline feeds it

    def encode():
        cond = te.run(**{names["text_encoder"][0]: ids_cond})[outs["text_encoder"]]
        uncond = te.run(**{names["text_encoder"][0]: ids_uncond})[outs["text_encoder"]]
        return np.concatenate([cond, uncond], axis=0)  # the example's order: batch 0 cond, 1 uncond

    def unet(m, i, ctx):
        a = names["unet"]
        e = un.run(**{a[0]: np.concatenate([m, m]), a[1]: ctx, a[2]: t_embs[i]})[outs["unet"]]
        return e[1:2], e[0:1]

    def decode(x):  # the example's decoder divides by the scaling factor itself
        return de.run(**{names["vae_decoder"][0]: x})[outs["vae_decoder"]]

    samples, warm, image = generate_loop(system, encode, unet, decode, inp, spec["steps"], spec["warmup"], spec["repeats"])
    np.save(sdir / "image.npy", image)
    note = ("litert-torch's example models (seeded init, device_type cpu), same LiteRT runtime as ours; text encoder "
            "= two batch-1 calls (cond, uncond), UNet t_emb [1, C0]")
    if meta["configs"].get("patches"):
        note += "; config patched: " + "; ".join(meta["configs"]["patches"])
    if tuple(image.shape[-2:]) != (spec["size"], spec["size"]):
        note += f"; its decoder outputs {image.shape[-2]}x{image.shape[-1]}, not {spec['size']}x{spec['size']}"
    return {"samples": samples, "warmup_samples": warm, "peak_rss_bytes": _vmhwm(), "setup_load_seconds": opened,
            "info": {"folder": str(folder), "runtime": f"ai-edge-litert, {delegate_label()} (host.runtime.open_model)",
                     "torch_imported": "torch" in sys.modules,
                     "signatures": {c: {"inputs": m.inputs, "outputs": m.outputs} for c, m in models.items()},
                     "image_shape": list(image.shape), "parameters": {c: v["parameters"] for c, v in meta["components"].items()},
                     "note": note}}


# ------------------------------------------------------------------------------------------------ paired


def _run_paired(system: str, spec: dict, sdir: Path) -> dict:
    """Both UNets loaded, one untimed call each, then ``spec["paired"]`` pairs in ABBA order (ours first in even
    pairs): what drifts on this host during the pairs drifts for both. Inputs: seeded normal values in each
    model's own signature (the call's speed does not depend on them); outputs must be finite."""
    import numpy as np

    from host.bench.runtime import signature_inputs
    from host.runtime import open_model

    _maybe_fail(system)
    files = spec["prepared"]["files"]
    models = {name: open_model(path, threads=spec["threads"]) for name, path in files.items()}
    inputs = {name: signature_inputs(m.inputs) for name, m in models.items()}

    def call(name: str) -> float:
        t0 = time.perf_counter()
        outs = models[name].run(**inputs[name])
        dt = time.perf_counter() - t0
        if not all(np.isfinite(v).all() for v in outs.values()):
            raise BenchError(f"paired: non-finite UNet output from {name} ({files[name]})")
        return dt

    first = {name: call(name) for name in files}
    samples: dict[str, list[float]] = {name: [] for name in files}
    names = list(files)
    for k in range(int(spec["paired"])):
        for name in (names if k % 2 == 0 else names[::-1]):
            samples[name].append(call(name))
        log(f"paired: pair {k}: " + ", ".join(f"{n} {samples[n][-1]:.3f} s" for n in names))
    return {"samples": samples, "first_call": first, "peak_rss_bytes": _vmhwm(),
            "info": {"order": "ABBA: " + " / ".join(names) + " in even pairs, reversed in odd ones",
                     "inputs": {n: {k: list(v.shape) for k, v in i.items()} for n, i in inputs.items()}}}


# ------------------------------------------------------------------------------------------------ torch-eager


def _prepare_nothing(system: str, spec: dict, sdir: Path) -> dict:
    return {"info": {"cached": False, "note": "modules are built in the run subprocess"}}


def _run_torch_eager(system: str, spec: dict, sdir: Path) -> dict:
    _maybe_fail(system)
    import numpy as np
    import torch

    from host.bench.refs import build_torch_eager, fp32_settings
    from models.config import get_model_config

    torch.set_num_threads(spec["threads"])
    fp32 = fp32_settings()
    cfg = get_model_config(spec["model"]).with_image_size(spec["size"])
    with torch.inference_mode():
        mods, built = build_torch_eager(spec["model"], spec["size"], spec["seed_weights"], log=log)
    vmhwm_build = _vmhwm()
    _reset_vmhwm()  # the peak below excludes the random-weight construction temporaries (3 copies of each model)
    inp = _inputs(spec, cfg.text_encoder.vocab_size, cfg.text_encoder.max_position_embeddings,
                  cfg.unet.time_proj_dim, cfg.latent_size)
    te, un, vae = mods["text_encoder"], mods["unet"], mods["vae_decoder"]
    ids = torch.from_numpy(inp["ids"].astype(np.int64))
    ts = [torch.full((2,), float(t)) for t in inp["timestep"]]
    scale = float(cfg.vae.scaling_factor)

    def encode():
        return te(ids).last_hidden_state  # [2, L, D], batch 0 uncond, 1 cond (the protocol's order)

    def unet(m, i, ctx):
        mt = torch.from_numpy(m)
        e = un(torch.cat([mt, mt]), ts[i], ctx).sample.numpy()
        return e[0:1], e[1:2]

    def decode(x):
        return vae.decode(torch.from_numpy(x / np.float32(scale))).sample.numpy()

    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        if torch.is_autocast_enabled("cpu"):
            raise BenchError("torch-eager: CPU autocast is enabled; refusing to time mixed precision")
        samples, warm, image = generate_loop(system, encode, unet, decode, inp, spec["steps"], spec["warmup"], spec["repeats"])
    if image.dtype != np.float32:
        raise BenchError(f"torch-eager: output dtype {image.dtype}, expected float32")
    np.save(sdir / "image.npy", image)
    note = (f"fp32 eager, torch {torch.__version__}, {spec['threads']} threads, autocast off "
            f"(cpu autocast enabled: {fp32['autocast_cpu_enabled']}), float32 matmul precision "
            f"{fp32['float32_matmul_precision']}, CPU {fp32['cpu_capability']} with "
            f"{' '.join(fp32['cpu_bf16_amx_flags']) or 'no bf16/AMX flags'}"
            f"{'' if any(f.startswith('amx') for f in fp32['cpu_bf16_amx_flags']) else ' (no AMX exposed)'}; "
            "peak RSS counted from after the modules were built")
    return {"samples": samples, "warmup_samples": warm, "peak_rss_bytes": _vmhwm(),
            "info": {"fp32": fp32, "vmhwm_after_build_bytes": vmhwm_build, **built,
                     "image_shape": list(image.shape), "note": note}}


_CHILD: dict[tuple[str, str], Callable[[str, dict, Path], dict]] = {
    ("prepare", "ours"): _prepare_ours, ("run", "ours"): _run_ours,
    ("prepare", "litert-example"): _prepare_litert_example, ("run", "litert-example"): _run_litert_example,
    ("prepare", "torch-eager"): _prepare_nothing, ("run", "torch-eager"): _run_torch_eager,
    ("run", "paired"): _run_paired,
}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
