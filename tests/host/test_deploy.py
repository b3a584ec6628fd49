"""``python -m host.deploy`` end to end on the tiny config, and its bad inputs."""
from __future__ import annotations

import errno
import json

import pandas as pd
import pytest

from host import deploy
from host.protocol import STATUS_FILE, TRACE_FILE, read_trace


def _args(tmp_path, artifact_root, *extra):
    return ["--model", "tiny", "--size", "64", "--steps", "2", "--out", str(tmp_path / "runs"),
            "--artifacts", str(artifact_root), *extra]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, artifact_root):
    tmp = tmp_path_factory.mktemp("deploy")
    rc = deploy.main(_args(tmp, artifact_root, "--per-op", "--block-steps", "1"))
    assert rc == 0
    return tmp / "runs" / "host" / "latest"


def test_main_job_leaves_a_complete_run_folder(deployed):
    session = deployed.resolve()
    # the host profile's optimized set (device_profiles/host.toml: runtime.optimized) beside the baseline
    assert session.name.endswith("_baseline-vs-cpu")
    info = json.loads((session / "deploy.json").read_text())
    assert info["variants"] == ["baseline", "cpu"] and info["device"] == "host"
    for variant in ("baseline", "cpu"):
        run = session / variant
        assert json.loads((run / STATUS_FILE).read_text())["state"] == "ok"
        assert (run / "image.png").is_file() and (run / "models" / "manifest.json").is_file()
        spans = [r for r in read_trace(run / TRACE_FILE) if r.TYPE == "span"]
        cats = {s.cat for s in spans}
        assert {"load", "component", "step", "total", "block", "op"} <= cats
        assert {s.name for s in spans if s.cat == "block"} >= {"conv_in", "mid_block", "conv_out"}
        # the whole UNet timed beside the chain (deploy's default) at the one --block-steps step, after a warm-up
        assert [s.warmup for s in spans if s.cat == "block" and s.name == "unet"] == [True, False]
    spans = pd.read_parquet(session / "tables" / "spans.parquet")
    assert set(spans["variant"]) == {"baseline", "cpu"}
    assert (session / "tables" / "memory.csv").is_file()
    trace = json.loads((session / "timeline.perfetto.json").read_text())
    assert any(e.get("ph") == "X" for e in trace["traceEvents"])
    html = (session / "report.html").read_text()
    assert "Per-layer latency" in html and "Sum of the per-block models" in html
    summary = (session / "summary.txt").read_text()
    assert "baseline" in summary and "cpu" in summary and "sum of UNet blocks" in summary
    assert summary.count("timed beside them") == 2


def test_no_block_reference_leaves_the_whole_unet_out_of_the_block_pass(tmp_path, artifact_root):
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "cpu", "--block-steps", "1", "--no-block-reference"))
    assert rc == 0
    run = (tmp_path / "runs" / "host" / "latest").resolve() / "cpu"
    assert json.loads((run / "request.json").read_text())["profiling"]["block_reference"] is False
    blocks = [s for s in read_trace(run / TRACE_FILE) if s.TYPE == "span" and s.cat == "block"]
    assert blocks and not any(s.name == "unet" for s in blocks)
    assert "timed beside them" not in (run.parent / "summary.txt").read_text()


def test_an_int8_variant_runs_beside_its_fp32_reference(tmp_path, artifact_root):
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "baseline", "--variant", "+flash-int8",
                           "--no-profile-blocks"))
    assert rc == 0
    session = (tmp_path / "runs" / "host" / "latest").resolve()
    assert session.name.endswith("_baseline-vs-+flash-int8")
    run = session / "+flash-int8"
    assert json.loads((run / STATUS_FILE).read_text())["state"] == "ok"
    manifest = json.loads((run / "models" / "manifest.json").read_text())
    assert manifest["variant"] == {**manifest["variant"], "name": "+flash", "quantization": "int8"}
    spans = pd.read_parquet(session / "tables" / "spans.parquet")
    assert set(spans["variant"]) == {"baseline", "+flash-int8"}
    summary = (session / "summary.txt").read_text()
    assert "+flash-int8" in summary


