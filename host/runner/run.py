"""The Python host runner: execute a run folder's request.json and write trace, image and status.

``run(run_dir)`` follows docs/protocol.md. Everything it writes is durable as it goes: trace records
are fsynced line by line, and on any failure an ``error`` event and an error status are written before
the error (always a :class:`HarnessError`) is raised.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

from host.errors import HarnessError
from host.protocol.constants import COMPONENTS, IMAGE_F32, IMAGE_PNG, REQUEST_FILE, STATUS_FILE, TRACE_FILE
from host.protocol.jsonio import read_json, write_json
from host.protocol.messages import MetaRecord, RunRequest, SpanRecord, Status
from host.protocol.trace import TraceWriter
from host.runner.loading import RunnerError, load_inputs, load_model, models_dir, verify_file
from host.runner.memory import MemorySampler
from host.runner.pipeline import Generation, Models, generate, profile_blocks, to_uint8_hwc, unet_feed
from host.runner.tracing import Clock, Tracer
from host.runtime import delegate_label, open_model, trim_heap

RUNNER = "python-host"
RUNNER_VERSION = "1.0"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def device_info() -> dict[str, Any]:
    """What this host is: the ``device`` object of the meta record."""
    soc = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            soc = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), soc)
    except OSError:
        pass
    return {"model": platform.node() or "host", "os": platform.platform(), "soc": soc,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def runner_version() -> str:
    try:
        from importlib.metadata import version

        return f"{RUNNER_VERSION} (ai-edge-litert {version('ai-edge-litert')})"
    except Exception:  # noqa: BLE001  (metadata is informative only)
        return RUNNER_VERSION


class _Run:
    """One execution of one run folder (holds its trace, memory sampler and request)."""

    def __init__(self, run_dir: Path, tracer: Tracer) -> None:
        self.run_dir = run_dir
        self.tracer = tracer
        self.raw: Any = None
        self.request: RunRequest | None = None
        self.meta_written = False
        self.sampler: MemorySampler | None = None

    # -- records -------------------------------------------------------------------------------

    def write_meta(self, run_id: str | None, runtime: dict[str, Any] | None) -> None:
        rt = runtime or {}
        accelerator = rt.get("accelerator")
        self.tracer.write(MetaRecord(
            t=self.tracer.now(), run_id=run_id, runner=RUNNER, runner_version=runner_version(), device=device_info(),
            runtime={"accelerator": accelerator, "precision": rt.get("precision"), "threads": rt.get("threads"),
                     "delegate": delegate_label() if accelerator == "cpu" else None,
                     "residency": rt.get("residency")}))
        self.meta_written = True

    @property
    def run_id(self) -> str | None:
        """The request's run id; from the raw file when the request is invalid; None when unreadable."""
        if self.request is not None:
            return self.request.run_id
        raw_id = self.raw.get("run_id") if isinstance(self.raw, dict) else None
        return raw_id if isinstance(raw_id, str) else None

    def status(self, state: str, message: str | None = None, images: tuple[str, ...] | None = None) -> Status:
        st = Status(state=state, run_id=self.run_id, message=message,
                    finished_t=None if state == "running" else self.tracer.now(), images=images)
        write_json(self.run_dir / STATUS_FILE, st.to_dict())
        return st

    def fail(self, err: BaseException) -> None:
        """Record ``err``: meta (if not yet), error event, error status. Never raises."""
        message = str(err) if isinstance(err, HarnessError) else _one_line(err)
        message = " ".join(message.split()) or type(err).__name__
        try:
            if self.sampler is not None:
                self.sampler.stop()
            if not self.meta_written:
                self.write_meta(self.run_id, None)
            self.tracer.event("error", message, {"error_type": type(err).__name__})
        except (OSError, ValueError):
            pass
        try:
            self.status("error", message)
        except OSError:
            pass

    # -- the run -------------------------------------------------------------------------------

    def execute(self) -> Status:
        self.raw = read_json(self.run_dir / REQUEST_FILE)
        req = self.request = RunRequest.from_dict(self.raw, source=str(self.run_dir / REQUEST_FILE))
        # status first: whoever follows the trace may act on its first record (a farm kills a run there), and
        # must then find the run marked running, not no status at all
        self.status("running")
        self.write_meta(req.run_id, req.runtime.to_dict())
        self.sampler = MemorySampler(self.tracer, req.profiling.memory_interval_ms / 1000.0).start()
        rt, prof = req.runtime, req.profiling
        if rt.accelerator != "cpu":
            raise RunnerError(f"runtime.accelerator={rt.accelerator!r}: the {RUNNER} runner runs on the cpu only")
        if rt.precision != "fp32":
            raise RunnerError(f"runtime.precision={rt.precision!r}: the {RUNNER} runner computes in fp32 only")

        inputs = load_inputs(self.run_dir, req)
        mdir = models_dir(self.run_dir, req)
        paths = {c: mdir / req.models[c].file for c in COMPONENTS}
        blocks = prof.block_models if prof.per_block else ()
        for c in COMPONENTS:
            verify_file(paths[c], req.models[c].sha256, c)
        for b in blocks:
            verify_file(mdir / b.file, b.sha256, f"block {b.name}")
        if rt.residency == "phase":
            # the same load measurements, one component at a time, each released before the next; every
            # generation then opens each model for its stage only
            for c in COMPONENTS:
                load_model(paths[c], req.models[c], c, rt.threads, self.tracer)
                trim_heap()
            models = Models.per_stage(
                lambda c: open_model(str(paths[c]), threads=rt.threads, sha256=req.models[c].sha256), req)
        else:
            models = Models.of({c: load_model(paths[c], req.models[c], c, rt.threads, self.tracer)
                                for c in COMPONENTS}, req)

        steps, total = req.scheduler.table.steps, rt.warmup + rt.repeats
        gen: Generation | None = None
        for n in range(total):
            warm = n < rt.warmup
            repeat = n if warm else n - rt.warmup
            gen = generate(models, inputs, steps, self.tracer, repeat=repeat, warmup=warm,
                           record=bool(blocks) and n == total - 1)
            self.tracer.event("progress", f"generation {n + 1}/{total} done",
                              {"repeat": repeat, "warmup": warm})
        assert gen is not None
        self.write_images(gen)
        if prof.per_op:
            profile_ops_of(paths, req, models, gen, inputs, self.tracer)

        if blocks:
            unet_output = models.outputs["unet"]
            del models  # the block chain replaces the UNet from here on
            trim_heap()
            loaded = [(b, load_model(mdir / b.file, b, b.name, rt.threads, self.tracer, phases=("cold",)))
                      for b in blocks]
            # the whole UNet again, to be timed beside the chain (a load span of phase "reference": not one of
            # the pipeline's cold loads)
            whole = (load_model(paths["unet"], req.models["unet"], "unet", rt.threads, self.tracer,
                                phases=("reference",)) if prof.block_reference else None)
            worst = profile_blocks(loaded, gen, inputs, unet_output, self.tracer, repeat=rt.repeats - 1,
                                   max_steps=prof.block_steps, reference=whole)
            if worst is not None:
                self.tracer.event("per_block_check", f"block chain vs unet: max |diff| {worst:.3g}",
                                  {"output": unet_output, "max_abs_diff": worst})

        self.sampler.stop()
        return self.status("ok", images=(IMAGE_PNG,))

    def write_images(self, gen: Generation) -> None:
        from PIL import Image

        gen.image.astype("<f4").tofile(self.run_dir / IMAGE_F32)
        Image.fromarray(to_uint8_hwc(gen.image), "RGB").save(self.run_dir / IMAGE_PNG)


