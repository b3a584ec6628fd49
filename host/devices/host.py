"""The host itself as a device: the run folder is executed in place by the Python runner (``host.runner``).

The runner runs in a child process (``python -m host.runner RUN_DIR``) by default, like an app on a phone: its
memory records (``VmRSS`` / ``VmHWM`` of its own process) then describe the generation alone, not whatever the
deploy process holds (block models built in-process, an earlier variant's peak: ``VmHWM`` never goes down), and
a run that overstays its timeout can be stopped. ``SDPHONE_HOST_RUNNER=inprocess`` runs it inside the calling
process instead (no second interpreter; the peaks then include the caller's).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable

from host.devices.base import STATUS_FILE, Device, OnRecord, PushStats, TraceFollower
from host.devices.errors import AppCrashed, LowMemoryKilled, RunFailed, RunTimeout
from host.errors import HarnessError
from host.profiles import DeviceProfile
from host.protocol.constants import IMAGE_F32, IMAGE_PNG, TRACE_FILE

MODE_ENV = "SDPHONE_HOST_RUNNER"
MODES = ("subprocess", "inprocess")
#: the child runner's stdout and stderr (LiteRT's log lines, the runner's one-line error), in the run folder
RUNNER_LOG = "runner.log"
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def runner_mode(env=os.environ) -> str:
    mode = env.get(MODE_ENV) or "subprocess"
    if mode not in MODES:
        raise HarnessError(f"{MODE_ENV}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


class HostDevice(Device):
    """Runs on this machine. ``prepare`` / ``push_models`` / ``pull`` have nothing to move (the run folder is
    local and ``prepare_run`` already linked the models); ``start`` launches the runner, ``wait`` follows its
    trace.jsonl as it grows (``on_record`` sees each complete record) until the runner exits."""

    platform = "host"
    poll_interval = 0.2
    stop_grace = 5.0  # seconds between SIGINT and SIGKILL when a run is stopped

    def __init__(self, profile: DeviceProfile, mode: str | None = None) -> None:
        super().__init__(profile, serial="local")
        self.mode = mode or runner_mode()
        if self.mode not in MODES:
            raise HarnessError(f"host runner mode {self.mode!r}: choose one of {', '.join(MODES)}")
        self._run_dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def describe(self) -> str:
        return f"{self.name} (this machine)"

    def prepare(self, run_dir_local: str | os.PathLike) -> str:
        self._run_dir = Path(run_dir_local)
        return str(self._run_dir)

    def push_models(self, run_dir_local: str | os.PathLike,
                    progress: Callable[[str, int], None] | None = None) -> PushStats:
        self.last_push = PushStats()
        return self.last_push

    def start(self, run_dir_local: str | os.PathLike) -> None:
        self._run_dir = Path(run_dir_local)
        if self.mode == "inprocess":
            return
        # the runner removes these itself, but the follower must not read a previous run's trace meanwhile
        for stale in (TRACE_FILE, STATUS_FILE, IMAGE_PNG, IMAGE_F32):
            (self._run_dir / stale).unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        self._log = open(self._run_dir / RUNNER_LOG, "wb")
        self._proc = subprocess.Popen([sys.executable, "-m", "host.runner", str(self._run_dir)], cwd=_PROJECT_ROOT,
                                      env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float | None, on_record: OnRecord | None = None) -> dict[str, Any]:
        if self._run_dir is None:
            raise RuntimeError("HostDevice.wait before start")
        if self.mode == "inprocess":
            import host.runner  # looked up at call time: tests replace host.runner.run

            host.runner.run(self._run_dir, on_record=on_record)
            return self._status() or {"state": "ok"}
        if self._proc is None:
            raise RuntimeError("HostDevice.wait before start")
        follower = TraceFollower(on_record)
        t0 = time.monotonic()
        try:
            while True:
                rc = self._proc.poll()
                self._tail(follower)
                if rc is not None:
                    break
                if timeout is not None and time.monotonic() - t0 > timeout:
                    self._stop()
                    self._tail(follower)
                    raise RunTimeout(f"the runner did not finish within {timeout:g} s and was stopped (trace at "
                                     f"{follower.offset} bytes); the run folder stays at {self._run_dir}",
                                     device=self.describe(), log_lines=self._log_tail())
                time.sleep(self.poll_interval)
        except BaseException:
            self._stop()  # Ctrl-C or a failing progress callback: the runner must not outlive the deploy
            raise
        status = self._status()
        if rc == 0 and status and status.get("state") == "ok":
            return status
        if status and status.get("state") == "error":  # the runner's own one-line error, which names the culprit
            raise RunFailed(status.get("message") or f"the runner failed without a message; see {self._run_dir / RUNNER_LOG}")
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            cls = LowMemoryKilled if -rc == signal.SIGKILL else AppCrashed
            raise cls(f"the runner process was killed by {name}"
                      + (" (out of memory?)" if cls is LowMemoryKilled else "")
                      + f" after {follower.offset} bytes of trace; what it wrote stays in {self._run_dir}",
                      device=self.describe(), log_lines=self._log_tail())
        raise AppCrashed(f"the runner exited with code {rc} without a final status.json; see "
                         f"{self._run_dir / RUNNER_LOG}", device=self.describe(), log_lines=self._log_tail())

    def _tail(self, follower: TraceFollower) -> None:
        path = self._run_dir / TRACE_FILE
        try:
            with open(path, "rb") as f:
                f.seek(follower.offset)
                follower.feed(f.read())
        except FileNotFoundError:
            pass

    def _status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self._run_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _log_tail(self, n: int = 20) -> list[str]:
        try:
            lines = (self._run_dir / RUNNER_LOG).read_text(errors="replace").splitlines()
        except OSError:
            return []
        return lines[-n:]

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # SIGINT first: the runner records an "interrupted" error event and status when it is back in Python
            # (LiteRT holds the interpreter during an invocation); then SIGKILL
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def pull(self, run_dir_local: str | os.PathLike) -> list[str]:
        return []

    def sample_memory(self) -> dict[str, Any] | None:
        return None  # the host runner records its own (source "proc_status")

    def cleanup(self) -> None:
        try:
            self._stop()
        except OSError:
            pass
        if self._log is not None:
            self._log.close()
        self._proc = None
        self._log = None
        self._run_dir = None
