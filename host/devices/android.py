"""Android phones over adb (``adbutils``, talking to the adb server; no ``adb`` subprocess per command).

Everything sent to a device shell is an argument list, each argument quoted with ``shlex.quote`` (adbutils'
``list2cmdline``); the values in it are the contract's checked names, the run id (protocol pattern) and
paths built from checked segments. The prompt never goes into a command: it travels in request.json,
pushed as a file.

Environment: ``ANDROID_ADB_SERVER_HOST`` / ``ANDROID_ADB_SERVER_PORT`` (the adb server, default
127.0.0.1:5037), ``SDPHONE_ADB_CONNECT`` (``host:port[,host:port]``: remote endpoints, e.g. a device farm, to
``adb connect`` before listing), ``SDPHONE_ADB_AUTOSTART`` (``0``: never start an adb server; default: start
one like ``adb devices`` does), ``SDPHONE_APK`` (the runner APK to install when the app is missing or
older than the contract's ``version_code``), ``SDPHONE_KEEP_REMOTE=1`` (keep remote run folders).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import posixpath
import re
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from host.devices.base import (
    HOST_MEMORY_FILE, MODELS_MANIFEST, MODELS_STORE, NOISE_FILE, REQUEST_FILE, RESULT_FILES, STATUS_FILE, TRACE_FILE,
    Device, LocalRun, MemoryLog, ModelFile, OnRecord, PushStats, TraceFollower, read_local_run,
)
from host.devices.contract import AndroidContract, check_remote_path
from host.devices.errors import (
    AppCrashed, DeviceError, DeviceNotFound, Disconnected, LowMemoryKilled, RunFailed, RunTimeout, SetupError,
    StorageFull, Unauthorized,
)
from host.profiles import DeviceProfile

ADB_AUTOSTART_ENV = "SDPHONE_ADB_AUTOSTART"
ADB_CONNECT_ENV = "SDPHONE_ADB_CONNECT"
APK_ENV = "SDPHONE_APK"
KEEP_REMOTE_ENV = "SDPHONE_KEEP_REMOTE"

SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:%\[\]-]{0,127}")
ENDPOINT_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
REMOTE_APK = "/data/local/tmp/sdphone-runner.apk"
STORAGE_MARGIN = 64 << 20
LOG_LINES = 200

UNAUTHORIZED_HINT = ("unauthorized: unlock the phone and accept the 'Allow USB debugging?' RSA prompt "
                     "(tick 'Always allow'), then run again; if no prompt shows, revoke USB debugging "
                     "authorisations in Developer options and replug")
OFFLINE_HINT = "offline: replug the cable (or `adb reconnect`), make sure USB debugging is on"
ATTACH_HINT = ("attach an Android phone over USB with USB debugging on (Settings > Developer options), or "
               "reach a remote one with `adb connect host:port` (or SDPHONE_ADB_CONNECT=host:port)")


def quote_command(argv: list[str]) -> str:
    """The shell text adbutils sends for ``argv`` (every argument through ``shlex.quote``)."""
    return " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------ adb server


def adb_client(env: Mapping[str, str] = os.environ):
    from adbutils import AdbClient

    host = env.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
    port = int(env.get("ANDROID_ADB_SERVER_PORT") or 5037)
    return AdbClient(host=host, port=port)


def cache_server_version(client) -> None:
    """adbutils asks the server's version before every transport switch (one extra connection per command);
    it cannot change while the server runs, so ask once."""
    if getattr(client, "_sdphone_cached_version", None) is None:
        version = client.server_version()
        client._sdphone_cached_version = version
        client.server_version = lambda: version


def server_up(client) -> bool:
    try:
        with socket.create_connection((client.host, client.port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_server(client, env: Mapping[str, str] = os.environ) -> str | None:
    """None when the adb server answers, else a one-line note on why there is none.

    Starts one (adbutils runs ``adb start-server``) unless ``SDPHONE_ADB_AUTOSTART=0``."""
    if server_up(client):
        return None
    if env.get(ADB_AUTOSTART_ENV, "1") == "0":
        return (f"no adb server at {client.host}:{client.port} (start it with `adb start-server`; "
                f"{ADB_AUTOSTART_ENV}=0 keeps this tool from starting one)")
    try:
        client.server_version()  # adbutils starts the server when it cannot connect
        return None
    except Exception as e:  # noqa: BLE001
        return f"could not start an adb server at {client.host}:{client.port} ({type(e).__name__}: {e})"


def connect_endpoint(client, addr: str) -> str:
    """``adb connect addr``; returns adb's answer, raises DeviceNotFound when it did not connect."""
    from adbutils import AdbError

    if not ENDPOINT_RE.fullmatch(addr):
        raise DeviceNotFound(f"{addr!r} is not a host:port adb endpoint", device=addr)
    try:
        answer = client.connect(addr, timeout=10)
    except (AdbError, OSError) as e:
        raise DeviceNotFound(f"adb connect failed ({e})", device=addr, command=f"adb connect {addr}") from None
    if "connected to" not in answer:  # "connected to x", "already connected to x"; else "failed to/unable to"
        raise DeviceNotFound(f"adb connect failed: {answer.strip()}; check the address and that the endpoint "
                             "accepts adb (port forwarded, `adb tcpip` / wireless debugging on)",
                             device=addr, command=f"adb connect {addr}")
    return answer


