"""Background sampling of this process's memory from /proc/self/status into ``memory`` trace records."""
from __future__ import annotations

import threading

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


class MemorySampler:
    """A daemon thread writing one memory record every ``interval_s`` (plus one at start and stop)."""

    def __init__(self, tracer: Tracer, interval_s: float, path: str = PROC_STATUS) -> None:
        self._tracer = tracer
        self._interval = interval_s
        self._path = path
        self._stop = threading.Event()
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

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (idempotent) and take a last sample."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.sample()
        except (OSError, ValueError):
            pass
