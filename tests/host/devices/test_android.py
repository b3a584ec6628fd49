"""The Android transport against a fake adb server speaking the real wire protocol (adbutils unmodified)."""
from __future__ import annotations

import json
import shlex
import time

import pytest

from host.devices import (
    AmbiguousDevice, AppCrashed, DeviceNotFound, Disconnected, LowMemoryKilled, RunFailed, RunTimeout, SetupError,
    StorageFull, Unauthorized, select_device,
)
from host.devices.android import AndroidDevice, apk_version_code, parse_df_available, parse_meminfo, quote_command
from host.devices.base import HOST_MEMORY_FILE, MODELS_MANIFEST
from host.protocol import read_trace_dicts

from .conftest import ANDROID_MODELS, ANDROID_ROOT, PACKAGE, make_apk
from .fake_adb import FakeAdbServer, FakePhone
from .fake_ios import FakePmd3

FAST = {"poll_interval": 0.02, "memory_interval": 0.05, "start_timeout": 2.0}
RUN_ID = "20261122T100000Z_baseline"


def _device(srv, contracts, name="s23", **env) -> AndroidDevice:
    dev = select_device(name, env={**contracts, **env}, adb=srv.client(), ios_backend=FakePmd3([]), options=FAST)
    assert isinstance(dev, AndroidDevice)
    return dev


def _model_bytes(run) -> int:
    return sum(p.stat().st_size for p in (run / "models").rglob("*.tflite"))



def _start(dev, run) -> None:
    """Prepare the phone for ``run``, push its models and start the app: the steps every scenario shares."""
    dev.prepare(run)
    dev.push_models(run)
    dev.start(run)

def test_happy_path_pushes_once_then_skips_and_collects_everything(contracts, run_factory):
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        assert dev.name == "s23" and dev.serial == "R5CT123" and dev.model == "SM-S911B"
        run = run_factory()
        remote = dev.prepare(run)
        assert remote == f"{ANDROID_ROOT}/{RUN_ID}"
        pushed_req = json.loads(phone.files[f"{remote}/request.json"])
        assert pushed_req["models_dir"] == dev._remote_models and dev._remote_models.startswith(ANDROID_MODELS + "/")
        assert json.loads((run / "request.json").read_text())["models_dir"] == "models"  # host copy untouched

        stats = dev.push_models(run)
        assert (stats.pushed_files, stats.skipped_files) == (5, 0)
        assert stats.pushed_bytes == _model_bytes(run) and stats.skipped_bytes == 0
        assert "blocks/conv_in.tflite" in stats.files

        records = []
        dev.start(run)
        assert phone.started[-1][-2:] == ["run_dir", remote]
        status = dev.wait(10, on_record=records.append)
        assert status["state"] == "ok"
        assert [r.step for r in records if getattr(r, "name", None) == "unet_step"] == [0, 1, 2, 3]
        assert sorted(dev.pull(run)) == ["image.f32", "image.png", "status.json", "trace.jsonl"]
        assert json.loads((run / "status.json").read_text())["state"] == "ok"
        assert len([r for r in read_trace_dicts(run / "trace.jsonl") if r["type"] == "span"]) == 4
        dev.write_run_info(run, remote=remote)
        assert json.loads((run / "device_run.json").read_text())["push"]["pushed_files"] == 5
        dev.cleanup()
        assert not any(f.startswith(remote + "/") for f in phone.files)  # run folder gone, models kept

        # a second deploy of the same build: nothing pushed, every byte counted as skipped
        run2 = run_factory(name="run2", run_id="20261122T100500Z_baseline")
        dev.prepare(run2)
        again = dev.push_models(run2)
        assert (again.pushed_files, again.skipped_files, again.skipped_bytes) == (0, 5, _model_bytes(run2))
        dev.start(run2)
        assert dev.wait(10)["state"] == "ok"
        dev.cleanup()