@dataclass(frozen=True)
class AdbEntry:
    serial: str
    state: str            # "device", "unauthorized", "offline", ...
    model: str            # ro.product.model ("" when the device cannot be asked)
    tags: Mapping[str, str]


def list_android(client) -> list[AdbEntry]:
    """Every device the adb server knows, with ``ro.product.model`` for those in state ``device``."""
    out = []
    for info in client.list(extended=True):
        model = ""
        if info.state == "device" and SERIAL_RE.fullmatch(info.serial):
            try:
                model = client.device(info.serial).shell2(["getprop", "ro.product.model"], timeout=10,
                                                         v2=True).output.strip()
            except Exception:  # noqa: BLE001  (listed but not answering: report it without a model)
                model = ""
        out.append(AdbEntry(info.serial, info.state, model, dict(info.tags)))
    return out


def state_error(serial: str, state: str, label: str | None = None):
    if state == "unauthorized":
        return Unauthorized(UNAUTHORIZED_HINT, device=label or serial)
    if state == "offline":
        return Disconnected(OFFLINE_HINT, device=label or serial)
    return Disconnected(f"in state {state!r}, not 'device'", device=label or serial)


# ------------------------------------------------------------------------------------------- parsing


def parse_df_available(text: str) -> int | None:
    """Available bytes from ``df -k <dir>``: toybox ``Filesystem 1K-blocks Used Available Use% Mounted on``
    (a long filesystem name may wrap the row), old toolbox ``Filesystem Size Used Free Blksize`` (1.2G)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    header = lines[0]
    row = [tok for ln in lines[1:] for tok in ln][-(len(header) - 1):] if len(lines) > 2 else lines[1]
    for col in ("Available", "Avail", "Free"):
        if col in header:
            i = header.index(col)
            if i >= len(row):
                return None
            return _size_bytes(row[i], kib=header[1].lower().startswith("1k"))
    return None


def _size_bytes(v: str, kib: bool) -> int | None:
    m = re.fullmatch(r"([0-9.]+)([KMGT]?)", v)
    if not m:
        return None
    n = float(m.group(1))
    if m.group(2):
        return int(n * (1 << (10 * " KMGT".index(m.group(2)))))
    return int(n * 1024) if kib else int(n)


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(TOTAL PSS, TOTAL RSS) in bytes from ``dumpsys meminfo <pkg>``; None where absent."""
    if "No process found" in text:
        return None, None
    pss = re.search(r"TOTAL PSS:\s+(\d+)", text)
    rss = re.search(r"TOTAL RSS:\s+(\d+)", text)
    if pss is None:  # Android 9 and older: the TOTAL row of the table, PSS first
        pss = re.search(r"^\s*TOTAL\s+(\d+)", text, re.M)
    kb = lambda m: int(m.group(1)) * 1024 if m else None  # noqa: E731
    return kb(pss), kb(rss)


def parse_version_code(dumpsys: str) -> int | None:
    m = re.search(r"versionCode=(\d+)", dumpsys)
    return int(m.group(1)) if m else None


VERSION_CODE_ATTR = 0x0101021B  # android.R.attr.versionCode


