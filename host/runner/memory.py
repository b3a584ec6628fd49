"""Background sampling of this process's memory from /proc/self/status into ``memory`` trace records."""
from __future__ import annotations

import json
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


def reset_peak_rss(path: str = "/proc/self/clear_refs") -> bool:
    """Restart this process's VmHWM from its current resident set (Linux ``clear_refs`` 5), so that a later peak
    is that of the work after this call; False where that is unavailable."""
    try:
        with open(path, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


#: The helper process: appends one memory record to the trace every interval (argv: pid, interval, trace path,
#: the tracer's zero on perf_counter's scale, a record template), until its stdin closes (the runner stops it
#: or dies) or the watched process is gone.
_PROBE = r"""
import json, os, select, sys, time
pid, interval, path, t0, template = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5])
status = f"/proc/{pid}/status"
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
while True:
    v = {}
    try:
        with open(status) as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    v[k] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        break
    if "VmRSS" not in v:
        break
    rec = dict(template, t=round(time.perf_counter() - t0, 6), rss_bytes=v["VmRSS"], peak_bytes=v.get("VmHWM"))
    data = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError:
        break
    if select.select([sys.stdin], [], [], interval)[0]:
        break
"""


class MemorySampler:
    """One memory record every ``interval_s`` (plus one at start and stop), for the running process.

    The samples are taken and written by a helper process that appends them to the trace itself: LiteRT's
    Python bindings hold the GIL for a whole invocation, so a thread of this process would get no sample in
    during a 13 s UNet step, nor write one. Both processes append whole lines (:class:`TraceWriter` writes each
    record with one append), and ``perf_counter`` is the same monotonic clock in both. Where no helper can be
    started (no /proc, a status file given for tests), a thread samples instead.
    """

    def __init__(self, tracer: Tracer, interval_s: float, path: str = PROC_STATUS) -> None:
        self._tracer = tracer
        self._interval = interval_s
        self._path = path
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def record(self, rss: int, peak: int | None) -> MemoryRecord:
        return MemoryRecord(t=self._tracer.now(), rss_bytes=rss, source=SOURCE, peak_bytes=peak)

    def sample(self) -> None:
        got = read_proc_status(self._path)
        if got is not None:
            self._tracer.write(self.record(*got))

    def _loop(self) -> None:
        try:
            while True:
                self.sample()
                if self._stop.wait(self._interval):
                    return
        except (OSError, ValueError):  # the trace went away (disk full, closed): stop quietly
            return

    def _start_helper(self) -> bool:
        trace = getattr(self._tracer.writer, "path", None)
        if self._path != PROC_STATUS or trace is None or not os.path.isdir(f"/proc/{os.getpid()}"):
            return False
        t0 = time.perf_counter() - self._tracer.clock.now()  # the tracer's zero on perf_counter's scale
        template = json.dumps(self.record(0, None).to_dict())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE, str(os.getpid()), repr(self._interval), str(trace), repr(t0), template],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        except OSError:
            self._proc = None
        return self._proc is not None

    def start(self) -> "MemorySampler":
        if self._start_helper():
            self.sample()  # the helper's first record comes once its interpreter is up
        else:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent) and take a last sample."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._proc is not None:
            self._proc.stdin.close()  # the helper's signal to finish its last write and exit
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self._thread.is_alive():
            self._thread.join()
        try:
            self.sample()
        except (OSError, ValueError):
            pass