def test_memory_is_sampled_from_the_host_side(contracts, run_factory):
    phone = FakePhone("R5CT123", steps=8, step_delay=0.03)
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        dev.wait(10)
        dev.cleanup()
    mem = read_trace_dicts(run / HOST_MEMORY_FILE)
    assert mem and {r["source"] for r in mem} == {"dumpsys_meminfo", "dumpsys_meminfo_pss"}
    rss = [r for r in mem if r["source"] == "dumpsys_meminfo"]
    assert min(r["rss_bytes"] for r in mem) == 900000 * 1024
    assert rss[0]["rss_bytes"] == 1200000 * 1024 and rss[-1]["peak_bytes"] == 1200000 * 1024
    assert any("dumpsys meminfo com.sdphone.runner" == c for _, c in srv.shell_commands)


def test_a_model_changed_on_the_phone_is_pushed_again(contracts, run_factory):
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        dev.prepare(run)
        dev.push_models(run)
        store = dev._remote_models
        del phone.files[f"{store}/{MODELS_MANIFEST}"]           # no manifest: the device's sha256sum decides
        unet = f"{store}/unet.tflite"
        phone.files[unet] = bytes(len(phone.files[unet]))        # same size, other bytes
        stats = dev.push_models(run)
        assert (stats.pushed_files, stats.skipped_files, stats.files) == (1, 4, ["unet.tflite"])
        assert sum(c.startswith("sha256sum ") for _, c in srv.shell_commands) == 5


def test_storage_full_is_reported_before_pushing(contracts, run_factory):
    phone = FakePhone("R5CT123", free_bytes=(64 << 20) + 4000)
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        dev.prepare(run)
        with pytest.raises(StorageFull) as e:
            dev.push_models(run)
    assert "GiB free" in str(e.value) and str(e.value).startswith("s23 R5CT123:")
    assert "df -k" in e.value.command
    assert not [p for _, p, _ in srv.pushed if p.endswith(".tflite")]


def test_storage_running_out_during_the_push(contracts, run_factory):
    run = run_factory()
    room = (run / "request.json").stat().st_size + 1024 + 20000  # request + noise + ~2 of the 5 models
    phone = FakePhone("R5CT123", free_bytes=room, df_extra_once=128 << 20)
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        dev.prepare(run)
        with pytest.raises(StorageFull) as e:
            dev.push_models(run)
    assert "push failed" in str(e.value) and "still to push" in str(e.value)


def test_app_crash_names_the_exception(contracts, run_factory):
    phone = FakePhone("R5CT123", scenario="crash")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        with pytest.raises(AppCrashed) as e:
            dev.wait(10)
        assert not isinstance(e.value, LowMemoryKilled)
        assert any("FATAL EXCEPTION" in ln for ln in e.value.log_lines)
        assert "interpreter exploded" in str(e.value) or "Runner.kt" in str(e.value)
        assert "trace.jsonl" in dev.pull(run)              # what the app wrote up to then still comes back
        assert json.loads((run / "status.json").read_text())["state"] == "running"
        assert (run / "trace.jsonl").is_file() and "FATAL EXCEPTION" in (run / "logcat.txt").read_text()
        dev.cleanup()


def test_low_memory_kill_is_told_apart(contracts, run_factory):
    phone = FakePhone("R5CT123", scenario="lmk")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        with pytest.raises(LowMemoryKilled) as e:
            dev.wait(10)
    assert "low-memory killer" in str(e.value) and any("lowmemorykiller" in ln or "am_kill" in ln
                                                       for ln in e.value.log_lines)


def test_disconnect_mid_run(contracts, run_factory):
    phone = FakePhone("R5CT123", scenario="disconnect")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        t0 = time.monotonic()
        with pytest.raises(Disconnected) as e:
            dev.wait(30)
        assert time.monotonic() - t0 < 5
        dev.cleanup()  # never raises, even with the phone gone
    assert str(e.value).startswith("s23 R5CT123: the device went away") and e.value.command


