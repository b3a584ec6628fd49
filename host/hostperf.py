"""Measure this machine's roofline: fp32 GEMM peak and main-memory bandwidth.

    python -m host.hostperf [--write device_profiles/host.toml] [--threads 2]
                            [--gemm-n 4096] [--gemm-repeats 5] [--stream-elems 67108864] [--stream-repeats 5]
                            [--xnnpack]

* Compute: ``torch.matmul`` of two n x n float32 matrices into a preallocated output, ``threads`` torch
  threads, one warm-up then best of ``repeats``; FLOP = 2 n^3. fp32 is enforced, not assumed: this CPU
  has bf16/fp16 vector units and oneDNN may use reduced precision for fp32 matmuls when asked to
  (``torch.set_float32_matmul_precision("medium"/"high")``, ``torch.backends.mkldnn.matmul.fp32_precision``,
  ``ONEDNN_DEFAULT_FPMATH_MODE``). We set "highest"/"ieee" for the measurement (and restore the settings
  afterwards), and check rows of the timed product against float64; a relative error above 1e-4
  (bf16 or tf32 inputs give ~1e-3) fails the measurement.
* Memory: STREAM-style copy (``a = b``) and triad (``a = b + s*c``) with torch on float32 arrays of
  ``stream_elems`` elements each (default 256 MiB per array: 768 MiB for the triad, about 3x the 260 MiB
  L3 this VM reports; a sweep from 16 MiB to 1 GiB per array gave the same figure within noise, and
  first-touching larger arrays costs seconds here), one warm-up then best of ``repeats``; bytes counted
  the STREAM way (copy 2, triad 3 arrays per pass; write-allocate traffic not counted). The triad figure
  is the roofline bandwidth.
* XNNPACK (``--xnnpack``; ``measure_xnnpack_gemm``): the fp32 GEMM rate of the runtime the models run on, one
  FULLY_CONNECTED model per shape through LiteRT's CPU path, best of ``repeats`` after the call that packs the
  weights, the best shape's rate; printed beside the peak, not written to the profile (the roofline stays the
  machine's). ``host.bench pipeline`` measures it in every run.

``--write`` replaces only the ``[roofline]`` table of a host profile (rest of the file kept, comments
included), with the figures rounded to 3 significant digits and a ``source`` naming the date, the command
and the conditions. Measurements on a shared machine are lowered by whatever else runs; the load average
at the start is printed and recorded.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from host.errors import HarnessError

FP32_REL_TOL = 1e-4
DEFAULT_THREADS = 2
DEFAULT_GEMM_N = 4096
DEFAULT_GEMM_REPEATS = 5
DEFAULT_STREAM_ELEMS = 1 << 26  # 256 MiB of float32 per array, 768 MiB for the triad
DEFAULT_STREAM_REPEATS = 5


@dataclass(frozen=True)
class GemmResult:
    n: int
    threads: int
    repeats: int
    best_s: float
    flops_per_s: float
    rel_err: float  # of sampled rows against float64


@dataclass(frozen=True)
class StreamResult:
    elems: int
    threads: int
    repeats: int
    copy_bytes_per_s: float
    triad_bytes_per_s: float

    @property
    def array_bytes(self) -> int:
        return 4 * self.elems


@dataclass(frozen=True)
class HostPerf:
    gemm: GemmResult
    stream: StreamResult
    date: str
    load_avg: float | None
    busy_before: float | None  # share of all CPUs busy in the half second before measuring
    llc_bytes: int | None
    torch_version: str


@contextmanager
def strict_fp32(threads: int):
    """torch set to ``threads`` threads and IEEE fp32 matmuls for the duration; previous settings restored."""
    import torch

    mk = torch.backends.mkldnn.matmul
    prev_threads = torch.get_num_threads()
    prev_legacy = torch.get_float32_matmul_precision()
    prev_mkldnn = getattr(mk, "fp32_precision", None)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("highest")
    if prev_mkldnn is not None:
        mk.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev_legacy)
        if prev_mkldnn is not None:
            mk.fp32_precision = prev_mkldnn
        torch.set_num_threads(prev_threads)


def fp32_rel_error(a, b, c, rows: int = 8) -> float:
    """Relative Frobenius error of ``rows`` sampled rows of ``c = a @ b`` against a float64 product."""
    import torch

    idx = torch.linspace(0, a.shape[0] - 1, min(rows, a.shape[0])).round().long().unique()
    ref = a[idx].double() @ b.double()
    denom = ref.norm().item()
    return (c[idx].double() - ref).norm().item() / denom if denom > 0 else 0.0


def check_fp32(a, b, c, rows: int = 8, tol: float = FP32_REL_TOL, what: str = "GEMM result",
               hint: str | None = None) -> float:
    """``fp32_rel_error``, or a HarnessError naming ``what`` and ``hint`` (default: torch's precision settings)
    where it is above ``tol``."""
    err = fp32_rel_error(a, b, c, rows)
    if not err <= tol:
        if hint is None:
            hint = (f"reduced-precision matmul in use; check torch.set_float32_matmul_precision, "
                    f"torch.backends.mkldnn.matmul.fp32_precision and ONEDNN_DEFAULT_FPMATH_MODE="
                    f"{os.environ.get('ONEDNN_DEFAULT_FPMATH_MODE', '(unset)')}")
        raise HarnessError(f"{what} is not fp32-accurate (relative error {err:.1e} > {tol:.0e} against "
                           f"float64): {hint}")
    return err


def _positive(name: str, v: int) -> int:
    if v < 1:
        raise HarnessError(f"{name} must be >= 1, got {v}")
    return v


def measure_gemm(n: int = DEFAULT_GEMM_N, repeats: int = DEFAULT_GEMM_REPEATS,
                 threads: int = DEFAULT_THREADS, seed: int = 0) -> GemmResult:
    import torch

    for name, v in (("gemm n", n), ("gemm repeats", repeats), ("threads", threads)):
        _positive(name, v)
    with strict_fp32(threads):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(n, n, generator=g, dtype=torch.float32)
        b = torch.randn(n, n, generator=g, dtype=torch.float32)
        c = torch.empty(n, n, dtype=torch.float32)
        torch.matmul(a, b, out=c)  # warm-up: thread pool, kernel selection, page faults on c
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        err = check_fp32(a, b, c)
    best = max(best, 1e-9)  # tiny sizes can come in under the clock's resolution
    return GemmResult(n=n, threads=threads, repeats=repeats, best_s=best, flops_per_s=2.0 * n ** 3 / best,
                      rel_err=err)


#: (tokens, in, out) of the FULLY_CONNECTED models for XNNPACK's fp32 GEMM rate: the UNet's 4096-token level with CFG
#: batch 2 at widths around its projections'; on this machine the rate moves with the shape by up to ~30% (8192 x 1280 x
#: 1280 260-300 GFLOP/s, 8192 x 2048 x 2048 ~250, 8192 x 768 x 768 290-330), so the rate is the best of these
XNNPACK_GEMM_SHAPES = ((8192, 768, 768), (8192, 1024, 1024), (8192, 1280, 1280))


@dataclass(frozen=True)
class XnnpackGemmResult:
    shapes: tuple  # ((m, k, n, best_s), ...) in the order measured
    threads: int
    repeats: int
    rel_err: float  # the worst over the shapes, of sampled rows against float64

    @property
    def flops_per_s(self) -> float:
        """The best shape's rate."""
        return max(2.0 * m * k * n / t for m, k, n, t in self.shapes)

    @property
    def best_shape(self) -> tuple[int, int, int]:
        m, k, n, _ = max(self.shapes, key=lambda s: 2.0 * s[0] * s[1] * s[2] / s[3])
        return m, k, n


def fully_connected_model(m: int, k: int, n: int, weights) -> bytes:
    """A LiteRT flatbuffer with one FULLY_CONNECTED op, ``y[m, n] = x[m, k] @ weights[n, k]^T`` (float32, no
    bias), and a ``serving_default`` signature (x -> y), built with the schema's object API."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as s

    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != (n, k):
        raise HarnessError(f"FULLY_CONNECTED weights: shape {w.shape}, expected {(n, k)}")

    def tensor(name, shape, buffer):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
        return t

    def io(name, index):
        t = s.TensorMapT()
        t.name, t.tensorIndex = name, index
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    graph = s.SubGraphT()
    graph.tensors = [tensor("x", (m, k), 0), tensor("w", (n, k), 1), tensor("y", (m, n), 0)]
    graph.inputs, graph.outputs, graph.operators, graph.name = [0], [2], [op], "main"
    empty, data = s.BufferT(), s.BufferT()
    data.data = w.reshape(-1).view(np.uint8)
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex, sig.inputs, sig.outputs = "serving_default", 0, [io("x", 0)], [io("y", 2)]
    model = s.ModelT()
    model.version, model.description = 3, "sdphone hostperf GEMM"
    model.operatorCodes, model.subgraphs, model.buffers, model.signatureDefs = [code], [graph], [empty, data], [sig]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def measure_xnnpack_gemm(shapes=XNNPACK_GEMM_SHAPES, repeats: int = DEFAULT_GEMM_REPEATS,
                         threads: int = DEFAULT_THREADS, seed: int = 0) -> XnnpackGemmResult:
    """XNNPACK's fp32 GEMM rate through the runtime the UNet runs on (LiteRT's CompiledModel on the CPU, XNNPACK,
    ``threads`` threads): one FULLY_CONNECTED model per shape (m, k, n), one warm-up invocation (it packs the
    weights) then the best of ``repeats`` bare invocations; FLOP = 2 m k n; the rate is the best shape's. Sampled
    rows of each product are checked against float64 (relative error above 1e-4 fails the measurement)."""
    import tempfile

    import numpy as np
    import torch
    from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options

    _positive("gemm repeats", repeats)
    _positive("threads", threads)
    if not shapes:
        raise HarnessError("no GEMM shapes to measure")
    rng = np.random.default_rng(seed)
    done, worst = [], 0.0
    with tempfile.TemporaryDirectory(prefix="sdphone-gemm-") as tmp:
        for m, k, n in shapes:
            for name, v in (("gemm m", m), ("gemm k", k), ("gemm n", n)):
                _positive(name, v)
            w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(math.sqrt(k))
            x = rng.standard_normal((m, k), dtype=np.float32)
            path = os.path.join(tmp, f"fc_{m}_{k}_{n}.tflite")
            with open(path, "wb") as f:
                f.write(fully_connected_model(m, k, n, w))
            opts = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads))
            model = CompiledModel.from_file(path, options=opts)
            ins, outs = model.create_input_buffers(0), model.create_output_buffers(0)
            ins[0].write(x)
            model.run_by_index(0, ins, outs)  # packs the weights
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.run_by_index(0, ins, outs)
                best = min(best, time.perf_counter() - t0)
            y = np.asarray(outs[0].read(m * n, np.float32)).reshape(m, n)
            worst = max(worst, check_fp32(torch.from_numpy(x), torch.from_numpy(w).T, torch.from_numpy(y),
                                          what=f"XNNPACK's {m}x{k}x{n} FULLY_CONNECTED",
                                          hint="the CPU path ran in reduced precision"))
            done.append((m, k, n, max(best, 1e-9)))
            del model, ins, outs
    return XnnpackGemmResult(shapes=tuple(done), threads=threads, repeats=repeats, rel_err=worst)


def measure_stream(elems: int = DEFAULT_STREAM_ELEMS, repeats: int = DEFAULT_STREAM_REPEATS,
                   threads: int = DEFAULT_THREADS) -> StreamResult:
    import torch

    for name, v in (("stream elems", elems), ("stream repeats", repeats), ("threads", threads)):
        _positive(name, v)
    with strict_fp32(threads):
        try:
            a = torch.zeros(elems, dtype=torch.float32)  # zeros/full touch every page before timing
            b = torch.full((elems,), 1.0, dtype=torch.float32)
            c = torch.full((elems,), 2.0, dtype=torch.float32)
        except (RuntimeError, MemoryError) as e:
            raise HarnessError(f"cannot allocate 3 x {4 * elems >> 20} MiB for the bandwidth test "
                               f"({str(e).splitlines()[0]}); pass a smaller --stream-elems") from None
        best_copy = best_triad = math.inf
        for i in range(repeats + 1):  # the first pass of each is a warm-up
            t0 = time.perf_counter()
            a.copy_(b)
            t1 = time.perf_counter()
            torch.add(b, c, alpha=3.0, out=a)
            t2 = time.perf_counter()
            if i:
                best_copy, best_triad = min(best_copy, t1 - t0), min(best_triad, t2 - t1)
        step = max(1, elems // 1024)
        if not bool((a[::step] == 7.0).all()):
            raise HarnessError("bandwidth test produced wrong values")
        del a, b, c
    nbytes = 4 * elems
    best_copy, best_triad = max(best_copy, 1e-9), max(best_triad, 1e-9)
    return StreamResult(elems=elems, threads=threads, repeats=repeats,
                        copy_bytes_per_s=2 * nbytes / best_copy, triad_bytes_per_s=3 * nbytes / best_triad)


def cpu_busy_fraction(window_s: float = 0.5) -> float | None:
    """Share of all CPUs busy (not idle/iowait) over ``window_s``, from /proc/stat; None where unavailable."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def last_level_cache_bytes() -> int | None:
    """Size of the largest cache level cpu0 reports (sysfs), or None where unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    best = None
    for idx in base.glob("index*"):
        try:
            level = int((idx / "level").read_text())
            size = (idx / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
        try:
            nbytes = int(size.rstrip("KkMmGg")) * mult
        except ValueError:
            continue
        if best is None or level > best[0]:
            best = (level, nbytes)
    return best[1] if best else None


def measure(threads: int = DEFAULT_THREADS, gemm_n: int = DEFAULT_GEMM_N, gemm_repeats: int = DEFAULT_GEMM_REPEATS,
            stream_elems: int = DEFAULT_STREAM_ELEMS, stream_repeats: int = DEFAULT_STREAM_REPEATS) -> HostPerf:
    import torch

    busy = cpu_busy_fraction()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    stream = measure_stream(stream_elems, stream_repeats, threads)
    gemm = measure_gemm(gemm_n, gemm_repeats, threads)
    return HostPerf(gemm=gemm, stream=stream, date=_dt.datetime.now(_dt.timezone.utc).date().isoformat(),
                    load_avg=load, busy_before=busy, llc_bytes=last_level_cache_bytes(), torch_version=torch.__version__)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.4g} MiB"


def round_sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits - 1}e}")


def source_text(perf: HostPerf, command: str) -> str:
    g, s = perf.gemm, perf.stream
    load = f"{perf.load_avg:.2f}" if perf.load_avg is not None else "unknown"
    busy = f"{100 * perf.busy_before:.0f}%" if perf.busy_before is not None else "unknown"
    return (f"measured on this host by `{command}` on {perf.date}: peak = fp32 torch.matmul {g.n}x{g.n}, "
            f"{g.threads} threads, best of {g.repeats} ({g.flops_per_s / 1e9:.0f} GFLOP/s, rel. error vs float64 "
            f"{g.rel_err:.0e}); bandwidth = triad a=b+s*c on 3 x {_mib(s.array_bytes)} float32, "
            f"{s.threads} threads, STREAM byte count, best of {s.repeats} ({s.triad_bytes_per_s / 1e9:.1f} GB/s; "
            f"copy {s.copy_bytes_per_s / 1e9:.1f} GB/s); torch {perf.torch_version}; "
            f"CPUs {busy} busy in the 0.5 s before and 1-min load average {load} at start "
            f"(other work lowers both figures)")


def report(perf: HostPerf) -> str:
    g, s = perf.gemm, perf.stream
    lines = [
        f"fp32 GEMM   {g.n}x{g.n}, {g.threads} threads, best of {g.repeats}: {g.best_s:.3f} s -> "
        f"{g.flops_per_s / 1e9:.1f} GFLOP/s (relative error vs float64 {g.rel_err:.1e}: fp32)",
        f"bandwidth   triad 3 x {_mib(s.array_bytes)} float32, {s.threads} threads, best of {s.repeats}: "
        f"{s.triad_bytes_per_s / 1e9:.2f} GB/s; copy 2 x {_mib(s.array_bytes)}: "
        f"{s.copy_bytes_per_s / 1e9:.2f} GB/s",
        f"ridge point {g.flops_per_s / s.triad_bytes_per_s:.1f} FLOP/byte; at start: CPUs "
        f"{'?' if perf.busy_before is None else round(100 * perf.busy_before)}% busy, 1-min load average "
        f"{'?' if perf.load_avg is None else round(perf.load_avg, 2)} on {os.cpu_count()} CPUs",
    ]
    if perf.llc_bytes and 3 * s.array_bytes < 2 * perf.llc_bytes:
        lines.append(f"warning: triad footprint {_mib(3 * s.array_bytes)} is under 2x the last-level cache "
                     f"({_mib(perf.llc_bytes)}): the bandwidth figure may include cache hits")
    return "\n".join(lines)


def xnnpack_report(x: XnnpackGemmResult, gemm: GemmResult | None = None) -> str:
    shapes = ", ".join(f"{m}x{k}x{n} {2.0 * m * k * n / t / 1e9:.1f}" for m, k, n, t in x.shapes)
    vs = f" = {x.flops_per_s / gemm.flops_per_s * 100:.0f}% of the fp32 GEMM above" if gemm else ""
    return (f"XNNPACK     fp32 FULLY_CONNECTED through LiteRT, {x.threads} threads, best of {x.repeats} per shape "
            f"(m x k x n GFLOP/s: {shapes}): {x.flops_per_s / 1e9:.1f} GFLOP/s{vs} (relative error vs float64 "
            f"{x.rel_err:.1e})")


def check_host_profile(path: str | os.PathLike) -> None:
    from host.profiles import load_profile

    profile = load_profile(path)
    if profile.platform != "host":
        raise HarnessError(f"{path}: platform is {profile.platform!r}; host measurements go into a host profile only")


def write_host_roofline(path: str | os.PathLike, perf: HostPerf, command: str):
    from host.profiles import Roofline, write_roofline

    check_host_profile(path)
    roofline = Roofline(peak_flops=round_sig(perf.gemm.flops_per_s),
                        mem_bandwidth_bytes_per_s=round_sig(perf.stream.triad_bytes_per_s),
                        source=source_text(perf, command))
    return write_roofline(path, roofline)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m host.hostperf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", metavar="PROFILE_TOML", help="update the [roofline] table of this host profile")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--gemm-n", type=int, default=DEFAULT_GEMM_N)
    ap.add_argument("--gemm-repeats", type=int, default=DEFAULT_GEMM_REPEATS)
    ap.add_argument("--stream-elems", type=int, default=DEFAULT_STREAM_ELEMS)
    ap.add_argument("--stream-repeats", type=int, default=DEFAULT_STREAM_REPEATS)
    ap.add_argument("--xnnpack", action="store_true",
                    help="also measure XNNPACK's own fp32 GEMM rate through LiteRT (printed, not written)")
    args = ap.parse_args(argv)
    try:
        if args.write:
            check_host_profile(args.write)  # fail before spending the measurement time
        perf = measure(threads=args.threads, gemm_n=args.gemm_n, gemm_repeats=args.gemm_repeats,
                       stream_elems=args.stream_elems, stream_repeats=args.stream_repeats)
        print(report(perf))
        if args.xnnpack:
            print(xnnpack_report(measure_xnnpack_gemm(XNNPACK_GEMM_SHAPES, args.gemm_repeats, args.threads), perf.gemm))
        if args.write:
            command = " ".join(["python -m host.hostperf", *argv])
            write_host_roofline(args.write, perf, command)
            print(f"wrote [roofline] of {args.write}")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
