"""A fake adb server on loopback that speaks the real adb wire protocol, so ``adbutils`` talks to it unmodified.

Host services: ``host:version``, ``host:devices`` / ``host:devices-l``, ``host:transport:<serial>``,
``host:tport:serial:<serial>``, ``host-serial:<serial>:features|get-state``, ``host:connect:<addr>``,
``host:disconnect:<addr>``. Device services after a transport switch: ``shell:<cmd>`` (raw stream),
``shell,v2:<cmd>`` (packets: 1 stdout, 2 stderr, 3 exit) and ``sync:`` (STAT / LIST / SEND / RECV / QUIT with
DATA / DONE / OKAY / FAIL framing).

Each :class:`FakePhone` has a little file system, a shell that understands the commands the transport sends
(the command text is recorded, then split with ``shlex``: nothing is ever run), log buffers, and a scripted
runner app that :func:`am start` kicks off on a thread (scenarios: ok, crash, lmk, disconnect, hang).
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import select
import shlex
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field

S_IFREG = 0o100000
S_IFDIR = 0o040000


@dataclass
class FakePhone:
    serial: str
    model: str = "SM-S911B"
    state: str = "device"
    package: str = "com.sdphone.runner"
    installed_version: int | None = 3
    free_bytes: int = 50 << 30
    scenario: str = "ok"
    steps: int = 4
    step_delay: float = 0.02
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/sdcard", "/data", "/data/local", "/data/local/tmp"})
    main_log: list[tuple[int, str]] = field(default_factory=list)     # (pid, line)
    events_log: list[str] = field(default_factory=list)
    pid: int | None = None
    gone: bool = False
    next_pid: int = 4242
    started: list[list[str]] = field(default_factory=list)           # argv of every `am start`
    df_extra_once: int = 0  # added to the next `df` answer only (space that is gone by the time we push)
    tails: int = 0                                                    # `tail` commands seen (the host is waiting)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- file system ------------------------------------------------------------------------------

    def mkdirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        while path not in self.dirs:
            self.dirs.add(path)
            path = posixpath.dirname(path)

    def write(self, path: str, data: bytes) -> None:
        path = posixpath.normpath(path)
        with self.lock:
            self.mkdirs(posixpath.dirname(path))
            self.files[path] = data

    def append(self, path: str, data: bytes) -> None:
        with self.lock:
            self.write(path, self.files.get(posixpath.normpath(path), b"") + data)

    def rm_rf(self, path: str) -> None:
        path = posixpath.normpath(path)
        with self.lock:
            for f in [f for f in self.files if f == path or f.startswith(path + "/")]:
                del self.files[f]
            for d in [d for d in self.dirs if d == path or d.startswith(path + "/")]:
                self.dirs.discard(d)

    def used_bytes(self) -> int:
        return sum(len(v) for v in self.files.values())

    # -- logs ---------------------------------------------------------------------------------------

    def log(self, pid: int, tag: str, msg: str, level: str = "I") -> None:
        line = f"11-22 10:00:00.000 {pid:5d} {pid:5d} {level} {tag:<8}: {msg}"
        with self.lock:
            self.main_log.append((pid, line))

    # -- the runner app -------------------------------------------------------------------------------

    def launch(self, run_dir: str, tag: str = "SdPhoneRunner") -> None:
        with self.lock:
            pid = self.next_pid
            self.next_pid += 1
            self.pid = pid
        threading.Thread(target=self._app, args=(pid, run_dir, tag), daemon=True).start()

    def _trace(self, run_dir: str, record: dict) -> None:
        self.append(posixpath.join(run_dir, "trace.jsonl"), (json.dumps(record) + "\n").encode())

    def _app(self, pid: int, run_dir: str, tag: str) -> None:
        if self.scenario == "rejected":  # e.g. a run folder outside the app's files dir: no status.json at all
            self.log(pid, tag, f"RUN_FINISHED run_dir={run_dir} state=error message=run folders must be inside "
                               f"/storage/emulated/0/Android/data/{self.package}/files")
            return
        req = json.loads(self.files[posixpath.join(run_dir, "request.json")])
        self.log(pid, tag, f"RUN_STARTED run_dir={run_dir} engine=litert")
        mdir = posixpath.normpath(posixpath.join(run_dir, req["models_dir"]))
        bad = [m["file"] for m in req["models"].values()
               if hashlib.sha256(self.files.get(posixpath.join(mdir, m["file"]), b"")).hexdigest() != m["sha256"]]
        self._trace(run_dir, {"type": "meta", "t": 0.001, "schema": "sdphone.trace", "version": 1,
                              "run_id": req["run_id"], "runner": "android", "runner_version": "fake",
                              "device": {"model": self.model, "os": "Android 14", "soc": "fake"},
                              "runtime": {"accelerator": "cpu", "precision": "fp32", "threads": 4,
                                          "delegate": "xnnpack"}})
        self.write(posixpath.join(run_dir, "status.json"), json.dumps({"state": "running"}).encode())
        if bad:
            self.write(posixpath.join(run_dir, "status.json"), json.dumps(
                {"state": "error", "run_id": req["run_id"], "message": f"sha256 mismatch: {bad}",
                 "finished_t": 0.01}).encode())
            with self.lock:
                self.pid = None
            return
        deadline = time.monotonic() + 5
        while self.tails < 1 and time.monotonic() < deadline and not self.gone:
            time.sleep(0.005)  # the app "works" while the host follows it
        t = 0.01
        for i in range(self.steps):
            time.sleep(self.step_delay)
            if self.gone:
                return
            self._trace(run_dir, {"type": "span", "t": t + 0.01, "name": "unet_step", "cat": "step", "start": t,
                                  "dur": 0.01, "component": "unet", "step": i, "repeat": 0, "warmup": False})
            self._trace(run_dir, {"type": "memory", "t": t + 0.01, "rss_bytes": 1 << 30, "source": "dumpsys_meminfo"})
            self.log(pid, tag, f"RUN_PROGRESS run_dir={run_dir} step {i + 1}/{self.steps}")
            t += 0.01
            if self.scenario == "disconnect" and i == 1:
                with self.lock:
                    self.gone = True
                return
            if self.scenario == "hang" and i == 1:
                while not self.gone and self.pid == pid:
                    time.sleep(0.02)
                return
            if self.scenario == "crash" and i == 2:
                self.log(pid, "AndroidRuntime", "FATAL EXCEPTION: main", "E")
                self.log(pid, "AndroidRuntime", "Process: com.sdphone.runner, PID: %d" % pid, "E")
                self.log(pid, "AndroidRuntime", "java.lang.IllegalStateException: interpreter exploded", "E")
                self.log(pid, "AndroidRuntime", "\tat com.sdphone.runner.Runner.step(Runner.kt:42)", "E")
                with self.lock:
                    self.pid = None
                return
            if self.scenario == "lmk" and i == 2:
                with self.lock:
                    self.events_log.append(f"11-22 10:00:01.000  1000  1200 I am_kill : "
                                           f"[0,{pid},{self.package},900,lmk]")
                    self.main_log.append((77, f"11-22 10:00:01.000    77    77 I lowmemorykiller: Kill "
                                              f"'{self.package}' ({pid}), uid 10200, oom_score_adj 900"))
                    self.pid = None
                return
        self.write(posixpath.join(run_dir, "image.png"), b"\x89PNG fake")
        self.write(posixpath.join(run_dir, "image.f32"), b"\0" * 4096)
        self.write(posixpath.join(run_dir, "status.json"), json.dumps(
            {"state": "ok", "run_id": req["run_id"], "finished_t": t, "images": ["image.png"]}).encode())
        self.log(pid, tag, f"RUN_FINISHED run_dir={run_dir} state=ok message=")
        # the activity finishes; Android keeps the process cached, so it stays alive

    # -- shell ----------------------------------------------------------------------------------------

    def shell(self, cmd: str) -> tuple[bytes, bytes, int]:
        argv = shlex.split(cmd)
        if not argv:
            return b"", b"", 0
        name, args = argv[0], argv[1:]
        fn = getattr(self, f"sh_{name.replace('-', '_')}", None)
        if fn is None:
            return b"", f"/system/bin/sh: {name}: inaccessible or not found\n".encode(), 127
        return fn(args)

    def sh_getprop(self, a):
        return {"ro.product.model": self.model}.get(a[0], "").encode() + b"\n", b"", 0

    def sh_date(self, a):
        return b"11-22 10:00:00.000\n", b"", 0

    def sh_mkdir(self, a):
        for p in a:
            if p != "-p":
                self.mkdirs(p)
        return b"", b"", 0

    def sh_rm(self, a):
        for p in a:
            if not p.startswith("-"):
                self.rm_rf(p)
        return b"", b"", 0

    def sh_df(self, a):
        path = a[-1]
        avail = max(0, self.free_bytes - self.used_bytes() + self.df_extra_once) // 1024
        self.df_extra_once = 0
        return (f"Filesystem     1K-blocks    Used Available Use% Mounted on\n"
                f"/dev/fuse      115249236 5563412 {avail} 5% {path}\n").encode(), b"", 0

    def sh_sha256sum(self, a):
        p = posixpath.normpath(a[0])
        if p not in self.files:
            return b"", f"sha256sum: {p}: No such file or directory\n".encode(), 1
        return f"{hashlib.sha256(self.files[p]).hexdigest()}  {p}\n".encode(), b"", 0

    def sh_tail(self, a):
        self.tails += 1
        assert a[0] == "-c" and a[1].startswith("+")
        p = posixpath.normpath(a[2])
        if p not in self.files:
            return b"", f"tail: {p}: No such file or directory\n".encode(), 1
        return self.files[p][int(a[1][1:]) - 1:], b"", 0

    def sh_pidof(self, a):
        return (f"{self.pid}\n".encode(), b"", 0) if self.pid and a[0] == self.package else (b"", b"", 1)

    def sh_dumpsys(self, a):
        if a[0] == "package":
            if self.installed_version is None or a[1] != self.package:
                return b"Unable to find package: " + a[1].encode() + b"\n", b"", 0
            return (f"Packages:\n  Package [{self.package}] (1a2b3c):\n    versionCode={self.installed_version} "
                    f"minSdk=26 targetSdk=34\n    versionName=1.0\n").encode(), b"", 0
        if a[0] == "meminfo":
            if not self.pid:
                return f"No process found for: {a[1]}\n".encode(), b"", 0
            return (f"** MEMINFO in pid {self.pid} [{self.package}] **\n"
                    "                   Pss  Private  Private  SwapPss      Rss\n"
                    "          TOTAL   900000   800000    1000        0  1200000\n"
                    "App Summary\n"
                    "           TOTAL PSS:   900000            TOTAL RSS:  1200000       TOTAL SWAP PSS:"
                    "        0\n").encode(), b"", 0
        return b"", b"", 0

    def sh_pm(self, a):
        if a[0] == "install":
            path = posixpath.normpath(a[-1])
            if path not in self.files:
                return b"", b"Failure [INSTALL_FAILED_INVALID_URI]\n", 1
            from host.devices.android import apk_version_code

            self.installed_version = apk_version_code(io.BytesIO(self.files[path]))
            if self.installed_version is None:
                return b"", b"Failure [INSTALL_PARSE_FAILED_NOT_APK]\n", 1
            return b"Success\n", b"", 0
        return b"", b"", 1

    def sh_am(self, a):
        if a[0] == "force-stop":
            with self.lock:
                self.pid = None
            return b"", b"", 0
        if a[0] == "start":
            self.started.append(a)
            comp = a[a.index("-n") + 1]
            if self.installed_version is None or not comp.startswith(self.package + "/"):
                return b"", f"Error: Activity class {{{comp}}} does not exist.\n".encode(), 0
            i = a.index("--es")
            self.launch(a[i + 2])
            return (f"Starting: Intent {{ cmp={comp} (has extras) }}\nStatus: ok\nLaunchState: COLD\n"
                    f"TotalTime: 312\nComplete\n").encode(), b"", 0
        return b"", b"", 1

    def sh_logcat(self, a):  # only the dump form; the streaming form is handled by the server
        lines = [ln for _, ln in self.main_log] + list(self.events_log)
        return ("\n".join(lines) + "\n").encode(), b"", 0


class FakeAdbServer:
    """``with FakeAdbServer([FakePhone(...)]) as srv: AdbClient(srv.host, srv.port)``."""

    def __init__(self, phones: list[FakePhone] = (), version: int = 41,
                 endpoints: dict[str, FakePhone] | None = None) -> None:
        self.phones: dict[str, FakePhone] = {p.serial: p for p in phones}
        self.endpoints = dict(endpoints or {})  # host:port -> phone that `adb connect` attaches
        self.version = version
        self.requests: list[str] = []             # every service request, in order
        self.shell_commands: list[tuple[str, str]] = []  # (serial, command text) of every shell request
        self.pushed: list[tuple[str, str, int]] = []     # (serial, path, bytes)
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    outer._handle(self.request)
                except (ConnectionError, OSError, EOFError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.host, self.port = self._server.server_address
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self) -> "FakeAdbServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for p in self.phones.values():
            p.gone = True
        self._server.shutdown()
        self._server.server_close()

    def client(self):
        from adbutils import AdbClient

        return AdbClient(host=self.host, port=self.port)

    # -- wire ---------------------------------------------------------------------------------------

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _request(self, sock: socket.socket) -> str | None:
        try:
            n = int(self._read(sock, 4), 16)
        except EOFError:
            return None
        return self._read(sock, n).decode()

    @staticmethod
    def _block(s: str) -> bytes:
        b = s.encode()
        return f"{len(b):04x}".encode() + b

    def _fail(self, sock: socket.socket, msg: str) -> None:
        sock.sendall(b"FAIL" + self._block(msg))

    def _visible(self, serial: str) -> FakePhone | None:
        p = self.phones.get(serial)
        return None if p is None or p.gone else p

    def _handle(self, sock: socket.socket) -> None:
        phone: FakePhone | None = None
        while True:
            req = self._request(sock)
            if req is None:
                return
            with self.lock:
                self.requests.append(req)
            if phone is None:
                if req == "host:version":
                    sock.sendall(b"OKAY" + self._block(f"{self.version:04x}"))
                    return
                if req in ("host:devices", "host:devices-l"):
                    lines = []
                    for i, p in enumerate(self.phones.values(), 1):
                        if p.gone:
                            continue
                        extra = (f" product:x model:{p.model.replace(' ', '_')} device:y transport_id:{i}"
                                 if req.endswith("-l") else "")
                        lines.append(f"{p.serial:<22} {p.state}{extra}" if extra else f"{p.serial}\t{p.state}")
                    sock.sendall(b"OKAY" + self._block("".join(ln + "\n" for ln in lines)))
                    return
                if req.startswith("host:connect:"):
                    addr = req[len("host:connect:"):]
                    p = self.endpoints.get(addr)
                    if p is None:
                        sock.sendall(b"OKAY" + self._block(f"failed to connect to '{addr}': Connection refused"))
                        return
                    already = addr in self.phones
                    p.serial = addr
                    self.phones[addr] = p
                    sock.sendall(b"OKAY" + self._block(("already connected to " if already else "connected to ")
                                                       + addr))
                    return
                if req.startswith("host:disconnect:"):
                    self.phones.pop(req.split(":", 2)[2], None)
                    sock.sendall(b"OKAY" + self._block("disconnected"))
                    return
                if req.startswith("host-serial:"):
                    _, rest = req.split(":", 1)
                    serial, cmd = rest.rsplit(":", 1)
                    p = self._visible(serial)
                    if p is None:
                        return self._fail(sock, f"device '{serial}' not found")
                    if p.state != "device" and cmd != "get-state":
                        return self._fail(sock, "device unauthorized.")
                    answer = {"features": "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,apex,abb,abb_exec",
                              "get-state": p.state, "get-serialno": p.serial}.get(cmd)
                    if answer is None:
                        return self._fail(sock, f"unsupported {cmd}")
                    sock.sendall(b"OKAY" + self._block(answer))
                    return
                for prefix in ("host:transport:", "host:tport:serial:"):
                    if req.startswith(prefix):
                        serial = req[len(prefix):]
                        p = self._visible(serial)
                        if p is None:
                            return self._fail(sock, f"device '{serial}' not found")
                        if p.state == "unauthorized":
                            return self._fail(sock, "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is "
                                                    "not set\nTry 'adb kill-server' if that seems wrong.")
                        if p.state != "device":
                            return self._fail(sock, f"device {p.state}")
                        sock.sendall(b"OKAY" + (struct.pack("<Q", 1) if prefix == "host:tport:serial:" else b""))
                        phone = p
                        break
                else:
                    return self._fail(sock, f"unknown host service {req!r}")
                continue
            # device services
            if phone.gone:
                return
            if req.startswith("shell,v2:") or req.startswith("shell:"):
                v2 = req.startswith("shell,v2:")
                cmd = req.split(":", 1)[1]
                with self.lock:
                    self.shell_commands.append((phone.serial, cmd))
                sock.sendall(b"OKAY")
                argv = shlex.split(cmd)
                if argv[:1] == ["logcat"] and "-d" not in argv:
                    return self._stream_logcat(sock, phone, argv)
                out, err, rc = phone.shell(cmd)
                if phone.gone:
                    return
                if v2:
                    for kind, data in ((1, out), (2, err)):
                        if data:
                            sock.sendall(bytes([kind]) + struct.pack("<I", len(data)) + data)
                    sock.sendall(bytes([3]) + struct.pack("<I", 1) + bytes([rc & 0xFF]))
                else:
                    sock.sendall(out + err)
                return
            if req == "sync:":
                sock.sendall(b"OKAY")
                return self._sync(sock, phone)
            return self._fail(sock, f"unknown device service {req!r}")

    def _stream_logcat(self, sock: socket.socket, phone: FakePhone, argv: list[str]) -> None:
        pid = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--pid=")), None)
        sent = 0
        while not phone.gone:
            with phone.lock:
                new = phone.main_log[sent:]
                sent = len(phone.main_log)
            data = "".join(ln + "\n" for p, ln in new if pid is None or p == pid).encode()
            if data:
                sock.sendall(data)
            r, _, _ = select.select([sock], [], [], 0.01)
            if r and not sock.recv(4096):
                return  # the client closed its side

    def _sync(self, sock: socket.socket, phone: FakePhone) -> None:
        while True:
            try:
                hdr = self._read(sock, 8)
            except EOFError:
                return
            cmd, n = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cmd == b"QUIT":
                return
            path = self._read(sock, n).decode()
            if phone.gone:
                return
            if cmd == b"STAT":
                p = posixpath.normpath(path)
                with phone.lock:
                    if p in phone.files:
                        st = struct.pack("<III", S_IFREG | 0o644, len(phone.files[p]), 1700000000)
                    elif p in phone.dirs:
                        st = struct.pack("<III", S_IFDIR | 0o755, 4096, 1700000000)
                    else:
                        st = struct.pack("<III", 0, 0, 0)
                sock.sendall(b"STAT" + st)
            elif cmd == b"LIST":
                p = posixpath.normpath(path)
                with phone.lock:
                    names = sorted({f[len(p) + 1:].split("/")[0] for f in list(phone.files) + list(phone.dirs)
                                    if f.startswith(p + "/")})
                    for name in names:
                        full = posixpath.join(p, name)
                        is_file = full in phone.files
                        mode = (S_IFREG | 0o644) if is_file else (S_IFDIR | 0o755)
                        size = len(phone.files[full]) if is_file else 4096
                        nb = name.encode()
                        sock.sendall(b"DENT" + struct.pack("<IIII", mode, size, 1700000000, len(nb)) + nb)
                sock.sendall(b"DONE" + b"\0" * 16)
            elif cmd == b"SEND":
                dest, _, _mode = path.rpartition(",")
                data = b""
                while True:
                    h = self._read(sock, 8)
                    kind, ln = h[:4], struct.unpack("<I", h[4:])[0]
                    if kind == b"DATA":
                        data += self._read(sock, ln)
                    elif kind == b"DONE":
                        break
                    else:
                        return self._sync_fail(sock, f"unexpected {kind!r}")
                p = posixpath.normpath(dest)
                if phone.used_bytes() - len(phone.files.get(p, b"")) + len(data) > phone.free_bytes:
                    phone.write(p, data[: len(data) // 2])
                    self._sync_fail(sock, "write failed: No space left on device")
                    continue
                phone.write(p, data)
                with self.lock:
                    self.pushed.append((phone.serial, p, len(data)))
                sock.sendall(b"OKAY" + b"\0" * 4)
            elif cmd == b"RECV":
                p = posixpath.normpath(path)
                with phone.lock:
                    data = phone.files.get(p)
                if data is None:
                    self._sync_fail(sock, "No such file or directory")
                    continue
                for i in range(0, len(data), 65536):
                    chunk = data[i:i + 65536]
                    sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                sock.sendall(b"DONE" + b"\0" * 4)
            else:
                return self._sync_fail(sock, f"unknown sync command {cmd!r}")

    def _sync_fail(self, sock: socket.socket, msg: str) -> None:
        b = msg.encode()
        sock.sendall(b"FAIL" + struct.pack("<I", len(b)) + b)