def test_timeout(contracts, run_factory):
    phone = FakePhone("R5CT123", scenario="hang")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        with pytest.raises(RunTimeout) as e:
            dev.wait(0.3)
        dev.cleanup()
    assert "after 0 s" in str(e.value) or "no final status.json" in str(e.value)
    assert phone.pid is None  # cleanup force-stopped the app


def test_shell_metacharacters_in_the_prompt_never_reach_a_shell(contracts, run_factory):
    prompt = '"; rm -rf / #$(reboot) `reboot` && reboot | sh \'; $HOME'
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory(prompt=prompt)
        remote = dev.prepare(run)
        dev.push_models(run)
        dev.start(run)
        assert dev.wait(10)["state"] == "ok"
        dev.pull(run)
        assert json.loads(phone.files[f"{remote}/request.json"])["prompt"]["text"] == prompt  # it went as a file
        dev.cleanup()
    allowed = {"getprop", "dumpsys", "rm", "mkdir", "df", "sha256sum", "date", "am", "pidof", "tail", "logcat", "pm"}
    assert srv.shell_commands
    for _serial, cmd in srv.shell_commands:
        argv = shlex.split(cmd)
        assert quote_command(argv) == cmd, cmd      # exactly one quoted argument list: no operators, no expansion
        assert argv[0] in allowed, cmd
        assert prompt not in cmd and "reboot" not in cmd and "$(" not in cmd and "`" not in cmd, cmd
        if argv[0] == "rm":
            assert all(a.startswith((ANDROID_ROOT + "/", "/data/local/tmp/")) for a in argv[1:] if a[0] != "-"), cmd


def test_unauthorized_device_says_to_accept_the_rsa_prompt(contracts):
    with FakeAdbServer([FakePhone("R5CT123", state="unauthorized")]) as srv:
        with pytest.raises(Unauthorized) as by_profile:
            _device(srv, contracts, "s23")
        with pytest.raises(Unauthorized) as by_serial:
            _device(srv, contracts, "R5CT123")
    for e in (by_profile.value, by_serial.value):
        assert "RSA" in str(e) and "USB debugging" in str(e)


def test_selection_by_profile_serial_and_override(contracts):
    phones = [FakePhone("R5CT123", model="SM-S911B"), FakePhone("PIX8AAA", model="Pixel 8")]
    with FakeAdbServer(phones) as srv:
        assert _device(srv, contracts, "s23").serial == "R5CT123"
        assert _device(srv, contracts, "pixel8").serial == "PIX8AAA"
        by_serial = _device(srv, contracts, "PIX8AAA")
        assert (by_serial.name, by_serial.model) == ("pixel8", "Pixel 8")
        forced = _device(srv, contracts, "s23@PIX8AAA")
        assert (forced.name, forced.serial) == ("s23", "PIX8AAA")
        assert _device(srv, contracts, "", SDPHONE_DEVICE="pixel8").serial == "PIX8AAA"
        with pytest.raises(DeviceNotFound) as e:
            _device(srv, contracts, "s23-ultra")
    msg = str(e.value)
    assert msg.startswith("s23-ultra: no attached android device matches profile s23-ultra")
    assert "R5CT123 (SM-S911B, device) -> s23" in msg and "PIX8AAA (Pixel 8, device) -> pixel8" in msg
    assert "adb connect host:port" in msg and "\n" not in msg


def test_several_matches_are_listed(contracts):
    with FakeAdbServer([FakePhone("R5CT111"), FakePhone("R5CT222", model="SM-S911U")]) as srv:
        with pytest.raises(AmbiguousDevice) as e:
            _device(srv, contracts, "s23")
    assert "R5CT111" in str(e.value) and "R5CT222" in str(e.value) and "s23@<serial>" in str(e.value)


