"""On a real phone: ``pytest -m device tests/host/devices --device s23`` (or a serial / UDID; default $SDPHONE_DEVICE).

Needs the runner app installed (or SDPHONE_APK / SDPHONE_IPA), a phone attached and authorised. Uses the tiny
model config, so a run takes seconds; the second push must skip every model.
"""
from __future__ import annotations

import json

import pytest

from host.devices import select_device
from host.protocol import read_trace

from .conftest import real_device_arg

pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def phone(request):
    name = real_device_arg(request.config)
    if not name:
        pytest.skip("give a phone with --device <profile|serial|UDID> or SDPHONE_DEVICE")
    dev = select_device(name)
    if dev.platform == "host":
        pytest.skip("--device names the host; these tests need a phone")
    yield dev
    dev.cleanup()


def test_the_phone_is_selected(phone):
    assert phone.describe() and phone.profile.platform == phone.platform


def _run(tmp_path, tiny_builds, phone, name):
    from host.request import prepare_run

    manifest, build_dir = tiny_builds.get("baseline")
    run = tmp_path / name
    prepare_run(run, manifest, build_dir, prompt='a red cube; "$(echo hi)"', steps=2, seed=1,
                runtime={"accelerator": "cpu", "precision": "fp32", "threads": phone.profile.runtime.threads,
                         "warmup": 0, "repeats": 1},
                run_id=f"devicetest_{name}")
    return run


def test_tiny_generation_round_trip(phone, tiny_builds, tmp_path):
    run = _run(tmp_path, tiny_builds, phone, "first")
    phone.prepare(run)
    first = phone.push_models(run)
    records = []
    phone.start(run)
    status = phone.wait(600, on_record=records.append)
    pulled = phone.pull(run)
    phone.cleanup()
    assert status["state"] == "ok", status
    assert {"trace.jsonl", "status.json", "image.png"} <= set(pulled)
    trace = read_trace(run / "trace.jsonl")
    assert trace[0].TYPE == "meta" and trace[0].runner == phone.platform
    assert any(getattr(r, "name", None) == "unet_step" for r in records)
    assert json.loads((run / "status.json").read_text())["state"] == "ok"

    again = _run(tmp_path, tiny_builds, phone, "second")
    phone.prepare(again)
    second = phone.push_models(again)
    phone.cleanup()
    assert second.pushed_files == 0 and second.skipped_files == first.pushed_files + first.skipped_files
