"""The Python host runner end to end on the tiny build: trace, image, status, and the exact algorithm."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from host.protocol import (
    IMAGE_F32, IMAGE_PNG, REQUEST_FILE, STATUS_FILE, TRACE_FILE, RunRequest, Status, read_trace,
)
from host.protocol.jsonio import read_json
from host.runner import main, run
from host.runner.loading import load_inputs, load_model
from host.runner.pipeline import Models, generate, to_uint8_hwc
from host.runner.tracing import Clock, Tracer
from host.runtime import delegate_label
from host.protocol.trace import TraceWriter
from host.schedulers import sample


@pytest.fixture
def done_run(make_run):
    """One full run: 1 warmup + 2 measured generations, per-block profiling with the whole UNet as one block."""
    run_dir = make_run(runtime={"threads": 2, "warmup": 1, "repeats": 2},
                       profiling={"memory_interval_ms": 5, "per_block": True,
                                  "block_models": [{"name": "whole_unet", "file": "unet.tflite"}]})
    status = run(run_dir)
    return run_dir, status


def test_run_writes_trace_image_and_status(done_run):
    run_dir, status = done_run
    assert status.ok and status.run_id == "test_run" and status.images == (IMAGE_PNG,)
    assert Status.from_dict(read_json(run_dir / STATUS_FILE)) == status

    records = read_trace(run_dir / TRACE_FILE)
    meta = records[0]
    assert meta.TYPE == "meta" and meta.runner == "python-host" and meta.run_id == "test_run"
    assert meta.runtime == {"accelerator": "cpu", "precision": "fp32", "threads": 2, "delegate": delegate_label(),
                            "residency": "all"}
    assert meta.runtime["delegate"].startswith("xnnpack")
    spans = [r for r in records if r.TYPE == "span"]
    loads = [(s.component, s.args["phase"]) for s in spans if s.cat == "load"]
    assert loads[:9] == [(c, p) for c in ("text_encoder", "unet", "vae_decoder")
                         for p in ("cold", "warm", "first_invoke")]
    assert loads[9:] == [("whole_unet", "cold"), ("whole_unet", "first_invoke"),
                         ("unet", "reference"), ("unet", "first_invoke")]
    by_kind = Counter((s.name, s.cat, s.warmup) for s in spans)
    assert by_kind[("generation", "total", True)] == 1 and by_kind[("generation", "total", False)] == 2
    assert by_kind[("text_encoder", "component", False)] == 2 and by_kind[("vae_decoder", "component", False)] == 2
    assert [(s.repeat, s.step) for s in spans if s.name == "unet_step" and not s.warmup] == \
        [(r, i) for r in range(2) for i in range(3)]
    # the chain (one block here) and the whole UNet beside it: a warm-up round, then before the chain at even
    # steps, after it at odd ones
    assert [(s.name, s.repeat, s.step, s.warmup) for s in spans if s.cat == "block"] == [
        ("unet", 1, 0, True), ("whole_unet", 1, 0, True),
        ("unet", 1, 0, False), ("whole_unet", 1, 0, False), ("whole_unet", 1, 1, False), ("unet", 1, 1, False),
        ("unet", 1, 2, False), ("whole_unet", 1, 2, False)]
    assert all(s.args == {"reference": True} for s in spans if s.cat == "block" and s.name == "unet")
    for s in spans:
        assert s.dur >= 0 and s.t >= s.start and s.t == pytest.approx(s.start + s.dur, abs=2e-6)
    gens = [s for s in spans if s.name == "generation"]
    inner = [s for s in spans if s.repeat == gens[-1].repeat and not s.warmup and s.cat in ("component", "step")]
    assert all(gens[-1].start <= s.start and s.t <= gens[-1].t for s in inner)

    memory = [r for r in records if r.TYPE == "memory"]
    assert len(memory) >= 2 and all(m.source == "proc_status" and m.rss_bytes > 0 for m in memory)
    assert all(m.peak_bytes >= m.rss_bytes for m in memory)
    events = {r.name: r for r in records if r.TYPE == "event"}
    assert "error" not in events and events["per_block_check"].args["max_abs_diff"] == 0.0

    png = np.asarray(Image.open(run_dir / IMAGE_PNG))
    assert png.shape == (64, 64, 3) and png.dtype == np.uint8
    img = np.fromfile(run_dir / IMAGE_F32, dtype="<f4").reshape(1, 3, 64, 64)
    assert np.isfinite(img).all()
    assert np.array_equal(png, to_uint8_hwc(img))


def test_phase_residency_loads_each_model_for_its_stage_only(make_run, done_run):
    run_dir = make_run(runtime={"threads": 2, "warmup": 1, "repeats": 2, "residency": "phase"})
    assert run(run_dir).ok
    records = read_trace(run_dir / TRACE_FILE)
    assert records[0].runtime["residency"] == "phase"
    spans = [r for r in records if r.TYPE == "span"]
    loads = [(s.component, s.args["phase"]) for s in spans if s.cat == "load"]
    # the usual load measurements, then three stage loads per generation, in stage order
    assert loads[:9] == [(c, p) for c in ("text_encoder", "unet", "vae_decoder") for p in ("cold", "warm", "first_invoke")]
    assert loads[9:] == [(c, "stage") for _ in range(3) for c in ("text_encoder", "unet", "vae_decoder")]
    for gen in (s for s in spans if s.name == "generation"):
        inside = [s for s in spans if s.repeat == gen.repeat and s.warmup == gen.warmup and s.cat != "total"
                  and gen.start <= s.start and s.t <= gen.t]
        order = [(s.cat, s.component) for s in inside if s.cat in ("load", "component")]
        assert order == [("load", "text_encoder"), ("component", "text_encoder"), ("load", "unet"),
                         ("load", "vae_decoder"), ("component", "vae_decoder")]
    # same models, same inputs: the same image as with every model held
    ref = np.fromfile(done_run[0] / IMAGE_F32, dtype="<f4")
    np.testing.assert_array_equal(np.fromfile(run_dir / IMAGE_F32, dtype="<f4"), ref)


def test_a_stage_model_is_released_when_its_stage_ends(make_run, tmp_path, monkeypatch):
    import gc
    import weakref

    import host.runner.pipeline

    trimmed = []  # at each heap trim: which of the opened models are already gone (the trim must come after)
    monkeypatch.setattr(host.runner.pipeline, "trim_heap", lambda: trimmed.append([r() is None for r in opened]))
    run_dir = make_run(steps=2)
    req = RunRequest.from_dict(read_json(run_dir / REQUEST_FILE))
    opened: list[weakref.ref] = []

    def loader(c):
        from host.runtime import LiteRtModel

        m = LiteRtModel(str(run_dir / "models" / req.models[c].file), threads=2)
        opened.append(weakref.ref(m))
        return m

    with TraceWriter(tmp_path / "t.jsonl") as w:
        tracer = Tracer(w, Clock())
        alive = []
        models = Models.per_stage(loader, req)
        real = models.run_stage

        def spy(component, tr, fn, **k):
            out = real(component, tr, fn, **k)
            gc.collect()
            alive.append([r() is not None for r in opened])
            return out

        object.__setattr__(models, "run_stage", spy)
        gen = generate(models, load_inputs(run_dir, req), 2, tracer, repeat=0, warmup=False)
    assert np.isfinite(gen.image).all()
    assert alive == [[False], [False, False], [False, False, False]]
    assert trimmed == [[True], [True, True], [True, True, True]]


@pytest.mark.parametrize("scheduler,karras", [("dpmpp_2m", False), ("euler", True), ("ddim", False)])
def test_final_latents_equal_the_reference_sampler(make_run, tmp_path, scheduler, karras):
    run_dir = make_run(scheduler=scheduler, karras=karras, steps=3, guidance=5.0)
    req = RunRequest.from_dict(read_json(run_dir / REQUEST_FILE))
    inputs = load_inputs(run_dir, req)
    with TraceWriter(tmp_path / "t.jsonl") as w:
        tracer = Tracer(w, Clock())
        loaded = {c: load_model(run_dir / "models" / req.models[c].file, req.models[c], c, 2, tracer, phases=("cold",))
                  for c in req.models}
        models = Models.of(loaded, req)
        gen = generate(models, inputs, req.scheduler.table.steps, tracer, repeat=0, warmup=False)

    ctx = gen.context
    unet, g = loaded["unet"], np.float32(req.guidance_scale)

    def eps_fn(model_in: np.ndarray, timestep: float, i: int) -> np.ndarray:
        t = np.asarray(req.scheduler.t_emb[i], dtype=np.float32)
        e = unet.run(sample=np.concatenate([model_in, model_in]), t_emb=np.stack([t, t]), context=ctx)["noise_pred"]
        return e[0:1] + g * (e[1:2] - e[0:1])

    ref = sample(req.scheduler.table, inputs.noise, eps_fn)
    np.testing.assert_allclose(gen.latents, ref, rtol=0, atol=1e-5)

    # ... and the runner's image.f32 is this generation's decoder output.
    assert run(run_dir).ok
    img = np.fromfile(run_dir / IMAGE_F32, dtype="<f4").reshape(gen.image.shape)
    np.testing.assert_allclose(img, gen.image, rtol=0, atol=1e-5)


def test_cli_exit_codes(make_run, capsys, tmp_path):
    run_dir = make_run(steps=1)
    assert main([str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "host.runner", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in proc.stderr


def test_per_op_profiling_writes_op_spans_for_every_component(make_run):
    run_dir = make_run(profiling={"memory_interval_ms": 20, "per_op": True})
    assert run(run_dir).ok
    ops = [r for r in read_trace(run_dir / TRACE_FILE) if r.TYPE == "span" and r.cat == "op"]
    assert {s.component for s in ops} == {"text_encoder", "unet", "vae_decoder"}
    unet_ops = [s for s in ops if s.component == "unet"]
    assert any(s.args["op_type"] == "Convolution" for s in unet_ops)
    assert all(s.dur >= 0 for s in ops)
    starts = [s.start for s in unet_ops]
    assert starts == sorted(starts)  # ops laid out back to back in execution order


def test_block_steps_limits_the_per_block_pass_and_the_reference_can_be_left_out(make_run):
    run_dir = make_run(profiling={"memory_interval_ms": 20, "per_block": True, "block_steps": 1,
                                  "block_reference": False,
                                  "block_models": [{"name": "whole_unet", "file": "unet.tflite"}]})
    assert run(run_dir).ok
    spans = [r for r in read_trace(run_dir / TRACE_FILE) if r.TYPE == "span"]
    assert [(b.name, b.step, b.warmup) for b in spans if b.cat == "block"] == [("whole_unet", 0, True), ("whole_unet", 0, False)]
    assert not any(s.cat == "load" and s.args["phase"] == "reference" for s in spans)
