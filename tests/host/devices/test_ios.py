"""The iOS transport against fakes of the pymobiledevice3 service objects (lockdown, house_arrest AFC, DVT)."""
from __future__ import annotations

import json

import pytest

from host.devices import (
    AmbiguousDevice, AppCrashed, DeviceNotFound, Disconnected, LowMemoryKilled, SetupError, StorageFull, Unauthorized,
    select_device,
)
from host.devices.ios import IosDevice, _map_error

from .fake_adb import FakeAdbServer
from .fake_ios import FakeAfc, FakeLockdown, FakePmd3

UDID = "00008130-001A2B3C4D5E6F70"
UDID2 = "00008130-00AAAAAAAAAAAAAA"
RUN_ID = "20261122T100000Z_baseline"
FAST = {"poll_interval": 0.02, "launch_grace": 0.0}


def _select(backend, contracts, name="iphone15pro", **env) -> IosDevice:
    dev = select_device(name, env={**contracts, **env}, ios_backend=backend, options=FAST)
    assert isinstance(dev, IosDevice)
    return dev


def test_selection_by_product_type_udid_and_errors(contracts):
    backend = FakePmd3([FakeLockdown(UDID, "iPhone16,1"), FakeLockdown(UDID2, "iPhone15,3")])
    assert _select(backend, contracts).serial == UDID
    assert _select(backend, contracts, "iphone14pm").serial == UDID2
    assert _select(backend, contracts, "iphone14pm").product_type == "iPhone15,3"
    with FakeAdbServer([]) as srv:  # a raw UDID: Android is asked first, then usbmuxd
        dev = select_device(UDID, env=contracts, adb=srv.client(), ios_backend=backend, options=FAST)
    assert (dev.name, dev.serial) == ("iphone15pro", UDID)

    two = FakePmd3([FakeLockdown(UDID), FakeLockdown(UDID2)])
    with pytest.raises(AmbiguousDevice) as e:
        _select(two, contracts)
    assert UDID in str(e.value) and UDID2 in str(e.value)

    with pytest.raises(DeviceNotFound) as e:
        _select(FakePmd3([]), contracts)
    msg = str(e.value)
    assert msg.startswith("iphone15pro: no attached ios device matches profile iphone15pro")
    assert "attached: none" in msg and "idevicepair" in msg and "Trust" in msg


def test_unpaired_iphone_explains_trust(contracts):
    backend = FakePmd3([FakeLockdown(UDID, paired=False)])
    with pytest.raises(Unauthorized) as e:
        _select(backend, contracts)
    assert "Trust" in str(e.value) and "idevicepair pair" in str(e.value)


def test_developer_mode_off(contracts, run_factory):
    backend = FakePmd3([FakeLockdown(UDID, developer_mode=False)])
    dev = _select(backend, contracts)
    with pytest.raises(SetupError) as e:
        dev.prepare(run_factory())
    assert "Developer Mode is off" in str(e.value) and "Privacy & Security" in str(e.value)


def test_disk_image_is_mounted_or_explained(contracts, run_factory):
    backend = FakePmd3([FakeLockdown(UDID)], ddi_mounted=False)
    _select(backend, contracts).prepare(run_factory())
    assert backend.mount_calls == 1 and backend.mounted

    failing = FakePmd3([FakeLockdown(UDID)], ddi_mounted=False, mount_error=RuntimeError("no network"))
    with pytest.raises(SetupError) as e:
        _select(failing, contracts).prepare(run_factory(name="r2"))
    assert "mounter auto-mount" in str(e.value) and "no network" in str(e.value)

    off = FakePmd3([FakeLockdown(UDID)], ddi_mounted=False)
    with pytest.raises(SetupError):
        _select(off, contracts, SDPHONE_IOS_AUTOMOUNT="0").prepare(run_factory(name="r3"))
    assert off.mount_calls == 0


