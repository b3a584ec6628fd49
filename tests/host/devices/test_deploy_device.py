"""host.deploy with devices: a missing phone fails before any build; a variant runs end to end on a fake phone."""
from __future__ import annotations

import argparse
import json
import time

import pytest

from host import deploy
from host.devices import RunFailed, select_device
from host.protocol import read_trace_dicts

from .conftest import GOLDEN_REQUEST, make_run
from .fake_adb import FakeAdbServer, FakePhone

FAST = {"poll_interval": 0.02, "memory_interval": 0.05, "start_timeout": 2.0}


def test_no_phone_fails_fast_before_any_build(contracts, tmp_path, monkeypatch, capsys):
    import host.build.cli

    def no_builds(*a, **k):
        raise AssertionError("a model was built before the device was resolved")

    monkeypatch.setattr(host.build.cli, "run_builds", no_builds)
    for k, v in contracts.items():
        monkeypatch.setenv(k, v)
    with FakeAdbServer([]) as srv:
        monkeypatch.setenv("ANDROID_ADB_SERVER_HOST", srv.host)
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(srv.port))
        t0 = time.monotonic()
        rc = deploy.main(["--device", "s23", "--out", str(tmp_path / "runs")])
        elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and elapsed < 10
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: s23: no attached android device matches profile s23")
    assert "attached: none" in lines[0] and "adb connect host:port" in lines[0] and "USB debugging" in lines[0]
    assert not (tmp_path / "runs").exists()


def _fake_build(tmp_path):
    """A build folder + manifest shaped like host.build's, with small stand-in model files."""
    req = json.loads(GOLDEN_REQUEST.read_text())
    build = tmp_path / "build"
    build.mkdir()
    run = make_run(tmp_path)  # reuse its model bytes and hashes
    run_req = json.loads((run / "request.json").read_text())
    components = {}
    for c, spec in run_req["models"].items():
        (build / spec["file"]).write_bytes((run / "models" / spec["file"]).read_bytes())
        components[c] = {"file": spec["file"], "sha256": spec["sha256"],
                         "signature": {"name": spec["signature"], "inputs": spec["inputs"], "outputs": spec["outputs"]}}
    manifest = {"variant": {"name": "baseline"}, "components": components,
                "config": {"text_encoder": {"vocab_size": 49408}, "vae": {"scaling_factor": req["vae_scaling_factor"]}}}
    (build / "manifest.json").write_text(json.dumps(manifest))
    return manifest, build


def _args(**kw):
    base = dict(prompt='"; rm -rf / #$(reboot)', negative_prompt="", seed=42, steps=4, scheduler="dpmpp_2m",
                karras=False, guidance=7.5, size=512, threads=None, warmup=0, repeats=1, memory_interval_ms=50,
                per_op=False, block_steps=2, timeout=20)
    base.update(kw)
    return argparse.Namespace(**base)


def test_run_variant_on_a_phone(contracts, tmp_path, capsys):
    manifest, build = _fake_build(tmp_path)
    session = tmp_path / "runs" / "s23" / "20261122T100000Z_baseline"
    session.mkdir(parents=True)
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = select_device("s23", env=contracts, adb=srv.client(), options=FAST)
        assert dev.name == "s23" and dev.profile.device.platform == "android"
        run_dir = deploy._run_variant(_args(), dev, session, manifest, build)
        assert run_dir == session / "baseline"
        assert json.loads((run_dir / "status.json").read_text())["state"] == "ok"
        assert [r["type"] for r in read_trace_dicts(run_dir / "trace.jsonl")][0] == "meta"
        info = json.loads((run_dir / "device_run.json").read_text())
        assert info["serial"] == "R5CT123" and info["push"]["pushed_files"] == 3 and info["status"] == "ok"
        assert sorted(info["pulled"]) == ["image.f32", "image.png", "status.json", "trace.jsonl"]
        out = capsys.readouterr().out
        assert "push baseline to s23" in out and "pushed 3 files" in out

        session2 = tmp_path / "runs" / "s23" / "20261122T100500Z_baseline"
        session2.mkdir()
        deploy._run_variant(_args(), dev, session2, manifest, build)
        assert json.loads((session2 / "baseline" / "device_run.json").read_text())["push"]["skipped_files"] == 3

        phone.files.clear()  # the models vanish: the app reports a sha256 error -> RunFailed, results still pulled
        phone.mkdirs("/sdcard")
        session3 = tmp_path / "runs" / "s23" / "20261122T101000Z_baseline"
        session3.mkdir()
        phone.scenario = "ok"
        dev.push_models = lambda run_dir, progress=None: dev.last_push  # skip the push this time
        with pytest.raises(RunFailed) as e:
            deploy._run_variant(_args(), dev, session3, manifest, build)
        assert "sha256 mismatch" in str(e.value)
        assert json.loads((session3 / "baseline" / "status.json").read_text())["state"] == "error"
    for _, cmd in srv.shell_commands:
        assert "reboot" not in cmd and "$(" not in cmd


def test_push_summary_reports_bytes_and_time_per_run():
    from host.devices.base import PushStats

    first = PushStats(pushed_files=3, pushed_bytes=3 << 20, seconds=2.5).to_dict()
    again = PushStats(skipped_files=3, skipped_bytes=3 << 20, seconds=0.4).to_dict()
    text = deploy.push_summary({"baseline": first, "optimized": again})
    assert text.splitlines() == [
        "push baseline: 3.0 MiB in 3 file(s), 0.0 MiB in 0 unchanged file(s) skipped, 2.5 s",
        "push optimized: 0.0 MiB in 0 file(s), 3.0 MiB in 3 unchanged file(s) skipped, 0.4 s",
        "pushed 3.0 MiB in all, 2.9 s"]