def profile_ops_of(paths: dict[str, Path], req: RunRequest, models: Models, gen: Generation, inputs, tracer: Tracer) -> None:
    """Per-op spans (cat "op") from LiteRT's profiler, one profiled invocation per component.

    Ops run one after another on the interpreter thread, so each op's span starts where the previous
    one ended; ``args`` carry the op type, the node index and, for XNNPACK operators, the partition.
    """
    from host.op_profiler import OpProfilerUnavailable, profile_ops

    feeds = {
        "text_encoder": {"input_ids": inputs.ids},
        # The first step's UNet inputs, exactly as the generation fed them.
        "unet": unet_feed(inputs.noise * inputs.init_scale * inputs.coeffs["in_scale"][0], inputs.t_emb[0], gen.context),
        "vae_decoder": {"latents": gen.latents / inputs.vae_scale},
    }
    for c in COMPONENTS:
        try:
            prof = profile_ops(str(paths[c]), feeds[c], threads=req.runtime.threads, runs=1,
                               signature=req.models[c].signature)
        except OpProfilerUnavailable as e:
            tracer.event("warning", f"per_op profiling unavailable for {c}: {e}")
            continue
        t = tracer.now()
        for i, ev in enumerate(prof.op_events(0)):
            dur = ev.elapsed_us / 1e6
            tracer.write(SpanRecord(t=round(t + dur, 6), name=ev.tag, cat="op", start=round(t, 6), dur=dur,
                                    component=c, step=0 if c == "unet" else None, repeat=0, warmup=False,
                                    args={"op_type": ev.op_type, "index": i, "node_index": ev.node_index,
                                          "partition": ev.partition, "event_type": ev.event_type}))
            t += dur


def run(run_dir: str | Path, on_record: Callable[[Any], None] | None = None) -> Status:
    """Execute the run folder ``run_dir``; returns the ok status, raises a HarnessError on failure.

    ``on_record`` sees every trace record as it is written (the deploy CLI drives its progress bar with it).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunnerError(f"{run_dir}: run folder not found")
    for stale in (TRACE_FILE, IMAGE_PNG, IMAGE_F32, STATUS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    try:
        writer = TraceWriter(run_dir / TRACE_FILE)
    except OSError as e:
        raise RunnerError(f"{run_dir / TRACE_FILE}: cannot write the trace ({e.strerror})") from None
    with writer:
        state = _Run(run_dir, Tracer(writer, Clock(), on_record))
        try:
            return state.execute()
        except HarnessError as e:
            state.fail(e)
            raise
        except Exception as e:
            err = RunnerError(_one_line(e))
            state.fail(err)
            raise err from e
        except BaseException as e:  # KeyboardInterrupt, SystemExit: record, then let it through
            state.fail(RunnerError(f"interrupted ({type(e).__name__})"))
            raise
        finally:
            if state.sampler is not None:
                state.sampler.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m host.runner RUN_DIR``: exit 0 when the run is ok, 2 on error (one line on stderr)."""
    p = argparse.ArgumentParser(prog="python -m host.runner", description="Run a prepared run folder on this host.")
    p.add_argument("run_dir", type=Path, help="folder with request.json, noise.bin and models/")
    args = p.parse_args(argv)
    try:
        st = run(args.run_dir)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ok: {args.run_dir / IMAGE_PNG} (run {st.run_id}, {st.finished_t:.2f} s)")
    return 0