def test_nothing_attached_and_no_server(contracts):
    with FakeAdbServer([]) as srv:
        with pytest.raises(DeviceNotFound) as e:
            _device(srv, contracts, "s23")
        assert "attached: none" in str(e.value) and "USB debugging" in str(e.value)
        with pytest.raises(DeviceNotFound) as e2:
            _device(srv, contracts, "nokia3310")
        assert str(e2.value).startswith("nokia3310: no attached device has serial/UDID 'nokia3310'")
        port = srv.port
    from adbutils import AdbClient

    with pytest.raises(DeviceNotFound) as e3:  # server gone: SDPHONE_ADB_AUTOSTART=0 keeps us from starting one
        select_device("s23", env=contracts, adb=AdbClient(host="127.0.0.1", port=port))
    assert "no adb server" in str(e3.value) and "adb start-server" in str(e3.value)


def test_remote_endpoint_is_adb_connected(contracts, run_factory):
    farm = FakePhone("placeholder", model="SM-S911B")
    with FakeAdbServer([], version=40, endpoints={"10.1.2.3:5555": farm}) as srv:
        dev = _device(srv, contracts, "10.1.2.3:5555")
        assert (dev.serial, dev.name) == ("10.1.2.3:5555", "s23")
        run = run_factory()
        _start(dev, run)
        assert dev.wait(10)["state"] == "ok"
        dev.cleanup()
        assert "host:connect:10.1.2.3:5555" in srv.requests
        assert "host:transport:10.1.2.3:5555" in srv.requests  # adb server 1.0.40 path
        with pytest.raises(DeviceNotFound) as e:
            _device(srv, contracts, "s23", SDPHONE_ADB_CONNECT="10.9.9.9:5555")
    assert "adb connect failed" in str(e.value) and "Connection refused" in str(e.value)


def test_missing_or_older_app_is_installed_from_the_apk_or_explained(contracts, run_factory, tmp_path):
    phone = FakePhone("R5CT123", installed_version=None)
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        with pytest.raises(SetupError) as e:
            dev.prepare(run_factory())
        assert "SDPHONE_APK" in str(e.value) and "not installed" in str(e.value) and PACKAGE in str(e.value)
        apk = make_apk(tmp_path / "runner.apk", version_code=7)
        _device(srv, contracts, SDPHONE_APK=str(apk)).prepare(run_factory(name="r2"))
        assert phone.installed_version == 7
        assert "pm install -r -t /data/local/tmp/sdphone-runner.apk" in [c for _, c in srv.shell_commands]
        assert "/data/local/tmp/sdphone-runner.apk" not in phone.files  # removed after installing
        n = len(srv.shell_commands)
        _device(srv, contracts, SDPHONE_APK=str(apk)).prepare(run_factory(name="r3"))  # same version: no reinstall
        assert not any(c.startswith("pm install") for _, c in srv.shell_commands[n:])
        phone.installed_version = 5                                                    # older than the APK
        _device(srv, contracts, SDPHONE_APK=str(apk)).prepare(run_factory(name="r4"))
        assert phone.installed_version == 7
        phone.installed_version = 2                          # older than the contract's version_code 3, no APK
        with pytest.raises(SetupError) as e:
            _device(srv, contracts).prepare(run_factory(name="r5"))
        assert "versionCode 2, this host needs 3" in str(e.value)


def test_app_that_refuses_the_run_is_reported_from_its_log(contracts, run_factory):
    phone = FakePhone("R5CT123", scenario="rejected")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        run = run_factory()
        _start(dev, run)
        t0 = time.monotonic()
        with pytest.raises(RunFailed) as e:
            dev.wait(30)
        dev.cleanup()
    assert time.monotonic() - t0 < 5 and "run folders must be inside" in str(e.value)


def test_apk_version_code(tmp_path):
    assert apk_version_code(make_apk(tmp_path / "a.apk", version_code=12)) == 12
    assert apk_version_code(make_apk(tmp_path / "b.apk", version_code=70001, utf8=True)) == 70001
    (tmp_path / "c.apk").write_bytes(b"not a zip")
    assert apk_version_code(tmp_path / "c.apk") is None


