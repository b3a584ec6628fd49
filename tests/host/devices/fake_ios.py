"""Fakes of the pymobiledevice3 service objects at their API boundary (what host.devices.ios.Pmd3 returns):
a lockdown client (``get_value``, ``paired``, ``product_version``, ``get_developer_mode_status``), an AFC
(house_arrest VendContainer: ``exists``/``stat``/``push``/``pull``/``get_file_contents``/``set_file_contents``/
``makedirs``/``rm``/``get_device_info``) and DVT process control (``launch``/``kill``/
``process_identifier_for_bundle_identifier``) whose launch runs a scripted runner app on a thread."""
from __future__ import annotations

import hashlib
import json
import posixpath
import threading
import time
from pathlib import Path

from host.devices.ios import Pmd3


class FakeLockdown:
    def __init__(self, udid: str, product_type: str = "iPhone16,1", paired: bool = True, product_version="17.4",
                 developer_mode: bool = True) -> None:
        self.udid = udid
        self.paired = paired
        self.product_version = product_version
        self.product_type = product_type
        self.all_values = {"ProductType": product_type, "ProductVersion": product_version, "UniqueDeviceID": udid}
        self._developer_mode = developer_mode
        self.closed = False

    @property
    def has_developer_mode(self) -> bool:
        return int(self.product_version.split(".")[0]) >= 16

    async def get_value(self, domain=None, key=None):
        return self.all_values if key is None else self.all_values.get(key)

    async def get_developer_mode_status(self) -> bool:
        return self._developer_mode

    async def close(self) -> None:
        self.closed = True