def test_app_is_installed_from_the_ipa_or_explained(contracts, run_factory, tmp_path):
    backend = FakePmd3([FakeLockdown(UDID)], apps={})
    with pytest.raises(SetupError) as e:
        _select(backend, contracts).prepare(run_factory())
    assert "SDPHONE_IPA" in str(e.value)
    ipa = tmp_path / "runner.ipa"
    ipa.write_bytes(b"PK")
    _select(backend, contracts, SDPHONE_IPA=str(ipa)).prepare(run_factory(name="r2"))
    assert backend.installs == [(str(ipa), False)]
    backend.apps["dev.sdphone.runner"] = {"CFBundleVersion": "2"}  # older than the contract's "3": upgraded
    _select(backend, contracts, SDPHONE_IPA=str(ipa)).prepare(run_factory(name="r3"))
    assert backend.installs[-1] == (str(ipa), True)


def test_push_launch_wait_pull_and_skip(contracts, run_factory):
    backend = FakePmd3([FakeLockdown(UDID)])
    dev = _select(backend, contracts)
    run = run_factory()
    remote = dev.prepare(run)
    assert remote == f"/Documents/runs/{RUN_ID}"
    assert json.loads(backend.afc.files[f"{remote}/request.json"])["models_dir"].startswith("../_models/")
    stats = dev.push_models(run)
    assert (stats.pushed_files, stats.skipped_files) == (5, 0)
    records = []
    dev.start(run)
    assert backend.pc.launched == [("dev.sdphone.runner", ["--run-dir", f"Documents/runs/{RUN_ID}"])]
    status = dev.wait(10, on_record=records.append)
    assert status["state"] == "ok"  # the fake app verified every model's sha256
    assert len([r for r in records if getattr(r, "name", None) == "unet_step"]) == 4
    assert dev.sample_memory()["source"] == "phys_footprint"
    assert sorted(dev.pull(run)) == ["image.f32", "image.png", "status.json", "trace.jsonl"]
    dev.cleanup()
    assert not any(f.startswith(remote + "/") for f in backend.afc.files)
    assert backend.pc.killed == [] or backend.pc.killed[0] > 0

    run2 = run_factory(name="run2", run_id="20261122T100500Z_baseline")
    dev.prepare(run2)
    again = dev.push_models(run2)
    assert (again.pushed_files, again.skipped_files) == (0, 5) and again.skipped_bytes == stats.pushed_bytes
    dev.cleanup()


def test_crash_oom_disconnect_storage(contracts, run_factory):
    for scenario, error in (("crash", AppCrashed), ("oom", LowMemoryKilled), ("disconnect", Disconnected)):
        backend = FakePmd3([FakeLockdown(UDID)], scenario=scenario)
        dev = _select(backend, contracts)
        run = run_factory(name=scenario)
        dev.prepare(run)
        dev.push_models(run)
        dev.start(run)
        with pytest.raises(error) as e:
            dev.wait(10)
        if scenario != "disconnect":
            assert any("unet_step" in ln for ln in e.value.log_lines)
        assert str(e.value).startswith(f"iphone15pro {UDID}:")
        dev.cleanup()
    full = FakePmd3([FakeLockdown(UDID)], afc=FakeAfc(free_bytes=1000))
    dev = _select(full, contracts)
    run = run_factory(name="full")
    dev.prepare(run)
    with pytest.raises(StorageFull):
        dev.push_models(run)


def test_error_mapping():
    from pymobiledevice3.exceptions import (
        ConnectionTerminatedError, DeveloperModeIsNotEnabledError, NotPairedError, PasscodeRequiredError,
    )

    assert isinstance(_map_error(NotPairedError(), "x", "connect"), Unauthorized)
    assert isinstance(_map_error(PasscodeRequiredError("locked", "x", "17.4"), "x", "connect"), Unauthorized)
    assert isinstance(_map_error(DeveloperModeIsNotEnabledError(), "x", "mount"), SetupError)
    assert isinstance(_map_error(ConnectionTerminatedError(), "x", "wait"), Disconnected)
