"""iPhones over usbmuxd with ``pymobiledevice3`` (async API, run on a private event loop per device).

Files go into the runner app's container through house_arrest (AFC, ``VendContainer``: paths like
``/Documents/runs/<run_id>``); the app is launched through DVT process control with
``[run_dir_argument, "Documents/runs/<run_id>"]`` (relative to the app's home) as its arguments
(iOS 17+: the DVT service needs an RSD tunnel: a running ``pymobiledevice3 remote tunneld`` is used when
there is one, else an in-process userspace tunnel). Everything pymobiledevice3 is called through
:class:`Pmd3`, the one boundary the tests replace with fakes of the service objects.

Environment: ``SDPHONE_IPA`` (the .ipa to install when the app is missing or older), ``SDPHONE_IOS_AUTOMOUNT=0``
(never mount the Developer Disk Image; it may be downloaded on first use), ``SDPHONE_IOS_SYSMONTAP=1`` (also
sample the app's memory with DVT sysmontap into host_memory.jsonl), ``SDPHONE_KEEP_REMOTE=1``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from host.devices.base import (
    HOST_MEMORY_FILE, MODELS_MANIFEST, MODELS_STORE, NOISE_FILE, REQUEST_FILE, RESULT_FILES, STATUS_FILE, TRACE_FILE,
    Device, LocalRun, MemoryLog, OnRecord, PushStats, TraceFollower, read_local_run,
)
from host.devices.contract import IosContract, check_remote_path
from host.devices.errors import (
    AppCrashed, DeviceError, DeviceNotFound, Disconnected, LowMemoryKilled, RunTimeout, SetupError, StorageFull,
    Unauthorized,
)
from host.profiles import DeviceProfile

IPA_ENV = "SDPHONE_IPA"
AUTOMOUNT_ENV = "SDPHONE_IOS_AUTOMOUNT"
SYSMONTAP_ENV = "SDPHONE_IOS_SYSMONTAP"
KEEP_REMOTE_ENV = "SDPHONE_KEEP_REMOTE"
UDID_RE = re.compile(r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{16}|[0-9A-Fa-f]{40}")
STORAGE_MARGIN = 64 << 20

PAIR_HINT = ("not paired with this computer: unlock the iPhone, connect it over USB and tap 'Trust' on the "
             "'Trust This Computer?' prompt (`idevicepair pair` or `pymobiledevice3 lockdown pair` brings the "
             "prompt up), then run again")
DEVMODE_HINT = ("Developer Mode is off: turn it on in Settings > Privacy & Security > Developer Mode and restart "
                "the phone (`pymobiledevice3 amfi reveal-developer-mode` shows the switch)")
DDI_HINT = "mount it with `pymobiledevice3 mounter auto-mount` (it downloads the image on first use)"
ATTACH_HINT = "attach an iPhone over USB, unlock it and tap 'Trust' (`idevicepair pair` brings the prompt up)"


def version_tuple(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or ""))


class Pmd3:
    """The pymobiledevice3 11.x calls this transport makes. Every method is a coroutine."""

    async def list_devices(self) -> list[tuple[str, str]]:
        """(UDID, connection type "USB" | "Network") of every device usbmuxd lists."""
        from pymobiledevice3 import usbmux

        return [(d.serial, d.connection_type) for d in await usbmux.list_devices()]

    async def lockdown(self, udid: str):
        """A lockdown client; no pairing is attempted (``.paired`` says whether this host is trusted)."""
        from pymobiledevice3.lockdown import create_using_usbmux

        return await create_using_usbmux(serial=udid, autopair=False)

    async def developer_mode(self, lockdown) -> bool | None:
        if not lockdown.has_developer_mode:  # iOS < 16: no such switch
            return None
        return await lockdown.get_developer_mode_status()

    async def ddi_mounted(self, lockdown) -> bool:
        from pymobiledevice3.services.mobile_image_mounter import MobileImageMounterService, image_type_for_device

        async with MobileImageMounterService(lockdown=lockdown) as mounter:
            return await mounter.is_image_mounted(image_type_for_device(lockdown))

    async def mount_ddi(self, lockdown) -> None:
        from pymobiledevice3.services.mobile_image_mounter import auto_mount

        await auto_mount(lockdown)

    async def app_info(self, lockdown, bundle_id: str) -> dict[str, Any] | None:
        from pymobiledevice3.services.installation_proxy import InstallationProxyService

        async with InstallationProxyService(lockdown=lockdown) as ip:
            apps = await ip.get_apps(application_type="User", bundle_identifiers=[bundle_id])
        return apps.get(bundle_id)

    async def install(self, lockdown, ipa: Path, upgrade: bool) -> None:
        from pymobiledevice3.services.installation_proxy import InstallationProxyService

        async with InstallationProxyService(lockdown=lockdown) as ip:
            await ip.install_from_local(ipa, "Upgrade" if upgrade else "Install")

    async def container(self, lockdown, bundle_id: str):
        """An AfcService rooted at the app's container (house_arrest VendContainer: /Documents, /Library, ...)."""
        from pymobiledevice3.services.house_arrest import HouseArrestService

        return await HouseArrestService.create(lockdown, bundle_id, documents_only=False)

    async def process_control(self, lockdown, udid: str, stack: contextlib.AsyncExitStack):
        """A connected DVT ProcessControl (launch / kill / process_identifier_for_bundle_identifier)."""
        from pymobiledevice3.services.dvt.instruments.dvt_provider import DvtProvider
        from pymobiledevice3.services.dvt.instruments.process_control import ProcessControl

        provider = await self._dvt_provider(lockdown, udid, stack)
        dvt = await stack.enter_async_context(DvtProvider(provider))
        self._dvt = dvt
        return await stack.enter_async_context(ProcessControl(dvt))

    async def _dvt_provider(self, lockdown, udid: str, stack: contextlib.AsyncExitStack):
        if version_tuple(lockdown.product_version) < (17,):
            return lockdown
        from pymobiledevice3.exceptions import TunneldConnectionError
        from pymobiledevice3.tunneld.api import get_tunneld_device_by_udid

        try:
            rsd = await get_tunneld_device_by_udid(udid)
        except TunneldConnectionError:
            rsd = None
        if rsd is not None:
            stack.push_async_callback(rsd.close)
            return rsd
        from pymobiledevice3.remote.userspace_tunnel import UserspaceRsdTunnel

        return await stack.enter_async_context(UserspaceRsdTunnel(serial=udid, autopair=False))

    async def sysmontap(self, stack: contextlib.AsyncExitStack, interval_ms: int):
        """A started Sysmontap on the DVT connection of :meth:`process_control` (call that first)."""
        from pymobiledevice3.services.dvt.instruments.sysmontap import Sysmontap

        tap = await Sysmontap.create(self._dvt, interval=interval_ms)
        return await stack.enter_async_context(tap)