class FakeAfc:
    def __init__(self, free_bytes: int = 50 << 30) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/", "/Documents", "/Library", "/tmp"}
        self.free_bytes = free_bytes
        self.lock = threading.RLock()
        self.pushes: list[str] = []
        self.fail_with: BaseException | None = None  # raised by every call once set (a disconnect)

    def _check(self):
        if self.fail_with is not None:
            raise self.fail_with

    def write(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[posixpath.normpath(path)] = data

    async def exists(self, path: str) -> bool:
        self._check()
        p = posixpath.normpath(path)
        return p in self.files or p in self.dirs

    async def stat(self, path: str) -> dict:
        self._check()
        from pymobiledevice3.exceptions import AfcFileNotFoundError

        p = posixpath.normpath(path)
        if p in self.files:
            return {"st_size": len(self.files[p]), "st_ifmt": "S_IFREG"}
        if p in self.dirs:
            return {"st_size": 0, "st_ifmt": "S_IFDIR"}
        raise AfcFileNotFoundError(f"{p} not found", 8)

    async def makedirs(self, path: str) -> None:
        self._check()
        p = posixpath.normpath(path)
        while p not in self.dirs:
            self.dirs.add(p)
            p = posixpath.dirname(p)

    async def rm(self, path: str, match=None, force: bool = False) -> list[str]:
        self._check()
        p = posixpath.normpath(path)
        with self.lock:
            gone = [f for f in self.files if f == p or f.startswith(p + "/")]
            for f in gone:
                del self.files[f]
            self.dirs -= {d for d in self.dirs if d == p or d.startswith(p + "/")}
        return gone

    async def set_file_contents(self, path: str, data: bytes) -> None:
        self._check()
        self.write(path, bytes(data))

    async def get_file_contents(self, path: str) -> bytes:
        self._check()
        return self.files[posixpath.normpath(path)]

    async def push(self, local_path: str, remote_path: str, callback=None, progress_bar: bool = True) -> None:
        self._check()
        data = Path(local_path).read_bytes()
        if sum(map(len, self.files.values())) + len(data) > self.free_bytes:
            from pymobiledevice3.exceptions import AfcException
            from pymobiledevice3.services.afc import AfcError

            raise AfcException("no space", AfcError.NO_SPACE_LEFT)
        self.pushes.append(posixpath.normpath(remote_path))
        self.write(remote_path, data)

    async def pull(self, relative_src: str, dst: str, match=None, callback=None, src_dir: str = "",
                   ignore_errors: bool = False, progress_bar: bool = True) -> None:
        self._check()
        Path(dst).write_bytes(self.files[posixpath.normpath(relative_src)])

    async def get_device_info(self) -> dict:
        self._check()
        return {"Model": "iPhone16,1", "FSTotalBytes": str(128 << 30),
                "FSFreeBytes": str(self.free_bytes - sum(map(len, self.files.values())))}

    async def aclose(self) -> None:
        pass


class FakeProcessControl:
    def __init__(self, afc: FakeAfc, scenario: str = "ok", steps: int = 4, step_delay: float = 0.02) -> None:
        self.afc, self.scenario, self.steps, self.step_delay = afc, scenario, steps, step_delay
        self.launched: list[tuple[str, list[str]]] = []
        self.running: dict[str, int] = {}
        self.killed: list[int] = []

    async def launch(self, bundle_id: str, arguments=None, kill_existing: bool = True, start_suspended: bool = False,
                     environment=None, extra_options=None) -> int:
        self.launched.append((bundle_id, list(arguments or [])))
        pid = 300 + len(self.launched)
        self.running[bundle_id] = pid
        run_dir = "/" + arguments[1]  # relative to the app's home = the container root over AFC
        threading.Thread(target=self._app, args=(bundle_id, pid, run_dir), daemon=True).start()
        return pid

    async def process_identifier_for_bundle_identifier(self, bundle_id: str) -> int:
        self.afc._check()
        return self.running.get(bundle_id, 0)

    async def kill(self, pid: int) -> None:
        self.killed.append(pid)
        self.running = {b: p for b, p in self.running.items() if p != pid}

    def _trace(self, run_dir: str, rec: dict) -> None:
        path = posixpath.join(run_dir, "trace.jsonl")
        with self.afc.lock:
            self.afc.write(path, self.afc.files.get(path, b"") + (json.dumps(rec) + "\n").encode())

    def _app(self, bundle_id: str, pid: int, run_dir: str) -> None:
        req = json.loads(self.afc.files[posixpath.join(run_dir, "request.json")])
        mdir = posixpath.normpath(posixpath.join(run_dir, req["models_dir"]))
        ok = all(hashlib.sha256(self.afc.files.get(posixpath.join(mdir, m["file"]), b"")).hexdigest() == m["sha256"]
                 for m in req["models"].values())
        self._trace(run_dir, {"type": "meta", "t": 0.001, "schema": "sdphone.trace", "version": 1,
                              "run_id": req["run_id"], "runner": "ios", "runner_version": "fake",
                              "device": {"model": "iPhone16,1", "os": "iOS 17.4", "soc": "A17 Pro"},
                              "runtime": {"accelerator": "cpu", "precision": "fp32", "threads": 2,
                                          "delegate": "xnnpack"}})
        for i in range(self.steps):
            time.sleep(self.step_delay)
            self._trace(run_dir, {"type": "span", "t": 0.02 + i, "name": "unet_step", "cat": "step", "start": i,
                                  "dur": 0.5, "component": "unet", "step": i, "repeat": 0, "warmup": False})
            self._trace(run_dir, {"type": "memory", "t": 0.03 + i, "rss_bytes": (1 << 30) + i,
                                  "source": "phys_footprint"})
            if self.scenario == "crash" and i == 1:
                self.running.pop(bundle_id, None)
                return
            if self.scenario == "oom" and i == 1:
                self._trace(run_dir, {"type": "event", "t": 1.5, "name": "oom", "message": "memory warning"})
                self.running.pop(bundle_id, None)
                return
            if self.scenario == "disconnect" and i == 1:
                from pymobiledevice3.exceptions import ConnectionTerminatedError

                self.afc.fail_with = ConnectionTerminatedError()
                return
        self.afc.write(posixpath.join(run_dir, "image.png"), b"\x89PNG fake")
        self.afc.write(posixpath.join(run_dir, "image.f32"), b"\0" * 64)
        self.afc.write(posixpath.join(run_dir, "status.json"), json.dumps(
            {"state": "ok" if ok else "error", "run_id": req["run_id"], "finished_t": 4.0,
             **({"images": ["image.png"]} if ok else {"message": "sha256 mismatch"})}).encode())
        self.running.pop(bundle_id, None)


class FakePmd3(Pmd3):
    """Pmd3 with the device side faked; ``developer_mode`` is the real method (it asks the fake lockdown)."""

    def __init__(self, devices: list[FakeLockdown], *, ddi_mounted: bool = True, mount_error: Exception | None = None,
                 apps: dict[str, dict] | None = None, afc: FakeAfc | None = None, scenario: str = "ok") -> None:
        self.devices = {d.udid: d for d in devices}
        self.mounted = ddi_mounted
        self.mount_error = mount_error
        self.mount_calls = 0
        self.apps = {"dev.sdphone.runner": {"CFBundleVersion": "3"}} if apps is None else apps
        self.installs: list[tuple[str, bool]] = []
        self.afc = afc or FakeAfc()
        self.pc = FakeProcessControl(self.afc, scenario)

    async def list_devices(self):
        return [(u, "USB") for u in self.devices]

    async def lockdown(self, udid):
        from pymobiledevice3.exceptions import NoDeviceConnectedError

        if udid not in self.devices:
            raise NoDeviceConnectedError()
        return self.devices[udid]

    async def ddi_mounted(self, lockdown):
        return self.mounted

    async def mount_ddi(self, lockdown):
        self.mount_calls += 1
        if self.mount_error:
            raise self.mount_error
        self.mounted = True

    async def app_info(self, lockdown, bundle_id):
        return self.apps.get(bundle_id)

    async def install(self, lockdown, ipa, upgrade):
        self.installs.append((str(ipa), upgrade))
        self.apps["dev.sdphone.runner"] = {"CFBundleVersion": "9"}

    async def container(self, lockdown, bundle_id):
        from pymobiledevice3.exceptions import AppNotInstalledError

        if bundle_id not in self.apps:
            raise AppNotInstalledError(bundle_id)
        return self.afc

    async def process_control(self, lockdown, udid, stack):
        return self.pc

    async def sysmontap(self, stack, interval_ms):
        raise NotImplementedError("no sysmontap in the fake")
