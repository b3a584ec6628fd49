"""The host's reading of android_app/host_contract.json and ios_app/host_contract.json."""
from __future__ import annotations

import json

import pytest

from host.devices import ContractError
from host.devices.contract import (
    ANDROID_CONTRACT, IOS_CONTRACT, check_remote_path, load_android_contract, load_ios_contract,
)


@pytest.mark.skipif(not ANDROID_CONTRACT.is_file(), reason="android_app/host_contract.json not in this checkout")
def test_the_android_apps_contract_loads():
    c = load_android_contract(env={})
    assert c.component == f"{c.package}/{c.activity}" and c.run_root.startswith("/")
    assert c.intent_extra and c.logcat_tag


@pytest.mark.skipif(not IOS_CONTRACT.is_file(), reason="ios_app/host_contract.json not in this checkout")
def test_the_ios_apps_contract_loads():
    c = load_ios_contract(env={})
    assert c.bundle_id and c.launch_argument.startswith("-") and c.run_root.startswith("Documents")


def test_missing_and_bad_contracts_say_what_is_wrong(tmp_path):
    with pytest.raises(ContractError, match="not found; the Android runner app defines it"):
        load_android_contract(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"package_id": "com.x.y", "headless_activity": ".A", "extra_run_dir": "run_dir",
                               "log_tag": "T", "device_runs_root": "/sdcard/$(reboot)"}))
    with pytest.raises(ContractError, match="device_runs_root"):
        load_android_contract(bad)
    bad.write_text(json.dumps({"package_id": "com.x.y; reboot", "headless_activity": ".A"}))
    with pytest.raises(ContractError, match="package_id"):
        load_android_contract(bad)
    bad.write_text(json.dumps({"bundle_id": "dev.x.y", "run_dir_argument": "--run-dir"}))
    with pytest.raises(ContractError, match="missing 'documents_run_root'"):
        load_ios_contract(bad)


def test_remote_paths_are_strict():
    assert check_remote_path("/sdcard/Android/data/a.b/files/runs/20261122T100000Z_x+y")
    for bad in ("/a/../b", "/a//b", "relative", "/a/b c", "/a/$(x)", "/a/`x`", "/a/;x", "/a/'x'"):
        with pytest.raises(ValueError):
            check_remote_path(bad)