@pytest.mark.parametrize("extra, culprit", [
    (["--device", "nokia3310"], "nokia3310"),
    (["--variant", "turbo"], "turbo"),
    (["--variant", "baseline-int4"], "baseline-int4"),
    (["--variant", "optimized-int8"], "variant 'optimized': Winograd cannot be combined with int8"),
    (["--scheduler", "plms"], "plms"),
    (["--steps", "0"], "--steps"),
    (["--size", "100"], "--size 100"),
    (["--engine", "mediapipe"], "--engine mediapipe"),
    (["--engine", "mediapipe", "--size", "512"], "--engine mediapipe: the MediaPipe Image Generator peer runs"),
    (["--checkpoint", "/nope/model.safetensors"], "/nope/model.safetensors"),
])
def test_bad_input_is_one_line(extra, culprit, tmp_path, artifact_root, capsys):
    rc = deploy.main(_args(tmp_path, artifact_root, *extra))
    err = capsys.readouterr().err
    assert rc == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and culprit in lines[0], err
    assert "Traceback" not in err


def test_phone_profile_with_no_phone_attached_fails_fast(tmp_path, artifact_root, capsys):
    rc = deploy.main(_args(tmp_path, artifact_root, "--device", "s23"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: s23:")


def test_a_full_disk_keeps_what_was_collected(tmp_path, artifact_root, capsys, monkeypatch):
    import host.runner

    monkeypatch.setenv("SDPHONE_HOST_RUNNER", "inprocess")  # the replaced run() must be the one that runs
    real_run = host.runner.run
    calls = []

    def run_then_fill_disk(run_dir, on_record=None):
        calls.append(run_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / TRACE_FILE))
        return real_run(run_dir, on_record=on_record)

    monkeypatch.setattr(host.runner, "run", run_then_fill_disk)
    rc = deploy.main(_args(tmp_path, artifact_root, "--no-profile-blocks"))
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and str(calls[1]) in err
    first = calls[0]
    assert json.loads((first / STATUS_FILE).read_text())["state"] == "ok"
    assert read_trace(first / TRACE_FILE)


def test_the_host_runner_reports_its_own_peak_not_the_deploy_process(tmp_path, artifact_root):
    import numpy as np

    ballast = np.ones(96 << 20)  # 768 MiB touched in this process: VmHWM of an in-process runner includes it
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "baseline", "--no-profile-blocks"))
    assert rc == 0 and ballast[-1] == 1.0
    run = (tmp_path / "runs" / "host" / "latest").resolve() / "baseline"
    peaks = [r.peak_bytes for r in read_trace(run / TRACE_FILE) if r.TYPE == "memory" and r.peak_bytes]
    assert peaks and 0 < max(peaks) < ballast.nbytes
    assert "ok:" in (run / "runner.log").read_text()


def _runner_processes(run_dir):
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(run_dir).encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_a_run_past_its_timeout_is_stopped_in_one_line(tmp_path, artifact_root, capsys):
    # 500 tiny steps take seconds; 0.5 s was about as long as a warm 2-step tiny run, which then finished in time
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "baseline", "--no-profile-blocks", "--steps", "500",
                           "--timeout", "0.1"))
    err = capsys.readouterr().err
    assert rc == 2
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "did not finish within 0.1 s and was stopped" in lines[0], err
    run = next((tmp_path / "runs" / "host").glob("*/baseline"))
    assert _runner_processes(run) == []


def test_a_killed_runner_keeps_its_trace_and_says_how_it_died(deployed, tmp_path):
    import shutil
    import signal

    from host.devices.errors import LowMemoryKilled
    from host.devices.host import HostDevice
    from host.profiles import load_profile

    run = tmp_path / "run"
    shutil.copytree(deployed.resolve() / "baseline", run, symlinks=True)
    device = HostDevice(load_profile("host"), mode="subprocess")
    device.poll_interval = 0.01  # the kill lands long before the tiny run could finish
    seen = []

    def kill_at_first_record(record):
        seen.append(record)
        if len(seen) == 1:
            device._proc.send_signal(signal.SIGKILL)

    device.prepare(run)
    device.start(run)
    try:
        with pytest.raises(LowMemoryKilled, match="killed by SIGKILL"):
            device.wait(60, on_record=kill_at_first_record)
    finally:
        device.cleanup()
    records = read_trace(run / TRACE_FILE)
    assert records[0].TYPE == "meta" and seen[0].TYPE == "meta"
    assert len(seen) == len(records)  # every record written before the kill reached the caller
    assert json.loads((run / STATUS_FILE).read_text())["state"] == "running"  # never made final
    assert not any(getattr(r, "name", None) == "total" for r in records)


def test_an_unknown_host_runner_mode_is_one_line(tmp_path, artifact_root, capsys, monkeypatch):
    monkeypatch.setenv("SDPHONE_HOST_RUNNER", "thread")
    rc = deploy.main(_args(tmp_path, artifact_root, "--variant", "baseline", "--no-profile-blocks"))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "SDPHONE_HOST_RUNNER='thread'" in lines[0], err