def _map_error(e: BaseException, label: str, what: str) -> DeviceError:
    """pymobiledevice3 / connection exceptions -> the harness's device errors."""
    if isinstance(e, DeviceError):
        return e
    name = type(e).__name__
    names = {c.__name__ for c in type(e).__mro__}
    text = f"{what}: {name}" + (f": {e}" if str(e) else "")
    if names & {"NotPairedError", "NotTrustedError", "PairingError", "PasswordRequiredError", "InvalidHostIDError",
                "UserDeniedPairingError", "PairingDialogResponsePendingError", "FatalPairingError"}:
        return Unauthorized(f"{PAIR_HINT} ({text})", device=label)
    if names & {"PasscodeRequiredError"}:
        return Unauthorized(f"the iPhone is locked: unlock it and run again ({text})", device=label)
    if names & {"DeveloperModeIsNotEnabledError", "DeveloperModeError"}:
        return SetupError(f"{DEVMODE_HINT} ({text})", device=label)
    if names & {"AppNotInstalledError"}:
        return SetupError(f"the runner app is not installed ({text}); set {IPA_ENV}=path/to/app.ipa", device=label)
    if names & {"InvalidServiceError", "RSDRequiredError", "RoutableTunnelRequiredError",
                "UserspaceTunnelUnavailableError"}:
        return SetupError(f"iOS 17+ needs a developer tunnel for this ({text}); start "
                          "`sudo pymobiledevice3 remote tunneld` and run again", device=label)
    if names & {"NoDeviceConnectedError", "DeviceNotFoundError", "ConnectionTerminatedError", "StreamClosedError",
                "ConnectionFailedError", "MuxException", "ConnectionResetError", "BrokenPipeError",
                "ConnectionAbortedError", "IncompleteReadError", "NotConnectedError"}:
        return Disconnected(f"the iPhone went away ({text}); reconnect it over USB and run again", device=label)
    code = getattr(e, "status", None)
    if names & {"AfcException"} and getattr(code, "name", "") == "NO_SPACE_LEFT":
        return StorageFull(f"no space left on the iPhone ({text})", device=label)
    return DeviceError(text, device=label)