def apk_version_code(apk: str | os.PathLike) -> int | None:
    """``versionCode`` from an APK's binary AndroidManifest.xml (the <manifest> element), None if unreadable."""
    import struct
    import zipfile

    try:
        with zipfile.ZipFile(apk) as z:
            data = z.read("AndroidManifest.xml")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    try:
        if struct.unpack_from("<H", data, 0)[0] != 0x0003:
            return None
        strings: list[str] = []
        res_ids: list[int] = []
        pos = struct.unpack_from("<H", data, 2)[0]
        while pos + 8 <= len(data):
            ctype, hsize, csize = struct.unpack_from("<HHI", data, pos)
            if csize < 8:
                return None
            if ctype == 0x0001:  # string pool
                count, _styles, flags, start, _ = struct.unpack_from("<IIIII", data, pos + 8)
                utf8 = bool(flags & 0x100)
                for i in range(count):
                    off = pos + start + struct.unpack_from("<I", data, pos + hsize + 4 * i)[0]
                    if utf8:
                        off += 2 if data[off] & 0x80 else 1  # utf-16 length
                        n = data[off]
                        if n & 0x80:
                            n = ((n & 0x7F) << 8) | data[off + 1]
                            off += 1
                        strings.append(data[off + 1:off + 1 + n].decode("utf-8", errors="replace"))
                    else:
                        n = struct.unpack_from("<H", data, off)[0]
                        if n & 0x8000:
                            n = ((n & 0x7FFF) << 16) | struct.unpack_from("<H", data, off + 2)[0]
                            off += 2
                        strings.append(data[off + 2:off + 2 + 2 * n].decode("utf-16-le", errors="replace"))
            elif ctype == 0x0180:  # resource ids of the first strings
                res_ids = list(struct.unpack_from(f"<{(csize - hsize) // 4}I", data, pos + hsize))
            elif ctype == 0x0102:  # start element
                ext = pos + hsize
                _ns, name, astart, asize, acount = struct.unpack_from("<IIHHH", data, ext)
                if 0 <= name < len(strings) and strings[name] == "manifest":
                    for k in range(acount):
                        a = ext + astart + k * asize
                        _ans, aname, _raw, _size, _res0, dtype, value = struct.unpack_from("<IIIHBBI", data, a)
                        named = 0 <= aname < len(strings) and strings[aname] == "versionCode"
                        by_id = aname < len(res_ids) and res_ids[aname] == VERSION_CODE_ATTR
                        if (named or by_id) and dtype in (0x10, 0x11):
                            return value
                    return None
            pos += csize
    except (struct.error, IndexError):
        return None
    return None


_THREADTIME_RE = re.compile(r"^\S+ \S+\s+\d+\s+\d+ [VDIWEFS] (.*?)\s*: ")  # -> the tag
_LMK_RE = re.compile(r"lowmemorykiller|lmkd|am_kill|am_low_memory", re.I)
_NATIVE_CRASH_RE = re.compile(r"Fatal signal \d+|\*\*\* \*\*\* \*\*\*")


def classify_death(lines: list[str], package: str, pid: int | None) -> tuple[str, list[str]]:
    """('lmk' | 'killed' | 'java' | 'native' | 'unknown', the lines that say so) from a logcat dump."""
    pid_s = str(pid) if pid else None
    for ln in lines:
        if _LMK_RE.search(ln) and (package in ln or (pid_s and re.search(rf"\b{pid_s}\b", ln))):
            low = ln.lower()
            if "am_kill" in low and not any(w in low for w in ("lmk", "memory", "mem ")):
                return "killed", [ln]
            return "lmk", [ln]
    for i, ln in enumerate(lines):
        if "FATAL EXCEPTION" in ln:
            return "java", lines[i:i + 30]
    for i, ln in enumerate(lines):
        if _NATIVE_CRASH_RE.search(ln):
            return "native", lines[i:i + 30]
    return "unknown", []


# ------------------------------------------------------------------------------------------- device


