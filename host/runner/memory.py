"""Background sampling of this process's memory from /proc/self/status into ``memory`` trace records."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from host.protocol.messages import MemoryRecord
from host.runner.tracing import Tracer

PROC_STATUS = "/proc/self/status"
SOURCE = "proc_status"


def read_proc_status(path: str = PROC_STATUS) -> tuple[int, int | None] | None:
    """(VmRSS, VmHWM) in bytes, or None where /proc is unavailable."""
    values: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in values:
        return None
    return values["VmRSS"], values.get("VmHWM")


#: The helper process: prints "<perf_counter> <VmRSS bytes> <VmHWM bytes>" for the watched pid every interval,
#: and exits when that process is gone or its parent (the runner) is.
_PROBE = r"""
import os, sys, time
pid, interval, parent = int(sys.argv[1]), float(sys.argv[2]), os.getppid()
path = f"/proc/{pid}/status"
while os.getppid() == parent:
    v = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    v[k] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        break
    if "VmRSS" not in v:
        break
    try:
        sys.stdout.write(f"{time.perf_counter()!r} {v['VmRSS']} {v.get('VmHWM', -1)}\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        break
    time.sleep(interval)
"""


class MemorySampler:
    """One memory record every ``interval_s`` (plus one at start and stop), for the running process.

    The samples are taken by a helper process, because LiteRT's Python bindings hold the GIL while a model
    runs: a sampling thread would see nothing during a 13 s UNet step. A reader thread stamps each line on
    the tracer's clock (``perf_counter`` is the same monotonic clock in both processes) and writes it when it
    next gets the GIL, so samples taken inside an invocation land in the trace right after it. Where no helper
    can be started (no /proc), the thread samples itself, as before.
    """

    def __init__(self, tracer: Tracer, interval_s: float, path: str = PROC_STATUS) -> None:
        self._tracer = tracer
        self._interval = interval_s
        self._path = path
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        got = read_proc_status(self._path)
        if got is not None:
            rss, peak = got
            self._tracer.write(MemoryRecord(t=self._tracer.now(), rss_bytes=rss, source=SOURCE, peak_bytes=peak))

    def _loop(self) -> None:
        try:
            while True:
                self.sample()
                if self._stop.wait(self._interval):
                    return
        except (OSError, ValueError):  # the trace went away (disk full, closed): stop quietly
            return

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        t0 = time.perf_counter() - self._tracer.clock.now()  # the tracer's zero on perf_counter's scale
        try:
            for line in self._proc.stdout:
                if self._stop.is_set():
                    return
                try:
                    t, rss, peak = line.split()
                    record = MemoryRecord(t=round(float(t) - t0, 6), rss_bytes=int(rss), source=SOURCE,
                                          peak_bytes=int(peak) if int(peak) >= 0 else None)
                except ValueError:
                    continue
                self._tracer.write(record)
        except (OSError, ValueError):  # the trace went away: stop quietly
            return

    def start(self) -> "MemorySampler":
        if self._path == PROC_STATUS and os.path.isdir(f"/proc/{os.getpid()}"):
            try:
                self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(os.getpid()), repr(self._interval)],
                                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1)
            except OSError:
                self._proc = None
            else:
                self.sample()  # the helper's first line comes once its interpreter is up
                self._thread = threading.Thread(target=self._read, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent) and take a last sample."""
        if self._stop.is_set():
            return
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            if self._thread.is_alive():
                self._thread.join()  # writes what the helper printed before it ended
            self._proc.stdout.close()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.sample()
        except (OSError, ValueError):
            pass