def test_parsers():
    assert parse_df_available("Filesystem 1K-blocks Used Available Use% Mounted on\n"
                              "/dev/fuse 115249236 5563412 109685824 5% /storage/emulated\n") == 109685824 * 1024
    assert parse_df_available("Filesystem 1K-blocks Used Available Use% Mounted on\n"
                              "/dev/block/very/long/name/of/a/filesystem\n 100 50 40 50% /data\n") == 40 * 1024
    assert parse_df_available("Filesystem Size Used Free Blksize\n/data 12.5G 3.2G 1.5G 4096\n") == int(1.5 * (1 << 30))
    assert parse_meminfo("No process found for: x") == (None, None)
    assert parse_meminfo("  TOTAL PSS:   10   TOTAL RSS:   20   TOTAL SWAP PSS: 0") == (10240, 20480)
    assert parse_meminfo("** MEMINFO **\n         TOTAL    12345    100\n") == (12345 * 1024, None)


def test_mediapipe_engine_pushes_its_weights_once_and_starts_the_peer(contracts, run_factory, tmp_path):
    """``host.deploy --engine mediapipe``: the exported MediaPipe folder goes to the app's MediaPipe store (our
    models stay on the host), unchanged files are skipped, and the app is started with the engine extras."""
    contract = json.loads(open(contracts["SDPHONE_ANDROID_CONTRACT"]).read())
    mp_root = f"/sdcard/Android/data/{PACKAGE}/files/mediapipe"
    contract.update({"extra_engine": "engine", "engine_mediapipe": "mediapipe",
                     "extra_mediapipe_model_dir": "mediapipe_model_dir",
                     "device_mediapipe_model_dir": f"{mp_root}/bins"})
    path = tmp_path / "mp_contract.json"
    path.write_text(json.dumps(contract))
    weights = tmp_path / "bins"
    weights.mkdir()
    for i in range(3):
        (weights / f"model.diffusion_model.out.{i}.weight.bin").write_bytes(bytes([i]) * (100 + i))
    (weights / "bpe_simple_vocab_16e6.txt").write_text("#version: 0.2\na b\n")
    (weights / ".sdphone-mediapipe.json").write_text("{}")  # the exporter's own note is not pushed
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, {**contracts, "SDPHONE_ANDROID_CONTRACT": str(path)})
        with pytest.raises(SetupError, match="no MediaPipe weights folder"):
            dev.set_engine("mediapipe", tmp_path / "missing")
        dev.set_engine("mediapipe", weights)
        run = run_factory()
        dev.prepare(run)
        first = dev.push_models(run)
        assert (first.pushed_files, first.pushed_bytes) == (4, 100 + 101 + 102 + len("#version: 0.2\na b\n"))
        store = dev._remote_mediapipe
        assert store.startswith(mp_root + "/") and f"{store}/bpe_simple_vocab_16e6.txt" in phone.files
        assert not any(f.endswith(".tflite") for f in phone.files)  # our models were not pushed
        dev.start(run)
        am = next(c for _, c in srv.shell_commands if c.startswith("am start"))
        assert shlex.split(am)[-6:] == ["--es", "engine", "mediapipe", "--es", "mediapipe_model_dir", store]
        dev.wait(10)
        dev.cleanup()
        dev.prepare(run)
        again = dev.push_models(run)
        assert (again.pushed_files, again.skipped_files) == (0, 4)


def test_mediapipe_engine_needs_a_contract_that_has_it(contracts, tmp_path):
    phone = FakePhone("R5CT123")
    with FakeAdbServer([phone]) as srv:
        dev = _device(srv, contracts)
        with pytest.raises(SetupError, match="no MediaPipe engine"):
            dev.set_engine("mediapipe", tmp_path)