class _LogFollower:
    """``logcat -v threadtime --pid=<pid>`` streamed on a thread into a ring buffer (and a file)."""

    def __init__(self, adb, pid: int, out: Path | None, finished_marker: str | None = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.fatal = False
        self.marker = f": {finished_marker} " if finished_marker else None
        self.finished: str | None = None  # the app's "RUN_FINISHED run_dir=... state=... message=..." line
        self.argv = ["logcat", "-v", "threadtime", f"--pid={pid}"]
        self._conn = adb.shell(self.argv, stream=True)
        self._out = out.open("a", encoding="utf-8") if out else None
        self._thread = threading.Thread(target=self._pump, name=f"logcat-{pid}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    chunk = self._conn.conn.recv(65536)
                except TimeoutError:  # a quiet app: keep following
                    continue
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                for raw in done:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    self.lines.append(line)
                    if "FATAL EXCEPTION" in line:
                        self.fatal = True
                    if self.marker and self.marker in line and self.finished is None:
                        self.finished = line
                    if self._out:
                        self._out.write(line + "\n")
                if self._out:
                    self._out.flush()
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            if self._out:
                self._out.flush()

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass
        self._thread.join(timeout=2)
        if self._out:
            self._out.close()
            self._out = None


class _ProgressReader:
    def __init__(self, f, cb: Callable[[int], None]) -> None:
        self.f, self.cb = f, cb

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        if b:
            self.cb(len(b))
        return b

    def close(self) -> None:
        self.f.close()


class AndroidDevice(Device):
    platform = "android"

    def __init__(self, client, serial: str, profile: DeviceProfile, contract: AndroidContract, *,
                 model: str = "", apk: str | os.PathLike | None = None, env: Mapping[str, str] = os.environ,
                 poll_interval: float = 0.5, memory_interval: float = 1.0, start_timeout: float = 20.0,
                 keep_remote: bool | None = None) -> None:
        if not SERIAL_RE.fullmatch(serial):
            raise DeviceNotFound(f"{serial!r} is not a valid adb serial", device=serial)
        super().__init__(profile, serial)
        self.client = client
        try:
            cache_server_version(client)
        except Exception as e:  # noqa: BLE001
            raise Disconnected(f"adb server unreachable ({type(e).__name__}: {e})", device=serial) from None
        self.adb = client.device(serial)
        self.contract = contract
        self.model = model
        apk = apk or env.get(APK_ENV) or contract.apk
        self.apk = Path(apk) if apk else None
        self.poll_interval = poll_interval
        self.memory_interval = memory_interval
        self.start_timeout = start_timeout
        self.keep_remote = env.get(KEEP_REMOTE_ENV) == "1" if keep_remote is None else keep_remote
        self.commands: list[str] = []  # every shell command sent, for the record (and the tests)
        self._run: LocalRun | None = None
        self._remote_run: str | None = None
        self._remote_models: str | None = None
        self._pid: int | None = None
        self._log: _LogFollower | None = None
        self._mem: MemoryLog | None = None
        self._t_device0: str | None = None
        self._app_checked = False
        self.engine = "litert"
        self._mediapipe_local: Path | None = None
        self._remote_mediapipe: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.serial}"

    def describe(self) -> str:
        return f"{self.name} ({self.model or 'Android'}, serial {self.serial})"

    # -- transport ---------------------------------------------------------------------------------

    def _fail(self, e: BaseException, command: str | None) -> DeviceError:
        """Map an adb failure to Disconnected / Unauthorized when the device is gone, else DeviceError."""
        if not server_up(self.client):
            return Disconnected(f"the adb server at {self.client.host}:{self.client.port} went away; start it "
                                "(`adb start-server`), reconnect the phone and run again", device=self.label,
                                command=command, log_lines=self._log_lines())
        try:
            states = {i.serial: i.state for i in self.client.list()}
        except Exception as le:  # noqa: BLE001
            return Disconnected(f"adb server unreachable ({type(le).__name__}: {le}); is `adb` still running?",
                                device=self.label, command=command, log_lines=self._log_lines())
        state = states.get(self.serial)
        if state is None:
            return Disconnected("the device went away (unplugged, rebooted or the adb connection dropped); "
                                "reconnect it (USB, or `adb connect host:port`) and run again",
                                device=self.label, command=command, log_lines=self._log_lines())
        if state != "device":
            err = state_error(self.serial, state, self.label)
            err.command = command
            return err
        return DeviceError(f"adb failed: {type(e).__name__}: {e}", device=self.label, command=command)

    def sh(self, argv: list[str], *, check: bool = True, timeout: float = 120, raw: bool = False):
        """Run ``argv`` in the device shell (quoted argument by argument); adb failures become DeviceErrors."""
        from adbutils import AdbError

        if not all(isinstance(a, str) for a in argv):
            raise TypeError(f"shell arguments must be strings: {argv!r}")
        cmd = quote_command(argv)
        self.commands.append(cmd)
        try:
            r = self.adb.shell2(list(argv), timeout=timeout, encoding=None if raw else "utf-8", v2=True)
        except (AdbError, OSError, EOFError) as e:
            raise self._fail(e, cmd) from None
        if check and r.returncode != 0:
            text = (r.stderr or r.output or b"") if raw else (r.stderr.strip() or r.output.strip())
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            last = text.strip().splitlines()[-1] if text.strip() else ""
            raise DeviceError(f"command failed with exit code {r.returncode}: {last}", device=self.label,
                              command=cmd)
        return r

    def _sync(self, op: str, remote: str, *args):
        """adbutils' sync ``op`` on ``remote`` (stat / read_bytes / pull_file / push)."""
        from adbutils import AdbError

        try:
            s = self.adb.sync
            if op == "push":  # push(src, dst, mode)
                return s.push(args[0], remote, 0o644)
            return getattr(s, op)(remote, *args)
        except (AdbError, OSError, EOFError) as e:
            raise self._fail(e, f"sync {op} {remote}") from None

    def _exists(self, path: str) -> bool:
        return self._sync("stat", path).mode != 0

    def _size(self, path: str) -> int | None:
        st = self._sync("stat", path)
        return st.size if st.mode != 0 else None

    def _read(self, path: str) -> bytes | None:
        if not self._exists(path):
            return None
        return self._sync("read_bytes", path)

    def _write(self, path: str, data: bytes) -> None:
        self._sync("push", path, data)

    def check_state(self) -> None:
        if not server_up(self.client):
            raise Disconnected(f"no adb server at {self.client.host}:{self.client.port}", device=self.label)
        try:
            states = {i.serial: i.state for i in self.client.list()}
        except Exception as e:  # noqa: BLE001
            raise Disconnected(f"adb server unreachable ({e})", device=self.label) from None
        state = states.get(self.serial)
        if state is None:
            raise Disconnected("not attached any more; reconnect it and run again", device=self.label)
        if state != "device":
            raise state_error(self.serial, state, self.label)

    # -- app ----------------------------------------------------------------------------------------

    def installed_version(self) -> int | None:
        r = self.sh(["dumpsys", "package", self.contract.package], check=False)
        if f"Package [{self.contract.package}]" not in r.output:
            return None
        return parse_version_code(r.output) or 0

    def ensure_app(self) -> None:
        """Install the runner APK when the app is missing, or older than the APK (versionCode, from
        ``dumpsys package``) or than the contract's ``version_code``."""
        want = self.contract.version_code
        apk = self.apk if self.apk is not None and self.apk.is_file() else None
        local = apk_version_code(apk) if apk else None
        have = self.installed_version()
        if have is not None and (want is None or have >= want) and (local is None or have >= local):
            return
        if have is None:
            why = "not installed"
        elif want is not None and have < want:
            why = f"installed with versionCode {have}, this host needs {want}"
        else:
            why = f"installed with versionCode {have}, older than {apk} ({local})"
        if apk is None:
            raise SetupError(f"runner app {self.contract.package} is {why}; build it (`./gradlew :app:assembleRelease` "
                             f"in android_app/) or set {APK_ENV}=path/to/app.apk"
                             + (f" ({self.apk} not found)" if self.apk else ""), device=self.label)
        self._sync("push", REMOTE_APK, apk)
        argv = ["pm", "install", "-r", "-t", REMOTE_APK]
        r = self.sh(argv, check=False, timeout=300)
        self.sh(["rm", "-f", REMOTE_APK], check=False)
        if "Success" not in r.output:
            text = (r.output + r.stderr).strip().splitlines() or ["?"]
            raise SetupError(f"installing {apk.name} failed: {text[-1]}", device=self.label,
                             command=quote_command(argv))
        have = self.installed_version()
        if have is None or (want is not None and have < want):
            raise SetupError(f"{apk} installed but the device reports versionCode {have}, not >= {want}; "
                             "rebuild the APK", device=self.label)

    # -- run ----------------------------------------------------------------------------------------

    def prepare(self, run_dir_local: str | os.PathLike) -> str:
        run = read_local_run(run_dir_local)
        self.check_state()
        if not self._app_checked:
            self.ensure_app()
            self._app_checked = True
        root = self.contract.run_root
        remote_run = check_remote_path(posixpath.join(root, run.run_id), what="remote run folder")
        if self.contract.models_root:  # the app's folder for model stores shared by runs (absolute models_dir)
            remote_models = check_remote_path(posixpath.join(self.contract.models_root, run.models_key),
                                              what="models folder")
            models_dir = remote_models
        else:
            remote_models = check_remote_path(posixpath.join(root, MODELS_STORE, run.models_key),
                                              what="models folder")
            models_dir = posixpath.join("..", MODELS_STORE, run.models_key)
        self.sh(["rm", "-rf", remote_run])
        self.sh(["mkdir", "-p", remote_run, remote_models])
        self._write(posixpath.join(remote_run, NOISE_FILE), (run.run_dir / NOISE_FILE).read_bytes())
        self._write(posixpath.join(remote_run, REQUEST_FILE), run.device_request(models_dir))
        self._run, self._remote_run, self._remote_models = run, remote_run, remote_models
        return remote_run

    def _free_bytes(self, path: str) -> int | None:
        r = self.sh(["df", "-k", path], check=False)
        return parse_df_available(r.output) if r.returncode == 0 else None

    def _remote_sha256(self, path: str) -> str | None:
        r = self.sh(["sha256sum", path], check=False, timeout=600)
        m = re.match(r"([0-9a-f]{64})\b", r.output.strip())
        return m.group(1) if r.returncode == 0 and m else None

    def push_models(self, run_dir_local: str | os.PathLike,
                    progress: Callable[[str, int], None] | None = None) -> PushStats:
        """Push the run's models into its shared store (files the device already has are skipped); with the
        MediaPipe engine, the MediaPipe weights folder instead (our models are not used by that engine)."""
        if self._run is None or self._run.run_dir != Path(run_dir_local):
            self.prepare(run_dir_local)
        run, store = self._run, self._remote_models
        assert run is not None and store is not None
        if self.engine == "mediapipe":
            files, store = self._mediapipe_files()
            self.sh(["mkdir", "-p", store])
            self._remote_mediapipe = store
            return self._push(store, files, progress)
        return self._push(store, list(run.models), progress)

    def set_engine(self, engine: str, mediapipe_dir: str | os.PathLike | None = None) -> None:
        """``litert`` (our models, the default) or ``mediapipe``: Google's MediaPipe Image Generator with the
        weights folder ``mediapipe_dir`` (host.export.mediapipe), pushed to the app's MediaPipe folder."""
        if engine not in ("litert", "mediapipe"):
            raise SetupError(f"unknown engine {engine!r} (litert or mediapipe)", device=self.label)
        if engine == "mediapipe":
            c = self.contract
            if not (c.engine_extra and c.engine_mediapipe and c.mediapipe_dir_extra and c.mediapipe_root):
                raise SetupError(f"{c.path}: the runner app's contract has no MediaPipe engine "
                                 "(extra_engine, engine_mediapipe, extra_mediapipe_model_dir, "
                                 "device_mediapipe_model_dir)", device=self.label)
            if mediapipe_dir is None or not Path(mediapipe_dir).is_dir():
                raise SetupError(f"{mediapipe_dir}: no MediaPipe weights folder (python -m host.export mediapipe)",
                                 device=self.label)
        self.engine = engine
        self._mediapipe_local = Path(mediapipe_dir) if mediapipe_dir is not None else None

    def _mediapipe_files(self) -> tuple[list[ModelFile], str]:
        from host.hashing import file_sha256

        local = self._mediapipe_local
        assert local is not None
        files = [ModelFile(f.name, file_sha256(f), f, f.stat().st_size) for f in sorted(local.iterdir())
                 if f.is_file() and not f.name.startswith(".")]
        key = hashlib.sha256("".join(f"{m.rel}\0{m.sha256}\n" for m in files).encode()).hexdigest()[:16]
        store = check_remote_path(posixpath.join(self.contract.mediapipe_root, key), what="MediaPipe folder")
        return files, store

    def _push(self, store: str, files: list[ModelFile], progress: Callable[[str, int], None] | None) -> PushStats:
        t0 = time.monotonic()
        manifest_path = posixpath.join(store, MODELS_MANIFEST)
        try:
            manifest = json.loads(self._read(manifest_path) or b"{}").get("files", {})
        except (ValueError, AttributeError):
            manifest = {}
        stats = PushStats()
        todo = []
        adopted = False
        for m in files:
            remote = posixpath.join(store, m.rel)
            size = self._size(remote)
            known = manifest.get(m.rel) or {}
            if size == m.size and known.get("sha256") == m.sha256:
                same = True
            elif size == m.size:  # not in the manifest (or another sha): ask the device
                same = self._remote_sha256(remote) == m.sha256
                if same:
                    manifest[m.rel] = {"sha256": m.sha256, "size": m.size}
                    adopted = True
            else:
                same = False
            if same:
                stats.skipped_files += 1
                stats.skipped_bytes += m.size
            else:
                todo.append(m)
        need = sum(m.size for m in todo)
        if todo:
            free = self._free_bytes(store)
            if free is not None and free < need + STORAGE_MARGIN:
                gib = 1 << 30
                raise StorageFull(f"{need / gib:.2f} GiB to push but only {free / gib:.2f} GiB free under "
                                  f"{posixpath.dirname(store)}; free space on the phone (old model builds live in "
                                  f"{posixpath.dirname(store)}/, one folder per build)",
                                  device=self.label, command=quote_command(["df", "-k", store]))
        if todo or adopted:  # entries come back one by one as files land; an interrupted push is re-checked
            for m in todo:
                manifest.pop(m.rel, None)
            self._write(manifest_path, json.dumps({"files": manifest}).encode())
        if todo:
            subdirs = sorted({posixpath.dirname(posixpath.join(store, m.rel)) for m in todo if "/" in m.rel})
            if subdirs:
                self.sh(["mkdir", "-p", *subdirs])
        for m in todo:
            remote = posixpath.join(store, m.rel)
            f = m.local.open("rb")
            src = _ProgressReader(f, lambda n, rel=m.rel: progress(rel, n)) if progress else f
            try:
                self._sync("push", remote, src)
            except (Disconnected, Unauthorized):
                raise
            except DeviceError as e:
                free = self._free_bytes(store)
                left = sum(x.size for x in todo[todo.index(m):])
                if free is not None and free < left:
                    raise StorageFull(f"{m.rel}: push failed with {free / (1 << 30):.2f} GiB free for "
                                      f"{left / (1 << 30):.2f} GiB still to push; free space on the phone",
                                      device=self.label, command=e.command) from None
                raise DeviceError(f"pushing {m.rel} failed ({e.message}); check that {store} is writable",
                                  device=self.label, command=e.command) from None
            finally:
                f.close()
            got = self._size(remote)
            if got != m.size:
                raise StorageFull(f"{m.rel}: pushed {m.size} bytes but the device has {got}; storage full?",
                                  device=self.label, command=f"sync push {remote}")
            manifest[m.rel] = {"sha256": m.sha256, "size": m.size}
            stats.pushed_files += 1
            stats.pushed_bytes += m.size
            stats.files.append(m.rel)
            self._write(manifest_path, json.dumps({"files": manifest}).encode())
        stats.seconds = time.monotonic() - t0
        self.last_push = stats
        return stats

    def _pidof(self) -> int | None:
        r = self.sh(["pidof", self.contract.package], check=False)
        pids = [int(p) for p in r.output.split() if p.isdigit()]
        return pids[0] if pids else None

    def start(self, run_dir_local: str | os.PathLike) -> None:
        if self._run is None or self._remote_run is None or self._run.run_dir != Path(run_dir_local):
            raise DeviceError("start() before prepare() for this run folder", device=self.label)
        self._t_device0 = self.sh(["date", "+%m-%d %H:%M:%S.000"], check=False).output.strip() or None
        self._mem = MemoryLog(self._run.run_dir / HOST_MEMORY_FILE, "dumpsys_meminfo")
        argv = ["am", "start", "-S", "-W", "-n", self.contract.component,
                "--es", self.contract.intent_extra, self._remote_run]
        if self.engine == "mediapipe":
            if self._remote_mediapipe is None:
                raise SetupError("MediaPipe engine: push_models() first (the weights folder)", device=self.label)
            argv += ["--es", self.contract.engine_extra, self.contract.engine_mediapipe,
                     "--es", self.contract.mediapipe_dir_extra, self._remote_mediapipe]
        r = self.sh(argv, check=False, timeout=60)
        text = (r.output + "\n" + r.stderr).strip()
        if r.returncode != 0 or re.search(r"^Error", text, re.M):
            raise SetupError(f"could not start the runner: {text.splitlines()[-1] if text else r.returncode}",
                             device=self.label, command=quote_command(argv))
        deadline = time.monotonic() + self.start_timeout
        self._pid = self._pidof()
        while self._pid is None and time.monotonic() < deadline:
            if self._exists(posixpath.join(self._remote_run, STATUS_FILE)):
                break  # already done (tiny run)
            time.sleep(min(self.poll_interval, 0.2))
            self._pid = self._pidof()
        if self._pid is not None:
            from adbutils import AdbError

            try:
                self._log = _LogFollower(self.adb, self._pid, self._run.run_dir / "logcat.txt",
                                         self.contract.finished_marker)
                self.commands.append(quote_command(self._log.argv))
            except (AdbError, OSError) as e:
                raise self._fail(e, "logcat") from None

    _CRASH_TAGS = ("AndroidRuntime", "libc", "DEBUG", "lowmemorykiller", "lmkd", "ActivityManager")

    def _log_lines(self) -> list[str]:
        """The followed log of the app's process: its own tag's lines and crash lines when there are any."""
        lines = list(self._log.lines) if self._log else []
        tags = {self.contract.logcat_tag, *self._CRASH_TAGS}
        mine = [ln for ln in lines if (m := _THREADTIME_RE.match(ln)) and m.group(1) in tags]
        return mine or lines

    def _tail_trace(self, follower: TraceFollower) -> None:
        path = posixpath.join(self._remote_run, TRACE_FILE)
        r = self.sh(["tail", "-c", f"+{follower.offset + 1}", path], check=False, raw=True)
        if r.returncode == 0:
            follower.feed(r.stdout or r.output)

    def _status(self) -> dict[str, Any] | None:
        data = self._read(posixpath.join(self._remote_run, STATUS_FILE))
        if not data:
            return None
        try:
            st = json.loads(data)
        except ValueError:
            return None  # being written
        return st if isinstance(st, dict) else None

    def _death(self, follower: TraceFollower) -> AppCrashed:
        argv = ["logcat", "-d", "-v", "threadtime", "-b", "main,system,crash,events"]
        if self._t_device0:
            argv += ["-T", self._t_device0]
        dump = self.sh(argv, check=False, timeout=60).output.splitlines()[-3000:]
        kind, lines = classify_death(dump + self._log_lines(), self.contract.package, self._pid)
        last = lines or self._log_lines()[-30:] or follower.last_lines[-10:]
        where = f"pid {self._pid}" if self._pid else "the app"
        if kind == "lmk":
            return LowMemoryKilled(f"runner ({where}) was killed by the low-memory killer before finishing; "
                                   "try a smaller variant or close other apps", device=self.label, log_lines=last)
        if kind == "killed":
            return AppCrashed(f"runner ({where}) was killed by the system before finishing", device=self.label,
                              log_lines=last)
        if kind == "java":
            return AppCrashed(f"runner ({where}) crashed (FATAL EXCEPTION) without writing status.json",
                              device=self.label, log_lines=last)
        if kind == "native":
            return AppCrashed(f"runner ({where}) crashed (native signal) without writing status.json",
                              device=self.label, log_lines=last)
        return AppCrashed(f"runner ({where}) exited without writing a final status.json", device=self.label,
                          log_lines=last)

    def wait(self, timeout: float | None, on_record: OnRecord | None = None) -> dict[str, Any]:
        if self._remote_run is None:
            raise DeviceError("wait() before start()", device=self.label)
        follower = TraceFollower(on_record)
        t0 = time.monotonic()
        next_mem = t0
        gone_since: float | None = None
        finished_polls = 0
        while True:
            self._tail_trace(follower)
            status = self._status()
            if status and status.get("state") in ("ok", "error"):
                self._tail_trace(follower)
                return status
            now = time.monotonic()
            if now >= next_mem:
                self.sample_memory()
                next_mem = now + self.memory_interval
            if self._log is not None and self._log.finished is not None:
                finished_polls += 1  # the app says it is done: status.json must follow at once
                if finished_polls > 3:
                    m = re.search(r"state=(\S+)(?: message=(.*))?", self._log.finished)
                    state, msg = (m.group(1), (m.group(2) or "").strip()) if m else ("?", "")
                    raise RunFailed(f"runner finished (state={state}) without a final status.json: {msg or '-'}",
                                    device=self.label, log_lines=self._log_lines()[-20:])
            alive = self._pidof() is not None
            if not alive:
                fatal = self._log is not None and self._log.fatal
                if fatal or (gone_since is not None and now - gone_since > 3 * self.poll_interval):
                    if (status := self._status()) and status.get("state") in ("ok", "error"):
                        self._tail_trace(follower)
                        return status
                    raise self._death(follower)
                gone_since = gone_since or now
            else:
                gone_since = None
            if timeout is not None and now - t0 > timeout:
                raise RunTimeout(f"no final status.json after {timeout:.0f} s (trace at {follower.offset} bytes, "
                                 f"app {'running' if alive else 'not running'}); the run folder stays at "
                                 f"{self._remote_run}", device=self.label,
                                 log_lines=self._log_lines()[-20:] or follower.last_lines[-10:])
            time.sleep(self.poll_interval)

    def pull(self, run_dir_local: str | os.PathLike) -> list[str]:
        if self._remote_run is None:
            raise DeviceError("pull() before prepare()", device=self.label)
        local = Path(run_dir_local)
        got = []
        for name in RESULT_FILES:
            remote = posixpath.join(self._remote_run, name)
            if not self._exists(remote):
                continue
            tmp = local / f".{name}.part"
            self._sync("pull_file", remote, tmp)
            os.replace(tmp, local / name)
            got.append(name)
        return got

    def write_run_info(self, run_dir_local: str | os.PathLike, **extra: Any) -> None:
        super().write_run_info(run_dir_local, model=self.model, pid=self._pid, **extra)

    def sample_memory(self) -> dict[str, Any] | None:
        """``dumpsys meminfo <package>``: TOTAL RSS as source ``dumpsys_meminfo`` (and TOTAL PSS as source
        ``dumpsys_meminfo_pss``) appended to host_memory.jsonl during a run; returns the RSS record (PSS where the
        device reports no RSS, Android 9 and older), None when the app is not running."""
        r = self.sh(["dumpsys", "meminfo", self.contract.package], check=False, timeout=30)
        pss, rss = parse_meminfo(r.output)
        if pss is None and rss is None:
            return None
        records = [(v, src) for v, src in ((rss, "dumpsys_meminfo"), (pss, "dumpsys_meminfo_pss")) if v is not None]
        if self._mem is None:
            from host.protocol import MemoryRecord

            return MemoryRecord(t=0.0, rss_bytes=records[0][0], source=records[0][1]).to_dict()
        out = [self._mem.write(v, src) for v, src in records]
        return out[0]

    def cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        for argv in (["am", "force-stop", self.contract.package],
                     None if self.keep_remote or not self._remote_run else ["rm", "-rf", self._remote_run]):
            if argv:
                try:
                    self.sh(argv, check=False, timeout=30)
                except DeviceError:
                    pass
        self._run = self._remote_run = self._remote_models = None
        self._pid = None
        self._mem = None