class IosDevice(Device):
    platform = "ios"

    def __init__(self, udid: str, profile: DeviceProfile, contract: IosContract, *, backend: Pmd3 | None = None,
                 product_type: str = "", ipa: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ,
                 poll_interval: float = 1.0, keep_remote: bool | None = None, launch_grace: float = 10.0) -> None:
        if not UDID_RE.fullmatch(udid):
            raise DeviceNotFound(f"{udid!r} is not a valid UDID", device=udid)
        super().__init__(profile, udid)
        self.contract = contract
        self.backend = backend or Pmd3()
        self.product_type = product_type
        ipa = ipa or env.get(IPA_ENV) or contract.ipa
        self.ipa = Path(ipa) if ipa else None
        self.env = env
        self.poll_interval = poll_interval
        self.launch_grace = launch_grace
        self.keep_remote = env.get(KEEP_REMOTE_ENV) == "1" if keep_remote is None else keep_remote
        self.launches: list[dict[str, Any]] = []  # what was launched (bundle id, arguments), for the record
        self._loop = asyncio.new_event_loop()
        self._lockdown = None
        self._afc = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._pc = None
        self._pid: int | None = None
        self._ready = False
        self._run: LocalRun | None = None
        self._remote_run: str | None = None
        self._remote_models: str | None = None
        self._mem: MemoryLog | None = None
        self._last_footprint: dict[str, Any] | None = None
        self._tap_task: asyncio.Task | None = None
        self.sysmontap_error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.serial}"

    def describe(self) -> str:
        return f"{self.name} ({self.product_type or 'iPhone'}, UDID {self.serial})"

    def _call(self, coro, what: str):
        try:
            return self._loop.run_until_complete(coro)
        except DeviceError:
            raise
        except Exception as e:  # noqa: BLE001  (mapped to one family, with the original chained)
            raise _map_error(e, self.label, what) from e

    # -- connection and setup ----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._lockdown is None:
            self._lockdown = await self.backend.lockdown(self.serial)
        ld = self._lockdown
        if not getattr(ld, "paired", False):
            raise Unauthorized(PAIR_HINT, device=self.label)
        if self._ready:
            return
        if await self.backend.developer_mode(ld) is False:
            raise SetupError(DEVMODE_HINT, device=self.label)
        if not await self.backend.ddi_mounted(ld):
            if self.env.get(AUTOMOUNT_ENV, "1") == "0":
                raise SetupError(f"the Developer Disk Image is not mounted; {DDI_HINT}", device=self.label)
            try:
                await self.backend.mount_ddi(ld)
            except Exception as e:  # noqa: BLE001
                raise SetupError(f"the Developer Disk Image is not mounted and mounting it failed "
                                 f"({type(e).__name__}: {e}); {DDI_HINT}", device=self.label) from e
        await self._ensure_app(ld)
        self._ready = True

    async def _ensure_app(self, ld) -> None:
        c = self.contract
        info = await self.backend.app_info(ld, c.bundle_id)
        have = (info or {}).get("CFBundleVersion")
        if info is not None and (c.bundle_version is None or version_tuple(have) >= version_tuple(c.bundle_version)):
            return
        why = "not installed" if info is None else f"installed with CFBundleVersion {have}, this host needs " \
                                                   f"{c.bundle_version}"
        if self.ipa is None or not self.ipa.exists():
            raise SetupError(f"runner app {c.bundle_id} is {why}; build ios_app/ and set {IPA_ENV}=path/to/app.ipa"
                             + (f" ({self.ipa} not found)" if self.ipa else ""), device=self.label)
        await self.backend.install(ld, self.ipa, upgrade=info is not None)
        info = await self.backend.app_info(ld, c.bundle_id)
        if info is None:
            raise SetupError(f"installed {self.ipa.name} but {c.bundle_id} is still not listed", device=self.label)

    async def _documents(self):
        await self._connect()
        if self._afc is None:
            self._afc = await self.backend.container(self._lockdown, self.contract.bundle_id)
        return self._afc

    def check(self) -> None:
        """Pairing, Developer Mode, disk image and app, with actionable errors (done by prepare as well)."""
        self._call(self._connect(), "connect")

    # -- run ----------------------------------------------------------------------------------------

    def _paths(self, run: LocalRun) -> tuple[str, str, str]:
        """(AFC path of the run folder, AFC path of the model store, run folder relative to the app's home)."""
        root = "/" + self.contract.run_root
        remote_run = check_remote_path(posixpath.join(root, run.run_id), what="remote run folder")
        store = check_remote_path(posixpath.join(root, MODELS_STORE, run.models_key), what="models folder")
        return remote_run, store, remote_run.lstrip("/")

    def prepare(self, run_dir_local: str | os.PathLike) -> str:
        run = read_local_run(run_dir_local)
        remote_run, store, _ = self._paths(run)

        async def go():
            afc = await self._documents()
            if await afc.exists(remote_run):
                await afc.rm(remote_run, force=True)
            await afc.makedirs(remote_run)
            await afc.makedirs(store)
            await afc.set_file_contents(posixpath.join(remote_run, NOISE_FILE), (run.run_dir / NOISE_FILE).read_bytes())
            await afc.set_file_contents(posixpath.join(remote_run, REQUEST_FILE),
                                        run.device_request(posixpath.join("..", MODELS_STORE, run.models_key)))

        self._call(go(), "prepare")
        self._run, self._remote_run, self._remote_models = run, remote_run, store
        return remote_run

    def push_models(self, run_dir_local: str | os.PathLike,
                    progress: Callable[[str, int], None] | None = None) -> PushStats:
        if self._run is None or self._run.run_dir != Path(run_dir_local):
            self.prepare(run_dir_local)
        run, store = self._run, self._remote_models
        assert run is not None and store is not None
        manifest_path = posixpath.join(store, MODELS_MANIFEST)

        async def go() -> PushStats:
            t0 = time.monotonic()
            afc = await self._documents()
            try:
                manifest = json.loads(await afc.get_file_contents(manifest_path)).get("files", {}) \
                    if await afc.exists(manifest_path) else {}
            except (ValueError, AttributeError):
                manifest = {}
            stats, todo = PushStats(), []
            for m in run.models:
                remote = posixpath.join(store, m.rel)
                size = int((await afc.stat(remote)).get("st_size", -1)) if await afc.exists(remote) else None
                if size == m.size and (manifest.get(m.rel) or {}).get("sha256") == m.sha256:
                    stats.skipped_files += 1
                    stats.skipped_bytes += m.size
                else:
                    todo.append(m)
            need = sum(m.size for m in todo)
            if todo:
                info = await afc.get_device_info()
                free = int(info.get("FSFreeBytes", 0)) if info and "FSFreeBytes" in info else None
                if free is not None and free < need + STORAGE_MARGIN:
                    gib = 1 << 30
                    raise StorageFull(f"{need / gib:.2f} GiB to push but only {free / gib:.2f} GiB free on the iPhone; "
                                      "free space (old model builds live in the app's Documents/"
                                      f"{posixpath.join(self.contract.run_root, MODELS_STORE)})", device=self.label)
            for m in todo:
                remote = posixpath.join(store, m.rel)
                manifest.pop(m.rel, None)
                await afc.set_file_contents(manifest_path, json.dumps({"files": manifest}).encode())
                if "/" in m.rel:
                    await afc.makedirs(posixpath.dirname(remote))
                await afc.push(str(m.local), remote, progress_bar=False)
                if progress:
                    progress(m.rel, m.size)
                manifest[m.rel] = {"sha256": m.sha256, "size": m.size}
                await afc.set_file_contents(manifest_path, json.dumps({"files": manifest}).encode())
                stats.pushed_files += 1
                stats.pushed_bytes += m.size
                stats.files.append(m.rel)
            stats.seconds = time.monotonic() - t0
            return stats

        self.last_push = self._call(go(), "push models")
        return self.last_push

    def start(self, run_dir_local: str | os.PathLike) -> None:
        if self._run is None or self._remote_run is None or self._run.run_dir != Path(run_dir_local):
            raise DeviceError("start() before prepare() for this run folder", device=self.label)
        _, _, rel = self._paths(self._run)
        args = [self.contract.launch_argument, rel]
        self._mem = MemoryLog(self._run.run_dir / HOST_MEMORY_FILE, "sysmontap")

        async def go():
            await self._connect()
            if self._stack is None:
                self._stack = contextlib.AsyncExitStack()
                self._pc = await self.backend.process_control(self._lockdown, self.serial, self._stack)
            self._pid = await self._pc.launch(self.contract.bundle_id, arguments=args, kill_existing=True)
            self.launches.append({"bundle_id": self.contract.bundle_id, "arguments": args, "pid": self._pid})
            if self.env.get(SYSMONTAP_ENV) == "1":
                self._tap_task = asyncio.ensure_future(self._sysmontap())

        self._call(go(), "launch")

    async def _sysmontap(self) -> None:
        """Optional: the app's physFootprint from DVT sysmontap into host_memory.jsonl. Failures end it quietly."""
        try:
            tap = await self.backend.sysmontap(self._stack, 500)
            async for processes in tap.iter_processes():
                for p in processes:
                    if p.get("pid") == self._pid and self._mem is not None:
                        value = p.get("physFootprint") or p.get("memResidentSize")
                        if value:
                            self._mem.write(int(value), "sysmontap")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  (optional: the app's own phys_footprint records remain)
            self.sysmontap_error = f"{type(e).__name__}: {e}"

    def wait(self, timeout: float | None, on_record: OnRecord | None = None) -> dict[str, Any]:
        if self._remote_run is None:
            raise DeviceError("wait() before start()", device=self.label)
        trace = posixpath.join(self._remote_run, TRACE_FILE)
        status_path = posixpath.join(self._remote_run, STATUS_FILE)

        def seen(record) -> None:
            if getattr(record, "TYPE", None) == "memory":
                self._last_footprint = record.to_dict()
            if on_record:
                on_record(record)

        follower = TraceFollower(seen)

        async def tail(afc) -> None:
            if await afc.exists(trace):
                data = await afc.get_file_contents(trace)
                follower.feed(data[follower.offset:])

        async def final_status(afc) -> dict[str, Any] | None:
            if not await afc.exists(status_path):
                return None
            try:
                st = json.loads(await afc.get_file_contents(status_path))
            except ValueError:
                return None
            return st if isinstance(st, dict) and st.get("state") in ("ok", "error") else None

        async def go() -> dict[str, Any]:
            afc = await self._documents()
            t0 = time.monotonic()
            gone_since = None
            while True:
                await tail(afc)
                if (st := await final_status(afc)) is not None:
                    await tail(afc)
                    return st
                now = time.monotonic()
                alive = bool(await self._pc.process_identifier_for_bundle_identifier(self.contract.bundle_id))
                if not alive and now - t0 > min(self.launch_grace, timeout or self.launch_grace):
                    if gone_since is not None and now - gone_since > 2 * self.poll_interval:
                        if (st := await final_status(afc)) is not None:
                            await tail(afc)
                            return st
                        raise self._death(follower)
                    gone_since = gone_since or now
                elif alive:
                    gone_since = None
                if timeout is not None and now - t0 > timeout:
                    raise RunTimeout(f"no final status.json after {timeout:.0f} s (trace at {follower.offset} bytes, "
                                     f"app {'running' if alive else 'not running'})", device=self.label,
                                     log_lines=follower.last_lines[-10:])
                await asyncio.sleep(self.poll_interval)

        return self._call(go(), "wait")

    def _death(self, follower: TraceFollower) -> AppCrashed:
        events = [ln for ln in follower.last_lines if '"type":"event"' in ln.replace(" ", "")]
        last = follower.last_lines[-10:]
        if any('"name":"oom"' in ln.replace(" ", "") for ln in events):
            return LowMemoryKilled("runner was killed for memory (jetsam) before finishing; its last trace "
                                   "records follow (Settings > Privacy & Security > Analytics Data has the "
                                   "JetsamEvent report)", device=self.label, log_lines=last)
        return AppCrashed(f"runner (pid {self._pid}) exited without writing a final status.json; its last trace "
                          "records follow (crash reports: `pymobiledevice3 crash pull`)", device=self.label,
                          log_lines=last)

    def pull(self, run_dir_local: str | os.PathLike) -> list[str]:
        if self._remote_run is None:
            raise DeviceError("pull() before prepare()", device=self.label)
        local = Path(run_dir_local)
        remote_run = self._remote_run

        async def go() -> list[str]:
            afc = await self._documents()
            got = []
            for name in RESULT_FILES:
                remote = posixpath.join(remote_run, name)
                if not await afc.exists(remote):
                    continue
                tmp = local / f".{name}.part"
                await afc.pull(remote, str(tmp), progress_bar=False)
                os.replace(tmp, local / name)
                got.append(name)
            return got

        return self._call(go(), "pull")

    def write_run_info(self, run_dir_local: str | os.PathLike, **extra: Any) -> None:
        if self.sysmontap_error:
            extra["sysmontap_error"] = self.sysmontap_error
        super().write_run_info(run_dir_local, product_type=self.product_type, launches=self.launches[-1:], **extra)

    def sample_memory(self) -> dict[str, Any] | None:
        """The app's latest own memory record (``phys_footprint``) seen in its trace; None before the first."""
        return dict(self._last_footprint) if self._last_footprint else None

    def cleanup(self) -> None:
        async def go():
            if self._tap_task is not None:
                self._tap_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._tap_task
            if self._pc is not None and self._pid:
                with contextlib.suppress(Exception):
                    await self._pc.kill(self._pid)
            if self._stack is not None:
                with contextlib.suppress(Exception):
                    await self._stack.aclose()
            if self._afc is not None:
                if self._remote_run and not self.keep_remote:
                    with contextlib.suppress(Exception):
                        await self._afc.rm(self._remote_run, force=True)
                with contextlib.suppress(Exception):
                    await self._afc.aclose()
            if self._lockdown is not None:
                with contextlib.suppress(Exception):
                    await self._lockdown.close()

        with contextlib.suppress(Exception):
            self._loop.run_until_complete(go())
        self._tap_task = self._stack = self._pc = self._afc = self._lockdown = None
        self._pid = None
        self._ready = False
        self._run = self._remote_run = self._remote_models = None
        self._mem = None
