"""Runner failures: one-line HarnessError naming the culprit, an error event, an error status, nothing lost."""
from __future__ import annotations

import json

import pytest

from host.errors import HarnessError
from host.protocol import REQUEST_FILE, STATUS_FILE, TRACE_FILE, Status, read_trace
from host.protocol.jsonio import read_json
from host.request import file_sha256
from host.runner import RunnerError, run
from host.runtime import model_class


def _fail(run_dir, match: str) -> tuple[HarnessError, list, Status]:
    with pytest.raises(HarnessError) as e:
        run(run_dir)
    msg = str(e.value)
    assert match in msg and "\n" not in msg, msg
    records = read_trace(run_dir / TRACE_FILE)
    status = Status.from_dict(read_json(run_dir / STATUS_FILE))
    assert records[0].TYPE == "meta"
    errors = [r for r in records if r.TYPE == "event" and r.name == "error"]
    assert len(errors) == 1 and errors[0].message == msg
    assert status.state == "error" and status.message == msg and status.finished_t >= errors[0].t
    return e.value, records, status


def _replace(path, data: bytes) -> None:
    """Give ``path`` new content without touching the file it is hard-linked to (the build cache)."""
    path.unlink()
    path.write_bytes(data)


def _edit_request(run_dir, edit) -> None:
    d = json.loads((run_dir / REQUEST_FILE).read_text())
    edit(d)
    (run_dir / REQUEST_FILE).write_text(json.dumps(d))


def test_sha_mismatch_names_the_file(make_run):
    run_dir = make_run()
    unet = run_dir / "models" / "unet.tflite"
    data = bytearray(unet.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    _replace(unet, bytes(data))
    err, records, _ = _fail(run_dir, "unet.tflite: sha256 mismatch (unet)")
    assert isinstance(err, RunnerError)
    assert not [r for r in records if r.TYPE == "span"]  # verified before anything is loaded


def test_corrupt_tflite_names_the_file(make_run):
    run_dir = make_run()
    vae = run_dir / "models" / "vae_decoder.tflite"
    _replace(vae, vae.read_bytes()[:5000])  # truncated copy, with a matching sha so loading is what fails
    _edit_request(run_dir, lambda d: d["models"]["vae_decoder"].__setitem__("sha256", file_sha256(vae)))
    _, records, _ = _fail(run_dir, "vae_decoder.tflite: not a loadable LiteRT model")
    loaded = [r.component for r in records if r.TYPE == "span" and r.cat == "load"]
    assert loaded == ["text_encoder"] * 3 + ["unet"] * 3  # what was done before the failure is kept


def test_missing_tflite_names_the_file(make_run):
    run_dir = make_run()
    (run_dir / "models" / "text_encoder.tflite").unlink()
    _fail(run_dir, "text_encoder.tflite: text_encoder file not found")


def test_corrupt_noise_is_named(make_run):
    run_dir = make_run()
    _replace(run_dir / "noise.bin", b"\0" * 16)
    _fail(run_dir, "noise.bin: sha256 mismatch (noise)")


def test_invalid_request_names_the_key(make_run):
    run_dir = make_run()
    _edit_request(run_dir, lambda d: d["scheduler"].pop("x_d"))
    _, records, status = _fail(run_dir, "request.json: $.scheduler.x_d: required key is missing")
    assert records[0].run_id == status.run_id == "test_run" and records[0].runtime["threads"] is None


def test_unreadable_request(make_run):
    run_dir = make_run()
    (run_dir / REQUEST_FILE).write_text("{not json")
    _, records, status = _fail(run_dir, "request.json: not valid JSON")
    assert records[0].run_id is None and status.run_id is None


def test_unsupported_accelerator(make_run):
    run_dir = make_run(runtime={"accelerator": "gpu"})
    _fail(run_dir, "runtime.accelerator='gpu'")


def test_crash_mid_run_keeps_the_steps_done(make_run, monkeypatch):
    run_dir = make_run(steps=4, runtime={"warmup": 0, "repeats": 1})
    cls = model_class()
    original = cls.run
    calls = {"unet": 0}

    def flaky(self, **inputs):
        if self.path.endswith("unet.tflite"):
            if calls["unet"] == 3:  # the first invocation is the load-time one, then steps 0 and 1
                raise RuntimeError("injected failure at step 2\nsecond line")
            calls["unet"] += 1
        return original(self, **inputs)

    monkeypatch.setattr(cls, "run", flaky)
    err, records, _ = _fail(run_dir, "RuntimeError: injected failure at step 2")
    assert isinstance(err, RunnerError) and isinstance(err.__cause__, RuntimeError)
    steps = [r.step for r in records if r.TYPE == "span" and r.name == "unet_step"]
    assert steps == [0, 1]
    assert not [r for r in records if r.TYPE == "span" and r.name in ("generation", "vae_decoder")]
    assert any(r.TYPE == "memory" for r in records)
    assert not (run_dir / "image.png").exists()


def test_rerun_replaces_old_outputs(make_run):
    run_dir = make_run(steps=1)
    (run_dir / "models" / "unet.tflite").rename(run_dir / "unet.bak")
    with pytest.raises(HarnessError):
        run(run_dir)
    (run_dir / "unet.bak").rename(run_dir / "models" / "unet.tflite")
    assert run(run_dir).ok
    records = read_trace(run_dir / TRACE_FILE)
    assert [r for r in records if r.TYPE == "meta"] == records[:1]
    assert not [r for r in records if r.TYPE == "event" and r.name == "error"]
