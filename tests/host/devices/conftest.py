"""Fixtures for the device transports: app contracts, small run folders, a fake adb server, iOS fakes.

``--device`` (a profile name, serial or UDID for tests/host/devices/test_real_devices.py) is added here when
pytest is started on this folder; for plain ``pytest`` runs it has to live in a rootdir-level conftest
(tests/conftest.py), so this one tolerates both.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

GOLDEN_REQUEST = Path(__file__).resolve().parents[3] / "host" / "protocol" / "golden" / "request.json"
PACKAGE = "com.sdphone.runner"
BUNDLE = "dev.sdphone.runner"
ANDROID_ROOT = f"/sdcard/Android/data/{PACKAGE}/files/runs"
ANDROID_MODELS = f"/sdcard/Android/data/{PACKAGE}/files/models"


def pytest_addoption(parser):
    try:
        parser.addoption("--device", action="store", default=None,
                         help="device for -m device tests: profile name, serial or UDID (default $SDPHONE_DEVICE)")
    except ValueError:  # already added by a rootdir-level conftest
        pass


@pytest.fixture
def contracts(tmp_path) -> dict[str, str]:
    """Contract files for both apps and an environment that points at them (and never starts adb)."""
    android = tmp_path / "android_contract.json"
    # the keys of android_app/host_contract.json and ios_app/host_contract.json (plus the optional minimum versions)
    android.write_text(json.dumps({"package_id": PACKAGE, "headless_activity": ".HeadlessRunActivity",
                                   "extra_run_dir": "run_dir", "log_tag": "SdPhoneRunner",
                                   "log_finished_marker": "RUN_FINISHED", "device_runs_root": ANDROID_ROOT,
                                   "device_models_root": ANDROID_MODELS, "version_code": 3}))
    ios = tmp_path / "ios_contract.json"
    ios.write_text(json.dumps({"bundle_id": BUNDLE, "run_dir_argument": "--run-dir",
                               "documents_run_root": "Documents/runs", "bundle_version": "3"}))
    return {"SDPHONE_ANDROID_CONTRACT": str(android), "SDPHONE_IOS_CONTRACT": str(ios), "SDPHONE_ADB_AUTOSTART": "0"}


def make_run(root: Path, name: str = "run", prompt: str = "a photo of an astronaut",
             run_id: str = "20261122T100000Z_baseline",
             sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A run folder shaped like prepare_run's: request.json (golden, with small models), noise.bin, models/."""
    import random

    rnd = random.Random(seed)
    req = json.loads(GOLDEN_REQUEST.read_text())
    req["run_id"] = run_id
    req["prompt"]["text"] = prompt
    req["profiling"]["block_models"] = req["profiling"]["block_models"][:2]
    run = root / name
    (run / "models" / "blocks").mkdir(parents=True, exist_ok=True)
    sizes = sizes or {}
    specs = list(req["models"].values()) + req["profiling"]["block_models"]
    for spec in specs:
        data = rnd.randbytes(sizes.get(spec["file"], 3000 + 500 * len(spec["file"])))
        (run / "models" / spec["file"]).write_bytes(data)
        spec["sha256"] = hashlib.sha256(data).hexdigest()
    (run / "noise.bin").write_bytes(rnd.randbytes(1024))
    (run / "request.json").write_text(json.dumps(req))
    return run


@pytest.fixture
def run_factory(tmp_path):
    return lambda **kw: make_run(tmp_path, **kw)


def make_apk(path: Path, package: str = PACKAGE, version_code: int = 7, utf8: bool = False) -> Path:
    """A minimal APK: a zip whose AndroidManifest.xml is binary XML (string pool, resource map, <manifest>)."""
    import struct
    import zipfile

    strings = ["versionCode", "versionName", "manifest", "http://schemas.android.com/apk/res/android", "package",
               package]
    if utf8:
        enc = [bytes([len(x), len(x)]) + x.encode() + b"\0" for x in strings]
    else:
        enc = [struct.pack("<H", len(x)) + x.encode("utf-16-le") + b"\0\0" for x in strings]
    offsets, off = [], 0
    for e in enc:
        offsets.append(off)
        off += len(e)
    body = b"".join(enc)
    body += b"\0" * (-len(body) % 4)
    start = 28 + 4 * len(strings)
    pool = struct.pack("<HHIIIIII", 0x0001, 28, start + len(body), len(strings), 0, 0x100 if utf8 else 0, start, 0)
    pool += struct.pack(f"<{len(strings)}I", *offsets) + body
    resmap = struct.pack("<HHI", 0x0180, 8, 16) + struct.pack("<II", 0x0101021B, 0x0101021C)
    attrs = [(3, 0, 0xFFFFFFFF, 0x10, version_code), (0xFFFFFFFF, 4, 5, 0x03, 5)]
    ext = struct.pack("<IIHHHHHH", 0xFFFFFFFF, 2, 20, 20, len(attrs), 0, 0, 0)
    ext += b"".join(struct.pack("<IIIHBBI", ns, name, raw, 8, 0, dtype, data) for ns, name, raw, dtype, data in attrs)
    elem = struct.pack("<HHIII", 0x0102, 16, 16 + len(ext), 1, 0xFFFFFFFF) + ext
    xml = pool + resmap + elem
    xml = struct.pack("<HHI", 0x0003, 8, 8 + len(xml)) + xml
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("AndroidManifest.xml", xml)
        z.writestr("classes.dex", b"dex\n035\0")
    return path


def real_device_arg(config) -> str | None:
    return config.getoption("--device", default=None) or os.environ.get("SDPHONE_DEVICE")
